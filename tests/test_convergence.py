"""The simulation harness on small problems: the papers' qualitative results, the smoothness
constants, the bit accounting and the convergence CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compressors import CLAG, EF14, EF21, GD, LAGWK, TopK
from compressors.mechanisms.registry import build
from compressors.sim import theory
from compressors.sim.datasets import A9A, load_libsvm
from compressors.sim.problems import FiniteSum, split_rows
from compressors.sim.simulation import run

TOL = 1e-6
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def a9a_small() -> FiniteSum:
    x, y = load_libsvm(A9A, n_features=123)
    return FiniteSum.from_arrays(x[:3000], y[:3000], workers=10)


def gamma(problem, mechanism, multiplier):
    return multiplier * theory.stepsize(mechanism, problem.dim, problem.l_minus, problem.l_tilde, problem.workers)


def test_split_puts_the_remainder_on_the_last_worker():
    assert split_rows(10, 3) == [(0, 3), (3, 6), (6, 10)]
    with pytest.raises(ValueError, match="workers"):
        split_rows(3, 4)


@pytest.mark.parametrize("kind", ["logistic", "least_squares"])
def test_smoothness_constants_bound_every_gradient_difference(kind):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=g) * (torch.rand(300, 8, generator=g) < 0.5)
    y = torch.where(torch.rand(300, generator=g) < 0.5, -1.0, 1.0)
    problem = FiniteSum(x, y, workers=4, kind=kind, lam=0.1)
    assert problem.l_minus <= max(problem.l_i) + 1e-9 and problem.l_tilde >= problem.l_minus - 1e-9
    for _ in range(20):
        a, b = torch.randn(8, generator=g) * 3, torch.randn(8, generator=g) * 3
        ratios = (problem.worker_grads(a) - problem.worker_grads(b)).norm(dim=1) / (a - b).norm()
        assert all(r <= li * (1 + 1e-4) for r, li in zip(ratios.tolist(), problem.l_i))
        assert float((problem.worker_grads(a).mean(0) - problem.worker_grads(b).mean(0)).norm() / (a - b).norm()) \
            <= problem.l_minus * (1 + 1e-4)


def test_gradients_match_autograd():
    g = torch.Generator().manual_seed(1)
    problem = FiniteSum(torch.randn(50, 5, generator=g), torch.where(torch.randn(50, generator=g) > 0, 1.0, -1.0), 3)
    x = torch.randn(5, generator=g, requires_grad=True)
    margins = problem.features @ x
    per_row = torch.nn.functional.softplus(-problem.labels * margins)
    losses = [per_row[a:b].mean() + 0.1 * (x * x / (1 + x * x)).sum() for a, b in problem.blocks]
    for i, loss in enumerate(losses):
        (grad,) = torch.autograd.grad(loss, x, retain_graph=True)
        assert torch.allclose(problem.worker_grads(x.detach())[i], grad, atol=1e-6)


def test_ef21_reaches_the_tolerance_and_ef14_with_its_budget_does_not(a9a_small):
    ef21 = run(a9a_small, EF21(TopK(k=4)), gamma(a9a_small, EF21(TopK(k=4)), 16), tol=TOL, max_iters=2000)
    assert ef21.converged and ef21.bits[-1] == 32 * 4 * ef21.rounds  # values only; indices separately
    assert ef21.bits_with_indices[-1] == 2 * ef21.bits[-1]
    assert ef21.summary()["initial_round_bits_per_worker"] == 32 * a9a_small.dim  # reported apart
    for multiplier in (1, 4, 16):
        ef14 = run(a9a_small, EF14(TopK(k=4)), gamma(a9a_small, EF14(TopK(k=4)), multiplier), tol=TOL,
                   max_iters=10_000, max_bits=ef21.bits[-1])
        assert not ef14.converged and min(ef14.grad_norm_sq) > TOL


@pytest.mark.parametrize("name, options", [("ef21", {}), ("clag", {"zeta": 0.5}), ("clag", {"zeta": 2.0}),
                                           ("clag", {"zeta": 8.0}), ("lag", {"zeta": 4.0}), ("3pcv4", {"k2": 2})])
def test_a_3pc_at_its_theorem_1_stepsize_meets_the_theorem_1_bound(a9a_small, name, options):
    """Theorem 1 of the 3PC paper: at gamma = 1 / (L_- + L_tilde sqrt(B/A)) and g_i^0 = grad f_i(x^0)
    (G^0 = 0), (1/T) sum_{t<T} ||grad f(x^t)||^2 <= 2 (f(x^0) - f_inf) / (gamma T), with f_inf >= 0 for
    the logistic loss plus a nonnegative regulariser. Deterministic mechanisms: it holds per run."""
    mechanism = build(name, **({"k": 4} if name != "lag" else {}), **options)
    stepsize = gamma(a9a_small, mechanism, 1)
    rounds = 300
    trace = run(a9a_small, mechanism, stepsize, tol=-1.0, max_iters=rounds)
    average = sum(trace.grad_norm_sq[:rounds]) / rounds
    assert average <= 2 * a9a_small.loss(torch.zeros(a9a_small.dim)) / (stepsize * rounds)


def test_clag_with_zeta_zero_is_ef21(a9a_small):
    step = gamma(a9a_small, EF21(TopK(k=4)), 8)
    ef21 = run(a9a_small, EF21(TopK(k=4)), step, tol=-1.0, max_iters=100, keep_iterates=True)
    clag = run(a9a_small, CLAG(TopK(k=4), 0.0), step, tol=-1.0, max_iters=100, keep_iterates=True)
    assert torch.equal(torch.stack(ef21.iterates), torch.stack(clag.iterates)) and ef21.bits == clag.bits


def test_gd_converges_on_least_squares_and_lag_wk_skips_some_rounds():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(400, 10, generator=g)
    problem = FiniteSum(x, x @ torch.randn(10, generator=g), workers=5, kind="least_squares", lam=0.0)
    trace = run(problem, GD(), gamma(problem, GD(), 1), tol=1e-8, max_iters=5000)
    assert trace.converged
    lazy = run(problem, LAGWK(), gamma(problem, LAGWK(), 1), tol=1e-8, max_iters=5000)
    assert lazy.converged and lazy.bits[-1] < 32 * 10 * lazy.rounds, "LAG-WK uploads in every round"


def test_a_run_that_diverges_stops():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(100, 6, generator=g)
    problem = FiniteSum(x, torch.randn(100, generator=g), workers=4, kind="least_squares", lam=0.0)
    trace = run(problem, GD(), 10 / problem.l_minus, tol=TOL, max_iters=10_000)
    assert trace.diverged and not trace.converged and trace.rounds < 100


def _tiny_libsvm(path):
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for _ in range(120):
            label = rng.integers(1, 3)  # labels 1/2, normalised to -1/+1
            feats = sorted(rng.choice(12, size=4, replace=False))
            f.write(f"{label} " + " ".join(f"{j + 1}:{rng.normal():.3f}" for j in feats) + "\n")


def convergence(*args: str) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, from the repository root."""
    return subprocess.run([sys.executable, "-m", "benchmarks.convergence", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_cli_single_run_writes_json(tmp_path):
    data = tmp_path / "tiny.svm"
    _tiny_libsvm(data)
    done = convergence("--dataset", str(data), "--workers", "4", "--method", "ef21", "--k", "2", "--multiplier", "4",
                       "--tol", "1e-5", "--max-iters", "3000", "--json", str(tmp_path / "r.json"))
    assert done.returncode == 0, done.stderr
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["best"][0]["converged"] and saved["best"][0]["rounds_to_tol"] == saved["best"][0]["rounds"]
    assert "| ef21 K=2 M=4 |" in done.stdout


def test_cli_sweep_picks_the_best_multiplier_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    data = tmp_path / "tiny.svm"
    _tiny_libsvm(data)
    done = convergence("--dataset", str(data), "--workers", "4", "--sweep", "--method", "gd,ef21,clag", "--ks", "1,2",
                       "--zetas", "1,4", "--multipliers", "1,4", "--tol", "1e-5", "--max-iters", "2000", "--jobs", "1",
                       "--plot", str(tmp_path / "c.png"), "--heatmap", str(tmp_path / "h.png"),
                       "--json", str(tmp_path / "s.json"))
    assert done.returncode == 0, done.stderr
    out = json.loads((tmp_path / "s.json").read_text())
    assert len(out["runs"]) == 2 + 2 * 2 + 2 * 2 * 2
    for row in out["best"]:
        same = [r for r in out["runs"] if r["setting"]["method"] == row["setting"]["method"] and r["converged"]]
        assert row["bits_to_tol"] == min(r["bits_to_tol"] for r in same)
    assert (tmp_path / "c.png").stat().st_size > 1000 and (tmp_path / "h.png").stat().st_size > 1000


def test_cli_rejects_unknown_methods_and_lists_the_registry_in_help():
    done = convergence("--dataset", "x", "--method", "sgd")
    assert done.returncode == 2 and "unknown method(s) ['sgd']" in done.stderr
    helped = convergence("--help")
    assert helped.returncode == 0 and "clag" in helped.stdout and "zeta=1.0" in helped.stdout
