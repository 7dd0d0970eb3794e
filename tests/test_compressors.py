"""Rand-K, Perm-K, Identity, composition and scaled signs against their definitions."""
from __future__ import annotations

import math

import pytest
import torch

from hypothesis import given, settings, strategies as st

from compressors import (CLAG, EF14, EF21, LAG, LAGWK, MARINA, Compose, Identity, PackedTopK, Payload, PermK, RandK,
                         Round, SASG, ScaledSign, SharedTopK, ThreePCv2, ThreePCv4, ThreePCv5, TopK)
from compressors.core.error_feedback import compensated
from compressors.mechanisms.ef21 import ef21_move
from compressors.core.rounds import MoveHistory
from compressors.core.three_point import ThreePoint
from compressors.operators.packed_topk import BLOCK, FORMAT


def _mean_over_rounds(c, x, rounds, worker=0, workers=1):
    return torch.stack([c.decompress(c.compress(x, Round(t, worker, workers)), Round(t, worker, workers))
                        for t in range(rounds)]).mean(0)


def test_scaled_randk_is_unbiased_with_the_stated_variance():
    x = torch.randn(40, generator=torch.Generator().manual_seed(0))
    c = RandK(k=8)
    samples = torch.stack([c.decompress(c.compress(x, Round(t)), Round(t)) for t in range(4000)])
    # per coordinate, the sample mean's standard deviation is |x_j| sqrt(omega / 4000)
    assert ((samples.mean(0) - x).abs() <= 5 * x.abs() * (c.omega(40) / 4000) ** 0.5 + 1e-6).all()
    variance = float((samples - x).square().sum(1).mean())
    assert variance == pytest.approx(c.omega(40) * float(x.square().sum()), rel=0.1)  # equality for Rand-K


def test_unscaled_randk_contracts_by_alpha_on_average():
    x = torch.randn(40)
    c = RandK(k=8, scaled=False)
    errors = torch.stack([(c.decompress(c.compress(x, Round(t)), Round(t)) - x).square().sum() for t in range(4000)])
    assert float(errors.mean()) == pytest.approx((1 - c.alpha(40)) * float(x.square().sum()), rel=0.05)
    with pytest.raises(ValueError, match="biased"):
        c.omega(40)
    with pytest.raises(ValueError, match="not contractive"):
        RandK(k=8).alpha(40)


def test_shared_randk_sends_no_indices_and_every_worker_draws_the_same_support():
    c = RandK(k=5, shared=True, seed=3)
    x = torch.randn(50)
    a, b = c.compress(x, Round(7, 0, 4)), c.compress(x, Round(7, 3, 4))
    assert set(a.parts) == {"values"} and torch.equal(a.parts["values"], b.parts["values"])
    assert [s.name for s in c.spec(50)] == ["values"] and c.spec(50)[0].aligned
    assert not torch.equal(c.support(50, Round(8)), c.support(50, Round(7))), "a new support every round"
    private = RandK(k=5, seed=3)
    assert not torch.equal(private.compress(x, Round(7, 0, 4)).parts["indices"],
                           private.compress(x, Round(7, 3, 4)).parts["indices"])


