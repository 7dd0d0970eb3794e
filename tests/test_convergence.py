"""The simulation harness on small problems: the papers' qualitative results, the smoothness
constants, the bit accounting and the convergence CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import convergence
from compressors import CLAG, EF14, EF21, GD, LAGWK, TopK
from compressors.sim import theory
from compressors.sim.datasets import A9A, load_libsvm
from compressors.sim.problems import FiniteSum, split_rows
from compressors.sim.simulation import run

TOL = 1e-6


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


@pytest.mark.parametrize("zeta", [0.5, 2.0, 8.0])
@pytest.mark.parametrize("multiplier", [4, 16])
def test_clag_never_sends_more_bits_than_ef21_with_the_same_k(a9a_small, zeta, multiplier):
    ef21 = run(a9a_small, EF21(TopK(k=4)), gamma(a9a_small, EF21(TopK(k=4)), multiplier), tol=TOL, max_iters=3000)
    clag = CLAG(TopK(k=4), zeta)
    lazy = run(a9a_small, clag, gamma(a9a_small, EF21(TopK(k=4)), multiplier), tol=TOL, max_iters=3000)
    assert ef21.converged and lazy.converged
    assert lazy.bits[-1] <= ef21.bits[-1]


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


def test_cli_single_run_writes_json(tmp_path, capsys):
    data = tmp_path / "tiny.svm"
    _tiny_libsvm(data)
    out = convergence.main(["--dataset", str(data), "--workers", "4", "--method", "ef21", "--k", "2",
                            "--multiplier", "4", "--tol", "1e-5", "--max-iters", "3000", "--json",
                            str(tmp_path / "r.json")])
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["best"][0]["converged"] and out["best"][0]["rounds_to_tol"] == saved["best"][0]["rounds"]
    assert "| ef21 K=2 M=4 |" in capsys.readouterr().out


def test_cli_sweep_picks_the_best_multiplier_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    data = tmp_path / "tiny.svm"
    _tiny_libsvm(data)
    out = convergence.main(["--dataset", str(data), "--workers", "4", "--sweep", "--method", "gd,ef21,clag",
                            "--ks", "1,2", "--zetas", "1,4", "--multipliers", "1,4", "--tol", "1e-5",
                            "--max-iters", "2000", "--jobs", "1", "--plot", str(tmp_path / "c.png"),
                            "--heatmap", str(tmp_path / "h.png")])
    assert len(out["runs"]) == 2 + 2 * 2 + 2 * 2 * 2
    for row in out["best"]:
        same = [r for r in out["runs"] if r["setting"]["method"] == row["setting"]["method"] and r["converged"]]
        assert row["bits_to_tol"] == min(r["bits_to_tol"] for r in same)
    assert (tmp_path / "c.png").stat().st_size > 1000 and (tmp_path / "h.png").stat().st_size > 1000


def test_cli_rejects_unknown_methods(tmp_path):
    with pytest.raises(SystemExit):
        convergence.main(["--dataset", "x", "--method", "sgd"])
