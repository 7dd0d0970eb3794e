"""``python -m benchmarks.e2e --quick`` end to end: outputs written, bytes cross-checked."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_e2e_quick_writes_outputs_and_the_byte_counts_agree(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.e2e", "--quick", "--budget", "1.5", "--out",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ETA" in done.stderr
    for name in ("e2e.json", "e2e.md", "e2e_digits_mlp_n2.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    result = json.loads((tmp_path / "e2e.json").read_text())
    runs = result["runs"]
    assert [r["method"] for r in runs] == ["allreduce", "fp16", "default"]
    assert all("error" not in r and r["curve"] and r["step_s"] > 0 for r in runs)
    assert runs[0]["speedup"] == pytest.approx(1.0)
    assert [r["steps"] for r in runs] == [12, 18, 18], "--budget: the hooks train 1.5 times allreduce's steps"
    if not result["isolated"]:
        pytest.skip("no private network namespace here: the lo counter was not read")
    for r in runs:  # the namespace's lo counter against the hooks' ring model, headers on top
        assert 1.0 <= r["lo_over_model"] <= 1.1, r