@pytest.mark.parametrize("d, n", [(12, 4), (13, 4), (5, 5), (1000, 7)])
def test_permk_blocks_tile_the_coordinates_so_equal_inputs_average_back_exactly(d, n):
    c = PermK(seed=1)
    x = torch.randn(d)
    supports = torch.cat([c.support(d, Round(2, i, n)) for i in range(n)])
    assert sorted(supports.tolist()) == list(range(d))
    payloads = [c.compress(x, Round(2, i, n)) for i in range(n)]
    assert all(p.parts["values"].numel() == -(-d // n) for p in payloads), "padded to ceil(d/n)"
    out = torch.zeros(d)
    c.accumulate(out, payloads, 1.0 / n, Round(2, 0, n))
    # every coordinate is kept by exactly one worker i, scaled by d/|B_i| (= n when n divides d)
    expected = torch.zeros(d)
    for i in range(n):
        block = c.support(d, Round(2, i, n))
        expected[block] = x[block] * (d / block.numel()) / n
    assert torch.allclose(out, expected, atol=1e-6)
    if d % n == 0:
        assert torch.allclose(out, x, atol=1e-6)


def test_permk_is_unbiased_per_worker_and_needs_enough_coordinates():
    x = torch.randn(30, generator=torch.Generator().manual_seed(0))
    mean = _mean_over_rounds(PermK(), x, 3000, worker=1, workers=3)
    assert ((mean - x).abs() <= 5 * x.abs() * (2.0 / 3000) ** 0.5 + 1e-6).all()
    assert PermK().omega(30, 3) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least as many coordinates as workers"):
        PermK().compress(torch.ones(3), Round(0, 0, 4))


def test_identity_is_dense_and_aligned():
    x = torch.randn(7).half()
    c = Identity()
    p = c.compress(x)
    assert p.parts["dense"].dtype == torch.float32 and torch.equal(c.decompress(p), x.float())
    assert c.spec(7)[0].aligned and c.alpha(7) == 1.0 and c.omega(7) == 0.0


def test_compose_keeps_a_subset_of_the_inner_support_and_contracts_by_the_product():
    x = torch.randn(200)
    c = Compose(TopK(k=40), RandK(k=10, scaled=False))
    top = set(TopK(k=40).compress(x).parts["indices"].tolist())
    errors = []
    for t in range(2000):
        p = c.compress(x, Round(t))
        assert set(p.parts["indices"].tolist()) <= top and p.parts["values"].numel() == 10
        errors.append(float((c.decompress(p) - x).square().sum()))
    assert c.alpha(200) == pytest.approx(40 / 200 * 10 / 40)
    assert sum(errors) / len(errors) <= (1 - c.alpha(200)) * float(x.square().sum()) * 1.01
    assert Compose(TopK(k=40), TopK(k=10)).deterministic and not c.deterministic


def test_silent_workers_add_nothing():
    from compressors import Payload
    out = torch.zeros(5)
    TopK(k=1).accumulate(out, [Payload({}, 5), Payload({}, 5)], 0.5)
    Identity().accumulate(out, [Payload({}, 5)], 1.0)
    assert torch.equal(out, torch.zeros(5))


def _shared_round(c: SharedTopK, g: torch.Tensor, t: int, workers: int) -> Round:
    return Round(t, 0, workers, shared=c.shared_start(g))


def test_shared_topk_refuses_an_unknown_proposal_rule():
    with pytest.raises(ValueError, match="propose must be 'residual'"):
        SharedTopK(k=6, propose="top")


def test_shared_topk_support_is_the_agreed_proposal_plus_shared_random_entries():
    g = torch.zeros(100)
    g[[3, 50, 97]] = torch.tensor([5.0, -7.0, 6.0])
    c = SharedTopK(k=6, explore=0.5, seed=1)  # R = 3 random, 3 proposed
    rnd = _shared_round(c, g, 4, 3)
    assert rnd.shared["support"].nonzero().view(-1).tolist() == [3, 50, 97]  # P^0: the top of |g^0|
    supports = [c.support(100, rnd.of(w)) for w in range(3)]
    assert all(torch.equal(s, supports[0]) for s in supports)  # every worker, no communication
    assert {3, 50, 97} <= set(supports[0].tolist()) and supports[0].numel() == 6
    assert supports[0].tolist() == sorted(supports[0].tolist())
    spec = c.spec(100, rnd)
    assert [(s.name, s.numel, s.aligned) for s in spec] == [("values", 6, True), ("proposal", 3, True)]
    x = torch.randn(100)
    payload = c.compress(x, rnd.of(2))
    kept = supports[0]
    dense = c.decompress(payload, rnd)
    assert torch.equal(dense[kept], x[kept]) and dense.count_nonzero() <= 6
    other = c.support(100, Round(5, 0, 3, shared=rnd.shared))
    assert not torch.equal(other, kept)  # a new round draws new random entries


@pytest.mark.parametrize("propose", ["residual", "input"])
@pytest.mark.parametrize("workers, numel, k", [(3, 100, 8), (2, 1 << 23, 8), (5, 300, 3)])
def test_shared_topk_workers_propose_their_tops_in_their_own_slots(workers, numel, k, propose):
    """Slot j of "proposal" belongs to worker (j + t) mod n, which writes the index + 1 of its
    residual's top entries there (``propose="input"``: its input's, what it sends included; two
    fp32 digits each from 2^23 entries on); every other worker writes zeros, so the union comes
    back exactly from the n payloads and from their mean. With more workers than slots (k = 3,
    R = 0, n = 5), a rotating subset of workers proposes."""
    c = SharedTopK(k=k, explore=0.25, seed=5, propose=propose)
    gen = torch.Generator().manual_seed(workers)
    g = torch.randn(numel, generator=gen)
    t = 7
    rnd = _shared_round(c, g, t, workers)
    xs = [torch.randn(numel, generator=gen) for _ in range(workers)]
    kept = c.support(numel, rnd)
    planted = numel - 1 if propose == "residual" else int(kept[0])  # outside the support / sent this round
    xs[t % workers][planted] = -2e3  # far above the rest, on slot 0's owner
    payloads = [c.compress(x, rnd.of(w)) for w, x in enumerate(xs)]
    m, expected = c.proposed(numel), set()
    for w, (x, p) in enumerate(zip(xs, payloads)):
        own = [j for j in range(m) if (j + t) % workers == w]
        digits = p.parts["proposal"].view(c.digits(numel), m)
        assert not digits[:, [j for j in range(m) if j not in own]].any()  # others' slots: zeros
        scores = x.clone()
        if propose == "residual":
            scores[kept] = 0
        expected |= set(scores.abs().topk(len(own)).indices.tolist())
        assert bool((digits[:, own].sum(0) > 0).all())  # index + 1: a proposal is never 0
    assert len({(j + t) % workers for j in range(m)}) == min(m, workers)  # the slots go round
    mean = {name: sum(p.parts[name] for p in payloads) / workers for name in payloads[0].parts}
    for received in (payloads, [Payload(mean, numel)]):
        server = {"g": g.clone(), **rnd.shared}
        c.shared_update(server, received, rnd)
        assert set(server["support"].nonzero().view(-1).tolist()) == expected
    assert planted in expected
    if propose == "residual":
        assert not expected & set(kept.tolist())  # never what was just sent


@pytest.mark.parametrize("explore", [0.25, 1.0])
def test_shared_topk_contracts_by_at_least_its_alpha_even_against_its_support(explore):
    """E||C(x) - x||^2 <= (1 - R/d)||x||^2 for any x, also when x's mass avoids the proposal."""
    d, c = 200, SharedTopK(k=20, explore=explore, seed=2)
    g = torch.zeros(d)
    g[:100] = torch.linspace(1, 2, 100)  # the proposal lies in the first half ...
    x = torch.zeros(d)
    x[100:] = torch.randn(100, generator=torch.Generator().manual_seed(0))  # ... x's mass in the second
    shared = c.shared_start(g)
    errors = [float((c.decompress(c.compress(x, Round(t, 0, 2, shared=shared)), Round(t, 0, 2, shared=shared))
                     - x).square().sum()) for t in range(400)]
    assert sum(errors) / len(errors) <= (1 - c.alpha(d)) * float(x.square().sum()) * 1.02
    assert c.alpha(d) == pytest.approx(c.explored(d) / d)


@pytest.mark.parametrize("compressor", [TopK(k=7), RandK(k=5), RandK(ratio=0.1, shared=True),
                                        PackedTopK(ratio=0.05), ScaledSign(block=16), Identity()], ids=repr)
def test_an_empty_tensor_compresses_to_an_empty_payload(compressor):
    """A 0-element tensor: no division by k = 0 (PermK refuses fewer entries than workers)."""
    rnd = Round(3, 0, 2)
    assert compressor.decompress(compressor.compress(torch.zeros(0), rnd), rnd).numel() == 0


@pytest.mark.parametrize("compressor", [TopK(k=7), TopK(ratio=0.5), RandK(k=9, seed=3), RandK(k=9, scaled=False, seed=3),
                                        PermK(seed=2), Identity(), ScaledSign(block=16), PackedTopK(k=7),
                                        PackedTopK(ratio=0.5),
                                        ScaledSign(block=16, fraction=0.75)], ids=repr)
def test_residual_is_v_minus_what_the_payload_decodes_to_bit_for_bit(compressor):
    """Error feedback's v - C(v), whether computed in place (sparsifiers: O(K)) or from the
    decoded payload; on ties and zeros too."""
    gen = torch.Generator().manual_seed(5)
    for v in (torch.randn(101, generator=gen), torch.zeros(40), torch.tensor([1.0, -1.0, 1.0, 0.0, -1.0] * 6)):
        rnd = Round(3, 1, 4)
        sent = compressor.compress(v, rnd)
        expected = v - compressor.decompress(sent, rnd)
        payload, residual = compressor.residual(v.clone(), rnd)
        assert torch.equal(residual, expected)
        assert payload.parts.keys() == sent.parts.keys()
        assert all(torch.equal(payload.parts[k], sent.parts[k]) for k in sent.parts)


def _sign_reference(x: torch.Tensor, block: int) -> torch.Tensor:
    """C(x)_j = s_b sign(x_j), s_b = ||x_b||_1 / |b| saturated and rounded to bf16, sign(0) = +1:
    the definition, one block at a time in float64."""
    v = x.reshape(-1).double()
    out = torch.empty_like(v)
    for lo in range(0, v.numel(), block):
        part = v[lo:lo + block]
        mean = min(float(part.abs().sum() / part.numel()), torch.finfo(torch.bfloat16).max)
        scale = float(torch.tensor(mean, dtype=torch.float32).to(torch.bfloat16))
        out[lo:lo + block] = torch.where(part < 0, -scale, scale)
    return out.float()


SIGN_INPUTS = {
    "random": torch.randn(5000, generator=torch.Generator().manual_seed(1)),
    "zeros": torch.zeros(300),
    "ties and signed zeros": torch.tensor([1.0, -1.0, 0.0, -0.0, 2.0, -2.0, 1.0] * 50),
    "one entry": torch.tensor([-3.0]),
    "huge and tiny": torch.tensor([3.4e38, -3.4e38, 1e-40, -1e-40, 1.0] * 9),
    "fp16": torch.randn(777, generator=torch.Generator().manual_seed(2)).half(),
    "bf16": torch.randn(777, generator=torch.Generator().manual_seed(3)).bfloat16(),
    "non-contiguous": torch.randn(64, 50, generator=torch.Generator().manual_seed(4)).t()[::2],
}


@pytest.mark.parametrize("block", [1, 7, 8, 2048])
@pytest.mark.parametrize("name", list(SIGN_INPUTS))
def test_scaled_sign_decodes_to_its_definition_and_costs_one_bit_plus_a_scale_per_block(name, block):
    x = SIGN_INPUTS[name]
    c, d = ScaledSign(block), x.numel()
    payload, encoded = c.encode(x)
    expected = _sign_reference(x, block)
    assert torch.equal(encoded < 0, expected < 0)  # the signs exactly; the scales to one bf16 ulp (summation order)
    torch.testing.assert_close(encoded, expected, rtol=2.0 ** -7, atol=0)
    assert torch.equal(c.decompress(payload), encoded)  # what is kept locally is what is received
    assert payload.bits() == {"signs": 8 * ((d + 7) // 8), "scales": 16 * -(-d // block)}
    assert [(p.name, p.dtype, p.numel) for p in c.spec(d)] == [
        (k, t.dtype, t.numel()) for k, t in payload.parts.items()]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=300), st.integers(1, 64))
def test_scaled_sign_contracts_by_the_l1_identity(values, block):
    """||C(x) - x||^2 = ||x||^2 - sum_b ||x_b||_1^2 / |b| + sum_b |b| (s~_b - s_b)^2, the last term
    bf16's rounding of the scales (at most 2^-16 of the kept energy, plus d 2^-268 where a scale is
    below bf16's normal range: hypothesis found x = [1.4e-45], whose scale rounds to 0), so the
    error is at most (1 - alpha) ||x||^2 + d 2^-268."""
    x = torch.tensor(values, dtype=torch.float64)
    c = ScaledSign(block)
    error = float((c.encode(x.float())[1].double() - x).square().sum())
    kept = sum(float(x[lo:lo + block].abs().sum()) ** 2 / x[lo:lo + block].numel() for lo in range(0, x.numel(), block))
    norm = float(x.square().sum())
    floor = x.numel() * 2.0 ** -268  # scales below bf16's normal range: half its least subnormal, squared
    assert -1e-9 * norm <= error - (norm - kept) <= 2.0 ** -16 * 1.001 * kept + 1e-9 * norm + floor
    assert error <= (1 - c.alpha(x.numel())) * norm + 1e-9 * norm + floor


def test_scaled_sign_lets_a_non_finite_entry_through_to_the_mechanisms_check():
    """A NaN or inf makes its block's C(x) non-finite (never a silent sign), so the hook's
    finiteness check before memory is written sees it."""
    for bad in (float("nan"), float("inf")):
        x = torch.ones(10)
        x[3] = bad
        assert not torch.isfinite(ScaledSign(4).encode(x)[1][:4]).any()
        assert torch.isfinite(ScaledSign(4).encode(x)[1][4:]).all()


def test_scaled_sign_refuses_an_empty_block_and_a_window_below_half():
    for block in (0, 16.0, True):
        with pytest.raises(ValueError, match="block must be an int of at least 1"):
            ScaledSign(block)
    for make in (TopK, RandK, PackedTopK):  # a float k failed later, inside torch or numpy
        for k in (2.5, 3.0, 0, True):
            with pytest.raises(ValueError, match="k must be an int of at least 1"):
                make(k=k)
    for fraction in (0.49, 1.01):
        with pytest.raises(ValueError, match=r"fraction must be in \[0.5, 1\]"):
            ScaledSign(16, fraction)
    with pytest.raises(ValueError, match="not contractive in one round.*use it with EF14"):
        ScaledSign(16, 0.9).alpha(100)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 300), st.floats(0.5, 1.0), st.integers(0, 10_000), st.integers(1, 40))
