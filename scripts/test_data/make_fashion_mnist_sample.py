#!/usr/bin/env python
"""
Writes the Fashion-MNIST sample that the tests read (tests/data/fashion-mnist): the first images and labels of the
full data set's train and t10k files, in the same IDX .gz format, so that `run_image_classification.py` loads it as
it loads the full set (`--fashion_mnist_dir tests/data/fashion-mnist`).

    python scripts/test_data/make_fashion_mnist_sample.py    # from Debian's dataset-fashion-mnist, 1,000 train, 500 test
"""

import argparse
import gzip
from pathlib import Path

import numpy as np

from mixer_scripts.common import FASHION_MNIST, read_idx


def write_idx(path: Path, array: np.ndarray):
    """An IDX file: 2 zero bytes, the type (0x08: unsigned byte), the number of dimensions, big-endian sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    # mtime=0: the same bytes on every run.
    path.write_bytes(gzip.compress(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes(), mtime=0))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=FASHION_MNIST, help="the full data set's folder")
    parser.add_argument("--output", type=Path, default=Path(__file__).parents[2] / "tests/data/fashion-mnist")
    parser.add_argument("--train", type=int, default=1000, help="images from the training file")
    parser.add_argument("--test", type=int, default=500, help="images from the test file")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    for prefix, count in [("train", args.train), ("t10k", args.test)]:
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{prefix}-{kind}-ubyte.gz"
            write_idx(args.output / name, read_idx(args.source / name)[:count])
    print(f"Wrote {args.train} training and {args.test} test images to {args.output}")


if __name__ == "__main__":
    main()
