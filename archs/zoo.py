"""Reference networks described as `NetSpec`s from the same catalog blocks.

Published architectures are faithful: with 1,000 classes at 224x224 SqueezeNet 1.0/1.1, MobileNetV2 and
MobileNetV3 small/large have torchvision's exact parameter counts, MobileNetV1 1.0-224 has the paper's 569 M
Mult-Adds and 4.2 M parameters, and GhostNet 1.0x has timm's `ghostnet_100` parameter count and MACs. Every function takes `num_classes`, `in_chans` and `resolution` to retarget the network.
"""
from __future__ import annotations

from typing import Callable

from .errors import UserError
from .spec import HeadSpec, NetSpec, StageSpec, StemSpec, make_divisible


def lenet300_100(num_classes: int = 10, in_chans: int = 1, resolution: int = 28) -> NetSpec:
    """LeNet-300-100 (LeCun et al. 1998): a 784-300-100-10 MLP, 266,610 parameters on MNIST."""
    return NetSpec(num_classes=num_classes, in_chans=in_chans, resolution=resolution, norm=False, divisor=1,
                   stem=StemSpec(channels=0), stages=[], head=HeadSpec("flatten", [300, 100]), name="lenet300_100")


def lenet5(num_classes: int = 10, in_chans: int = 1, resolution: int = 28) -> NetSpec:
    """LeNet-5 as in Caffe and Deep Compression (20-50-500-10 conv/fc, 431,080 parameters on MNIST)."""
    return NetSpec(num_classes=num_classes, in_chans=in_chans, resolution=resolution, norm=False, divisor=1,
                   stem=StemSpec(20, 5, 1, 0),
                   stages=[StageSpec("maxpool", kernel=2, stride=2),
                           StageSpec("conv", 50, kernel=5, args={"padding": 0}),
                           StageSpec("maxpool", kernel=2, stride=2)],
                   head=HeadSpec("flatten", [500]), name="lenet5")


def svhn_cnn(num_classes: int = 10, in_chans: int = 3, resolution: int = 32) -> NetSpec:
    """5-layer AlexNet-like CNN for SVHN: three 5x5/3x3 conv+BN+ReLU+maxpool stages (32-64-128), FC 256, FC 10."""
    return NetSpec(num_classes=num_classes, in_chans=in_chans, resolution=resolution, divisor=1,
                   stem=StemSpec(32, 5, 1),
                   stages=[StageSpec("maxpool", kernel=2, stride=2),
                           StageSpec("conv", 64, kernel=5),
                           StageSpec("maxpool", kernel=2, stride=2),
                           StageSpec("conv", 128, kernel=3),
                           StageSpec("maxpool", kernel=2, stride=2)],
                   head=HeadSpec("flatten", [256], dropout=0.5), name="svhn_cnn")


def _fire_stages(cfg: list, squeeze_ratio: float = 0.125) -> list[StageSpec]:
    out = []
    for item in cfg:
        if item == "M":
            out.append(StageSpec("maxpool", kernel=3, stride=2, args={"ceil_mode": True}))
        else:
            ch, n = item
            out.append(StageSpec("fire", ch, repeats=n, args={"squeeze_ratio": squeeze_ratio, "pct3x3": 0.5}))
    return out


def squeezenet1_0(num_classes: int = 1000, in_chans: int = 3, resolution: int = 224) -> NetSpec:
    """SqueezeNet 1.0 (Iandola et al. 2016), torchvision's layout: 1,248,424 parameters at 1,000 classes."""
    return NetSpec(num_classes=num_classes, in_chans=in_chans, resolution=resolution, norm=False,
                   stem=StemSpec(96, 7, 2, 0),
                   stages=_fire_stages(["M", (128, 2), (256, 1), "M", (256, 1), (384, 2), (512, 1), "M", (512, 1)]),
                   head=HeadSpec("conv", dropout=0.5), name="squeezenet1_0")


def squeezenet1_1(num_classes: int = 1000, in_chans: int = 3, resolution: int = 224) -> NetSpec:
    """SqueezeNet 1.1: 2.4x fewer MACs than 1.0 at the same accuracy; 1,235,496 parameters at 1,000 classes."""
    return NetSpec(num_classes=num_classes, in_chans=in_chans, resolution=resolution, norm=False,
                   stem=StemSpec(64, 3, 2, 0),
                   stages=_fire_stages(["M", (128, 2), "M", (256, 2), "M", (384, 2), (512, 2)]),
                   head=HeadSpec("conv", dropout=0.5), name="squeezenet1_1")