def test_a_sign_window_is_the_scaled_sign_of_its_pieces_and_two_rounds_cover_every_entry(numel, fraction, t, block):
    """Round t decodes to zero outside W_t and, on each of W_t's (at most two) pieces, to that
    piece's own scaled sign; the payload is what ``spec`` says (ceil(f d) signs, the pieces' bytes
    and blocks); W_t and W_(t+1) together hold every entry (f >= 1/2)."""
    x = torch.randn(numel, generator=torch.Generator().manual_seed(t))
    c, rnd = ScaledSign(block, fraction), Round(t, 0, 2)
    pieces = c.pieces(numel, rnd)
    payload = c.compress(x, rnd)
    decoded = c.decompress(payload, rnd)
    inside = torch.zeros(numel, dtype=torch.bool)
    for p in pieces:
        inside[p] = True
        assert torch.equal(decoded[p], ScaledSign(block).encode(x[p])[1])
    assert int(inside.sum()) == min(numel, math.ceil(fraction * numel)) and len(pieces) <= 2
    assert not decoded[~inside].any()
    assert [(q.name, q.dtype, q.numel) for q in c.spec(numel, rnd)] == [
        (k, v.dtype, v.numel()) for k, v in payload.parts.items()]
    for p in c.pieces(numel, Round(t + 1, 1, 2)):
        inside[p] = True
    assert inside.all()


