"""threepc's math: stateless compressors, stateful mechanisms, the kernels under them and the
simulation harness.

    >>> from compressors import EF21, TopK
    >>> worker = EF21(TopK(ratio=0.01))
"""
from ._version import __version__
from .mechanisms.clag import CLAG
from .mechanisms.co3 import CO3
from .operators.compose import Compose
from .core.compressor import Compressor
from .mechanisms.ef14 import EF14
from .mechanisms.ef21 import EF21
from .mechanisms.ef21_plus import EF21Plus
from .mechanisms.ef21_sgdm import EF21SGDM
from .operators.float_format import FloatFormat
from .operators.float_quantizer import FloatQuantizer
from .mechanisms.gd import GD
from .core.identity import Identity
from .mechanisms.lag import LAG, LAGWK
from .mechanisms.marina import MARINA
from .core.mechanism import Mechanism
from .core.payload import PartSpec, Payload
from .operators.permk import PermK
from .operators.randk import RandK
from .core.rounds import Round
from .mechanisms.sasg import SASG
from .operators.sparse import Sparsifier
from .core.three_point import ThreePoint
from .mechanisms.threepc_v1 import ThreePCv1
from .mechanisms.threepc_v2 import ThreePCv2
from .mechanisms.threepc_v3 import ThreePCv3
from .mechanisms.threepc_v4 import ThreePCv4
from .mechanisms.threepc_v5 import ThreePCv5
from .operators.topk import TopK

__all__ = ["__version__", "CLAG", "CO3", "EF14", "EF21", "EF21SGDM", "GD", "LAG", "LAGWK", "MARINA", "SASG", "Compose",
           "Compressor",
           "EF21Plus", "FloatFormat", "FloatQuantizer", "Identity", "Mechanism", "PartSpec", "Payload", "PermK",
           "RandK", "Round", "Sparsifier", "ThreePCv1", "ThreePCv2", "ThreePCv3", "ThreePCv4", "ThreePCv5",
           "ThreePoint", "TopK"]
