"""threepc as users get it: an sdist, a wheel built from that sdist (so the sdist carries every
source the build needs) and a fresh venv with the wheel installed, used from a directory outside
the repository: a 2-rank torchrun training script with a hook and the standalone API.

The venv reuses this interpreter's torch, numpy and numba (`make_venv`): nothing is downloaded.
The one extension build takes about 20-70 s on 2 cores.
"""
from __future__ import annotations

import json
import os
import runpy
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import compressors

ROOT = Path(__file__).resolve().parent.parent
NAME = f"threepc-{compressors.__version__}"

pytestmark = pytest.mark.slow


def make_venv(path: Path) -> Path:
    """A venv at ``path`` (its python returned) that sees this interpreter's packages after its
    own: ``--system-site-packages`` where they are the system's, a .pth file where they are in the
    venv that runs the tests (the .pth adds that site-packages directory without running its
    .pth files, so an editable threepc there stays out). pip comes from there too."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", path], check=True)
    python = path / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).strip()
    Path(purelib, "_threepc_parent.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def run(cmd: list[object], cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """stdout of ``cmd``; on failure, an assertion that shows its output."""
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} exited {result.returncode}:\n" \
                                   f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def rank_stats(stdout: str, ranks: int = 2) -> list[dict]:
    """The examples' ``threepc-stats`` lines (examples/common.py), one per rank, in rank order;
    each shows that the hook compressed."""
    stats = sorted((json.loads(line.split(" ", 1)[1]) for line in stdout.splitlines()
                    if line.startswith("threepc-stats ")), key=lambda s: s["rank"])
    assert [s["rank"] for s in stats] == list(range(ranks)), stdout
    for s in stats:
        assert s["compressed_rounds"] > 0 and s["fraction_of_dense"] < 0.2, s
    return stats


def outside_env() -> dict[str, str]:
    """The environment without PYTHONPATH: imports come from the venv, not the repository."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(out)!r})"], cwd=ROOT)
    return out / f"{NAME}.tar.gz"


@pytest.fixture(scope="module")
def wheel(sdist: Path) -> Path:
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps", "-w", sdist.parent, sdist])
    (path,) = sdist.parent.glob(f"{NAME}-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    python = make_venv(tmp_path_factory.mktemp("venv") / "venv")
    # --ignore-installed: an editable threepc of the same version in the parent venv would pass
    # for installed; --no-deps --no-index: torch and numpy come from the parent, never downloaded
    run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--ignore-installed", wheel])
    return python


def test_the_build_fails_when_the_library_crashes_on_an_error(tmp_path: Path) -> None:
    """setup.py makes the fresh library raise an error in a new interpreter; a crash (here a
    package whose import dies of SIGSEGV) fails the build with the fix."""
    check = runpy.run_path(str(ROOT / "setup.py"), run_name="threepc_setup")["check_errors_raise"]
    (tmp_path / "compressors").mkdir()
    (tmp_path / "compressors" / "__init__.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    with pytest.raises(RuntimeError, match=r"crashes \(signal 11\) when an op raises.*CXX=g\+\+ CC=gcc"):
        check(tmp_path)


def test_sdist_carries_every_build_source(sdist: Path) -> None:
    with tarfile.open(sdist) as tar:
        names = {name.removeprefix(f"{NAME}/") for name in tar.getnames()}
    needed = {str(p.relative_to(ROOT)) for pattern in ("csrc/*.cpp", "csrc/*.h", "csrc/cuda/*.cu")
              for p in ROOT.glob(pattern)}
    assert needed <= names
    assert {"setup.py", "pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "compressors/sim/data/a9a.gz",
            "compressors/py.typed", "ddp_hooks/py.typed", "compressors/kernels/__init__.py"} <= names


def test_wheel_has_package_data_and_a_stripped_extension(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        (extension,) = [n for n in names if n.startswith("compressors/_C") and n.endswith(".so")]
        binary = whl.read(extension)
    assert {"compressors/sim/data/a9a.gz", "compressors/py.typed", "ddp_hooks/py.typed",
            "ddp_hooks/info.py", "compressors/sim/simulation.py"} <= names
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert not any(n.startswith(("csrc/", "tests/", "benchmarks/", "examples/")) for n in names)
    if sys.platform.startswith("linux"):  # linked with -s, compiled without -g: no symbol table, no DWARF
        assert b".symtab" not in binary and b".debug_info" not in binary
        assert len(binary) < 1_000_000, len(binary)


def test_installed_package_trains_with_torchrun(installed: Path, tmp_path: Path) -> None:
    for script in ("train_torchrun.py", "common.py"):
        shutil.copy(ROOT / "examples" / script, tmp_path)
    out = run([installed, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "train_torchrun.py", "--steps", "10", "--checkpoint-dir", "checkpoints"],
              cwd=tmp_path, env=outside_env(), timeout=300)
    rank_stats(out)
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} == {"model.pt", "hook-rank0.pt", "hook-rank1.pt"}


STANDALONE = """
import sys, torch, compressors, ddp_hooks
from compressors import EF21, TopK
from compressors.kernels import backend_info
from compressors.sim.datasets import A9A, load_libsvm
from compressors.sim.simulation import Cluster
assert compressors.__file__.startswith(sys.prefix) and ddp_hooks.__file__.startswith(sys.prefix)
assert backend_info()["backend"] == "ext", backend_info()  # the wheel's extension loads
x, y = load_libsvm(A9A)  # package data
assert x.shape == (48842, 123)
cluster = Cluster(EF21(TopK(ratio=0.1)), workers=2)
grads = [torch.from_numpy(x[:10].T @ y[:10] * (i + 1)) for i in range(2)]
cluster.init(grads)
cluster.step([g + 1 for g in grads])
print(compressors.__version__, ddp_hooks.__version__, cluster.g.shape[0])
"""


def test_installed_standalone_api_and_info(installed: Path, tmp_path: Path) -> None:
    version = compressors.__version__
    assert run([installed, "-c", STANDALONE], cwd=tmp_path, env=outside_env()).split() == [version, version, "123"]
    info = run([installed, "-m", "ddp_hooks.info"], cwd=tmp_path, env=outside_env())
    assert version in info and "ef21" in info