def test_error_feedback_over_a_sign_window_keeps_its_memory_bounded():
    """EF14 over a window of 60% of the signs, fed the same x for T rounds: what it sent adds up
    to T x - e_T, and e_T levels off (an entry the windows skipped for good would grow it by x a
    round: doubling from T = 600 to 1200); fraction 1 is the plain ScaledSign bit for bit."""
    x = torch.randn(1000, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.01, 3, 1000)
    worker, decoder, sent = EF14(ScaledSign(64, 0.6)), ScaledSign(64, 0.6), torch.zeros(1000)
    worker.init(torch.zeros(1000))
    norms = []
    for t in range(1200):
        sent += decoder.decompress(worker.step(x, Round(t)), Round(t))
        norms.append(float(worker.memory.e_i.norm()))
    torch.testing.assert_close(sent + worker.memory.e_i, 1200 * x, rtol=1e-4, atol=0.05)
    assert norms[-1] < 1.2 * norms[599]
    assert torch.equal(ScaledSign(64).compress(x).parts["signs"], ScaledSign(64, 1.0).compress(x, Round(7)).parts["signs"])


def test_error_feedback_reuses_the_error_of_the_round_before_last_never_a_kept_one():
    """EF14 writes v = e + grad into the error of the round before last: the memory a caller keeps
    through a round (the hook's rollback) is never written, a restored one is never reused, the
    result is e' = v - C(v) of the definition, and spawned workers share no buffer."""
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(300, generator=gen) for _ in range(8)]
    template = EF14(TopK(ratio=0.1))
    template.init(torch.zeros(300))
    for g in grads[:2]:
        template.step(g)  # the template now holds a spare buffer
    workers = [template.spawn(), template.spawn()]
    errors = [torch.zeros(300), torch.zeros(300)]
    for w in workers:
        w.init(torch.zeros(300))
    for t, g in enumerate(grads):
        for w, worker in enumerate(workers):
            kept, before = worker.memory, worker.memory.e_i.clone()
            payload = worker.step(g * (w + 1))
            assert torch.equal(kept.e_i, before), "the memory kept through the round was written"
            if t in (2, 3):  # rolled back, twice in a row
                worker.memory = kept
                continue
            v = errors[w] + g * (w + 1)
            errors[w] = v - TopK(ratio=0.1).decompress(payload)
            assert torch.equal(worker.memory.e_i, errors[w])
    assert workers[0].memory.e_i.data_ptr() != workers[1].memory.e_i.data_ptr()


