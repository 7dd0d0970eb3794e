"""The optimizer-aware mode for Adam/AdamW: ``AdamNormalized`` (compressors) and
``register(ddp, optimizer=opt)`` (ddp_hooks.adam): exactness against torch's AdamW, the
mean-of-ranks estimate, memory, GradScaler skips, checkpoints, and the errors it raises."""
from __future__ import annotations

import copy
import io
import math
import statistics
import types
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import ddp_hooks
from compressors import EF14, GD, Mechanism, Round, TopK
from compressors.mechanisms.adam_normalized import AdamNormalized, Clipping, mean_norm2
from ddp_hooks.adam import adam_settings, attach, normalized
from ddp_hooks.launch import RankFailure, run_ranks
from ddp_hooks.registry import MECHANISMS, mechanism


def _rounds(mech: AdamNormalized, grads: list[torch.Tensor], workers: int = 1) -> list[torch.Tensor]:
    """One worker's aggregate directions g over ``grads`` (the simulation's order of calls)."""
    out, server = [], None
    for t, g in enumerate(grads):
        rnd = Round(t, 0, workers, shared=server or {})
        payload = mech.init(g, rnd) if t == 0 else mech.step(g, rnd)
        if t == 0:
            server = mech.begin([payload], rnd)
        else:
            mech.fold(server, [payload], rnd)
        out.append(server["g"].clone())
    return out


def test_one_worker_dense_with_beta1_zero_moves_exactly_as_torch_adamw():
    torch.manual_seed(0)
    grads = [torch.randn(257) * (10.0 ** torch.randint(-3, 3, (257,))) for _ in range(6)]
    grads[2][:5] = 0.0  # zeros: eps decides
    directions = _rounds(AdamNormalized(GD(), betas=(0.0, 0.95), eps=1e-8).spawn(), grads)
    x = nn.Parameter(torch.zeros(257, dtype=torch.float64))
    oracle = torch.optim.AdamW([x], lr=1.0, betas=(0.0, 0.95), eps=1e-8, weight_decay=0.0)
    for g, d in zip(grads, directions):
        before = x.detach().clone()
        x.grad = g.double()
        oracle.step()
        torch.testing.assert_close((before - x.detach()).float(), d, rtol=1e-5, atol=1e-7)


def test_mean_of_ranks_lifts_noisy_coordinates_by_sqrt_n_and_leaves_steady_ones():
    """Coordinate 0 alternates +-1 (noise only), coordinate 1 is always 1 (signal only)."""
    grads = [torch.tensor([(-1.0) ** t, 1.0]) for t in range(300)]
    for n in (1, 4, 16):
        d = _rounds(AdamNormalized(EF14(TopK(k=2)), betas=(0.9, 0.999), momentum=False).spawn(), grads,
                    workers=n)[-1]
        assert abs(d[1] - 1.0) < 1e-3, "a coordinate without noise keeps Adam's unit step"
        assert 0.9 * n ** 0.5 < abs(d[0]) <= n ** 0.5 + 1e-3, (n, d)
    plain = _rounds(AdamNormalized(EF14(TopK(k=2)), mean_of_ranks=False, momentum=False).spawn(), grads,
                    workers=16)[-1]
    assert abs(abs(plain[0]) - 1.0) < 1e-3, "mean_of_ranks=False: one rank's second moment"


def test_clipping_scales_the_gradient_before_the_moments_and_measures_the_mean_gradients_norm():
    """A worker under ``Clipping(factor=c)`` sends what a worker sent c grad sends, records the
    n-rank estimate ||grad||^2 (r + (1 - r) / n), r = sum_j min(m^_j^2, v^_j) / sum_j v^_j, and
    presents the aggregate at the root of it."""
    torch.manual_seed(1)
    grads = [torch.randn(300) + 0.5 for _ in range(5)]
    factors = [1.0, 0.5, 0.25, 1.0, 0.1]
    clipping = Clipping()
    clipped = AdamNormalized(EF14(TopK(ratio=0.1)), betas=(0.9, 0.99), clipping=clipping).spawn()
    plain = AdamNormalized(EF14(TopK(ratio=0.1)), betas=(0.9, 0.99)).spawn()
    for t, (g, c) in enumerate(zip(grads, factors)):
        clipping.factor = c
        rnd = Round(t, 0, 4)
        sent, expected = (clipped.step(g, rnd), plain.step(g * c, rnd)) if t else \
            (clipped.init(g, rnd), plain.init(g * c, rnd))
        for name, part in expected.parts.items():
            torch.testing.assert_close(sent.parts[name], part, rtol=0, atol=0)
        k = t + 1.0
        m_hat, v_hat = plain.m.double() / (1 - 0.9 ** k), plain.v.double() / (1 - 0.99 ** k)
        kept = float(torch.minimum(m_hat ** 2, v_hat).sum() / v_hat.sum())
        estimate = float(g.double().square().sum()) * (kept + (1 - kept) / 4)
        assert clipped.norm2 == pytest.approx(estimate, rel=1e-5)
        shown = clipped.presented(torch.full((300,), 3.0)) * torch.full((300,), 3.0)
        assert float(shown.norm()) == pytest.approx(math.sqrt(estimate), rel=1e-5)
    assert plain.norm2 is None and plain.presented(torch.ones(3)) == 1.0


def test_the_norm_estimate_with_per_coordinate_round_counts_is_the_formula():
    """Coordinates whose moments restarted count fewer rounds: c1, c2 per coordinate."""
    gen = torch.Generator().manual_seed(3)
    g, m, v = torch.randn(64, generator=gen), torch.randn(64, generator=gen), torch.rand(64, generator=gen)
    k = torch.randint(1, 9, (64,), generator=gen).float()
    c1, c2 = 1 / (1 - 0.9 ** k) ** 2, 1 / (1 - 0.99 ** k)
    kept = float(torch.minimum(m.double() ** 2 * c1, v.double() * c2).sum() / (v.double() * c2).sum())
    expected = float(g.double().square().sum()) * (kept + (1 - kept) / 8)
    assert mean_norm2(g, m, v, c1, c2, 1 / 8) == pytest.approx(expected, rel=1e-5)
    scalar = mean_norm2(g, m, v, c1[:1], c2[:1], 1 / 8)
    assert scalar == pytest.approx(mean_norm2(g, m, v, c1[:1].expand(64), c2[:1].expand(64), 1 / 8), rel=1e-6)


def test_the_norm_estimate_of_a_unit_without_energy_is_the_gradients_norm():
    """v = 0 on every read coordinate (a gradient zero so far on this rank: a head another rank
    uses): r is taken as 1, not a ZeroDivisionError."""
    g, zero = torch.zeros(300), torch.zeros(300)
    for c in (torch.tensor([4.0]), torch.full((300,), 4.0)):
        assert mean_norm2(g, zero, zero, c, c, 1 / 2) == 0.0
        assert mean_norm2(torch.ones(300), zero, zero, c, c, 1 / 2) == pytest.approx(300.0)


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk, self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 1), nn.Linear(32, 1)

    def forward(self, x: torch.Tensor, head: str) -> torch.Tensor:
        return getattr(self, head)(torch.relu(self.trunk(x)))


def _head_of_one_rank(rank: int, workers: int) -> torch.Tensor:
    """The Adam mode, ``find_unused_parameters=True``, buckets of one parameter, head ``b`` used
    by rank 0 only: rank 1's gradient there is zero every round (DDP fills it with zeros)."""
    torch.manual_seed(0)
    model = _TwoHeads()
    ddp = DDP(model, find_unused_parameters=True, bucket_cap_mb=0.0001)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2)
    ddp_hooks.register(ddp, optimizer=opt)
    gen = torch.Generator().manual_seed(rank)
    for _ in range(4):
        opt.zero_grad()
        ddp(torch.randn(8, 16, generator=gen), "b" if rank == 0 else "a").pow(2).mean().backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_a_bucket_one_rank_never_has_a_gradient_for_trains():
    first, second = run_ranks(_head_of_one_rank, 2, timeout=120)  # a ZeroDivisionError on rank 1 before
    assert torch.equal(first, second) and bool(torch.isfinite(first).all())


@pytest.mark.parametrize("factors, low", [([1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65], 0.97),
                                          ([1.0, 1.0, 0.1, 0.01, 0.001, 0.001, 0.001], 0.75)])
def test_the_norm_estimate_does_not_collapse_with_the_clipping_factor(factors, low):
    """The same gradient every round on 2 ranks (no noise: the mean's norm is the gradient's)
    under a falling factor: the estimate stays near ||grad||, within 3% when the factor falls 5%
    a round and above 1 / sqrt(n) when it falls tenfold (the moments' memories differ, so the
    ratio r takes the fall for noise; dividing by the factor instead made it grow without end)."""
    g = torch.randn(500, generator=torch.Generator().manual_seed(2))
    clipping = Clipping()
    worker = AdamNormalized(GD(), betas=(0.9, 0.999), clipping=clipping).spawn()
    for t, c in enumerate(factors):
        clipping.factor = c
        rnd = Round(t, 0, 2)
        worker.init(g, rnd) if t == 0 else worker.step(g, rnd)
        assert low <= math.sqrt(worker.norm2) / float(g.norm()) <= 1.0 + 1e-5, (t, c)


def test_memory_holds_the_inner_memory_and_both_moments_and_rolls_back():
    mech = AdamNormalized(EF14(TopK(ratio=0.1))).spawn()
    grads = [torch.randn(100, generator=torch.Generator().manual_seed(t)) for t in range(4)]
    mech.init(grads[0], Round(0, 0, 2))
    mech.step(grads[1], Round(1, 0, 2))
    assert set(mech.memory.tensors()) == {"e_i", "adam_m", "adam_v", "adam_k", "adam_u"}
    saved = type(mech.memory).of({k: t.clone() for k, t in mech.memory.tensors().items()})
    first = mech.step(grads[2], Round(2, 0, 2))
    mech.memory = saved  # what the hook does when a round is refused
    again = mech.step(grads[2], Round(2, 0, 2))
    assert all(torch.equal(first.parts[k], again.parts[k]) for k in first.parts)
    rebuilt = mech.memory_type.of(mech.memory.tensors())  # what a checkpoint load does
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.tensors().values(), mech.memory.tensors().values()))


