"""DDP <-> simulation parity: every mechanism that runs as a hook computes, on real gloo ranks,
exactly the iterates and the bits of the simulation harness (Alg. 1 of the 3PC paper).

Each of n = 2 and 4 ranks holds one shard of a logistic problem (``FiniteSum`` on 1,200 a9a
rows) as ``benchmarks.logistic_ddp.WorkerLoss`` and runs 60 DDP steps with the hook. The
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

from compressors import (CLAG, CO3, EF14, EF21, EF21SGDM, GD, LAG, LAGWK, MARINA, SASG, EF21Plus, PermK, RandK,
                         ThreePCv2, ThreePCv3, ThreePCv4, ThreePCv5, TopK)
from benchmarks.logistic_ddp import problem, run_ddp
from compressors.sim.simulation import run

pytestmark = pytest.mark.slow

STEPS = 60
ROWS = 1200
K = 12  # of d = 123

# name -> (mechanism factory, stepsize in units of 1/L_-); factories pickle (they travel to the ranks)
MECHANISMS = {
    "gd": (GD, 1.0),
    "ef14": (partial(EF14, TopK(k=K)), 0.5),
    "ef21": (partial(EF21, TopK(k=K)), 0.5),
    "ef21plus": (partial(EF21Plus, TopK(k=K)), 0.5),
    "ef21_sgdm": (partial(EF21SGDM, TopK(k=K), eta=0.5), 0.5),
    "lag": (partial(LAG, zeta=4.0), 1.0),
    "lagwk": (partial(LAGWK, xi=1.0), 1.0),
    "clag": (partial(CLAG, TopK(k=K), zeta=4.0), 0.5),
    "3pcv2": (partial(ThreePCv2, TopK(k=K), RandK(k=K, seed=5)), 0.3),
    "3pcv3": (partial(ThreePCv3, EF21(TopK(k=K)), TopK(k=2 * K)), 0.3),
    "3pcv4": (partial(ThreePCv4, TopK(k=K), TopK(k=K // 2)), 0.5),
    "3pcv5": (partial(ThreePCv5, TopK(k=K), p=0.2, seed=3), 0.5),
    "marina_randk": (partial(MARINA, RandK(k=3 * K, seed=2), p=0.2, seed=2), 0.2),
    "marina_permk": (partial(MARINA, PermK(seed=1), p=0.2, seed=1), 0.2),
    "co3_fp8_huffman": (partial(CO3, "fp8-152", 0.7), 0.5),
    "co3_fp4_huffman_pairs": (partial(CO3, "fp4-121", 0.7), 0.5),
    "co3_fp4_stochastic": (partial(CO3, "fp4-121", 1.0, coder="empirical", scale="max", rounding="stochastic",
                                   seed=4), 0.5),
    "sasg": (partial(SASG, TopK(k=K), c=40.0), 0.5),
    "sasg_exact": (partial(SASG, TopK(k=K), c=40.0, exact=True), 0.5),
}
LAZY = {"lag", "lagwk", "clag", "sasg", "sasg_exact"}


@pytest.fixture(scope="module", params=[2, 4], ids=lambda n: f"{n}ranks")
def ddp_runs(request):
    workers = request.param
    return workers, run_ddp(workers, MECHANISMS, rows=ROWS, steps=STEPS)


@pytest.mark.parametrize("name", list(MECHANISMS))
def test_ddp_hook_reproduces_the_simulation(ddp_runs, name):
    workers, ranks = ddp_runs
    prob = problem(workers, ROWS)
    factory, step = MECHANISMS[name]
    mechanism = factory()
    if name == "sasg_exact":  # full batches: the stale-model gradient is the gradient of the last upload
        mechanism = SASG(TopK(k=K), c=40.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as on the ranks: the gradients' float sums depend on the thread count
    try:
        trace = run(prob, mechanism, step / prob.l_minus, tol=-1.0, max_iters=STEPS, keep_iterates=True)
    finally:
        torch.set_num_threads(threads)
    want = torch.stack(trace.iterates)
    assert len(want) == STEPS + 1 and not trace.diverged
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
