"""DDP <-> simulation parity: every mechanism that runs as a hook computes, on real gloo ranks,
exactly the iterates and the bits of the simulation harness (Alg. 1 of the 3PC paper).

Each of n = 2 and 4 ranks holds one shard of a logistic problem (``FiniteSum`` on 1,200 a9a
rows) as ``ddp_hooks.harness.WorkerLoss`` and runs 60 DDP steps with the hook. The
harness runs the same mechanism with the same n, seeds and stepsize. With
``ThreePCState(reproducible=True)`` (rank-order sums instead of all_reduce, whose reduction order
is the collective's) and one thread on both sides, the iterates agree bit for bit; payload bits
agree exactly (DDP's header and padding bytes
come on top and are checked apart), and lazy mechanisms must both skip and upload.
"""
from __future__ import annotations

from functools import partial

import pytest
import torch

from compressors import Round
from compressors.mechanisms.registry import build
from compressors.sim.simulation import run
from ddp_hooks.harness import problem, run_ddp

pytestmark = pytest.mark.slow

STEPS = 60
ROWS = 1200
K = 12  # of d = 123

# case -> (registry name, options, stepsize in units of 1/L_-): every DDP entry of the registry, and
# the compressor choices that change how payloads travel (shared supports: summable values)
CASES = {
    "gd": ("gd", {}, 1.0),
    "ef14": ("ef14", {"k": K}, 0.5),
    "ef14_shared_topk": ("ef14", {"k": 2 * K, "compressor": "shared_topk", "seed": 9}, 0.5),
    "ef14_sign": ("ef14", {"compressor": "sign"}, 0.5),
    "ef14_sign_window": ("ef14", {"compressor": "sign", "fraction": 0.75}, 0.5),
    "ef14_mc": ("ef14_mc", {"k": K, "momentum": 0.5, "kept": 0.5}, 0.5),
    "ef14_mc_packed": ("ef14_mc", {"k": 2 * K, "compressor": "topk8", "momentum": 0.5}, 0.5),
    "ef21": ("ef21", {"k": K}, 0.5),
    "ef21_randk_shared": ("ef21", {"k": K, "compressor": "randk_shared", "seed": 7}, 0.5),
    "ef21_shared_topk": ("ef21", {"k": 2 * K, "compressor": "shared_topk", "seed": 7}, 0.5),
    "ef21plus": ("ef21plus", {"k": K}, 0.5),
    "ef21_sgdm": ("ef21_sgdm", {"k": K, "eta": 0.5}, 0.5),
    "lag": ("lag", {"zeta": 4.0}, 1.0),
    "lagwk": ("lagwk", {"xi": 1.0}, 1.0),
    "clag": ("clag", {"k": K, "zeta": 4.0}, 0.5),
    "clag_randk_shared": ("clag", {"k": 3 * K, "zeta": 4.0, "compressor": "randk_shared", "seed": 8}, 0.5),
    "3pcv2": ("3pcv2", {"k": K, "seed": 5}, 0.3),
    "3pcv4": ("3pcv4", {"k": K, "k2": K // 2}, 0.5),
    "3pcv5": ("3pcv5", {"k": K, "p": 0.2, "seed": 3}, 0.5),
    "marina_randk": ("marina", {"k": 3 * K, "p": 0.2, "seed": 2}, 0.2),
    "marina_randk_shared": ("marina", {"k": 3 * K, "q": "randk_shared", "p": 0.2, "seed": 2}, 0.2),
    "marina_permk": ("marina", {"q": "permk", "p": 0.2, "seed": 1}, 0.2),
    "co3_fp8_huffman": ("co3", {"fmt": "fp8-152", "gamma": 0.7}, 0.5),
    "co3_fp4_huffman_pairs": ("co3", {"fmt": "fp4-121", "gamma": 0.7}, 0.5),
    "co3_fp4_stochastic": ("co3", {"fmt": "fp4-121", "gamma": 1.0, "coder": "empirical", "scale": "max",
                                   "rounding": "stochastic", "seed": 4}, 0.5),
    "co3_2s_fp8": ("co3_2s", {"fmt": "fp8-152", "gamma": 0.7}, 0.5),
    "co3_2s_fp4": ("co3_2s", {"fmt": "fp4-121", "gamma": 0.7}, 0.5),
    "co3_2s_fp4_stochastic": ("co3_2s", {"fmt": "fp4-121", "gamma": 1.0, "coder": "empirical", "scale": "max",
                                         "rounding": "stochastic", "seed": 4}, 0.5),
    "onebit": ("onebit", {"block": 16}, 0.5),
    "sasg": ("sasg", {"k": K, "c": 40.0}, 0.5),
    "sasg_exact": ("sasg", {"k": K, "c": 40.0, "exact": True}, 0.5),
}
MECHANISMS = {case: (partial(build, name, **options), step) for case, (name, options, step) in CASES.items()}
LAZY = {"lag", "lagwk", "clag", "clag_randk_shared", "sasg", "sasg_exact"}


@pytest.fixture(scope="module", params=[2, 4], ids=lambda n: f"{n}ranks")
def ddp_runs(request):
    workers = request.param
    return workers, run_ddp(workers, MECHANISMS, rows=ROWS, steps=STEPS)


def simulate(name: str, workers: int):
    """The harness's run of case ``name`` (one thread, as on the ranks: float sums depend on it)."""
    prob = problem(workers, ROWS)
    factory, step = MECHANISMS[name]
    mechanism = factory()
    if name == "sasg_exact":  # full batches: the stale-model gradient is the gradient of the last upload
        mechanism = build("sasg", k=K, c=40.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trace = run(prob, mechanism, step / prob.l_minus, tol=-1.0, max_iters=STEPS, keep_iterates=True)
    finally:
        torch.set_num_threads(threads)
    assert len(trace.iterates) == STEPS + 1 and not trace.diverged
    return trace


@pytest.mark.parametrize("name", list(MECHANISMS))
def test_ddp_hook_reproduces_the_simulation(ddp_runs, name):
    workers, ranks = ddp_runs
    trace = simulate(name, workers)
    want = torch.stack(trace.iterates)
    for r in ranks:
        got = r[name]["iterates"][: STEPS + 1]
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        assert torch.equal(got, want), f"{name}: close but not bit-identical, max diff {(got - want).abs().max()}"
    payload_bytes = sum(sum(b for kind, b in r[name]["sent"].items() if kind not in ("header", "padding"))
                        for r in ranks)
    assert 8 * payload_bytes == round(trace.bits_with_indices[-1] * workers)
    stats = [r[name]["stats"] for r in ranks]
    if name in LAZY:
        assert all(s["bytes_sent"].get("header", 0) == 4 * STEPS for s in stats)  # one int32 per round
        rates = [s["skip_rate"] for s in stats]
        assert 0 < sum(rates) / workers < 1, f"{name} must both skip and upload: skip rates {rates}"
    else:
        assert all(s["skip_rate"] == 0 for s in stats)


def summable_rounds(case: str) -> set[bool]:
    """Whether the case's payload is declared summable, over its first compressed rounds."""
    mechanism = MECHANISMS[case][0]()
    return {mechanism.summable(mechanism.spec(123, Round(t, 0, 2))) for t in range(1, STEPS + 1)}


SUMMABLE = [case for case in MECHANISMS if True in summable_rounds(case)]


def test_the_averaging_allreduce_follows_the_simulation():
    """Without ``reproducible``, the mechanisms that declare their payload summable travel by one
    averaging all_reduce (the shared-support Rand-K cases among them) and still follow the
    simulation (up to the reduction order's rounding)."""
    assert {"gd", "ef21_randk_shared", "ef21_shared_topk", "ef14_shared_topk", "clag_randk_shared",
            "marina_randk_shared"} <= set(SUMMABLE)
    ranks = run_ddp(2, {case: MECHANISMS[case] for case in SUMMABLE}, rows=ROWS, steps=STEPS, reproducible=False)
    for case in SUMMABLE:
        want = torch.stack(simulate(case, 2).iterates)
        for r in ranks:
            torch.testing.assert_close(r[case]["iterates"][: STEPS + 1], want, rtol=1e-4, atol=1e-6)
            collectives = set(r[case]["stats"]["collectives"])
            assert collectives == {"all_reduce"} if summable_rounds(case) == {True} else "all_reduce" in collectives
