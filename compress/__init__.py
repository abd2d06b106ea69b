"""edgenas.compress: pruning, low-rank factorization, distillation, quantization, weight sharing + Huffman coding,
and the stage runner behind `python -m compress.run MODEL_DIR [stages...]`.

    from compress.prune import prune_masks, make_permanent, prune_channels, iterative_prune
    from compress.lowrank import lowrank               # SVD factorization of Linear / Conv2d layers
    from compress.distill import distill, load_teacher
    from compress.stages import run_stages, load_stage
    from compress.quantize import quantize, load_quantized   # int8 / fp16 / dynamic with ONNX Runtime
    from compress.share import share_weights            # k-means weight sharing + centroid fine-tuning
    from compress.huffman import encode, decode         # Huffman-coded sparse file, bit-exact round trip

(The submodules `prune`, `lowrank` and `distill` share their names with their main functions, so the functions
are not re-exported here: `compress.prune` stays the module.)
"""
from .lowrank import LowRankLinear, plan_ranks
from .prune import (METHODS, ChannelPruner, apply_masks, compute_masks, iterative_prune, layer_sparsity,
                    make_permanent, nonzero_params, prune_channels, prune_masks, sparsity)
from .modeldir import describe_structure, load_model, load_stage, save_stage_model
from .stages import COLUMNS, CompressConfig, Stage, format_table, run_stages

__all__ = [
    "LowRankLinear", "plan_ranks", "METHODS", "ChannelPruner", "apply_masks", "compute_masks", "iterative_prune",
    "layer_sparsity", "make_permanent", "nonzero_params", "prune_channels", "prune_masks", "sparsity", "COLUMNS",
    "CompressConfig", "Stage", "describe_structure", "format_table", "load_model", "load_stage", "run_stages",
    "save_stage_model",
]
