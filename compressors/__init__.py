"""threepc's math: stateless compressors, stateful mechanisms, the kernels under them and the
simulation harness.

    >>> from compressors import EF21, TopK
    >>> worker = EF21(TopK(ratio=0.01))
"""
from ._version import __version__
from .core.compressor import Compressor
from .core.identity import Identity
from .core.mechanism import Mechanism
from .core.payload import PartSpec, Payload
from .core.rounds import Round
from .core.three_point import ThreePoint
from .operators.compose import Compose
from .operators.float_format import FloatFormat
from .operators.float_quantizer import FloatQuantizer
from .operators.packed_topk import PackedTopK
from .operators.permk import PermK
from .operators.randk import RandK
from .operators.shared_topk import SharedTopK
from .operators.sign import ScaledSign
from .operators.sparse import Sparsifier
from .operators.topk import TopK
from .mechanisms.clag import CLAG
from .mechanisms.co3 import CO3
from .mechanisms.co3_2s import CO3TwoStage
from .mechanisms.ef14 import EF14
from .mechanisms.ef14_momentum import MomentumCorrectedEF14
from .mechanisms.ef21 import EF21
from .mechanisms.ef21_plus import EF21Plus
from .mechanisms.ef21_sgdm import EF21SGDM
from .mechanisms.gd import GD
from .mechanisms.lag import LAG, LAGWK
from .mechanisms.marina import MARINA
from .mechanisms.sasg import SASG
from .mechanisms.threepc_v1 import ThreePCv1
from .mechanisms.threepc_v2 import ThreePCv2
from .mechanisms.threepc_v3 import ThreePCv3
from .mechanisms.threepc_v4 import ThreePCv4
from .mechanisms.threepc_v5 import ThreePCv5

__all__ = ["__version__", "CLAG", "CO3", "CO3TwoStage", "Compose", "Compressor", "EF14", "EF21", "EF21Plus", "EF21SGDM",
           "FloatFormat", "FloatQuantizer", "GD", "Identity", "LAG", "LAGWK", "MARINA", "Mechanism", "MomentumCorrectedEF14", "PartSpec",
           "PackedTopK", "Payload", "PermK", "RandK", "Round", "SASG", "ScaledSign", "SharedTopK", "Sparsifier", "ThreePCv1", "ThreePCv2",
           "ThreePCv3", "ThreePCv4", "ThreePCv5", "ThreePoint", "TopK"]