@pytest.mark.parametrize("c", [TopK(ratio=0.1), RandK(ratio=0.2), RandK(ratio=0.2, scaled=False),
                               RandK(ratio=0.2, shared=True), PermK(seed=1), Identity(), ScaledSign(64),
                               PackedTopK(0.1)], ids=repr)
def test_adding_a_workers_own_payload_is_adding_its_decoded_vector(c):
    """``add_to`` (O(K) for the sparsifiers) gives the bits of out + decompress(payload) with the
    worker's own round (worker 1 of 3: Rand-K's and Perm-K's supports depend on it)."""
    gen = torch.Generator().manual_seed(8)
    out, x = torch.randn(301, generator=gen), torch.randn(301, generator=gen)
    rnd = Round(5, 1, 3)
    payload = c.compress(x, rnd)
    expected = out + c.decompress(payload, rnd)
    c.add_to(out, payload, rnd)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("c", [TopK(ratio=0.1), RandK(ratio=0.2), RandK(ratio=0.2, scaled=False),
                               RandK(ratio=0.2, shared=True), PermK(seed=1), Identity(), PackedTopK(0.1)], ids=repr)
def test_compressing_a_difference_gives_the_bits_of_compressing_it_formed(c):
    """``compress_difference(x, y)`` (Rand-K and Perm-K gather x and y at their support, O(K))
    is ``compress(x - y)`` part for part, bit for bit, with worker 1 of 3's round."""
    gen = torch.Generator().manual_seed(9)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):  # the difference rounds in the inputs' dtype
        x, y = torch.randn(301, generator=gen).to(dtype), torch.randn(301, generator=gen).to(dtype)
        x[:20] = y[:20]  # zero differences, kept by a random support
        rnd = Round(4, 1, 3)
        got, want = c.compress_difference(x, y, rnd), c.compress(x - y, rnd)
        assert got.parts.keys() == want.parts.keys()
        assert all(torch.equal(got.parts[k], want.parts[k]) for k in want.parts), (c, dtype)


