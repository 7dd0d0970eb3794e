"""``python -m ddp_hooks.info``: versions, kernel backend and hook names."""
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import compressors
import ddp_hooks
from compressors import kernels
from ddp_hooks import info

ROOT = Path(__file__).resolve().parent.parent


def test_module_prints_versions_backend_and_hooks() -> None:
    out = subprocess.run([sys.executable, "-m", "ddp_hooks.info"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert "threepc:" in out and compressors.__version__ in out and torch.__version__ in out
    backend = kernels.backend_info()
    assert "kernels.backend:" in out and backend["backend"] in out and backend["reason"] in out
    assert all(name in out for name in ddp_hooks.MECHANISMS)
    assert "register(ddp):" in out and "compressor='topk8'" in out and "the Adam mode, ef14 compressor='sign'" in out
    assert "a heavy-ball momentum SGD found or passed: ef14_mc" in out and "kept=1.0" in out


def test_version_is_one_string() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in pyproject["project"]["dynamic"] and "version" not in pyproject["project"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"]["attr"] == "compressors._version.__version__"
    assert ddp_hooks.__version__ is compressors.__version__


def test_reports_what_backend_info_says(monkeypatch: pytest.MonkeyPatch) -> None:
    report = {"backend": "numba", "reason": "THREEPC_BACKEND=numba", "extension_torch": "2.13.0",
              "extension_cuda": None, "runtime_torch": torch.__version__}
    monkeypatch.setattr(kernels, "backend_info", lambda: report)
    collected = info.collect()
    assert {key: collected[f"kernels.{key}"] for key in report} == report