def test_moments_reuse_the_round_before_lasts_buffers_but_never_the_rollbacks():
    """The hook keeps the memory before a round by reference (``written_in_place``) and restores it when
    the round is refused; the moments' buffers are recycled, so no step may write into it."""
    mech = AdamNormalized(EF14(TopK(ratio=0.1))).spawn()
    grads = [torch.randn(100, generator=torch.Generator().manual_seed(t)) for t in range(6)]
    mech.init(grads[0], Round(0, 0, 2))
    first = mech.m
    mech.step(grads[1], Round(1, 0, 2))
    mech.step(grads[2], Round(2, 0, 2))
    assert mech.m.data_ptr() == first.data_ptr(), "round 2 writes into round 0's buffers (no allocation)"
    for t in (3, 4):
        before = mech.memory  # by reference, as the hook keeps it
        kept = {k: x.clone() for k, x in before.tensors().items()}
        mech.step(grads[t], Round(t, 0, 2))
        mech.memory = before  # refused: rolled back
        mech.step(grads[t + 1], Round(t + 1, 0, 2))
        assert all(torch.equal(before.tensors()[k], x) for k, x in kept.items()), "the rollback was overwritten"


def test_the_round_count_kept_aside_gives_the_bits_of_reading_k_every_round():
    """While every coordinate counts the same rounds the mechanism writes k without reading it
    (``rounds``); a memory set from outside (a rollback, a checkpoint, joined units) is read
    again. Both give the same k and the same payloads, bit for bit, also after a restart of some
    coordinates (then k is read per coordinate)."""
    torch.manual_seed(0)
    grads = [torch.randn(300) * torch.linspace(0.1, 2.0, 300) for _ in range(8)]
    kept, read = (AdamNormalized(EF14(TopK(ratio=0.1)), betas=(0.8, 0.99)).spawn() for _ in range(2))
    for t, g in enumerate(grads):
        if t == 5:  # some coordinates restart: k differs across the tensor
            for mech in (kept, read):
                mech.memory = mech.memory_type.of({k: torch.where(torch.arange(300) < 100, 0.0, x)
                                                   if k.startswith("adam_") else x
                                                   for k, x in mech.memory.tensors().items()})
        if t > 0:
            read.memory = read.memory  # as a rollback does: the count is read off k
        sent = [m.init(g, Round(t, 0, 2)) if t == 0 else m.step(g, Round(t, 0, 2)) for m in (kept, read)]
        assert all(torch.equal(sent[0].parts[k], sent[1].parts[k]) for k in sent[0].parts)
        assert torch.equal(kept.k, read.k)
        assert kept.rounds == (t + 1.0 if t < 5 else None)
    assert torch.equal(kept.k, torch.where(torch.arange(300) < 100, 3.0, 8.0))


def test_the_round_count_kept_aside_stops_where_fp32_k_does():
    """Past 2^24 rounds k (fp32) stops counting; the count kept aside stops with it, so a memory
    read back from k (a rollback, a checkpoint) gives the same corrections."""
    grads = [torch.randn(50, generator=torch.Generator().manual_seed(t)) for t in range(5)]
    kept, read = (AdamNormalized(EF14(TopK(ratio=0.2)), betas=(0.9, 1 - 1e-8)).spawn() for _ in range(2))
    for mech in (kept, read):
        mech.init(grads[0], Round(0, 0, 2))
        mech.memory = mech.memory_type.of({k: torch.full_like(x, 2.0 ** 24 - 1) if k == "adam_k" else x
                                           for k, x in mech.memory.tensors().items()})
    for t, g in enumerate(grads[1:], start=1):
        read.memory = read.memory
        sent = [m.step(g, Round(t, 0, 2)) for m in (kept, read)]
        assert all(torch.equal(sent[0].parts[k], sent[1].parts[k]) for k in sent[0].parts)
        assert kept.rounds == float(kept.k[0]) == 2.0 ** 24


@pytest.mark.parametrize("workers", [1, 4])
def test_second_moment_is_what_the_round_divided_by(workers):
    """``second_moment`` (what a checkpoint exports as exp_avg_sq) against the kernel's d_i."""
    from compressors.mechanisms.adam_normalized import second_moment
    torch.manual_seed(0)
    mech = AdamNormalized(GD(), betas=(0.8, 0.99), eps=1e-8, momentum=False)
    for t in range(5):
        g = torch.randn(1000) * torch.linspace(0.01, 3.0, 1000) + 0.5
        d = mech.normalized(g, Round(t, 0, workers))
    w = second_moment(mech.m, mech.v, mech.k, mech.betas, workers)
    torch.testing.assert_close(g / (w.sqrt() + 1e-8), d, rtol=1e-5, atol=0)
    if workers > 1:
        assert not torch.allclose(w, second_moment(mech.m, mech.v, mech.k, mech.betas, 1))


def test_ranks_send_the_bias_corrected_momentum_of_their_directions():
    """momentum=True sends u^ = u / (1 - beta1^k), u the EMA of the directions momentum=False
    sends (the same moments, so the same d); beta1 = 0 sends d itself. Per coordinate: one whose
    moments restart (a bucket rebuilt around it) is corrected by its own count."""
    torch.manual_seed(0)
    grads = [torch.randn(300) * torch.linspace(0.1, 2.0, 300) + 0.3 for _ in range(7)]
    for beta1 in (0.0, 0.8):
        sends, directions = (AdamNormalized(GD(), betas=(beta1, 0.99), momentum=m).spawn() for m in (True, False))
        u = torch.zeros(300, dtype=torch.float64)
        for t, g in enumerate(grads[:6]):
            d = (directions.init(g) if t == 0 else directions.step(g)).parts["dense"].double()
            u = beta1 * u + (1 - beta1) * d
            sent = (sends.init(g) if t == 0 else sends.step(g)).parts["dense"].double()
            torch.testing.assert_close(sent, u / (1 - beta1 ** (t + 1)), rtol=1e-5, atol=1e-6)
    memory = sends.memory.tensors()
    restarted = torch.arange(300) < 100
    sends.memory = sends.memory_type.of({k: torch.where(restarted, 0.0, x) if k.startswith("adam_") else x
                                         for k, x in memory.items()})
    fresh = AdamNormalized(GD(), betas=(0.8, 0.99)).spawn().init(grads[6][:100]).parts["dense"]
    torch.testing.assert_close(sends.step(grads[6]).parts["dense"][:100], fresh, rtol=1e-5, atol=1e-6)


def test_rounds_read_the_betas_they_follow_and_checkpoints_do_not_name_them():
    """``follow`` (the optimizer's param groups in the hook): each round's beta1 is the one it
    reads then (OneCycleLR cycles it), for every spawned worker; the repr (what the ranks compare)
    shows it; the checkpoint name (what a resume must match) leaves betas and eps out."""
    schedule = {"betas": (0.95, 0.99), "eps": 1e-8}
    mech = AdamNormalized(GD(), betas=(0.5, 0.5), follow=lambda: (schedule["betas"], schedule["eps"]))
    worker = mech.spawn()
    grads = [torch.randn(50, generator=torch.Generator().manual_seed(t)) for t in range(4)]
    u = torch.zeros(50, dtype=torch.float64)
    for t, (g, beta1) in enumerate(zip(grads, (0.95, 0.85, 0.85, 0.95))):
        schedule["betas"] = (beta1, 0.99)
        assert f"betas=({beta1}, 0.99)" in repr(mech)
        sent = (worker.init(g) if t == 0 else worker.step(g)).parts["dense"].double()
        d = grads[t] / ((worker.v / (1 - 0.99 ** (t + 1))).sqrt() + 1e-8)  # one rank: w = v^
        u = beta1 * u + (1 - beta1) * d.double()
        torch.testing.assert_close(sent, u / (1 - beta1 ** (t + 1)), rtol=1e-4, atol=1e-5)
    assert "betas" not in mech.checkpoint_name() and "eps" not in mech.checkpoint_name(), mech.checkpoint_name()
    assert mech.checkpoint_name() == AdamNormalized(GD(), betas=(0.1, 0.2)).checkpoint_name()
    schedule["betas"] = (1.0, 0.99)
    with pytest.raises(ValueError, match="0 <= beta1, beta2 < 1"):
        worker.step(grads[0])


def test_eps_zero_leaves_coordinates_without_gradient_still():
    """AdamW(eps=0) is valid; a coordinate whose gradient is 0 (or squares to 0) must not send
    NaN or inf: the hook would flag and skip every round."""
    mech = AdamNormalized(GD(), betas=(0.9, 0.999), eps=0.0).spawn()
    grad = torch.tensor([0.0, 2.0, -3.0, 1e-30])
    for t in range(3):
        payload = mech.init(grad, Round(0, 0, 2)) if t == 0 else mech.step(grad, Round(t, 0, 2))
        d = payload.parts["dense"]
        assert torch.isfinite(d).all(), d
        assert d[0] == 0.0 and d[3] == 0.0 and d[1] > 0 > d[2], d