def test_lags_upload_is_marked_scratch_and_sparse_payloads_are_not():
    """``ef21_move``'s identity payload (LAG's) and 3PCv5's dense round are their own x - h
    (``Payload.scratch``: the hook may average it in place); a sparsifier's gathered values are
    not marked (nothing says they are unheld)."""
    gen = torch.Generator().manual_seed(2)
    x, h = torch.randn(50, generator=gen), torch.randn(50, generator=gen)
    lag = ef21_move(Identity(), h.clone(), x, Round())
    assert lag.scratch == {"dense"} and torch.equal(lag.parts["dense"], x - h)
    assert ef21_move(RandK(ratio=0.2), h.clone(), x, Round()).scratch == frozenset()
    dense_round = ThreePCv5(TopK(ratio=0.1), p=1.0).move(h.clone(), h, x, Round(1))  # 3PCv5's (MARINA's) coin
    assert dense_round.scratch == {"dense"} and torch.equal(dense_round.parts["dense"], x - h)


def _in_place_step(worker: ThreePoint | SASG, grad: torch.Tensor, rnd: Round) -> Payload:
    """The 3PC step as defined: ``move`` writes g_i in place, then y = x."""
    x = grad.reshape(-1).float()
    if isinstance(worker, SASG):  # its rule, written in place
        if not worker.triggered(x, rnd):
            worker.memory.skips += 1
            return Payload({}, x.numel())
        payload, error = compensated(worker.compressor, worker.memory.e_i, x, rnd)
        worker.memory.e_i.copy_(error)
        worker.memory.y.copy_(x)
        worker.memory.skips.zero_()
        return payload
    payload = worker.move(worker.memory.g_i, getattr(worker.memory, "y", None), x, rnd)
    if worker.uses_y:
        worker.memory.y.copy_(x)
    return payload


