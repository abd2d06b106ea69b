"""edgenas.archs: the catalog of compact blocks, declarative network specs, the builder and exact cost counting."""
from .blocks import (BasicResidual, ConvBNAct, DepthwiseSeparable, Fire, GhostBottleneck, GhostModule,
                     InvertedResidual, LowRankConv2d, LowRankConvBNAct, MBConv3, SqueezeExcite)
from .builder import Net, build
from .count import CountResult, conv_linear_macs, count, count_ptflops, latency, num_params
from .errors import SpecError, UserError
from .estimate import Cost, estimate
from .spec import BLOCK_TYPES, HeadSpec, NetSpec, StageSpec, StemSpec, make_divisible
from .units import format_quantity, parse_quantity
from . import zoo

__all__ = [
    "BasicResidual", "ConvBNAct", "DepthwiseSeparable", "Fire", "GhostBottleneck", "GhostModule", "MBConv3",
    "InvertedResidual", "LowRankConv2d",
    "LowRankConvBNAct", "SqueezeExcite", "Net", "build", "CountResult", "conv_linear_macs", "count",
    "count_ptflops", "latency", "num_params", "SpecError", "UserError", "Cost", "estimate", "BLOCK_TYPES",
    "HeadSpec", "NetSpec", "StageSpec", "StemSpec", "make_divisible", "format_quantity", "parse_quantity", "zoo",
]
