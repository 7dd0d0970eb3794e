"""Every mechanism against its definition: the 3PC inequality with its (A, B), the invariant
g = (1/n) sum_i g_i, payloads that match their specs, and the Theorem-1 stepsize."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compressors import (CLAG, EF21, EF21SGDM, GD, LAG, MARINA, EF21Plus, PackedTopK, Payload, PermK, RandK, Round,
                         ScaledSign, ThreePCv1, ThreePCv2, ThreePCv3, ThreePCv4, ThreePCv5, TopK)
from compressors.sim import theory
from compressors.sim.simulation import Cluster
from ddp_hooks import wire

D = 24


def three_pcs():
    """Every 3PC mechanism, and whether it is randomised."""
    top, rand = TopK(k=4), RandK(k=6)
    return [
        (GD(), False), (EF21(top), False), (EF21Plus(top), False), (EF21SGDM(top, eta=1.0), False),
        (LAG(zeta=0.5), False), (CLAG(top, zeta=2.0), False), (CLAG(top, zeta=0.0), False),
        (ThreePCv1(top), False), (ThreePCv2(top, rand), True), (ThreePCv3(CLAG(TopK(k=2), 1.0), top), False),
        (ThreePCv4(top, TopK(k=2)), False), (ThreePCv5(top, p=0.3), True), (MARINA(rand, p=0.2), True),
        (MARINA(PermK(), p=0.2), True),
    ]


def apply(mechanism, h, y, x, t):
    """C_{h,y}(x) as computed by one worker (worker 1 of 3) at round t."""
    worker = mechanism.spawn()
    worker.memory = worker.setup(h.clone())
    if hasattr(worker.memory, "y"):
        worker.memory.y = y.clone()
    payload = worker.step(x, Round(t, 1, 3))
    return worker.memory.g_i if hasattr(worker.memory, "g_i") else payload.parts["dense"]  # GD keeps no memory


def vectors(seed, kind):
    g = torch.Generator().manual_seed(seed)
    h, y, x = (torch.randn(D, generator=g) for _ in range(3))
    if kind == "h=y":
        h = y.clone()
    elif kind == "x=y":
        x = y.clone()
    elif kind == "zeros":
        h = torch.zeros(D)
    elif kind == "ties":
        h, y, x = torch.zeros(D), torch.zeros(D), torch.ones(D)
    elif kind == "huge":
        h, y, x = h * 1e15, y * 1e15, x * 1e15
    elif kind == "tiny":
        h, y, x = h * 1e-15, y * 1e-15, x * 1e-15
    return h, y, x


@pytest.mark.parametrize("mechanism, randomised", three_pcs(), ids=lambda m: repr(m) if not isinstance(m, bool) else "")
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(["random", "h=y", "x=y", "zeros", "ties", "huge", "tiny"]))
@settings(max_examples=25, deadline=None)
def test_the_3pc_inequality_holds(mechanism, randomised, seed, kind):
    h, y, x = vectors(seed, kind)
    a, b = mechanism.constants(D, workers=3)
    assert 0 < a <= 1 and b >= 0
    bound = (1 - a) * float((h - y).double().square().sum()) + b * float((x - y).double().square().sum())
    draws = 300 if randomised else 1
    error = sum(float((apply(mechanism, h, y, x, seed + t) - x).double().square().sum()) for t in range(draws)) / draws
    slack = 0.15 if randomised else 1e-5  # Monte Carlo error of the mean / fp32 rounding
    assert error <= bound * (1 + slack) + 1e-6 * float(x.double().square().sum()) + 1e-300


@pytest.mark.parametrize("mechanism, randomised", three_pcs(), ids=lambda m: repr(m) if not isinstance(m, bool) else "")
def test_the_aggregate_is_the_mean_of_the_worker_estimates(mechanism, randomised):
    n = 4
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(D, generator=g) for _ in range(n)]
    cluster = Cluster(mechanism, n)
    cluster.init(grads)
    for _ in range(30):
        grads = [v + 0.3 * torch.randn(D, generator=g) for v in grads]
        cluster.step(grads)
        if hasattr(cluster.workers[0].memory, "g_i"):
            mean = torch.stack([w.memory.g_i for w in cluster.workers]).mean(0)
        else:  # GD: g_i is the gradient itself
            mean = torch.stack(grads).mean(0)
        assert torch.allclose(cluster.g, mean, atol=1e-5)


HOOKABLE = [GD(), EF21(TopK(k=3)), EF21Plus(TopK(k=3)), ThreePCv2(TopK(k=3), RandK(k=3)),
            ThreePCv2(TopK(k=3), RandK(k=3, shared=True)), ThreePCv4(TopK(k=3), TopK(k=2)),
            ThreePCv5(TopK(k=3), p=0.5), MARINA(RandK(k=3), p=0.5), MARINA(PermK(), p=0.5)]


@pytest.mark.parametrize("mechanism", HOOKABLE, ids=repr)
def test_payloads_match_their_specs_round_after_round(mechanism):
    n = 3
    cluster = Cluster(mechanism, n)
    payloads = cluster.init([torch.randn(D) for _ in range(n)])
    for p in payloads:
        wire.pack(p, mechanism.init_spec(D))
    for t in range(1, 12):
        payloads = cluster.step([torch.randn(D) for _ in range(n)])
        for i, p in enumerate(payloads):
            spec = mechanism.spec(D, Round(t, i, n))
            assert wire.unpack(wire.pack(p, spec), spec, D).parts.keys() == p.parts.keys()


def test_shared_coin_rounds_are_dense_on_every_worker_at_once():
    m = ThreePCv5(TopK(k=2), p=0.5, seed=4)
    coins = [[m.dense(Round(t, i, 4)) for i in range(4)] for t in range(40)]
    assert all(len(set(c)) == 1 for c in coins) and 5 < sum(c[0] for c in coins) < 35


def test_constants_of_the_papers():
    alpha = 0.25
    root = math.sqrt(1 - alpha)
    assert EF21(TopK(k=6)).constants(D) == pytest.approx((1 - root, 0.75 / (1 - root)))
    assert LAG(zeta=3.0).constants(D) == (1.0, 3.0)
    assert CLAG(TopK(k=6), zeta=100.0).constants(D) == pytest.approx((1 - root, 100.0))
    assert MARINA(RandK(k=6), p=0.2).constants(D) == pytest.approx((0.2, 0.8 * 3.0))
    assert ThreePCv2(TopK(k=6), RandK(k=6)).constants(D) == pytest.approx((0.25, 0.75 * 3.0))
    with pytest.raises(ValueError, match="not a three-point compressor"):
        theory.constants(__import__("compressors").EF14(TopK(k=1)), D)


def test_theorem1_stepsize():
    m = EF21(TopK(k=6))
    a, b = m.constants(D)
    assert theory.stepsize(m, D, 2.0, 3.0) == pytest.approx(1 / (2.0 + 3.0 * math.sqrt(b / a)))
    assert theory.stepsize(GD(), D, 2.0, 3.0) == pytest.approx(0.5)


def test_ef21_plus_needs_a_deterministic_compressor():
    with pytest.raises(ValueError, match="deterministic"):
        EF21Plus(RandK(k=2))


@pytest.mark.parametrize("compressor", [TopK(k=5), PackedTopK(0.2), ScaledSign(8)], ids=repr)
@pytest.mark.parametrize("seed", range(6))
def test_ef21_plus_keeps_the_nearer_of_c_x_and_h_plus_c_x_minus_h(compressor, seed):
    """EF21+'s definition, computed densely: b = C(x), m = h + C(x - h); the step keeps b when
    ||x - b|| <= ||x - m|| (exact float64 norms; near-ties, where the two roundings may disagree,
    are skipped), sends the matching payload and flag, and its new g_i equals the kept vector."""
    gen = torch.Generator().manual_seed(seed)
    h, x = torch.randn(D, generator=gen), torch.randn(D, generator=gen)
    x = h + 0.1 * x if seed % 2 else 3.0 * x  # near h (m wins) or far from it (b wins)
    worker = EF21Plus(compressor)
    worker.init(h.clone())
    b = compressor.decompress(compressor.compress(x))
    m = h + compressor.decompress(compressor.compress(x - h))
    to_b, to_m = float((x.double() - b.double()).square().sum()), float((x.double() - m.double()).square().sum())
    payload = worker.step(x)
    if abs(to_b - to_m) <= 1e-6 * max(to_b, to_m):
        pytest.skip("a near-tie")
    reset = to_b <= to_m
    assert int(payload.parts["flag"][0]) == reset
    torch.testing.assert_close(worker.memory.g_i, b if reset else m, rtol=0, atol=1e-6)
    sent = compressor.decompress(Payload({k: t for k, t in payload.parts.items() if k != "flag"}, D))
    torch.testing.assert_close(sent, compressor.decompress(compressor.compress(x if reset else x - h)), rtol=0, atol=0)
