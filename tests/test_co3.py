"""CO3 and its compressor: payloads, coded size against entropy, error feedback with decay."""
from __future__ import annotations

import pytest
import torch

import ddp_hooks
from compressors import CO3, FloatQuantizer, Round
from compressors.codecs.huffman import entropy_bits
from ddp_hooks import wire

CONFIGS = [dict(fmt=f, coder=c, scale=s, rounding=r) for f in ("fp8-152", "fp8-143-b10", "fp4-121")
           for c in ("none", "huffman", "rans", "empirical", "rans_empirical") for s in ("max", "gennorm")
           for r in ("nearest", "stochastic")]


def gradient(n: int = 50_000, seed: int = 0) -> torch.Tensor:
    """Heavy-tailed values with a spike of exact zeros, like a ReLU network's gradient."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.rand(n, generator=g) ** 3
    return x * (torch.rand(n, generator=g) < 0.7)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(c.values()))
def test_quantizer_payload_matches_its_spec_and_decodes_to_what_the_sender_kept(config):
    q, x = FloatQuantizer(**config), gradient(50_001)  # odd: fp4 model codes travel in pairs
    rnd = Round(3, 1, 4)
    payload, kept = q.encode(x, rnd)
    spec = q.spec(x.numel(), rnd)
    assert [p.name for p in spec] == list(payload.parts)
    for part in spec:
        t = payload.parts[part.name]
        assert t.dtype == part.dtype and (part.numel is None or t.numel() == part.numel)
    back = q.decompress(wire.unpack(wire.pack(payload, spec), spec, x.numel()), rnd)
    assert torch.equal(back, kept)
    assert (kept - x).norm() < 0.5 * x.norm()


@pytest.mark.parametrize("fmt", ["fp8-152", "fp8-143", "fp4-121"])
def test_empirical_huffman_is_within_gallagers_bound_of_the_entropy(fmt):
    """Huffman's redundancy is below p_max + 0.086 bits per symbol (Gallager 1978); with 8-bit
    codes that is within 2% of the entropy, while 4-bit codes dominated by zero pay up to 1 bit."""
    q, x = FloatQuantizer(fmt, coder="empirical"), gradient(200_000)
    payload = q.encode(x)[0]
    codes = q.codes(payload)
    entropy = entropy_bits(codes, q.fmt.codes)
    p_max = float(torch.bincount(codes.long()).max()) / x.numel()
    coded = payload.bits()["bytes"] / x.numel()
    assert entropy <= coded <= entropy + p_max + 0.0861 + 8 / x.numel()
    if q.fmt.bits == 8:
        assert coded <= 1.02 * entropy
    assert coded < q.fmt.bits  # beats fixed-width codes


def test_model_huffman_beats_fixed_width_codes():
    x = gradient(200_000)
    fixed = FloatQuantizer("fp8-152").compress(x).total_bits()
    modelled = FloatQuantizer("fp8-152", coder="huffman", scale="gennorm").compress(x).total_bits()
    assert modelled < 0.85 * fixed


@pytest.mark.parametrize("fmt", ["fp8-152", "fp8-143", "fp4-121"])
def test_rans_spends_the_models_bits_where_huffman_rounds_them_up(fmt):
    """rANS and Huffman code the same codes with the same GenNorm model: rANS's stream is the
    model's cross entropy sum_i log2(M / f_{s_i}) plus the 8-byte final state and < 0.5% overhead,
    and never longer than Huffman's (whose lengths are the model's -log2 p rounded)."""
    x = gradient(200_001)
    huffman, rans = (FloatQuantizer(fmt, coder=c, scale="gennorm") for c in ("huffman", "rans"))
    (h, kept_h), (r, kept_r) = huffman.encode(x), rans.encode(x)
    assert torch.equal(kept_r, kept_h) and torch.equal(r.parts["model"], h.parts["model"])
    assert torch.equal(rans.codes(r), huffman.codes(h))
    ideal = rans.table(r).ideal_bits(rans.symbols(rans.codes(r)))
    assert ideal <= r.bits()["bytes"] <= 1.005 * ideal + 64
    assert r.bits()["bytes"] <= h.bits()["bytes"]


def test_quantizer_of_an_all_zero_tensor():
    for coder in ("none", "huffman", "rans", "empirical", "rans_empirical"):
        q = FloatQuantizer("fp4-121", coder=coder, scale="gennorm")
        payload, kept = q.encode(torch.zeros(1000))
        assert torch.equal(q.decompress(payload), torch.zeros(1000)) and torch.equal(kept, torch.zeros(1000))


@pytest.mark.parametrize("config", [c for c in CONFIGS if c["rounding"] == "nearest"],
                         ids=lambda c: "-".join(c.values()))
def test_quantizer_of_finite_extremes_stays_finite_and_decodes_to_what_it_kept(config):
    """Values far below fp32's normal range (the scale of max |x| / max code was 0 or subnormal:
    "non-finite values", or 8% saturation) and near its top (a GenNorm scale whose largest code
    overflowed fp32 to inf) encode, and nothing saturates above the largest |x|."""
    q = FloatQuantizer(**config)
    for x in (torch.tensor([1e-41, -3e-42, 0.0, 5e-43]), torch.tensor([1e-40, 2e-41, -7e-41]),
              torch.tensor([3.4e38, -1.0, 2.0, -1e30])):
        payload, kept = q.encode(x)
        assert bool(kept.isfinite().all()), (x, kept)
        assert torch.equal(q.decompress(payload), kept)
        assert float((kept - x).abs().max()) <= float(x.abs().max()), (x, kept)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="non-finite values"):
            q.encode(torch.tensor([bad, 1.0]))


@pytest.mark.parametrize("fmt,coder", [("fp4-121", "rans"), ("fp4-121", "rans_empirical"),
                                       ("fp8-152", "rans_empirical")])
def test_co3_with_rans_decodes_to_what_huffman_decodes(fmt, coder):
    """The coder is lossless: over several error-feedback steps both workers send the same q_i
    and keep the same memory; only the bytes differ."""
    workers = [CO3(fmt, gamma=0.7, coder=c) for c in ("huffman", coder)]
    for w in workers:
        w.init(torch.zeros(6001))
    for t in range(1, 6):
        grad = gradient(6001, seed=t)
        sent = [w.compressor.decompress(w.step(grad.clone(), Round(t)), Round(t)) for w in workers]
        assert torch.equal(sent[0], sent[1])
        assert torch.equal(workers[0].memory.e_i, workers[1].memory.e_i)


def test_co3_with_gamma_one_is_classical_error_feedback():
    """sum_t q_t + e_T = sum_t grad_t when gamma = 1 (the error telescopes)."""
    worker = CO3("fp4-121", gamma=1.0, coder="empirical", scale="max")
    grads = [gradient(5000, seed) for seed in range(20)]
    worker.init(torch.zeros(5000))
    sent = torch.zeros(5000, dtype=torch.float64)
    for t, grad in enumerate(grads, start=1):
        sent += worker.compressor.decompress(worker.step(grad, Round(t)), Round(t)).double()
    total = torch.stack(grads).double().sum(0)
    torch.testing.assert_close(sent + worker.memory.e_i.double(), total, atol=1e-4, rtol=1e-5)


def test_co3_decays_the_error_memory():
    worker = CO3("fp4-121", gamma=0.5, scale="max")
    worker.init(torch.zeros(4000))
    first = gradient(4000, 1)
    q1 = worker.compressor.decompress(worker.step(first))
    e1 = worker.memory.e_i.clone()
    torch.testing.assert_close(e1, first - q1)
    second = gradient(4000, 2)
    q2 = worker.compressor.decompress(worker.step(second))
    torch.testing.assert_close(worker.memory.e_i, second + 0.5 * e1 - q2)


def test_co3_rejects_non_finite_gradients_without_touching_its_memory():
    worker = CO3()
    worker.init(torch.zeros(100))
    worker.step(gradient(100))
    before = worker.memory.e_i.clone()
    bad = gradient(100)
    bad[3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        worker.step(bad)
    assert torch.equal(worker.memory.e_i, before)


def test_co3_options_are_checked_and_registered():
    with pytest.raises(ValueError, match="gamma"):
        CO3(gamma=0.0)
    with pytest.raises(ValueError, match="coder='zip'"):
        CO3(coder="zip")
    m = ddp_hooks.mechanism("co3", fmt="fp4-121", gamma=1.0, coder="empirical")
    assert isinstance(m, CO3) and m.gamma == 1.0 and m.compressor.fmt.bits == 4
    for coder in ("rans", "rans_empirical"):
        m = ddp_hooks.mechanism("co3", fmt="fp8-143", coder=coder)
        assert isinstance(m, CO3) and m.compressor.coder == coder