@pytest.mark.parametrize("name", sorted(MECHANISMS))
def test_every_hook_keeps_its_own_memory_beside_the_moments(name):
    """EF21-SGDM's memory has a v_i (its momentum): the moments must not collide with any field."""
    inner = mechanism(name, **({"ratio": 0.25} if any(o.name == "ratio" for o in MECHANISMS[name].options) else {}))
    mech = AdamNormalized(inner).spawn()
    grads = [torch.randn(64, generator=torch.Generator().manual_seed(t)) for t in range(3)]
    mech.init(grads[0], Round(0, 0, 2))
    for t in (1, 2):
        mech.step(grads[t], Round(t, 0, 2))
    fields = mech.memory.tensors()
    own = mech.inner.memory.tensors()
    assert set(fields) == set(own) | {"adam_m", "adam_v", "adam_k", "adam_u"}, sorted(fields)
    assert all(fields[k] is t for k, t in own.items()), "the inner memory, unchanged"
    rebuilt = mech.memory_type.of({k: t.clone() for k, t in fields.items()})  # a checkpoint's round trip
    mech.memory = rebuilt
    assert all(torch.equal(mech.inner.memory.tensors()[k], t) for k, t in own.items())


def _params(*groups: dict) -> list[dict]:
    return [dict(params=[nn.Parameter(torch.zeros(3))], **g) for g in groups]


@pytest.mark.parametrize("optimizer, needle", [
    (lambda: torch.optim.RMSprop(_params({})), "supports torch.optim.Adam, AdamW and SGD"),
    (lambda: torch.optim.AdamW(_params({}), amsgrad=True), "amsgrad=True"),
    (lambda: torch.optim.Adam(_params({}), weight_decay=0.01), "Use torch.optim.AdamW"),
    (lambda: torch.optim.AdamW(_params({}, {"betas": (0.9, 0.99)})), "one (betas, eps) for every param group"),
])
def test_unsupported_optimizers_are_refused_naming_the_fix(optimizer, needle):
    with pytest.raises(ValueError, match=None) as raised:
        adam_settings(optimizer())
    assert needle in str(raised.value), raised.value


def test_a_frameworks_wrapper_is_unwrapped_or_refused_naming_the_order():
    from ddp_hooks.adam import unwrapped

    class Wrapper(torch.optim.Optimizer):  # Accelerate's AcceleratedOptimizer keeps it in .optimizer
        def __init__(self, optimizer: torch.optim.Optimizer) -> None:
            self.optimizer = optimizer
    inner = torch.optim.AdamW([nn.Parameter(torch.zeros(2))])
    assert unwrapped(Wrapper(inner)) is inner and unwrapped(inner) is inner
    lightning_like = Wrapper(inner)
    lightning_like.__class__ = type("LightningAdamW", (type(lightning_like), torch.optim.AdamW), {})
    lightning_like._optimizer, lightning_like.optimizer = inner, None  # Lightning: ._optimizer, a subclass
    assert isinstance(lightning_like, torch.optim.AdamW) and unwrapped(lightning_like) is inner
    assert adam_settings(unwrapped(Wrapper(Wrapper(inner)))) is not None
    scaled = Wrapper(inner)
    scaled._optimizer_original_step_method = inner.step  # with a GradScaler it restores this after each step
    with pytest.raises(ValueError, match="before preparing it"):
        unwrapped(scaled)


def test_a_checkpoint_a_plain_adamw_trained_on_from_converts_its_exp_avg_not_the_stale_momentum():
    from ddp_hooks.adam import AT_STEP, NORMALISED, imported
    group = {"params": [0], "betas": (0.9, 0.99), "eps": 1e-8}
    state = {"step": torch.tensor(5.0), "exp_avg": torch.full((3,), 0.5), "exp_avg_sq": torch.full((3,), 0.25),
             NORMALISED: torch.full((3,), 7.0), AT_STEP: 5.0}
    as_saved = imported(None, {"state": {0: state}, "param_groups": [group]})["state"][0]
    assert torch.equal(as_saved["exp_avg"], torch.full((3,), 7.0)) and NORMALISED not in as_saved
    moved_on = imported(None, {"state": {0: {**state, "step": torch.tensor(9.0)}}, "param_groups": [group]})
    expected = 0.5 / ((0.25 / (1 - 0.99 ** 9)) ** 0.5 + 1e-8)
    torch.testing.assert_close(moved_on["state"][0]["exp_avg"], torch.full((3,), expected))
    assert torch.equal(state[NORMALISED], torch.full((3,), 7.0)), "the caller's state_dict is not modified"


def test_a_second_attach_replaces_the_checkpoint_hooks():
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(2))])
    for _ in range(2):
        attach(opt, types.SimpleNamespace(committed_iterations=0, mechanism=None))  # a state: read when stepping
    assert len(opt._optimizer_state_dict_post_hooks) == 1 and len(opt._optimizer_load_state_dict_pre_hooks) == 1


def test_supported_optimizers():
    assert adam_settings(torch.optim.SGD(_params({}), lr=0.1, momentum=0.9)) is None
    s = adam_settings(torch.optim.AdamW(_params({}, {}), betas=(0.8, 0.99), eps=1e-6))
    assert (s.betas, s.eps) == ((0.8, 0.99), 1e-6)
    assert adam_settings(torch.optim.Adam(_params({}), weight_decay=0.1, decoupled_weight_decay=True)) is not None


# -- real gloo ranks ------------------------------------------------------------------------------
def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))


def _loss(model: nn.Module, rank: int, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(16, 20, generator=g)
    return ((model(x) - x[:, :1]) ** 2).mean()


def _schedule(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / 3 if s < 3 else 0.5)


def _clip_lagged(params: list[nn.Parameter], max_norm: float, factors: list[float]) -> None:
    """The mode's clipping on one rank, as a plain AdamW's: scale step t's gradients by
    median(c_{t-3}, c_{t-2}, c_{t-1}) / c_0 (fewer at first; none at step 0), where c_t =
    min(1, max_norm / step t's unclipped norm) is what clip_grad_norm_ applied."""
    norm = float(torch.nn.utils.get_total_norm([p.grad for p in params]))
    if factors:
        for p in params:
            p.grad.mul_(statistics.median(factors[-3:]) / factors[0])
    factors.append(min(1.0, max_norm / (norm + 1e-6)))


def _exact(rank: int, workers: int) -> dict:
    """1 rank, "gd", beta1 = 0: AdamW's trajectory, with the scheduler made before or after
    ``register`` and with the user's clipping, which the mode follows one round late, through a
    median and relative to the first round's, against a plain AdamW clipped so (and the exported
    exp_avg_sq, in the units of the clipped gradient: c_0^2 times the plain one's)."""
    out = {}
    for order in ("scheduler first", "register first"):
        model, plain = _model(), _model()
        ddp = DDP(model, bucket_cap_mb=0.01)
        kw = dict(lr=0.01, betas=(0.0, 0.99), weight_decay=0.1)
        opt, ref = torch.optim.AdamW(model.parameters(), **kw), torch.optim.AdamW(plain.parameters(), **kw)
        sched = _schedule(opt) if order == "scheduler first" else None
        state = ddp_hooks.register(ddp, "gd", optimizer=opt)
        sched = sched or _schedule(opt)
        ref_sched = _schedule(ref)
        factors: list[float] = []
        for step in range(8):
            for m, o in ((ddp, opt), (plain, ref)):
                o.zero_grad()
                _loss(m, rank, step).backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
            _clip_lagged(list(plain.parameters()), 1e-3, factors)
            opt.step()
            ref.step()
            sched.step()
            ref_sched.step()
        out[order] = max(float((a - b).abs().max()) for a, b in zip(model.parameters(), plain.parameters()))
        out[order + " buckets"] = len(state.buckets)
        exported, expected = opt.state_dict()["state"], ref.state_dict()["state"]
        out[order + " exp_avg_sq"] = max(float((exported[i]["exp_avg_sq"] / (expected[i]["exp_avg_sq"] * factors[0] ** 2)
                                               - 1).abs().max()) for i in expected)
    return out


def _checks(rank: int, workers: int, folder: str) -> dict:
    """2 ranks, the default hook with AdamW: GradScaler skip, then checkpoint and resume."""
    out: dict = {}
    model = _model()
    ddp = DDP(model, bucket_cap_mb=0.01)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    state = ddp_hooks.register(ddp, optimizer=opt, ratio=0.05, check_every=1)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    poisoned = {"on": False}
    model[2].weight.register_hook(lambda g: g.index_fill(0, torch.tensor([0]), float("nan")) if poisoned["on"] else g)
    for step in range(6):
        poisoned["on"] = step == 3 and rank == 1
        memory = copy.deepcopy(state.state_dict()["memory"])
        params = [p.detach().clone() for p in model.parameters()]
        moments = copy.deepcopy(opt.state_dict()["state"])
        opt.zero_grad()
        scaler.scale(_loss(ddp, rank, step)).backward()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        scaler.step(opt)
        scaler.update()
        if step == 3:
            now = state.state_dict()["memory"]
            out["memory untouched"] = all(torch.equal(now[p][k], memory[p][k]) for p in memory for k in memory[p])
            out["moments untouched"] = all(torch.equal(a["exp_avg"], b["exp_avg"])
                                           for a, b in zip(moments.values(), opt.state_dict()["state"].values()))
            out["step skipped"] = all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    out["fields"] = sorted(next(iter(state.state_dict()["memory"].values())))
    out["fraction"] = state.stats.summary()["fraction_of_dense"]
    out["params"] = [p.detach().clone() for p in model.parameters()]
    out["clipping"] = copy.copy(state.mechanism.clipping)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "hook": state.state_dict()},
               Path(folder, f"{rank}.pt"))
    _clipped_steps(ddp, opt, rank)
    out["continued"] = [p.detach().clone() for p in model.parameters()]
    return out


def _clipped_steps(ddp: DDP, opt: torch.optim.Optimizer, rank: int) -> None:
    for step in range(6, 9):
        opt.zero_grad()
        _loss(ddp, rank, step).backward()
        nn.utils.clip_grad_norm_(ddp.parameters(), 0.1)
        opt.step()


def _resumed(rank: int, workers: int, folder: str) -> list[torch.Tensor]:
    saved = torch.load(Path(folder, f"{rank}.pt"))
    model = _model()
    model.load_state_dict(saved["model"])
    ddp = DDP(model, bucket_cap_mb=0.01)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    state = ddp_hooks.register(ddp, optimizer=opt, ratio=0.05, check_every=1)
    opt.load_state_dict(saved["opt"])
    state.load_state_dict(saved["hook"])
    _clipped_steps(ddp, opt, rank)
    return [p.detach().clone() for p in model.parameters()]


