"""Deep Compression's trained quantization (Han et al. 2016): k-means weight sharing with centroid fine-tuning.

    info = share_weights(model, bits=5, train=splits.train, val=splits.val, cfg=TrainConfig(epochs=5))
    info.layers["head.1.weight"].codebook     # the layer's <= 2**bits shared values (float32)
    info.layers["head.1.weight"].index        # cluster of every weight, -1 where the weight is pruned (zero)

1. For every Conv2d / Linear weight (biases and BatchNorm stay float, as in the paper) the NON-ZERO weights
   are clustered with scikit-learn's `KMeans` (n_init=1) into at most 2**bits clusters, initialized LINEARLY:
   centroids evenly spaced between the layer's smallest and largest weight (the paper's best initialization:
   it keeps the rare large weights represented). Pruned zeros are not clustered and stay exactly zero.
2. Fine-tuning of the centroids: each weight is `codebook[index]` through a parametrization
   (`torch.nn.utils.parametrize`) whose trainable tensor is the codebook; the gradient of the shared centroid
   is therefore the SUM of the gradients of all weights in its cluster, as in the paper. The assignment and
   the zero mask are fixed buffers. Training uses the project's one loop, `training.loop.fit` (with optional
   distillation from `teacher`). Afterwards the parametrization is removed and plain weights are written back:
   every layer still holds at most 2**bits distinct non-zero values, and zeros are still zero.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from archs.errors import UserError

__all__ = ["SharedLayer", "SharedInfo", "share_weights", "kmeans_codebook", "shareable_layers"]

MAX_BITS = 16


@dataclass
class SharedLayer:
    """One shared weight tensor: `weight == where(index >= 0, codebook[index], 0)` exactly."""

    key: str                      # state_dict key of the weight, e.g. "head.1.weight"
    module: str                   # module name, e.g. "head.1"
    kind: str                     # "conv" | "fc"
    shape: tuple[int, ...]
    codebook: torch.Tensor        # (clusters,) in the weight's dtype, sorted ascending before fine-tuning
    index: torch.Tensor           # int32, the weight's shape; -1 where the weight is pruned (zero)
    numel: int = 0
    nonzero: int = 0
    clusters: int = 0
    codebook_init: torch.Tensor | None = None   # the k-means centroids before fine-tuning

    @property
    def mask(self) -> torch.Tensor:
        return self.index >= 0

    def weight(self) -> torch.Tensor:
        """The weight this layer's codebook and indices describe."""
        cb = self.codebook.detach().cpu()
        idx = self.index.long().clamp_min(0)
        return torch.where(self.mask, cb[idx], torch.zeros((), dtype=cb.dtype))

    def to_dict(self) -> dict:
        return {"key": self.key, "module": self.module, "kind": self.kind, "shape": list(self.shape),
                "numel": self.numel, "nonzero": self.nonzero, "clusters": self.clusters}


@dataclass
class SharedInfo:
    """What `share_weights` did: per-layer codebooks and indices (keyed by state_dict key), the model (with plain
    shared weights written back), accuracy before/after centroid fine-tuning, timings."""

    bits: int
    layers: dict[str, SharedLayer]
    model: nn.Module | None = None
    val_acc_before_finetune: float | None = None
    val_acc: float | None = None
    finetune_epochs: int = 0
    finetune_history: list = field(default_factory=list)
    kmeans_seconds: float = 0.0
    finetune_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"bits": self.bits, "layers": [l.to_dict() for l in self.layers.values()],
                "val_acc_before_finetune": self.val_acc_before_finetune, "val_acc": self.val_acc,
                "finetune_epochs": self.finetune_epochs, "kmeans_seconds": self.kmeans_seconds,
                "finetune_seconds": self.finetune_seconds}


