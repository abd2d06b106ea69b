"""The catalog of compact blocks. Each is a plain `nn.Module` that drops into any model, with its registry record.

Adding a block: write `archs/blocks/<name>.py` (the module and a `register(BlockKind(...))` record; see
`ghost.py`) and import it below. The import is the registration: catalog order is the order of these lines.
"""
from .layers import ConvBNAct, SqueezeExcite, make_act  # noqa: F401  shared layers

from .conv import KIND as _conv  # noqa: F401  (registration lines, in catalog order)
from .dws import DepthwiseSeparable
from .ir import InvertedResidual
from .fire import Fire
from .lowrank import LowRankConv2d, LowRankConvBNAct, full_rank
from .basic import BasicResidual
from .pool import MAXPOOL as _maxpool, AVGPOOL as _avgpool  # noqa: F401
from .ghost import GhostBottleneck, GhostModule
from .mbv3 import MBConv3

__all__ = ["ConvBNAct", "SqueezeExcite", "make_act", "DepthwiseSeparable", "InvertedResidual", "Fire",
           "LowRankConv2d", "LowRankConvBNAct", "full_rank", "BasicResidual", "GhostModule", "GhostBottleneck",
           "MBConv3"]
