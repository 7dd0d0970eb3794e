"""threepc's math: stateless compressors, stateful mechanisms, the kernels under them and the
simulation harness.

    >>> from compressors import EF21, TopK
    >>> worker = EF21(TopK(ratio=0.01))
"""
from .clag import CLAG
from .co3 import CO3
from .compose import Compose
from .compressor import Compressor
from .ef14 import EF14
from .ef21 import EF21
from .ef21_plus import EF21Plus
from .ef21_sgdm import EF21SGDM
from .float_format import FloatFormat
from .float_quantizer import FloatQuantizer
from .gd import GD
from .identity import Identity
from .lag import LAG, LAGWK
from .marina import MARINA
from .mechanism import Mechanism
from .payload import PartSpec, Payload
from .permk import PermK
from .randk import RandK
from .rounds import Round
from .sasg import SASG
from .sparse import Sparsifier
from .three_point import ThreePoint
from .threepc_v1 import ThreePCv1
from .threepc_v2 import ThreePCv2
from .threepc_v3 import ThreePCv3
from .threepc_v4 import ThreePCv4
from .threepc_v5 import ThreePCv5
from .topk import TopK

__all__ = ["CLAG", "CO3", "EF14", "EF21", "EF21SGDM", "GD", "LAG", "LAGWK", "MARINA", "SASG", "Compose", "Compressor",
           "EF21Plus", "FloatFormat", "FloatQuantizer", "Identity", "Mechanism", "PartSpec", "Payload", "PermK",
           "RandK", "Round", "Sparsifier", "ThreePCv1", "ThreePCv2", "ThreePCv3", "ThreePCv4", "ThreePCv5",
           "ThreePoint", "TopK"]
