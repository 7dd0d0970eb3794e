"""The recipes in examples/ (README.md, "Use it in your training script", shows them), each run
with 2 CPU processes: they train, and the hook compresses (its byte counts, printed by each rank).

Lightning and Accelerate are installed into a venv cached under .venv-integration/, keyed by
their pinned versions and by the interpreter and torch it reuses (the constraints forbid pip to
replace that torch or numpy).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import torch

from test_install import make_venv, rank_stats, run

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PINS = ("lightning==2.6.6", "accelerate==1.16.0")
TORCHRUN = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # this tree's threepc


@pytest.fixture(scope="module")
def integration_python() -> Path:
    """The cached venv's python (built once per key; a venv without its marker is rebuilt)."""
    constraints = f"torch=={torch.__version__}\nnumpy=={numpy.__version__}\n"
    key = hashlib.sha256(f"{sys.prefix}\n{sys.version}\n{constraints}{PINS}".encode()).hexdigest()[:12]
    venv = ROOT / ".venv-integration" / key
    marker = venv / "threepc-ready"
    if not marker.exists():
        shutil.rmtree(venv, ignore_errors=True)
        python = make_venv(venv)
        (venv / "constraints.txt").write_text(constraints)
        run([python, "-m", "pip", "install", "-q", "-c", venv / "constraints.txt", *PINS], timeout=900)
        marker.touch()
    return venv / "bin" / "python"


@pytest.mark.slow
def test_torchrun_recipe_trains_and_resumes(tmp_path: Path) -> None:
    script = [sys.executable, *TORCHRUN, EXAMPLES / "train_torchrun.py", "--checkpoint-dir", tmp_path]
    first = rank_stats(run([*script, "--steps", "30"], env=ENV, timeout=300))
    assert all(s["last_loss"] < s["first_loss"] for s in first), first
    resumed = rank_stats(run([*script, "--steps", "40"], env=ENV, timeout=300))
    for before, after in zip(first, resumed):  # per-rank hook state restored: no second warm-up
        assert after["steps"] == 40 and after["dense_rounds"] == before["dense_rounds"]
        assert after["compressed_rounds"] > before["compressed_rounds"]


@pytest.mark.slow
def test_compile_recipe() -> None:
    rank_stats(run([sys.executable, *TORCHRUN, EXAMPLES / "train_compile.py", "--steps", "12"], env=ENV, timeout=400))


@pytest.mark.slow
def test_lightning_recipe(integration_python: Path) -> None:
    rank_stats(run([integration_python, EXAMPLES / "train_lightning.py", "--steps", "20"], env=ENV, timeout=300))


@pytest.mark.slow
def test_lightning_callback_tells_the_hook_the_adamw(integration_python: Path) -> None:
    stats = rank_stats(run([integration_python, EXAMPLES / "train_lightning.py", "--steps", "20", "--optimizer",
                            "adamw"], env=ENV, timeout=300))
    for s in stats:
        assert s["mechanism"].startswith("AdamNormalized(EF14(ScaledSign"), s["mechanism"]
        assert s["last_loss"] < s["first_loss"], s


@pytest.mark.slow
def test_accelerate_recipe(integration_python: Path) -> None:
    rank_stats(run([integration_python, *TORCHRUN, EXAMPLES / "train_accelerate.py", "--steps", "20"], env=ENV,
                   timeout=300))


@pytest.mark.slow
def test_accelerate_prepared_adamw_is_found_by_the_hook(integration_python: Path) -> None:
    """``register(model)`` finds the AdamW inside Accelerate's ``AcceleratedOptimizer``."""
    stats = rank_stats(run([integration_python, *TORCHRUN, EXAMPLES / "train_accelerate.py", "--steps", "20",
                            "--optimizer", "adamw"], env=ENV, timeout=300))
    for s in stats:
        assert s["mechanism"].startswith("AdamNormalized(EF14(ScaledSign"), s["mechanism"]
        assert s["last_loss"] < s["first_loss"], s


def test_lightning_callback_without_lightning() -> None:
    """ddp_hooks.lightning imports without Lightning; building the callback says what is missing."""
    code = ("import sys; sys.modules['lightning'] = None\n"
            "from ddp_hooks.lightning import ThreePCCallback\n"
            "try:\n    ThreePCCallback('ef21')\nexcept ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, check=True).stdout
    assert "pip install lightning" in out
