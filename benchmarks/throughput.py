"""Training images/s: replast vs a plain torchvision DataLoader loop vs synthetic on-device data.

    python benchmarks/throughput.py                     # CPU: MobileNetV2 and EfficientNet-Lite0 at 128 px
    python benchmarks/throughput.py --sizes [128,224]   # GPU

Writes benchmarks/results/throughput_<device>.json with the ratios (see replast.bench).
"""

import sys

from replast.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