def _foreign(rank: int, workers: int) -> dict[str, str]:
    """An optimizer with a parameter the model lacks, and one lacking a trainable parameter of the
    model (a second optimizer holds it: the hook would leave it an Adam-normalised .grad)."""
    out = {}
    for case in ("foreign", "missing"):
        ddp = DDP(_model(), bucket_cap_mb=0.01)
        params = list(ddp.parameters())
        opt = torch.optim.AdamW([*params, nn.Parameter(torch.zeros(3))] if case == "foreign" else params[:-2])
        try:
            ddp_hooks.register(ddp, optimizer=opt)
            out[case] = "registered"
        except ValueError as e:
            out[case] = str(e)
    return out


@pytest.mark.slow
def test_one_rank_gd_with_beta1_zero_is_torch_adamw_whatever_the_scheduler_order():
    out = run_ranks(_exact, 1, timeout=120)[0]
    assert out["scheduler first"] < 1e-6 and out["register first"] < 1e-6, out
    assert out["scheduler first buckets"] >= 2, "several buckets"
    assert out["scheduler first exp_avg_sq"] < 1e-4 and out["register first exp_avg_sq"] < 1e-4, out


def _estimates(rank: int, workers: int) -> dict[str, list[float]]:
    """What ``clip_grad_norm_`` returned in the mode (the presented norm, this rank's estimate of
    the mean gradient's), over the mean gradient's norm at the same parameters (by all_reduce),
    at each of 30 clipped steps, for "gd" and the default."""
    out = {}
    for name in ("gd", None):
        model = _model()
        ddp = DDP(model, bucket_cap_mb=0.01)
        opt = torch.optim.AdamW(model.parameters(), lr=0.01)
        ddp_hooks.register(ddp, name, optimizer=opt)
        ratios = []
        for step in range(30):
            plain = copy.deepcopy(model)
            _loss(plain, rank, step).backward()
            mean = torch.cat([p.grad.flatten() for p in plain.parameters()])
            dist.all_reduce(mean)
            opt.zero_grad()
            _loss(ddp, rank, step).backward()
            ratios.append(float(nn.utils.clip_grad_norm_(model.parameters(), 0.1)) / float(mean.norm() / workers))
            opt.step()
        out[name or "default"] = ratios
    return out


@pytest.mark.slow
def test_two_ranks_present_an_estimate_of_the_mean_gradients_norm_that_does_not_drift():
    """A 5.5k-parameter model with 16 samples per rank: one step's estimate is noisy (0.4-1.9 of
    the mean's norm here), but its median stays near it while the clipping acts on every step."""
    for r in run_ranks(_estimates, 2, timeout=120):
        for name, ratios in r.items():
            assert 0.7 < statistics.median(ratios) < 1.3 and min(ratios) > 0.2 and max(ratios) < 3.0, (name, ratios)


@pytest.mark.slow
def test_two_ranks_skip_a_nonfinite_step_and_resume_bit_for_bit(tmp_path):
    ranks = run_ranks(_checks, 2, str(tmp_path), timeout=180)
    for r in ranks:
        assert r["memory untouched"] and r["moments untouched"] and r["step skipped"], r
        assert r["fields"] == ["adam_k", "adam_m", "adam_u", "adam_v", "e_i", "server.g"]
        assert r["fraction"] < 0.3  # ratio 5% here: values + indices, plus the first, dense, round
        assert all(torch.equal(a, b) for a, b in zip(r["params"], ranks[0]["params"])), "replicas identical"
        assert r["clipping"].reference < 1.0 and r["clipping"].factor != 1.0 and len(r["clipping"].recent) == 3, \
            r["clipping"]
    resumed = run_ranks(_resumed, 2, str(tmp_path), timeout=120)
    for r, again in zip(ranks, resumed):
        assert all(torch.equal(a, b) for a, b in zip(r["continued"], again)), "resumed run differs"


@pytest.mark.slow
def test_an_optimizer_with_parameters_outside_the_model_or_without_some_of_it_is_refused():
    messages = run_ranks(_foreign, 1, timeout=60)[0]
    assert "does not" in messages["foreign"] and "DDP model's parameters" in messages["foreign"], messages
    assert "does not hold (['module.4.weight', 'module.4.bias'])" in messages["missing"], messages
    assert "pass optimizer=None" in messages["missing"], messages


def _defaults(rank: int, workers: int) -> dict:
    """What register(ddp, optimizer=...) builds with no name, per optimizer and options."""
    out = {}
    for label, make, options in (("adamw", torch.optim.AdamW, {}), ("adamw ratio", torch.optim.AdamW, {"ratio": 0.05}),
                                 ("sgd", torch.optim.SGD, {}), ("untold", None, {})):
        ddp = DDP(_model(), bucket_cap_mb=0.01)
        opt = make(ddp.parameters(), lr=0.01) if make is not None else None
        out[label] = repr(ddp_hooks.register(ddp, optimizer=opt, **options).mechanism)
    return out


def test_the_default_told_an_adam_is_ef14_over_signs_and_otherwise_ef14_over_top_k():
    """No name and no options: an Adam or AdamW gets ``ADAM_DEFAULT`` (signs of a window of 84% of
    the entries) in the Adam mode; an SGD or no optimizer gets ``SGD_DEFAULT`` (Top-K 5% in about
    16 bits an entry); options given are ``DEFAULT``'s (Top-K unless they say otherwise)."""
    built = run_ranks(_defaults, 1, timeout=60)[0]
    assert built["adamw"].startswith("AdamNormalized(EF14(ScaledSign(block=2048, fraction=0.84))"), built
    assert built["adamw ratio"].startswith("AdamNormalized(EF14(TopK(ratio=0.05))"), built
    assert built["sgd"] == built["untold"] == "EF14(PackedTopK(ratio=0.05))", built


# -- against torch's AdamW, step hooks, closures, plain AdamW checkpoints (1 rank) --------------
def _succeeded(ranks: list) -> list:
    """``run_ranks``' results, once no rank failed (else its traceback)."""
    failed = [r for r in ranks if isinstance(r, RankFailure)]
    assert not failed, "\n".join(f"rank {r.rank} (exit {r.exitcode}):\n{r.error}" for r in failed)
    return ranks


def _eval(model: nn.Module) -> float:
    """The loss on every rank's batches (ranks 0, 1; steps 0-2), the same on every rank."""
    with torch.no_grad():
        return sum(float(_loss(model, r, s)) for r in range(2) for s in range(3)) / 6


def _against_adamw(rank: int, warmup_steps: int, skipped: set[int]) -> float:
    """1 rank, "gd", beta1 = 0, against torch's AdamW: ``warmup_steps`` dense rounds, and the
    steps in ``skipped`` lost to a NaN gradient (the hook rolls back, the step leaves the
    parameters, and AdamW, which never saw the step, does not count it). The largest deviation."""
    model, plain = _model(), _model()
    ddp = DDP(model, bucket_cap_mb=0.01)
    kw = dict(lr=0.01, betas=(0.0, 0.99), weight_decay=0.1)
    opt, ref = torch.optim.AdamW(model.parameters(), **kw), torch.optim.AdamW(plain.parameters(), **kw)
    ddp_hooks.register(ddp, "gd", optimizer=opt, warmup_steps=warmup_steps)
    poisoned = {"on": False}
    model[2].weight.register_hook(lambda g: g + float("nan") if poisoned["on"] else g)
    worst = 0.0
    for step in range(8):
        poisoned["on"] = step in skipped
        opt.zero_grad()
        ref.zero_grad()
        _loss(ddp, rank, step).backward()
        _loss(plain, rank, step).backward()
        opt.step()
        if step not in skipped:
            ref.step()
        worst = max(worst, *(float((a - b).abs().max()) for a, b in zip(model.parameters(), plain.parameters())))
    return worst


def _with_grad_scaler(rank: int, told: bool, fused: bool = False) -> float:
    """1 rank, "gd", beta1 = 0, both under a GradScaler whose scale doubles every 2 steps: the
    largest deviation from torch's AdamW (which unscales before its moments see the gradient);
    ``told``: the hook registered with ``scaler=``; ``fused``: the mode's AdamW is fused=True (whose
    step GradScaler would hand the scaled gradients, to unscale in its kernel)."""
    model, plain = _model(), _model()
    ddp = DDP(model, bucket_cap_mb=0.01)
    kw = dict(lr=0.01, betas=(0.0, 0.99), weight_decay=0.1)
    opt, ref = torch.optim.AdamW(model.parameters(), fused=fused, **kw), torch.optim.AdamW(plain.parameters(), **kw)
    scalers = [torch.amp.GradScaler("cpu", init_scale=256.0, growth_interval=2) for _ in range(2)]
    ddp_hooks.register(ddp, "gd", optimizer=opt, scaler=scalers[0] if told else None)
    worst = 0.0
    for step in range(8):
        for m, o, scaler in ((ddp, opt, scalers[0]), (plain, ref, scalers[1])):
            o.zero_grad()
            scaler.scale(_loss(m, rank, step)).backward()
            scaler.step(o)
            scaler.update()
        worst = max(worst, *(float((a - b).abs().max()) for a, b in zip(model.parameters(), plain.parameters())))
    return worst


