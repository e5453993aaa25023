"""What the benchmark generators share: the SYSU-MM01 split files and the command line.

Each generator (alt_synthetic.py, gen_nir.py, gen_walker.py, gen_crowd.py) draws its own people;
only the on-disk layout is common (``camN/<pid>/<index>.jpg``, ``exp/*_id.txt``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

if TYPE_CHECKING:
    import numpy as np

CAMERAS = (1, 2, 3, 4, 5, 6)
VISIBLE = (1, 2, 4, 5)
INFRARED = (3, 6)
SPLIT = (0.6, 0.1)  # train, val; the rest is test


def check_arguments(root: Path, ids: int, images_per_camera: int) -> None:
    """The generators' shared refusals (one line each, through SystemExit)."""
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} is not empty")
    if ids < 10:
        raise SystemExit(f"--ids must be at least 10 (got {ids}) so that train, val and test all get identities")
    if images_per_camera < 1:
        raise SystemExit(f"--images-per-camera must be at least 1 (got {images_per_camera})")


def split_ids(pids: list[int], rng: "np.random.Generator") -> dict[str, list[int]]:
    """A random 60/10/30 split of ``pids`` into the three SYSU-MM01 split files."""
    order = [int(q) for q in rng.permutation(pids)]
    n_train, n_val = round(len(pids) * SPLIT[0]), max(1, round(len(pids) * SPLIT[1]))
    return {"train_id.txt": order[:n_train], "val_id.txt": order[n_train:n_train + n_val], "test_id.txt": order[n_train + n_val:]}


def passed_cameras(rng: "np.random.Generator", p_visible: float, p_infrared: float) -> list[int]:
    """The cameras a person passed, each with its spectrum's probability: at least one of each spectrum."""
    vis = [c for c in VISIBLE if rng.random() < p_visible] or [VISIBLE[int(rng.integers(len(VISIBLE)))]]
    ir = [c for c in INFRARED if rng.random() < p_infrared] or [INFRARED[int(rng.integers(len(INFRARED)))]]
    return sorted(vis + ir)


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
