"""threepc's math: stateless compressors, stateful mechanisms and the kernels under them.

    >>> from compressors import EF21, TopK
    >>> worker = EF21(TopK(ratio=0.01))
"""
from .compressor import Compressor
from .ef21 import EF21
from .mechanism import Mechanism
from .payload import PartSpec, Payload
from .topk import TopK

__all__ = ["EF21", "Compressor", "Mechanism", "PartSpec", "Payload", "TopK"]
