"""Builds the threepc extension (`compressors._C`) with torch.utils.cpp_extension.

Install with `pip install --no-build-isolation .` so that the build uses the torch already
installed (build isolation would download the newest torch). The CUDA kernels (csrc/cuda/*.cu)
are built when this torch has CUDA and nvcc is found (CUDA_HOME), for the architectures in
TORCH_CUDA_ARCH_LIST (default "8.0;9.0+PTX": A100, H100/H200, and PTX for newer GPUs);
THREEPC_CPU_ONLY=1 skips them. `at::parallel_for` only runs in parallel when the extension is
compiled and linked with -fopenmp (pytorch/pytorch#161320).

Release build: -O3 -DNDEBUG, -fno-math-errno -fno-trapping-math (no errno from sqrt, no FP traps: loops
with sqrt, division and selects vectorise; no result changes, unlike -ffast-math), -ffp-contract=off
(a * b + c stays two roundings, as in the reference, where the target has fused multiply-add:
aarch64, or x86 built with -mfma) and no debug
info (-g0 overrides Python's -g); on Linux the linker
strips the symbol table (-s): 0.67 MB for torch 2.13 on x86-64. The extension is
compiled against the torch found at build time and loads only with that torch version.
"""
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

WITH_CUDA = torch.version.cuda is not None and CUDA_HOME is not None and os.environ.get("THREEPC_CPU_ONLY") != "1"
CXX_FLAGS = ["-O3", "-DNDEBUG", "-g0", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"]
LINK_FLAGS = ["-fopenmp"] + (["-s"] if sys.platform.startswith("linux") else [])
sources = sorted(glob.glob("csrc/*.cpp"))
if WITH_CUDA:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    extension = CUDAExtension(
        name="compressors._C",
        sources=sources + sorted(glob.glob("csrc/cuda/*.cu")),
        extra_compile_args={"cxx": CXX_FLAGS, "nvcc": ["-O3", "-DNDEBUG"]},
        extra_link_args=LINK_FLAGS,
    )
else:
    extension = CppExtension(
        name="compressors._C",
        sources=sources,
        extra_compile_args=CXX_FLAGS,
        extra_link_args=LINK_FLAGS,
    )


class BuildWithInfo(BuildExtension):
    """Also writes _C_build.json next to the library (gitignored): the torch it was built against and
    whether with CUDA. compressors.kernels reads it before loading the library."""

    def run(self) -> None:
        super().run()  # after it, get_ext_fullpath names the library's final place (--inplace: the sources)
        library = Path(self.get_ext_fullpath("compressors._C"))
        info = {"torch": torch.__version__, "cuda": WITH_CUDA}
        library.with_name("_C_build.json").write_text(json.dumps(info) + "\n")
        check_errors_raise(library.parent.parent)


# An op given a bad argument must raise a Python error. A toolchain whose C++ runtime cannot throw
# through torch's frames builds a library that crashes the process instead (seen with a compiler
# wrapper that links libstdc++ statically: SIGSEGV on the first bad argument).
RAISES = """
import torch
from compressors import kernels
assert kernels.backend_info()["backend"] == "ext", kernels.backend_info()["reason"]
try:
    kernels.topk_abs(torch.zeros(1), 2)
except ValueError:
    pass
"""


def check_errors_raise(root: Path) -> None:
    """Load the library just built (the package under ``root``) in a fresh interpreter and make an
    op raise: a crash fails the build with the fix, any other failure to load is a warning."""
    result = subprocess.run([sys.executable, "-c", RAISES], cwd=root, capture_output=True, text=True)
    if result.returncode < 0:
        compiler = os.environ.get("CXX", "the default C++ compiler")
        raise RuntimeError(
            f"the extension built with {compiler} crashes (signal {-result.returncode}) when an op raises an "
            "error: its C++ runtime cannot throw through torch (a compiler that links libstdc++ or libgcc "
            "statically?). Build with the system compiler: CXX=g++ CC=gcc pip install --no-build-isolation .")
    if result.returncode != 0:
        print(f"warning: the extension just built did not load here:\n{result.stderr[-2000:]}", file=sys.stderr)


if __name__ == "__main__":  # pip runs this file as __main__ too; tests import check_errors_raise
    setup(ext_modules=[extension], cmdclass={"build_ext": BuildWithInfo})
