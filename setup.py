"""Builds the threepc C++ extension (`compressors._C`) with torch.utils.cpp_extension.

Install with `pip install --no-build-isolation .` so that the build uses the torch already
installed (build isolation would download the newest torch). CUDA sources are added by the
CUDA issue; this build is CPU only. `at::parallel_for` only runs in parallel when the
extension is compiled and linked with -fopenmp (pytorch/pytorch#161320).
"""
import glob

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

setup(
    ext_modules=[
        CppExtension(
            name="compressors._C",
            sources=sorted(glob.glob("csrc/*.cpp")),
            extra_compile_args=["-O3", "-fopenmp"],
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension},
)
