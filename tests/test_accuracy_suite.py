"""The accuracy suite's --quick configuration end to end (by subprocess: tests do not import
benchmarks/): output files, one record per run, dense allreduce learning every task, and the
default hook's gap on the a9a MLP (the full run's length there), registered as users do,
``register(ddp, optimizer=opt)``: with momentum SGD and with AdamW."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_suite_writes_results_allreduce_learns_and_the_default_holds_a9a(tmp_path: Path) -> None:
    default = "default"  # register(ddp, optimizer=opt)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "benchmarks.accuracy", "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ETA" in done.stdout
    results = json.loads((tmp_path / "accuracy.json").read_text())
    runs = results["runs"]
    assert {(r["task"], r["recipe"], r["hook"]) for r in runs} == {
        (t, rec, h) for t in ("stdlib_lm", "digits_cnn", "a9a_mlp") for rec in ("sgdm", "adamw")
        for h in ("allreduce", default)}
    for r in runs:
        assert r["replicas_identical"]
        assert [c[0] for c in r["curve"]][0] == 0 and r["curve"][-1][1] == r["final"]
        assert r["wall_s"] > 0 and r["bytes_sent"] > 0
        dense = r["hook"] == "allreduce"
        assert r["fraction_of_dense"] == pytest.approx(1.0) if dense else r["fraction_of_dense"] < 0.1
        if dense:  # learns: better than chance by a margin
            margin = 1.0 if r["task"] == "stdlib_lm" else 0.03
            better = r["final"] - r["chance"] if r["higher_is_better"] else r["chance"] - r["final"]
            assert better > margin, (r["task"], r["final"], r["chance"])
    # The default against allreduce on a9a, 2 ranks, seed 0. sgdm (ef14 over Top-K 5% in 16 bits an entry): the
    # full suite measured gaps of -0.04, +0.07 and +0.03 pp for seeds 0, 1, 2 (benchmarks/results/accuracy_packed.json,
    # +0.33, -0.10 and +0.79 over Top-K 1%); adamw (ef14 over signs, Adam mode):
    # +0.02, +0.06 and -0.08 pp (benchmarks/results/accuracy.json). The target is 0.5 pp, the margin here the
    # seeds' spread.
    a9a = {(r["recipe"], r["hook"]): r["final"] for r in runs if r["task"] == "a9a_mlp"}
    for recipe in ("sgdm", "adamw"):
        assert a9a[recipe, "allreduce"] - a9a[recipe, default] <= 0.01, a9a
    table = (tmp_path / "accuracy.md").read_text()
    assert table.count("| allreduce |") == 6 and "gap to allreduce" in table
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "accuracy_a9a_mlp_n2.png", "accuracy_digits_cnn_n2.png", "accuracy_stdlib_lm_n2.png"]


@pytest.mark.slow
def test_held_out_tasks_run_and_allreduce_learns_them(tmp_path: Path) -> None:
    """The tasks no default was chosen on (a GRU LM, a BatchNorm student of a random teacher,
    fastText's hashed n-grams on the standard library's packages, a two-tower click model, a word
    LM with a tied read-out, least squares) run only when named: quick and short, allreduce learns
    each, the default keeps replicas identical."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "benchmarks.accuracy", "--quick", "--tasks", "stdlib_gru", "teacher_bn",
                           "stdlib_ngrams", "clicks", "stdlib_words", "regression", "--recipes", "sgdm", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads((tmp_path / "accuracy.json").read_text())["runs"]
    learnt = {"stdlib_gru": 1.0, "teacher_bn": 0.2, "stdlib_ngrams": 0.2, "clicks": 0.05, "stdlib_words": 1.0,
              "regression": 0.5}
    assert {(r["task"], r["hook"]) for r in runs} == {(t, h) for t in learnt for h in ("allreduce", "default")}
    for r in runs:
        assert r["replicas_identical"] and r["fraction_of_dense"] < (1.01 if r["hook"] == "allreduce" else 0.1)
        if r["hook"] == "allreduce":
            better = r["final"] - r["chance"] if r["higher_is_better"] else r["chance"] - r["final"]
            assert better > learnt[r["task"]], (r["task"], r["final"], r["chance"])


SENDS_WHAT_IT_DECLARES = """
import torch
from benchmarks.accuracy.experimental import EXPERIMENTAL
from compressors import Round
from ddp_hooks import wire

for name, candidate in sorted(EXPERIMENTAL.items()):
    candidate.check()
    mech = candidate._mechanism().spawn()
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    mech.init(x.clone(), Round(0, 0, 2))
    rnd = Round(1, 0, 2)
    wire.check(mech.step(x.clone(), rnd), mech.spec(x.numel(), rnd))
    print(name)
"""


def test_every_experimental_candidate_sends_what_it_declares() -> None:
    """The suite runs these under DDP, where a payload that differs from the mechanism's spec is
    an error on every rank: each candidate, with its default options, on 2 workers, sends what
    its spec declares for a compressed round."""
    done = subprocess.run([sys.executable, "-c", SENDS_WHAT_IT_DECLARES], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(done.stdout.split()) >= 8, done.stdout


SCALED_RECIPES = """
import pytest, torch
from benchmarks.accuracy.recipes import RECIPES, recipe_named

half = recipe_named("sgdm*0.5")
assert half.lr_scale == 0.5 and half.name == "sgdm*0.5" and half.momentum == RECIPES["sgdm"].momentum
opt, _ = half.optimizer([torch.nn.Parameter(torch.zeros(2))], lr=0.02, steps=10)
assert opt.param_groups[0]["lr"] == 0.01
assert recipe_named("sgd_lr10*0.5").lr_scale == 5.0 and recipe_named("adamw") is RECIPES["adamw"]
for bad, says in (("sgdm2", "unknown recipe"), ("sgdm*0", "positive number"), ("sgdm*x", "positive number"),
                  ("sgdm*nan", "positive number")):
    with pytest.raises(ValueError, match=says):
        recipe_named(bad)
"""


def test_a_recipe_name_with_a_factor_scales_its_learning_rate_and_a_bad_name_is_refused() -> None:
    """``NAME*S`` (``--recipes 'sgdm*0.5'``): the named recipe at S times its rate, the rest
    unchanged; unknown names and factors that are not positive numbers raise, naming the
    recipes, and the command line refuses them before any run."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", SCALED_RECIPES], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    refused = subprocess.run([sys.executable, "-m", "benchmarks.accuracy", "--recipes", "sgdm*-1", "--tasks",
                              "regression"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "positive number" in refused.stderr, refused.stderr[-2000:]