def _clipping_followed(rank: int) -> list[tuple[float, float, float]]:
    """A user who clips at 0.25 for 6 steps (the loss 1000 times larger at step 3: a spike), then
    stops for 3, then clips at 1e9 (a no-op): after each step, the mode's ``Clipping.factor``,
    what ``clip_grad_norm_`` returned, and the norm of the step's gradient (a copy of the model
    without DDP)."""
    model = _model()
    ddp = DDP(model, bucket_cap_mb=0.01)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    state = ddp_hooks.register(ddp, "gd", optimizer=opt)
    seen = []
    for step, max_norm in enumerate([0.25] * 6 + [None] * 3 + [1e9]):
        scale = 1000.0 if step == 3 else 1.0
        plain = copy.deepcopy(model)
        (_loss(plain, rank, step) * scale).backward()
        norm = float(torch.nn.utils.get_total_norm([p.grad for p in plain.parameters()]))
        opt.zero_grad()
        (_loss(ddp, rank, step) * scale).backward()
        returned = float(nn.utils.clip_grad_norm_(model.parameters(), max_norm)) if max_norm else math.nan
        opt.step()
        seen.append((state.mechanism.clipping.factor, returned, norm))
    return seen


class _Branchy(nn.Module):
    """A layer ``b`` that only some steps use (DDP's find_unused_parameters leaves its .grad)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, use_b: bool) -> torch.Tensor:
        y = self.a(x)
        return self.b(y) if use_b else y


def _nothing_rescaled(rank: int) -> dict[str, list[float]]:
    """No clipping at all: the mode's factor after each step, with a layer unused on odd steps
    (its .grad None, or zeros after zero_grad(set_to_none=False)), and with bf16 parameters."""
    out = {}
    for case in ("unused", "unused, zeros", "bf16"):
        model = _Branchy() if case != "bf16" else _model().to(torch.bfloat16)
        ddp = DDP(model, find_unused_parameters=case != "bf16", bucket_cap_mb=0.01)
        opt = torch.optim.AdamW(model.parameters(), lr=0.01)
        state = ddp_hooks.register(ddp, optimizer=opt)
        factors = []
        for step in range(8):
            x = torch.randn(4, 8 if case != "bf16" else 20, generator=torch.Generator().manual_seed(step))
            opt.zero_grad(set_to_none=case != "unused, zeros")
            y = ddp(x, step % 2 == 0) if case != "bf16" else ddp(x.bfloat16()) - x[:, :1].bfloat16()
            (y.float().pow(2).mean() * 100.0).backward()
            opt.step()
            factors.append(state.mechanism.clipping.factor)
        out[case] = factors
    return out


def _through_dcp(rank: int) -> dict[str, object]:
    """A resume through torch.distributed.checkpoint as its docs write it (save the optimizer's
    state dict; a fresh optimizer's, the template, loaded from disk; set): the largest deviation
    from the run that went on, the step count and whether the clipping came back. Then the same
    checkpoint through a plain AdamW that trains on: its param groups, and the clipping a mode
    that loads the plain checkpoint has (the saved one is stale by then)."""
    import tempfile

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    def clipped(ddp: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
        for step in steps:
            opt.zero_grad()
            _loss(ddp, rank, step).backward()
            nn.utils.clip_grad_norm_(ddp.parameters(), 0.1)
            opt.step()

    def fresh() -> tuple[nn.Module, DDP, torch.optim.Optimizer, ddp_hooks.ThreePCState]:
        model = _model()
        ddp = DDP(model, bucket_cap_mb=0.01)
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
        return model, ddp, opt, ddp_hooks.register(ddp, optimizer=opt)

    model, ddp, opt, state = fresh()
    clipped(ddp, opt, range(6))
    folder = tempfile.mkdtemp()
    dcp.save({"optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=folder)
    weights, hook, clipping = copy.deepcopy(model.state_dict()), state.state_dict(), copy.deepcopy(
        state.mechanism.clipping)
    plain_checkpoint = copy.deepcopy(opt.state_dict())
    clipped(ddp, opt, range(6, 9))
    again, ddp2, opt2, state2 = fresh()
    again.load_state_dict(weights)
    template = {"optim": get_optimizer_state_dict(again, opt2)}
    dcp.load(template, checkpoint_id=folder)
    set_optimizer_state_dict(again, opt2, optim_state_dict=template["optim"])
    state2.load_state_dict(hook)
    out: dict[str, object] = {"restored": state2.mechanism.clipping == clipping}
    clipped(ddp2, opt2, range(6, 9))
    out["deviation"] = max(float((a - b).abs().max()) for a, b in zip(model.parameters(), again.parameters()))
    out["steps"] = sorted({float(s["step"]) for s in opt2.state.values()})

    plain_model = _model()
    plain = torch.optim.AdamW(plain_model.parameters(), lr=0.01)
    plain.load_state_dict(plain_checkpoint)
    for step in range(6, 8):
        plain.zero_grad()
        _loss(plain_model, rank, step).backward()
        plain.step()
    out["plain group keys"] = sorted(plain.param_groups[0])
    _, _, opt3, state3 = fresh()
    opt3.load_state_dict(plain.state_dict())
    out["clipping from the plain checkpoint"] = state3.mechanism.clipping
    return out


def _one_rank(rank: int, workers: int) -> dict:
    """Against torch's AdamW (warm-up, skipped steps, GradScaler), step hooks, closures, a plain
    AdamW checkpoint, the clipping the mode follows."""
    out = {"warm-up": _against_adamw(rank, 3, set()), "skips": _against_adamw(rank, 1, {0, 4}),
           "clipping": _clipping_followed(rank), "nothing rescaled": _nothing_rescaled(rank),
           "one cycle": _one_cycle(rank), "channels_last": _channels_last(rank), "steps": _skipped_and_stale(rank),
           "leaves the mode": _leaves_the_mode(rank), "accumulates": _accumulates(rank),
           "grad scaler": _with_grad_scaler(rank, True), "grad scaler untold": _with_grad_scaler(rank, False),
           "grad scaler fused": _with_grad_scaler(rank, True, fused=True),
           "dcp": _through_dcp(rank)}

    # the optimizer's step hooks run, as with torch's own step
    model = _model()
    ddp = DDP(model, bucket_cap_mb=0.01)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    ddp_hooks.register(ddp, "ef14", optimizer=opt, ratio=0.1)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    for step in range(3):
        opt.zero_grad()
        _loss(ddp, rank, step).backward()
        opt.step()
    out["hook calls"] = calls

    # opt.step(closure): the closure's backward sets the direction the step applies
    runs = []
    for with_closure in (True, False):
        model = _model()
        ddp = DDP(model, bucket_cap_mb=0.01)
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
        ddp_hooks.register(ddp, "ef14", optimizer=opt, ratio=0.1)
        losses = []
        for step in range(4):
            def closure(step: int = step) -> torch.Tensor:
                opt.zero_grad()
                loss = _loss(ddp, rank, step)
                loss.backward()
                return loss
            if with_closure:
                losses.append(float(opt.step(closure)))
            else:
                losses.append(float(closure().detach()))
                opt.step()
        runs.append((losses, [p.detach().clone() for p in model.parameters()]))
    out["closure"] = runs

    # a checkpoint of torch's AdamW (exp_avg_sq and all) loads: the step count continues, and
    # its exp_avg (converted) where the optimizer keeps the momentum (momentum=False)
    plain = _model()
    ref = torch.optim.AdamW(plain.parameters(), lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)
    for step in range(3):
        ref.zero_grad()
        _loss(plain, rank, step).backward()
        ref.step()
    for sends_momentum in (True, False):
        model = _model()
        model.load_state_dict(plain.state_dict())
        ddp = DDP(model, bucket_cap_mb=0.01)
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)
        state = _register_adam(ddp, opt, mechanism("ef14", ratio=0.1), sends_momentum)
        opt.load_state_dict(copy.deepcopy(ref.state_dict()))  # torch's load shares the step tensors
        loaded = [opt.state[p]["exp_avg"].clone() for p in model.parameters()]
        plain_state = [ref.state[p] for p in plain.parameters()]
        out["plain units"] = max(float((m * ((s["exp_avg_sq"] / (1 - 0.99 ** 3)).sqrt() + 1e-8) - s["exp_avg"])
                                       .abs().max() / float(s["exp_avg"].abs().max()))
                                 for m, s in zip(loaded, plain_state))
        before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        _loss(ddp, rank, 3).backward()
        opt.step()
        directions = state.directions()
        expected = [directions[id(p)].view_as(p) * (1 - 0.8 ** 4) if sends_momentum else
                    m.lerp(directions[id(p)].view_as(p), 0.2) for p, m in zip(model.parameters(), loaded)]
        out[f"plain checkpoint, momentum={sends_momentum}"] = {
            "steps": [float(opt.state[p]["step"]) for p in model.parameters()],
            "exp_avg": max(float((opt.state[p]["exp_avg"] - e).abs().max()) for p, e in zip(model.parameters(), expected)),
            "moved": all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))}
    return out


def _register_adam(ddp: DDP, opt: torch.optim.Optimizer, inner: Mechanism, sends_momentum: bool
                   ) -> ddp_hooks.ThreePCState:
    """``register(ddp, optimizer=opt)`` with ``AdamNormalized(inner, momentum=sends_momentum)``."""
    settings = adam_settings(opt)
    state = ddp_hooks.ThreePCState(AdamNormalized(inner, settings.betas, settings.eps, momentum=sends_momentum),
                                   model=ddp)
    ddp.register_comm_hook(state, ddp_hooks.threepc_hook)
    attach(opt, state)
    return state


def _channels_last(rank: int) -> float:
    """1 rank, "gd", beta1 = 0, a conv net in channels_last (DDP lays its gradients out in that
    order): the largest deviation from torch's AdamW after 4 steps."""
    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Tanh(), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.Linear(64, 1)
                             ).to(memory_format=torch.channels_last)
    model, plain = net(), net()
    ddp = DDP(model, bucket_cap_mb=0.01)
    kw = dict(lr=0.01, betas=(0.0, 0.99), weight_decay=0.1)
    opt, ref = torch.optim.AdamW(model.parameters(), **kw), torch.optim.AdamW(plain.parameters(), **kw)
    ddp_hooks.register(ddp, "gd", optimizer=opt)
    for step in range(4):
        x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(step)).to(memory_format=torch.channels_last)
        for m, o in ((ddp, opt), (plain, ref)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    return max(float((a - b).abs().max()) for a, b in zip(model.parameters(), plain.parameters()))


def _skipped_and_stale(rank: int) -> dict[str, str]:
    """A step before any backward leaves everything as it is; a step skipped on purpose
    (zero_grad, then the next backward) trains on; a step with no synchronised backward since
    the last step or zero_grad raises, naming why."""
    model = _model()
    ddp = DDP(model, bucket_cap_mb=0.01)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    ddp_hooks.register(ddp, optimizer=opt)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()  # no gradient at all: nothing to step, as torch's AdamW
    out = {"no gradient": "still" if all(torch.equal(a, b) for a, b in zip(before, model.parameters())) else "moved"}
    for step in range(4):
        opt.zero_grad()
        _loss(ddp, rank, step).backward()
        if step != 1:  # e.g. a loss spike
            opt.step()
    out["skipped"] = "trained"
    for case in ("twice", "no_sync only"):
        if case == "no_sync only":
            opt.zero_grad()
            with ddp.no_sync():
                _loss(ddp, rank, 9).backward()
        before = [p.detach().clone() for p in model.parameters()]
        try:
            opt.step()
            out[case] = "stepped"
        except RuntimeError as e:
            out[case] = str(e) if all(torch.equal(a, b) for a, b in zip(before, model.parameters())) else "moved"
    # a parameter the forward never uses, without find_unused_parameters: DDP never finishes the
    # reduction (it raises at the next forward), and the step says so first
    model = nn.ModuleList([_model(), nn.Linear(3, 3)])
    ddp = DDP(model, bucket_cap_mb=0.01)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    ddp_hooks.register(ddp, optimizer=opt)
    ddp.module.forward = ddp.module[0].forward
    _loss(ddp, rank, 0).backward()
    try:
        opt.step()
        out["unused parameter"] = "stepped"
    except RuntimeError as e:
        out["unused parameter"] = str(e)
    return out


def _one_cycle(rank: int) -> dict:
    """OneCycleLR cycling AdamW's beta1, made after ``register``: the hook's rounds read the
    optimizer's betas; its checkpoint loads into a run that made the scheduler first (other
    betas at ``register``), which then trains as the saved run does."""
    def build(scheduler_first: bool) -> tuple[nn.Module, DDP, torch.optim.Optimizer, object, ddp_hooks.ThreePCState]:
        model = _model()
        ddp = DDP(model, bucket_cap_mb=0.01)
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
        make = lambda: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=20)  # noqa: E731
        sched = make() if scheduler_first else None
        state = ddp_hooks.register(ddp, optimizer=opt)
        return model, ddp, opt, sched or make(), state

    def trained(steps: range) -> list[list[torch.Tensor]]:
        """The parameters after each step; ``read``: the hook's and the group's beta1 at each round."""
        params = []
        for step in steps:
            opt.zero_grad()
            _loss(ddp, rank, step).backward()
            read.append((state.mechanism.betas[0], opt.param_groups[0]["betas"][0]))
            opt.step()
            sched.step()
            params.append([p.detach().clone() for p in model.parameters()])
        return params

    model, ddp, opt, sched, state = build(False)
    read: list[tuple[float, float]] = []
    trained(range(6))
    saved = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "hook": state.state_dict()}, saved)
    saved_at = read[-1][1]
    continued = trained(range(6, 9))
    model, ddp, opt, sched, state = build(True)
    registered_with = state.mechanism.betas[0]
    checkpoint = torch.load(io.BytesIO(saved.getvalue()))
    model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["opt"])
    sched.load_state_dict(checkpoint["sched"])
    state.load_state_dict(checkpoint["hook"])
    resumed = trained(range(6, 9))
    return {"read": read, "registered with": registered_with, "saved at": saved_at,
            "same": all(torch.equal(a, b) for x, y in zip(continued, resumed) for a, b in zip(x, y))}


