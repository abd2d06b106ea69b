"""What a trained model expects of its input: colour, size, resizing, value range, normalisation, class names.

Every winner and compression-stage folder records it in ``metrics.json`` under ``"preprocessing"`` so that the model
runs on raw images without the training code's defaults (`archs.predict` reads it). The pipeline, exactly as
`training.data` prepares images: convert to grey (1 channel) or RGB (3), resize to the data set's side
``data_resolution`` (bilinear), scale 8-bit pixels to ``[0, value_max]`` (digits store 0–16, other data sets 0–255),
subtract ``mean`` and divide by ``std`` per channel, then resize to the model's ``input_size`` (bilinear, antialiased
when shrinking; ``input_size = round(resolution · rho)``, so rho ≠ 1 means the model sees a resized image).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError

__all__ = ["Preprocessing", "PREPROCESSING_KEY"]

PREPROCESSING_KEY = "preprocessing"  # the key in metrics.json


@dataclass(frozen=True)
class Preprocessing:
    """Input contract of a model directory (see the module docstring for the order of the steps)."""

    in_chans: int
    data_resolution: int       # side (px) of the data set's images, the size the statistics were taken at
    input_size: int            # side (px) the model takes: data_resolution resized by rho
    rho: float                 # resolution multiplier of the spec (1 = no resize inside the pipeline)
    value_max: float           # an 8-bit pixel of 255 is this value before normalisation
    mean: tuple[float, ...]    # per channel, in [0, value_max] units
    std: tuple[float, ...]
    classes: list[str] = field(default_factory=list)  # class names in logit order (indices when unnamed)
    dataset: str = ""
    layout: str = "NCHW"
    resize: str = "bilinear"

    @property
    def color(self) -> str:
        """Pillow mode the image is converted to: "L" (grey) or "RGB"."""
        return "L" if self.in_chans == 1 else "RGB"

    @classmethod
    def from_data(cls, splits: Any, spec: Any) -> "Preprocessing":
        """From a `training.data.Splits` (statistics, classes, stored side) and the model's `NetSpec`."""
        n = int(spec.num_classes)
        classes = list(getattr(splits, "classes", []) or [])
        if len(classes) != n:
            classes = [str(i) for i in range(n)]
        return cls(in_chans=int(spec.in_chans), data_resolution=int(splits.resolution), input_size=int(spec.input_size),
                   rho=float(spec.rho), value_max=float(getattr(splits, "value_max", 255.0)),
                   mean=tuple(float(v) for v in splits.mean), std=tuple(float(v) for v in splits.std),
                   classes=classes, dataset=str(getattr(splits, "name", "")))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["color"] = self.color
        d["value_range"] = [0.0, self.value_max]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        try:
            return cls(in_chans=int(d["in_chans"]), data_resolution=int(d["data_resolution"]),
                       input_size=int(d["input_size"]), rho=float(d.get("rho", 1.0)), value_max=float(d["value_max"]),
                       mean=tuple(float(v) for v in d["mean"]), std=tuple(float(v) for v in d["std"]),
                       classes=[str(c) for c in d.get("classes", [])], dataset=str(d.get("dataset", "")),
                       layout=str(d.get("layout", "NCHW")), resize=str(d.get("resize", "bilinear")))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"preprocessing record is incomplete or invalid: {type(e).__name__}: {e}") from None

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, value_max] (N×C×H×W at data_resolution) -> the model's input (normalised, input_size)."""
        m = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        x = (x.to(torch.float32) - m) / s
        h, w = x.shape[-2:]
        if (h, w) != (self.input_size, self.input_size):
            shrinking = self.input_size < h or self.input_size < w
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=shrinking)
        return x.contiguous()

    def images_to_tensor(self, images: Sequence[Any]) -> torch.Tensor:
        """Pillow images (any size and mode) -> the model's float32 N×C×H×W input."""
        from PIL import Image

        arrays = []
        for im in images:
            im = im.convert(self.color)
            if im.size != (self.data_resolution, self.data_resolution):
                im = im.resize((self.data_resolution, self.data_resolution), Image.Resampling.BILINEAR)
            a = np.asarray(im, dtype=np.float32)
            a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
            arrays.append(a * (self.value_max / 255.0))
        return self.normalize(torch.from_numpy(np.stack(arrays)))
