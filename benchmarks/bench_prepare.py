"""Time ``mclnet prepare sysu`` on a fake SYSU-MM01 tree of about 10k small images.

Usage: python benchmarks/bench_prepare.py [--images 10000] [--cache]

Builds the tree in a temporary folder (not timed), then runs the real CLI in a
subprocess (timed, Python start-up included) and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def build_tree(root: Path, images: int, seed: int = 0) -> int:
    """SYSU-MM01 layout with ``images`` 64x32 JPEGs over 6 cameras; returns the number written."""
    rng = np.random.default_rng(seed)
    per_folder = 10
    ids = max(3, images // (6 * per_folder))
    tiles = [Image.fromarray(rng.integers(0, 256, size=(64, 32, 3), dtype=np.uint8)) for _ in range(16)]
    written = 0
    for pid in range(1, ids + 1):
        for cam in range(1, 7):
            folder = root / f"cam{cam}" / f"{pid:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(1, per_folder + 1):
                tiles[(pid + cam + index) % len(tiles)].save(folder / f"{index:04d}.jpg", quality=85)
                written += 1
    (root / "exp").mkdir()
    pids = list(range(1, ids + 1))
    n_train, n_val = int(ids * 0.6), int(ids * 0.1)
    parts = {"train": pids[:n_train], "val": pids[n_train : n_train + n_val], "test": pids[n_train + n_val :]}
    for split, members in parts.items():
        (root / "exp" / f"{split}_id.txt").write_text(",".join(map(str, members)) + "\n")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--cache", action="store_true", help="also time --cache (288x144)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "SYSU-MM01"
        start = time.perf_counter()
        written = build_tree(root, args.images)
        build_s = time.perf_counter() - start
        command = [sys.executable, "-m", "mclnet_cli", "--quiet", "prepare", "sysu", str(root), "--out", str(Path(tmp) / "prepared"), "--json"]
        if args.cache:
            command.append("--cache")
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env={**os.environ})
        prepare_s = time.perf_counter() - start
        if result.returncode != 0:
            sys.exit(f"prepare failed: {result.stderr.strip()}")
        counts = json.loads(result.stdout)["counts"]
        total = sum(m["images"] for split in counts.values() for m in split.values())
        print(json.dumps({
            "images_on_disk": written,
            "images_prepared": total,
            "cache": args.cache,
            "build_tree_s": round(build_s, 2),
            "prepare_s": round(prepare_s, 2),
            "images_per_s": round(total / prepare_s, 1),
            "cpus": os.cpu_count(),
        }))


if __name__ == "__main__":
    main()