def mobilenet_v1(alpha: float = 1.0, resolution: int = 224, num_classes: int = 1000, in_chans: int = 3) -> NetSpec:
    """MobileNetV1 (Howard et al. 2017) with width multiplier alpha at input `resolution` (rho = resolution/224).

    The paper's Table 1 prints the last depthwise layer with stride 2; the network (and its 569 M Mult-Adds)
    uses stride 1 there.
    """
    cfg = [(64, 1, 1), (128, 2, 1), (128, 1, 1), (256, 2, 1), (256, 1, 1), (512, 2, 1), (512, 1, 5),
           (1024, 2, 1), (1024, 1, 1)]
    return NetSpec(num_classes=num_classes, in_chans=in_chans, resolution=224, rho=resolution / 224, alpha=alpha,
                   stem=StemSpec(32, 3, 2),
                   stages=[StageSpec("dws", c, repeats=n, stride=s) for c, s, n in cfg],
                   head=HeadSpec("pool"), name=f"mobilenet_v1_{alpha:g}_{resolution}")


def mobilenet_v2(width: float = 1.0, num_classes: int = 1000, in_chans: int = 3, resolution: int = 224) -> NetSpec:
    """MobileNetV2 (Sandler et al. 2018), torchvision's layout: 3,504,872 parameters at width 1.0, 1,000 classes."""
    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    stages = [StageSpec("ir", c, repeats=n, stride=s, args={"expand": t}) for t, c, n, s in cfg]
    stages.append(StageSpec("conv", make_divisible(1280 * max(1.0, width), 8), kernel=1, scale=False))
    return NetSpec(num_classes=num_classes, in_chans=in_chans, resolution=resolution, alpha=width, act="relu6",
                   stem=StemSpec(32, 3, 2), stages=stages, head=HeadSpec("pool", dropout=0.2),
                   name=f"mobilenet_v2_{width:g}")


def resnet20(num_classes: int = 10, in_chans: int = 3, resolution: int = 32) -> NetSpec:
    """ResNet-20 for CIFAR (He et al. 2016, option A shortcuts): 269,722 parameters (0.27 M), 40.55 M conv MACs."""
    return NetSpec(num_classes=num_classes, in_chans=in_chans, resolution=resolution, divisor=1,
                   stem=StemSpec(16, 3, 1),
                   stages=[StageSpec("basic", 16, 3, 1, args={"shortcut": "A"}),
                           StageSpec("basic", 32, 3, 2, args={"shortcut": "A"}),
                           StageSpec("basic", 64, 3, 2, args={"shortcut": "A"})],
                   head=HeadSpec("pool"), name="resnet20")


# MobileNetV3 blocks (torchvision's table): in, kernel, expanded, out, squeeze-excite, hard-swish, stride
_MBV3 = {
    "large": ([(16, 3, 16, 16, False, False, 1), (16, 3, 64, 24, False, False, 2), (24, 3, 72, 24, False, False, 1),
               (24, 5, 72, 40, True, False, 2), (40, 5, 120, 40, True, False, 1), (40, 5, 120, 40, True, False, 1),
               (40, 3, 240, 80, False, True, 2), (80, 3, 200, 80, False, True, 1), (80, 3, 184, 80, False, True, 1),
               (80, 3, 184, 80, False, True, 1), (80, 3, 480, 112, True, True, 1), (112, 3, 672, 112, True, True, 1),
               (112, 5, 672, 160, True, True, 2), (160, 5, 960, 160, True, True, 1), (160, 5, 960, 160, True, True, 1)],
              1280),
    "small": ([(16, 3, 16, 16, True, False, 2), (16, 3, 72, 24, False, False, 2), (24, 3, 88, 24, False, False, 1),
               (24, 5, 96, 40, True, True, 2), (40, 5, 240, 40, True, True, 1), (40, 5, 240, 40, True, True, 1),
               (40, 5, 120, 48, True, True, 1), (48, 5, 144, 48, True, True, 1), (48, 5, 288, 96, True, True, 2),
               (96, 5, 576, 96, True, True, 1), (96, 5, 576, 96, True, True, 1)], 1024),
}