# --------------------------------------------------------------------------------------------------------------------
# k-means
# --------------------------------------------------------------------------------------------------------------------
def kmeans_codebook(values: np.ndarray, k: int, seed: int = 0, max_iter: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """1-D k-means of `values` into at most k clusters with linear initialization (scikit-learn KMeans, n_init=1).

    Returns (codebook sorted ascending, without empty clusters, float64; labels int64 into it). With at most k
    distinct values the codebook is those values themselves (exact, no clustering needed).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    uniq, inverse = np.unique(values, return_inverse=True)
    if uniq.size <= k:
        return uniq, inverse.astype(np.int64)
    from sklearn.cluster import KMeans

    init = np.linspace(values.min(), values.max(), k).reshape(-1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on duplicate points
        km = KMeans(n_clusters=k, init=init, n_init=1, max_iter=max_iter, random_state=seed).fit(values.reshape(-1, 1))
    centers = km.cluster_centers_.ravel()
    labels = km.labels_.astype(np.int64)
    used = np.unique(labels)
    order = used[np.argsort(centers[used], kind="stable")]
    remap = np.full(k, -1, dtype=np.int64)
    remap[order] = np.arange(order.size)
    return centers[order], remap[labels]


# --------------------------------------------------------------------------------------------------------------------
# The parametrization: weight = codebook[index] on the mask, 0 elsewhere
# --------------------------------------------------------------------------------------------------------------------
class _SharedWeight(nn.Module):
    def __init__(self, index: torch.Tensor, clusters: int):
        super().__init__()
        self.register_buffer("mask", index >= 0)
        self.register_buffer("index", index.long().clamp_min(0))
        self.clusters = int(clusters)

    def forward(self, codebook: torch.Tensor) -> torch.Tensor:
        # gather: autograd sums the gradients of all weights of a cluster into its centroid
        return torch.where(self.mask, codebook[self.index], torch.zeros((), dtype=codebook.dtype,
                                                                        device=codebook.device))

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        # cluster means (only used when the parametrization is registered; the codebook is then set exactly)
        idx = self.index[self.mask]
        w = weight[self.mask]
        s = torch.zeros(self.clusters, dtype=weight.dtype, device=weight.device).index_add_(0, idx, w)
        n = torch.zeros(self.clusters, dtype=weight.dtype, device=weight.device).index_add_(0, idx, torch.ones_like(w))
        return s / n.clamp_min(1)


def shareable_layers(model: nn.Module, layers: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """The Conv2d / Linear modules to share, by module name (all of them, or the names in `layers`)."""
    mods = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    if layers is None:
        return mods
    wanted = [str(n).removesuffix(".weight") for n in layers]
    bad = [n for n in wanted if n not in mods]
    if bad:
        raise UserError(f"cannot share {', '.join(map(repr, bad[:5]))}: not Conv2d/Linear layers of the model "
                        f"(choose among {', '.join(list(mods)[:8])}{', ...' if len(mods) > 8 else ''})")
    return {n: mods[n] for n in wanted}


def _plain_weights(model: nn.Module) -> None:
    """Fold pruning masks (torch.nn.utils.prune) and any parametrization of `weight` into plain tensors."""
    from torch.nn.utils import prune as tprune

    for m in model.modules():
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, tprune.BasePruningMethod):
                tprune.remove(m, hook._tensor_name)
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)


# --------------------------------------------------------------------------------------------------------------------
# share_weights
# --------------------------------------------------------------------------------------------------------------------
def share_weights(model: nn.Module, bits: int, train=None, val=None, cfg=None, teacher: nn.Module | None = None,
                  layers: Iterable[str] | None = None, *, temperature: float = 4.0, alpha: float = 0.9,
                  seed: int | None = None, progress: bool = False) -> SharedInfo:
    """Share the weights of `model` IN PLACE: k-means to at most 2**bits values per Conv2d/Linear weight over its
    non-zero weights (linear init), then — when `train` and `cfg` are given and cfg.epochs > 0 — fine-tune the
    centroids with `training.loop.fit` (distilling from `teacher` when given). Returns a SharedInfo whose
    `model` is `model` with plain shared weights. `layers` restricts sharing to those module names.
    """
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= int(bits) <= MAX_BITS:
        raise UserError(f"weight-sharing bits must be an integer in 1..{MAX_BITS}, got {bits!r}")
    bits = int(bits)
    k = 2 ** bits
    if seed is None:
        seed = int(getattr(cfg, "seed", 0) or 0)
    _plain_weights(model)
    mods = shareable_layers(model, layers)
    if not mods:
        raise UserError("the model has no Conv2d or Linear layer to share")

    t0 = time.perf_counter()
    shared: dict[str, SharedLayer] = {}
    for name, m in mods.items():
        w = m.weight.detach()
        flat = w.reshape(-1).cpu()
        nz = flat != 0
        codebook, labels = kmeans_codebook(flat[nz].double().numpy(), k, seed=seed)
        index = torch.full((flat.numel(),), -1, dtype=torch.int32)
        index[nz] = torch.from_numpy(labels).to(torch.int32)
        cb = torch.from_numpy(codebook).to(w.dtype)
        key = f"{name}.weight" if name else "weight"
        layer = SharedLayer(key=key, module=name, kind="conv" if isinstance(m, nn.Conv2d) else "fc",
                            shape=tuple(w.shape), codebook=cb, index=index.reshape(w.shape), numel=flat.numel(),
                            nonzero=int(nz.sum()), clusters=int(cb.numel()), codebook_init=cb.clone())
        with torch.no_grad():
            m.weight.copy_(layer.weight().to(m.weight.device))
        shared[key] = layer
    info = SharedInfo(bits=bits, layers=shared, model=model, kmeans_seconds=time.perf_counter() - t0)

    from training.loop import evaluate, fit

    if val is not None and len(val):
        info.val_acc_before_finetune = info.val_acc = evaluate(model, val)
    epochs = int(getattr(cfg, "epochs", 0) or 0) if cfg is not None else 0
    if train is None or cfg is None or epochs == 0:
        return info

    # fine-tune the centroids: register weight = codebook[index] (trainable codebook, fixed index and mask)
    t0 = time.perf_counter()
    regs = []
    for name, m in mods.items():
        layer = shared[f"{name}.weight" if name else "weight"]
        if layer.clusters == 0:
            continue  # an all-zero layer: nothing to train, and its weight stays zero
        p = _SharedWeight(layer.index.to(m.weight.device), layer.clusters)
        parametrize.register_parametrization(m, "weight", p, unsafe=True)
        with torch.no_grad():
            m.parametrizations.weight.original.copy_(layer.codebook.to(m.weight.device))
        regs.append((m, layer))
    try:
        result = fit(model, train, val, cfg, teacher=teacher, temperature=temperature, alpha=alpha,
                     progress=progress, desc="centroid fine-tuning")
    finally:
        for m, layer in regs:
            layer.codebook = m.parametrizations.weight.original.detach().cpu().clone()
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    model.eval()
    info.finetune_epochs = epochs
    info.finetune_history = result.history
    info.val_acc = result.val_acc
    info.finetune_seconds = time.perf_counter() - t0
    return info