@pytest.mark.parametrize("mechanism", [CLAG(TopK(ratio=0.1), zeta=1.0), CLAG(RandK(ratio=0.5, scaled=False), zeta=4.0),
                                       LAG(zeta=1.0), LAGWK(xi=1.0, window=2), EF21(TopK(ratio=0.1)),
                                       EF21(RandK(ratio=0.3, scaled=False)), ThreePCv2(TopK(ratio=0.1)),
                                       ThreePCv4(TopK(ratio=0.1), TopK(ratio=0.05)), ThreePCv5(TopK(ratio=0.1), p=0.3),
                                       MARINA(p=0.3), SASG(TopK(ratio=0.1), window=2)], ids=repr)
def test_a_3pc_step_writes_new_memory_and_gives_the_bits_of_the_in_place_move(mechanism):
    """The 3PC mechanisms (and SASG) write their memory into the tensors of the round before last
    (CLAG and LAG: g_i only when uploading): the payloads and memories are those of the step that writes its
    memory in place (``move``), bit for bit, the memory a caller keeps through a round is never
    written, and a restored one (twice in a row) is never reused; the lazy ones both upload and
    stay silent."""
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(500, generator=gen)
    grads = [base + torch.randn(500, generator=gen) * (0.05 if t % 3 else 1.0) for t in range(12)]
    worker, reference = mechanism.spawn(), mechanism.spawn()
    for w in (worker, reference):
        w.init(grads[0].clone())
    silent = []
    for t, g in enumerate(grads[1:], start=1):
        rnd = Round(t, moves=(20.0, 20.0))  # LAG-WK's threshold
        kept = worker.memory
        before = {k: v.clone() for k, v in kept.tensors().items()}
        payload = worker.step(g, rnd)
        assert all(torch.equal(v, before[k]) for k, v in kept.tensors().items()), "the kept memory was written"
        if t in (3, 4):  # rolled back, twice in a row
            worker.memory = kept
            continue
        expected = _in_place_step(reference, g, rnd)
        silent.append(not expected.parts)
        assert payload.parts.keys() == expected.parts.keys()
        assert all(torch.equal(payload.parts[k], expected.parts[k]) for k in expected.parts)
        assert all(torch.equal(a, b) for a, b in zip(worker.memory.tensors().values(),
                                                     reference.memory.tensors().values()))
    if mechanism.lazy:
        assert any(silent) and not all(silent)


def _full_block() -> torch.Tensor:
    """Every entry of the second index block larger than any other: one block count is 255."""
    x = torch.randn(4 * BLOCK, generator=torch.Generator().manual_seed(6))
    x[BLOCK:2 * BLOCK] += torch.sign(x[BLOCK:2 * BLOCK]) * 10
    return x


PACKED_INPUTS = {**{name: x for name, x in SIGN_INPUTS.items()},
                 "block edges": torch.randn(3 * BLOCK + 1, generator=torch.Generator().manual_seed(7)),
                 "a full block": _full_block(),
                 "range 2^60": torch.logspace(-30, 30, 301, base=2.0) * torch.tensor([1.0, -1.0]).repeat(151)[:301],
                 "subnormal scale": torch.tensor([1.0019e-42, 8.4e-43, 9.8e-45, -3.0e-43, 600 * 2.0 ** -149])}


def _nearest_code(y: torch.Tensor) -> torch.Tensor:
    """|y - q(y)| for the nearest value q(y) of the 8-bit format (float64, from its code table)."""
    table = torch.from_numpy(FORMAT.values())
    return (y.double()[:, None] - table[None, :]).abs().min(dim=1).values