def _accumulates(rank: int) -> dict[str, str]:
    """Two micro-batches per step: both backward passes synchronised (the step must raise, on
    every rank), or the first under ``no_sync`` (it trains)."""
    out = {}
    for synced in (True, False):
        model = _model()
        ddp = DDP(model, bucket_cap_mb=0.01)
        opt = torch.optim.AdamW(model.parameters(), lr=0.01)
        ddp_hooks.register(ddp, optimizer=opt)
        try:
            for step in range(3):
                opt.zero_grad()
                if synced:
                    _loss(ddp, rank, 2 * step).backward()
                else:
                    with ddp.no_sync():
                        _loss(ddp, rank, 2 * step).backward()
                _loss(ddp, rank, 2 * step + 1).backward()
                opt.step()
            out["synced" if synced else "no_sync"] = "ok"
        except RuntimeError as e:
            out["synced" if synced else "no_sync"] = str(e)
    return out


def _leaves_the_mode(rank: int) -> dict[str, float]:
    """6 steps in the mode ("gd"), then the 7th in the mode and, from its optimizer's state_dict,
    in a plain torch AdamW without the hook: the relative difference of the two updates, with the
    state_dict as saved and with its exp_avg replaced by the mode's normalised momentum."""
    kw = dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)
    model = _model()
    ddp = DDP(model, bucket_cap_mb=0.01)
    opt = torch.optim.AdamW(model.parameters(), **kw)
    ddp_hooks.register(ddp, "gd", optimizer=opt)
    for step in range(6):
        opt.zero_grad()
        _loss(ddp, rank, step).backward()
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    _loss(ddp, rank, 6).backward()
    opt.step()
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    out = {}
    for variant in ("saved", "normalised exp_avg"):
        plain = _model()
        with torch.no_grad():
            for p, b in zip(plain.parameters(), before):
                p.copy_(b)
        ref = torch.optim.AdamW(plain.parameters(), **kw)
        state = copy.deepcopy(saved)
        if variant != "saved":
            for s in state["state"].values():
                s["exp_avg"] = s["threepc_exp_avg"]
        ref.load_state_dict(state)
        ref.zero_grad()
        _loss(plain, rank, 6).backward()
        ref.step()
        plain_moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(plain.parameters(), before)])
        out[variant] = float((moved - plain_moved).norm() / moved.norm())
    return out


@pytest.fixture(scope="module")
def one_rank() -> dict:
    return _succeeded(run_ranks(_one_rank, 1, timeout=120))[0]  # one spawn for the tests below


@pytest.mark.slow
def test_a_resume_through_torch_distributed_checkpoint_is_bit_for_bit(one_rank):
    """torch.distributed.checkpoint steps a fresh optimizer at lr 0 on zero gradients to build the
    template it loads into (the mode's step raised: no synchronised backward), loads only the keys
    the template has (the step count restarted when the template lacked them), and keeps only
    ``state`` and ``param_groups`` (the clipping, a top-level key, was lost). Not
    supported: ``flatten_optimizer_state_dict=True``, which rebuilds only the keys a fresh
    optimizer has (the clipping and the mode's own momentum are lost; the run continues)."""
    out = one_rank["dcp"]
    assert out["restored"] and out["deviation"] == 0.0 and out["steps"] == [9.0], out
    # a plain AdamW that loads the mode's checkpoint keeps torch's param groups, and a mode that
    # loads what it saved after training on does not take the clipping back (stale by then)
    assert not any(k.startswith("threepc") for k in out["plain group keys"]), out
    assert out["clipping from the plain checkpoint"] == Clipping(), out


@pytest.mark.slow
def test_warm_up_rounds_are_dense_adamw_rounds(one_rank):
    assert one_rank["warm-up"] < 1e-6, "warmup_steps=3 is not AdamW: the moments restarted at each dense round"


@pytest.mark.slow
def test_the_users_clipping_is_read_off_grad_through_a_median_relative_to_the_first_step(one_rank):
    seen = one_rank["clipping"]
    for _, returned, norm in seen[:6] + seen[9:]:  # one rank: the estimate is the gradient's norm
        assert returned == pytest.approx(norm, rel=1e-5), "clip_grad_norm_ sees the gradient's norm"
    c = [min(1.0, 0.25 / norm) for _, _, norm in seen[:6]] + [1.0] * 4
    assert max(c[:3]) < 0.5 and c[3] < 1e-3, "the test clips, and step 3 is a spike"
    for t, (factor, _, _) in enumerate(seen):
        assert factor == pytest.approx(statistics.median(c[max(0, t - 2):t + 1]) / c[0], rel=1e-5), t
    assert seen[3][0] > 0.5 * seen[2][0], "the spike does not shrink the next round"
    assert seen[-1][0] == pytest.approx(1.0 / c[0], rel=1e-5), "unclipped after a clipped first step"


@pytest.mark.slow
def test_unused_parameters_and_bf16_rounding_are_no_rescaling(one_rank):
    for case, factors in one_rank["nothing rescaled"].items():
        assert factors == [1.0] * len(factors), (case, factors)


@pytest.mark.slow
def test_skipped_steps_do_not_count_in_the_bias_corrections(one_rank):
    assert one_rank["skips"] < 1e-6, "after a skipped step the bias corrections count a round the moments never saw"


@pytest.mark.slow
def test_a_grad_scaler_the_hook_is_told_of_changes_nothing(one_rank):
    assert one_rank["grad scaler"] < 1e-6, one_rank["grad scaler"]
    assert one_rank["grad scaler fused"] < 1e-6, one_rank["grad scaler fused"]
    # untold, the hook normalises S grad: each change of S skews d_i until v_i catches up
    assert one_rank["grad scaler untold"] > 1e-4, one_rank["grad scaler untold"]


@pytest.mark.slow
def test_one_cycle_betas_are_followed_and_a_resume_in_another_order_is_bit_for_bit(one_rank):
    out = one_rank["one cycle"]
    assert all(hook == group for hook, group in out["read"]), out["read"]
    assert len({group for _, group in out["read"]}) > 2, "OneCycleLR did not move beta1"
    assert out["registered with"] != out["saved at"], "the resume registered with the saved betas: no test"
    assert out["same"], "the resumed run differs"