def _mobilenet_v3(size: str, width: float, num_classes: int, in_chans: int, resolution: int) -> NetSpec:
    cfg, last = _MBV3[size]
    stages = [StageSpec("mbv3", c, stride=s, kernel=k,
                        args={"expand": e / i, "se": 0.25 if se else 0.0, "act": "hardswish" if hs else "relu"})
              for i, k, e, c, se, hs, s in cfg]
    stages.append(StageSpec("conv", 6 * cfg[-1][3], kernel=1))  # last conv: 6x the last block's width
    return NetSpec(num_classes=num_classes, in_chans=in_chans, resolution=resolution, alpha=width, act="hardswish",
                   stem=StemSpec(16, 3, 2), stages=stages,
                   head=HeadSpec("pool", [make_divisible(last * width, 8)], dropout=0.2),
                   name=f"mobilenet_v3_{size}_{width:g}")


def mobilenet_v3_large(width: float = 1.0, num_classes: int = 1000, in_chans: int = 3,
                       resolution: int = 224) -> NetSpec:
    """MobileNetV3-Large (Howard et al. 2019), torchvision's layout: 5,483,032 parameters at width 1.0, 1,000 classes."""
    return _mobilenet_v3("large", width, num_classes, in_chans, resolution)


def mobilenet_v3_small(width: float = 1.0, num_classes: int = 1000, in_chans: int = 3,
                       resolution: int = 224) -> NetSpec:
    """MobileNetV3-Small (Howard et al. 2019), torchvision's layout: 2,542,856 parameters at width 1.0, 1,000 classes."""
    return _mobilenet_v3("small", width, num_classes, in_chans, resolution)


# GhostNet bottlenecks (the paper's Table 1, timm's cfgs): kernel, expanded, out, squeeze-excite ratio, stride
_GHOST = [(3, 16, 16, 0, 1), (3, 48, 24, 0, 2), (3, 72, 24, 0, 1), (5, 72, 40, 0.25, 2), (5, 120, 40, 0.25, 1),
          (3, 240, 80, 0, 2), (3, 200, 80, 0, 1), (3, 184, 80, 0, 1), (3, 184, 80, 0, 1), (3, 480, 112, 0.25, 1),
          (3, 672, 112, 0.25, 1), (5, 672, 160, 0.25, 2), (5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1),
          (5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1)]


def ghostnet(width: float = 1.0, num_classes: int = 1000, in_chans: int = 3, resolution: int = 224) -> NetSpec:
    """GhostNet 1.0x (Han et al. 2020) as timm's `ghostnet_100`: 5,182,508 parameters, 141.2 M conv and linear MACs."""
    stages, c_in = [], 16
    for k, e, c, se, s in _GHOST:
        stages.append(StageSpec("ghost", c, stride=s, kernel=k, args={"expand": e / c_in, "se": float(se)}))
        c_in = c
    stages.append(StageSpec("conv", 960, kernel=1))
    return NetSpec(num_classes=num_classes, in_chans=in_chans, resolution=resolution, alpha=width, divisor=4,
                   stem=StemSpec(16, 3, 2), stages=stages, head=HeadSpec("pool", [1280], dropout=0.2),
                   name=f"ghostnet_{width:g}")


ZOO: dict[str, Callable[..., NetSpec]] = {
    "lenet300_100": lenet300_100, "lenet5": lenet5, "svhn_cnn": svhn_cnn, "squeezenet1_0": squeezenet1_0,
    "squeezenet1_1": squeezenet1_1, "mobilenet_v1": mobilenet_v1, "mobilenet_v2": mobilenet_v2, "resnet20": resnet20,
    "mobilenet_v3_small": mobilenet_v3_small, "mobilenet_v3_large": mobilenet_v3_large, "ghostnet": ghostnet,
}


def names() -> list[str]:
    return sorted(ZOO)


def get(name: str, **kwargs) -> NetSpec:
    """Spec of a zoo network by name (e.g. 'resnet20', 'mobilenet_v1'), with keyword overrides."""
    if name not in ZOO:
        raise UserError(f"unknown zoo network {name!r}; choose from {', '.join(names())}")
    return ZOO[name](**kwargs).validate()
