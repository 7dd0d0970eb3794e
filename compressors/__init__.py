"""threepc's math: stateless compressors, stateful mechanisms and the kernels under them.

    >>> from compressors import EF21, TopK
    >>> worker = EF21(TopK(ratio=0.01))
"""
from .compressor import Compressor
from .ef21 import EF21
from .ef21_sgdm import EF21SGDM
from .mechanism import Mechanism
from .payload import PartSpec, Payload
from .topk import TopK

__all__ = ["EF21", "EF21SGDM", "Compressor", "Mechanism", "PartSpec", "Payload", "TopK"]