@pytest.mark.slow
def test_channels_last_parameters_step_as_torch_adamw(one_rank):
    assert one_rank["channels_last"] < 1e-6, one_rank["channels_last"]


@pytest.mark.slow
def test_a_skipped_step_trains_on_and_a_step_without_a_synchronised_backward_raises(one_rank):
    out = one_rank["steps"]
    assert out["no gradient"] == "still" and out["skipped"] == "trained", out
    for case in ("twice", "no_sync only"):
        assert "without a synchronised backward" in out[case], out
    assert "find_unused_parameters=True" in out["unused parameter"], out


@pytest.mark.slow
def test_the_optimizers_step_hooks_run(one_rank):
    assert one_rank["hook calls"] == ["pre", "post"] * 3, one_rank["hook calls"]


@pytest.mark.slow
def test_a_closure_sets_the_direction_its_step_applies(one_rank):
    (losses, params), (plain_losses, plain_params) = one_rank["closure"]
    assert losses == plain_losses and all(torch.equal(a, b) for a, b in zip(params, plain_params))


@pytest.mark.slow
@pytest.mark.parametrize("sends_momentum", [True, False])
def test_a_plain_adamw_checkpoint_loads_and_its_count_and_momentum_continue(one_rank, sends_momentum):
    """The step count continues; the plain exp_avg continues where the optimizer keeps the
    momentum, and the ranks' momentum restarts (bias-corrected, as the hook's moments) where they
    send it: exp_avg is then the agreed momentum's, g (1 - beta1^t)."""
    loaded = one_rank[f"plain checkpoint, momentum={sends_momentum}"]
    assert loaded["steps"] == [4.0] * len(loaded["steps"]) and loaded["moved"], loaded
    assert loaded["exp_avg"] < 1e-7, loaded
    assert one_rank["plain units"] < 1e-5, "the plain exp_avg becomes the normalised momentum of its step"


@pytest.mark.slow
def test_accumulating_over_synchronised_backward_passes_raises_naming_no_sync(one_rank):
    out = one_rank["accumulates"]
    assert out["no_sync"] == "ok", out
    assert "2 synchronised backward passes" in out["synced"] and "optimizer.zero_grad()" in out["synced"], out
    assert "every forward and backward before the last one inside `with ddp.no_sync():`" in out["synced"] \
        and "sum the losses into one backward" in out["synced"], out


@pytest.mark.slow
def test_the_modes_checkpoint_resumes_in_a_plain_adamw_with_the_step_the_mode_takes(one_rank):
    """The state_dict holds torch's AdamW state (exp_avg in gradient units, exp_avg_sq from the
    hook's second moment): a plain AdamW steps from it (no KeyError) about as the mode does (the
    two differ by how v moved in one round); the mode's own momentum there would be ~100x off."""
    left = one_rank["leaves the mode"]
    assert left["saved"] < 0.2, left
    assert left["normalised exp_avg"] > 10, left


# -- every kind of inner mechanism, on 2 gloo ranks -----------------------------------------------
KINDS = [("ef21", dict(ratio=0.1)), ("ef21_sgdm", dict(ratio=0.1)), ("clag", dict(ratio=0.1)), ("co3", {}),
         ("co3_2s", {}), ("gd", {}), ("ef14", dict(compressor="shared_topk", ratio=0.1)), ("onebit", {})]
RESUMED = ("clag", "co3_2s", "ef14")  # lazy; two-stage (owner memory s); aggregate shared state


def _build(rank: int, name: str, options: dict, saved: bytes | None = None
           ) -> tuple[nn.Module, DDP, torch.optim.Optimizer, ddp_hooks.ThreePCState]:
    model = _model()
    ddp = DDP(model, bucket_cap_mb=0.01)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    state = ddp_hooks.register(ddp, name, optimizer=opt, check_every=2, **options)
    if saved is not None:
        checkpoint = torch.load(io.BytesIO(saved))
        model.load_state_dict(checkpoint["model"])
        opt.load_state_dict(checkpoint["opt"])
        state.load_state_dict(checkpoint["hook"])
    return model, ddp, opt, state


def _train(ddp: DDP, opt: torch.optim.Optimizer, rank: int, steps: range) -> None:
    for step in steps:
        opt.zero_grad()
        _loss(ddp, rank, step % 3).backward()
        opt.step()


def _mechanisms(rank: int, workers: int) -> dict:
    out = {}
    for name, options in KINDS:
        model, ddp, opt, state = _build(rank, name, options)
        first = _eval(model)
        _train(ddp, opt, rank, range(5))
        saved = io.BytesIO()
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "hook": state.state_dict()}, saved)
        _train(ddp, opt, rank, range(5, 10))
        run = {"losses": (first, _eval(model)), "params": [p.detach().clone() for p in model.parameters()],
               "silent": state.stats.silent_rounds}
        if name in RESUMED:
            model, ddp, opt, state = _build(rank, name, options, saved.getvalue())
            _train(ddp, opt, rank, range(5, 10))
            run["resumed"] = [p.detach().clone() for p in model.parameters()]
        out[name] = run
    return out


@pytest.mark.slow
def test_two_ranks_every_kind_of_inner_mechanism_trains_identically_and_resumes_bit_for_bit():
    ranks = _succeeded(run_ranks(_mechanisms, 2, timeout=240))
    for name, _ in KINDS:
        mine, other = ranks[0][name], ranks[1][name]
        assert all(torch.equal(a, b) for a, b in zip(mine["params"], other["params"])), f"{name}: replicas differ"
        assert mine["losses"][1] < mine["losses"][0], (name, mine["losses"])
        if name in RESUMED:
            for r in ranks:
                assert all(torch.equal(a, b) for a, b in zip(r[name]["params"], r[name]["resumed"])), \
                    f"{name}: the resumed run differs"
    assert ranks[0]["clag"]["silent"] + ranks[1]["clag"]["silent"] > 0, "clag never stayed silent: not lazy here"


# -- DDP's options, param groups, frozen parameters, bf16, a warm-up (2 gloo ranks) ---------------
VARIANTS = ("several buckets", "bucket view", "static graph", "no_sync", "groups and frozen", "zeros", "bf16",
            "warm-up")


def _variant(rank: int, kind: str) -> dict:
    model = _model().to(torch.bfloat16) if kind == "bf16" else _model()
    if kind == "groups and frozen":
        model[2].weight.requires_grad_(False)
    ddp = DDP(model, bucket_cap_mb=0.0002 if kind == "several buckets" else 0.01,
              gradient_as_bucket_view=kind == "bucket view", static_graph=kind == "static graph")
    if kind == "groups and frozen":  # biases: their own lr (0: they stay) and no decay; model[2].weight: frozen
        biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
        weights = [p for n, p in model.named_parameters() if n.endswith("weight") and p.requires_grad]
        opt = torch.optim.AdamW([{"params": weights}, {"params": biases, "lr": 0.0, "weight_decay": 0.0}],
                                lr=0.01, weight_decay=0.1)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    state = ddp_hooks.register(ddp, "ef14", optimizer=opt, ratio=0.1, check_every=2,
                               warmup_steps=3 if kind == "warm-up" else 1)
    initial, first = [p.detach().clone() for p in model.parameters()], _eval(copy.deepcopy(model).float())
    for step in range(8):
        opt.zero_grad(set_to_none=kind != "zeros")
        if kind == "no_sync":  # two micro-batches, the hook runs once on their sum
            with ddp.no_sync():
                _loss(ddp, rank, 2 * (step % 3)).backward()
            _loss(ddp, rank, 2 * (step % 3) + 1).backward()
        elif kind == "bf16":
            x = torch.randn(16, 20, generator=torch.Generator().manual_seed(1000 * rank + step % 3))
            ((ddp(x.bfloat16()).float() - x[:, :1]) ** 2).mean().backward()
        else:
            _loss(ddp, rank, step % 3).backward()
        opt.step()
    return {"params": [p.detach().clone() for p in model.parameters()], "initial": initial,
            "losses": (first, _eval(copy.deepcopy(model).float())), "buckets": len(state.buckets),
            "dtypes": {str(s["exp_avg"].dtype) for s in opt.state.values()},
            "frozen": [n for n, p in model.named_parameters() if not p.requires_grad]}


def _variants(rank: int, workers: int) -> dict:
    return {kind: _variant(rank, kind) for kind in VARIANTS}


@pytest.mark.slow
def test_two_ranks_ddp_options_param_groups_frozen_parameters_bf16_and_warm_up():
    ranks = _succeeded(run_ranks(_variants, 2, timeout=240))
    for kind in VARIANTS:
        mine, other = ranks[0][kind], ranks[1][kind]
        assert all(torch.equal(a, b) for a, b in zip(mine["params"], other["params"])), f"{kind}: replicas differ"
        assert mine["losses"][1] < mine["losses"][0], (kind, mine["losses"])
    assert ranks[0]["several buckets"]["buckets"] >= 3, ranks[0]["several buckets"]["buckets"]
    assert ranks[0]["bf16"]["dtypes"] == {"torch.bfloat16"}, "exp_avg in the parameters' dtype, as torch's AdamW"
    assert all(p.dtype == torch.bfloat16 for p in ranks[0]["bf16"]["params"])
    grouped = ranks[0]["groups and frozen"]
    names = [n for n, _ in _model().named_parameters()]
    for name, before, after in zip(names, grouped["initial"], grouped["params"]):
        stays = name.endswith("bias") or name in grouped["frozen"]  # lr 0, or not trained at all
        assert torch.equal(before, after) == stays, name


