"""Cut the embedded CIFAR-10 sample shipped inside the package from the full Hub-layout copy.

Run once by a maintainer: `python tools/make_embedded_sample.py ../shared/data/cifar10`.
The source rows are already shuffled with a fixed seed, so a prefix is roughly class-balanced.
"""

import sys
from pathlib import Path

import datasets

TRAIN_ROWS = 2500
TEST_ROWS = 500
OUT = Path(__file__).resolve().parent.parent / "distillctl/data/sample/cifar10/plain_text"


def main(source: str) -> None:
    """Write the first TRAIN_ROWS/TEST_ROWS rows of each split, keeping the Hub's parquet schema."""
    splits = datasets.load_dataset(source)
    OUT.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", TRAIN_ROWS), ("test", TEST_ROWS)):
        path = OUT / f"{split}-00000-of-00001.parquet"
        splits[split].select(range(rows)).to_parquet(str(path))
        print(f"{path}: {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/cifar10")