@pytest.mark.parametrize("ratio", [0.05, 0.5, 1.0])
@pytest.mark.parametrize("name", list(PACKED_INPUTS))
def test_packed_topk_sends_the_topk_support_and_the_nearest_8_bit_float_of_each_value(name, ratio):
    """The definition: the support is Top-K's (ties: lowest index), recovered from the block
    counts and offsets; each kept value decodes to s times the format's nearest value to v/s,
    s = fp32(max |v| / 480), the largest to fp32's rounding; the payload is 2K + ceil(d/255) + 4 bytes, as
    ``spec`` declares."""
    x = PACKED_INPUTS[name]
    c, d = PackedTopK(ratio), x.numel()
    k = c.k_for(d)
    payload = c.compress(x)
    values, indices = c.located(payload, Round())
    want_values, want_indices = TopK(ratio).select(x.reshape(-1), Round())
    assert torch.equal(indices, want_indices.long())
    kept = want_values.double()
    top = float(kept.abs().max())
    s = float(payload.parts["scale"])
    assert payload.parts["scale"].dtype == torch.float32
    below = float(torch.nextafter(torch.tensor(s), torch.tensor(0.0)))  # the fp32 number under s
    assert (s * FORMAT.max_value >= top and (below * FORMAT.max_value < top or s == 2.0 ** -149)) if top else s == 1
    err = (values.double() / s - kept / s).abs()
    assert (err <= _nearest_code(kept / s) + 1e-6 * (kept / s).abs() + 1e-9).all()  # the nearest code, to fp32
    assert (err * s <= torch.maximum(kept.abs() * 2.0 ** -4, torch.tensor(s * 2.0 ** -10)) * (1 + 1e-6)).all()
    assert float(values.abs().max()) == pytest.approx(top, rel=1e-6)
    assert torch.equal(c.decompress(payload)[indices], values)
    assert payload.bits() == {"values": 8 * k, "scale": 32, "block_indices": 8 * math.ceil(d / BLOCK),
                              "indices": 8 * k}
    assert [(p.name, p.dtype, p.numel) for p in c.spec(d)] == [
        (n, t.dtype, t.numel()) for n, t in payload.parts.items()]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(-2.0 ** 100, 2.0 ** 100, width=32), min_size=1, max_size=600), st.floats(0.01, 1.0))
def test_packed_topk_contracts_by_its_alpha(values, ratio):
    """||C(x) - x||^2 <= (1 - alpha) ||x||^2 with alpha = (K/d)(1 - 2^-8 - K 2^-18 / 480^2), down to
    subnormal inputs (a subnormal scale, rounded up: the largest value never saturates)."""
    x = torch.tensor(values, dtype=torch.float32)
    c = PackedTopK(ratio)
    error = float((c.decompress(c.compress(x)).double() - x.double()).square().sum())
    norm = float(x.double().square().sum())
    assert error <= (1 - c.alpha(x.numel())) * norm * (1 + 1e-6)


def test_packed_topk_marks_a_non_finite_value_with_a_nan_scale_that_the_hook_flags():
    """A NaN or inf among the kept entries (e + grad overflowed) gives a NaN scale and decodes to
    NaN, so the hook's payload check flags the round on every rank (as with Top-K's fp32 values)."""
    for bad in (float("nan"), float("inf")):
        x = torch.ones(10)
        x[3] = bad
        c = PackedTopK(k=2)
        payload = c.compress(x)
        assert torch.isnan(payload.parts["scale"]).all()
        values, indices = c.located(payload, Round())
        assert 3 in indices.tolist() and torch.isnan(values).all()


@pytest.mark.parametrize("decay", [1.0, 0.7])
def test_error_feedback_rounds_decay_times_e_then_the_sum(decay):
    """v = x + decay e, the product and the sum each rounded to fp32 (no fused multiply-add, which
    would change CO3's memory with the CPU), into a new tensor or into ``out``."""
    from compressors.core.error_feedback import compensated

    gen = torch.Generator().manual_seed(4)
    x, e = torch.randn(100_003, generator=gen), torch.randn(100_003, generator=gen)
    want = x + decay * e if decay != 1.0 else x + e
    for out in (None, torch.empty(100_003)):
        _, residual = compensated(TopK(k=1), e, x, Round(), decay, out=out)
        kept = residual != 0
        assert torch.equal(residual[kept], want[kept]) and int(kept.sum()) == 100_002


def test_the_move_history_keeps_the_squared_norms_of_any_float_direction():
    """||g||^2 per key, most recent first, as deep as the window (fp32, fp64, fp16, empty)."""
    history = MoveHistory(2)
    for t, dtype in enumerate((torch.float32, torch.float64, torch.float16)):
        g = torch.arange(4, dtype=dtype) * (t + 1)
        history.record("p", g)
        history.record("empty", g[:0])
    assert history.moves(["p"]) == pytest.approx((14.0 * 9, 14.0 * 4))
    assert history.moves(["p", "empty"]) == history.moves(["p"])
