"""Make this folder's Fashion-MNIST subset from the full IDX files (Debian's
dataset-fashion-mnist package, or the files from https://github.com/zalandoresearch/fashion-mnist):
the first 6,000 training and the first 1,000 test images with their labels, in the same
gzipped IDX format, byte for byte the first records of the originals.

    python tests/data/fashion-mnist/make_subset.py /usr/share/datasets/fashion-mnist tests/data/fashion-mnist
"""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

#: File -> how many records to keep.
KEEP = {"train-images-idx3-ubyte": 6000, "train-labels-idx1-ubyte": 6000,
        "t10k-images-idx3-ubyte": 1000, "t10k-labels-idx1-ubyte": 1000}


def subset(source: Path, target: Path) -> None:
    for name, n in KEEP.items():
        data = gzip.open(source / f"{name}.gz", "rb").read()
        ndim = data[3]
        shape = struct.unpack(f">{ndim}i", data[4:4 + 4 * ndim])
        record = 1
        for d in shape[1:]:
            record *= d
        head = data[:3] + bytes((ndim,)) + struct.pack(f">{ndim}i", n, *shape[1:])
        body = data[4 + 4 * ndim: 4 + 4 * ndim + n * record]
        with gzip.GzipFile(target / f"{name}.gz", "wb", compresslevel=9, mtime=0) as out:
            out.write(head + body)


if __name__ == "__main__":
    subset(Path(sys.argv[1]), Path(sys.argv[2]))
