"""The README's zoo table: parameters and fvcore MFLOPs of the reference networks, against torchvision / the papers.

Every network is built from the catalog's blocks (`archs.zoo`) and counted with `archs.count` (fvcore): parameters,
fvcore's total MACs (batch norm and pooling included) and the MACs of convolutions and linear layers alone (what
papers report as Mult-Adds). Prints a markdown table and writes JSON.

    python benchmarks/zoo_table.py --json docs/benchmarks/zoo_table.json
    python benchmarks/zoo_table.py --quick          # the small networks only
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from archs import build, conv_linear_macs, count, zoo  # noqa: E402
from benchmarks._common import add_common_args, write_results  # noqa: E402

# (row label, zoo name, zoo arguments, reference figure, large?)
ROWS = [
    ("squeezenet1_0", "squeezenet1_0", {}, "1,248,424 (torchvision)", True),
    ("squeezenet1_1", "squeezenet1_1", {}, "1,235,496 (torchvision)", True),
    ("mobilenet_v2 (1.0)", "mobilenet_v2", {"width": 1.0}, "3,504,872 (torchvision)", True),
    ("mobilenet_v1 (1.0-224)", "mobilenet_v1", {"alpha": 1.0, "resolution": 224}, "4.2 M, 569 M Mult-Adds (paper)",
     True),
    ("mobilenet_v3_small (1.0)", "mobilenet_v3_small", {"width": 1.0}, "2,542,856 (torchvision)", True),
    ("mobilenet_v3_large (1.0)", "mobilenet_v3_large", {"width": 1.0}, "5,483,032 (torchvision)", True),
    ("ghostnet (1.0)", "ghostnet", {"width": 1.0},
     "5,182,508, 141.15 M conv + FC MACs (timm `ghostnet_100`); 5.2 M, 141 M (paper)", True),
    ("resnet20 (CIFAR, 10 classes, 32×32)", "resnet20", {}, "0.27 M (paper)", False),
    ("lenet300_100 (MNIST)", "lenet300_100", {}, "266,610", False),
    ("lenet5 (Caffe, MNIST)", "lenet5", {}, "431 K", False),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=str(ROOT / "results/benchmarks/zoo_table.json"))
    add_common_args(ap, seeds=False)
    args = ap.parse_args()
    rows, out = [], []
    for label, name, kw, ref, large in ROWS:
        if args.quick and large:
            continue
        c = count(build(zoo.get(name, **kw)))
        cl = conv_linear_macs(c)
        out.append({"network": label, "zoo": name, "args": kw, "params": c.params, "reference": ref,
                    "fvcore_macs": c.macs, "conv_linear_macs": cl})
        rows.append([label, f"{c.params:,}", ref, f"{c.macs / 1e6:.2f}", f"{cl / 1e6:.2f} M"])
    print("At 1,000 classes and 224×224 unless stated, measured with `count`:\n")
    print(tabulate(rows, headers=["network", "params", "torchvision / paper", "fvcore MFLOPs (total)",
                                  "conv + FC MACs"], tablefmt="github"))
    path = write_results(args.json, {"benchmark": "zoo_table", "networks": out}, args)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
