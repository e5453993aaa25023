"""What the benchmark generators share: the SYSU-MM01 split files and the command line.

Each generator (alt_synthetic.py, gen_nir.py, gen_walker.py, gen_crowd.py) draws its own people;
only the on-disk layout is common (``camN/<pid>/<index>.jpg``, ``exp/*_id.txt``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Iterable, Mapping

CAMERAS = (1, 2, 3, 4, 5, 6)


def write_layout(root: Path, splits: Mapping[str, Iterable[int]], pids: Iterable[int]) -> None:
    """Every camera folder, ``exp/<split>_id.txt`` (sorted, comma-separated) and ``exp/available_id.txt``."""
    for cam in CAMERAS:
        (root / f"cam{cam}").mkdir(parents=True, exist_ok=True)
    (root / "exp").mkdir(exist_ok=True)
    for name, members in splits.items():
        (root / "exp" / name).write_text(",".join(str(p) for p in sorted(members)) + "\n", encoding="utf-8")
    (root / "exp" / "available_id.txt").write_text(",".join(str(p) for p in pids) + "\n", encoding="utf-8")


def generator_main(generate: Callable[..., dict], description: str) -> None:
    """``python GENERATOR.py OUT --ids N --seed S --images-per-camera K``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("out", type=Path)
    parser.add_argument("--ids", type=int, default=90)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images-per-camera", type=int, default=3)
    args = parser.parse_args()
    print(generate(args.out, ids=args.ids, seed=args.seed, images_per_camera=args.images_per_camera))