def _mismatched(rank: int, workers: int) -> str:
    """Rank 1 builds its AdamW with another beta2: the configuration check, not a hang."""
    model = _model()
    ddp = DDP(model, bucket_cap_mb=0.01)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.9, 0.999 if rank == 0 else 0.99))
    ddp_hooks.register(ddp, "ef14", optimizer=opt, ratio=0.1)
    try:
        for step in range(2):
            opt.zero_grad()
            _loss(ddp, rank, step).backward()
            opt.step()
    except RuntimeError as e:
        return str(e)
    return "trained"


def _unreadable_and_exported(rank: int, workers: int) -> dict:
    """Rank 1's param groups get other betas before the first round (the configuration check
    reads them live); and, on a healthy pair, what the default exports as exp_avg after 4 steps."""
    out = {}
    model = _model()
    ddp = DDP(model, bucket_cap_mb=0.01)
    opt = torch.optim.AdamW([{"params": model[0].parameters()}, {"params": [*model[2:].parameters()]}], lr=0.01)
    ddp_hooks.register(ddp, optimizer=opt)
    if rank == 1:
        opt.param_groups[1]["betas"] = (0.8, 0.999)
    try:
        _loss(ddp, rank, 0).backward()
        out["unreadable"] = "trained"
    except RuntimeError as e:
        out["unreadable"] = str(e)
    model = _model()
    ddp = DDP(model, bucket_cap_mb=0.01)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)
    state = ddp_hooks.register(ddp, optimizer=opt)
    _train(ddp, opt, rank, range(4))
    exported, memory, g = opt.state_dict()["state"], state.parameter_memory(), state.directions()
    worst_own, nearest_g = 0.0, float("inf")
    for i, p in enumerate(model.parameters()):
        s, fields = exported[i], memory[id(p)]
        m_hat = s["exp_avg"] / (1 - 0.8 ** 4) / ((s["exp_avg_sq"] / (1 - 0.99 ** 4)).sqrt() + 1e-8)
        own = fields["adam_u"].view_as(p) / (1 - 0.8 ** 4)  # every coordinate saw 4 rounds
        worst_own = max(worst_own, float((m_hat - own).abs().max() / own.abs().max()))
        nearest_g = min(nearest_g, float((m_hat - g[id(p)].view_as(p)).abs().max() / own.abs().max()))
    out["exported"] = (worst_own, nearest_g)
    return out


def test_live_betas_unreadable_on_one_rank_raise_on_every_rank_and_exp_avg_is_the_ranks_own_momentum():
    ranks = _succeeded(run_ranks(_unreadable_and_exported, 2, timeout=120))
    for r in ranks:
        assert "configuration differs" in r["unreadable"] and "unreadable on this rank" in r["unreadable"], r
        own, aggregate = r["exported"]
        assert own < 1e-5, "a plain AdamW's m^ / (sqrt(v^) + eps) is this rank's momentum u^"
        assert aggregate > 1e-2, "not the round's compressed aggregate"


@pytest.mark.slow
def test_ranks_whose_optimizers_differ_in_betas_all_raise_instead_of_hanging():
    for message in _succeeded(run_ranks(_mismatched, 2, timeout=60)):
        assert "ThreePCError" in message and "configuration differs" in message, message
        assert "betas=(0.9, 0.999)" in message and "betas=(0.9, 0.99)" in message, message


def _edits_kept(rank: int, workers: int) -> dict[str, dict[str, float]]:
    """Two layers; between backward and step the user prunes half of ``a.weight`` and one row of
    the 200 of ``b.weight`` (zeros in their ``.grad``: the second changes b's gradient norm by a
    fraction of a percent), with and without ``clip_grad_norm_``: how far the masked entries
    moved, for the Adam mode and for ef14_mc told its SGD."""
    out = {}
    for name, make, told in (("adam", lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.0), None),
                             ("ef14_mc", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), "ef14_mc")):
        for clip in (False, True):
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 200))
            ddp = DDP(model, bucket_cap_mb=0.0001)
            opt = make(model.parameters())
            if told is None:
                ddp_hooks.register(ddp, optimizer=opt)
            else:
                ddp_hooks.register(ddp, told, compressor="topk8", ratio=0.5, kept=1.0, optimizer=opt)
            prune = torch.arange(48).reshape(8, 6) % 2 == 0
            with torch.no_grad():
                model[0].weight[prune] = 0.0
            row = model[1].weight.detach()[7].clone()
            g = torch.Generator().manual_seed(rank)
            for _ in range(6):
                x, y = torch.randn(16, 6, generator=g), torch.randint(0, 200, (16,), generator=g)
                opt.zero_grad()
                nn.functional.cross_entropy(ddp(x), y).backward()
                model[0].weight.grad[prune] = 0.0
                model[1].weight.grad[7] = 0.0
                if clip:
                    nn.utils.clip_grad_norm_(model.parameters(), 0.1)
                opt.step()
            out[f"{name}, clip {clip}"] = {"pruned": float(model[0].weight.detach()[prune].abs().max()),
                                           "row": float((model[1].weight.detach()[7] - row).abs().max()),
                                           "trained": float(model[0].bias.detach().abs().max())}
    return out


class _Branches(nn.Module):
    """``a`` always, ``b`` only when asked: unused on the other steps (find_unused_parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 3), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor, use_b: bool) -> torch.Tensor:
        return self.a(x) + self.b(x) if use_b else self.a(x)


def _unused_moves(rank: int, workers: int) -> float:
    """How far ``b`` moved on a step no rank used it, after steps that did, in the Adam mode with
    ``zero_grad(set_to_none=False)`` (DDP leaves b's .grad all zeros) and no weight decay."""
    torch.manual_seed(0)
    model = _Branches()
    ddp = DDP(model, find_unused_parameters=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    ddp_hooks.register(ddp, optimizer=opt)
    g = torch.Generator().manual_seed(rank)
    for step in range(5):
        opt.zero_grad(set_to_none=False)
        x = torch.randn(8, 6, generator=g)
        ddp(x, use_b=step < 4).square().mean().backward()
        before = model.b.weight.detach().clone()
        opt.step()
    return float((model.b.weight.detach() - before).abs().max())


@pytest.mark.slow
def test_an_unused_parameter_steps_on_its_momentum_as_adamw_does():
    """DDP leaves an unused parameter's .grad all zeros (set_to_none=False): no edit of the user's,
    so the Adam mode steps it on the ranks' momentum, as torch's AdamW steps a zero gradient (a
    first version of the masking froze it)."""
    assert all(moved > 1e-4 for moved in run_ranks(_unused_moves, 2, timeout=120))


@pytest.mark.slow
def test_zeros_the_user_writes_into_grad_are_kept_by_the_step():
    """A pruning mask in ``.grad`` after backward, a large one and one row of 200: the Adam mode's
    step (which applies the hook's direction, not .grad) and ef14_mc told its SGD keep those
    entries still, as torch's optimizers do (a review found them moved by about lr a step), and
    train the rest."""
    for rank in run_ranks(_edits_kept, 2, timeout=180):
        for case, moved in rank.items():
            assert moved["pruned"] == 0.0 and moved["row"] == 0.0 and moved["trained"] > 0.0, (case, moved)


def _dropped_warnings(rank: int, workers: int) -> dict[str, list[str]]:
    """The warnings of a normal loop (zero_grad, backward, step), then of a GAN's generator step
    through this model (forward and backward under no_sync, zero_grad, no step), then of a
    backward thrown away (backward, zero_grad, no step) twice, for the Adam mode and ef14_mc told
    its SGD."""
    import warnings

    out = {}
    for name, make, told in (("adam", lambda p: torch.optim.AdamW(p, lr=1e-3), None),
                             ("ef14_mc", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), "ef14_mc")):
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        ddp = DDP(model)
        opt = make(model.parameters())
        ddp_hooks.register(ddp, told, optimizer=opt) if told else ddp_hooks.register(ddp, optimizer=opt)
        x = torch.randn(8, 4)
        with warnings.catch_warnings(record=True) as normal:
            warnings.simplefilter("always")
            for _ in range(3):
                opt.zero_grad()
                ddp(x).square().mean().backward()
                opt.step()
            opt.zero_grad()
            for _ in range(2):  # DDP reads no_sync at the forward: the gradients stay this rank's, no round
                with ddp.no_sync():
                    ddp(x).square().mean().backward()
                opt.zero_grad()
        with warnings.catch_warnings(record=True) as thrown:
            warnings.simplefilter("always")
            for _ in range(2):
                ddp(x).square().mean().backward()
                opt.zero_grad()
        out[name] = [[str(w.message) for w in normal if "threepc" in str(w.message)],
                     [str(w.message) for w in thrown if "threepc" in str(w.message)]]
    return out


def test_a_backward_thrown_away_by_zero_grad_is_warned_about_once():
    """A synchronised backward whose gradients zero_grad() clears without a step entered the
    hook's memories: told the optimizer, the hook says so once, naming no_sync around the forward
    and the backward (which the GAN's generator step here uses, unwarned)."""
    for name, (normal, thrown) in run_ranks(_dropped_warnings, 2, timeout=120)[0].items():
        assert normal == [], (name, normal)
        assert len(thrown) == 1 and "forward and backward under `with ddp.no_sync():`" in thrown[0], (name, thrown)


def test_told_an_adamw_an_ef14_carries_its_error_by_the_first_param_groups_rate():
    """The mode's EF14 keeps its error in update units across the AdamW's learning-rate changes
    (``EF14.carry``): each worker reads the rate every round, the spawned ones included."""
    x = nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([x], lr=1e-3)
    mode = normalized(EF14(TopK(k=1)), adam_settings(opt), opt)
    worker = mode.spawn().inner
    assert worker.rate() == 1e-3
    worker.init(torch.randn(8))
    opt.param_groups[0]["lr"] = 2.5e-4  # as a scheduler sets it
    assert worker.carry() == 4.0
    untold = normalized(GD(), adam_settings(opt), opt)  # a mechanism without an error: nothing to carry
    assert not hasattr(untold.inner, "rate")
