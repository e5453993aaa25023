"""Make the weights ``model.pretrained=synthetic`` loads: the ``tiny`` network trained on many synthetic people.

Not part of the package; it writes the file the package ships
(``mclnet_cli/model/weights/tiny-synthetic.pt``, :mod:`mclnet_cli.model.pretrained`).

1. Draw ``--ids`` identities with each of ``--generators`` (seeds 1000, 1001, ...: people
   that no evaluation set of ``benchmarks/learnkit.py`` holds, whose sets use seeds 0-2),
   renumber them into one SYSU-MM01 tree with every identity but 12 in the training split,
   and prepare it with the uint8 cache at the training size.
2. Train ``tiny`` from random weights on it for ``--epochs`` x 100 steps with the
   settings below (:data:`PRETRAIN_OVERRIDES`).
3. Write the network without its classifier, float16, to ``--weights``.

The generator ``crowd`` is never drawn here: it is the held-out generator of
docs/benchmarks.md, on which the shipped start is reported, never chosen. The shipped
file: the defaults below (project + alt, 500 people each, 7,000 steps: about 16 minutes
on one thread), ``--threads 1``:

    python benchmarks/pretrain_tiny.py --out /tmp/pretrain --threads 1 --weights mclnet_cli/model/weights/tiny-synthetic.pt
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: the shipped file: the project's two generators. nir and walker (tuning generators too) and crowd (held out)
#: stay out, so the start is measured on three generators it never saw (docs/benchmarks.md)
PRETRAIN_GENERATORS = ("project", "alt")
KNOWN_GENERATORS = ("project", "alt", "nir", "walker")
SEED = 1000
#: on top of tiny as shipped, with model.pretrained=none: the narrow network, a longer schedule,
#: MMD coupled to the identity loss (with ~1,000 classes the step gate opens late and then at once)
PRETRAIN_OVERRIDES = (
    "model.pretrained=none",
    "model.base_channels=32",
    "train.steps_per_epoch=100",
    "loss.mmd_ramp=0.25",
    "data.workers=0",
    "train.eval_every=0",
    "train.stop_on_collapse=true",
)


def generator(name: str):
    """The ``generate_*`` function of one generator (learnkit's, so both scripts draw alike)."""
    from learnkit import generate_function

    if name not in KNOWN_GENERATORS:
        raise SystemExit(f"unknown generator {name!r}; choose from {KNOWN_GENERATORS}")
    return generate_function(name)


def pretrain_overrides(epochs: int, decay_epoch: int, extra: Sequence[str] = ()) -> list[str]:
    """The overrides on ``tiny`` that the pretraining runs with: :data:`PRETRAIN_OVERRIDES`, the schedule, then ``extra``."""
    return [*PRETRAIN_OVERRIDES, f"seed={SEED}", f"train.epochs={epochs}", f"optim.milestones=[{decay_epoch}]", *extra]


def draw_merged(raw: Path, generators: Sequence[str], ids: int, images_per_camera: int) -> int:
    """One SYSU-MM01 tree of ``ids`` people per generator (pids renumbered); returns the number of people."""
    for cam in range(1, 7):
        (raw / f"cam{cam}").mkdir(parents=True, exist_ok=True)
    people: list[int] = []
    for k, name in enumerate(generators):
        part = raw.parent / f"_{raw.name}_{name}"
        if part.exists():
            shutil.rmtree(part)
        generator(name)(part, ids=ids, seed=SEED + k, images_per_camera=images_per_camera)
        offset = k * ids
        for cam in range(1, 7):
            folder = part / f"cam{cam}"
            for pid_dir in sorted(folder.iterdir()) if folder.is_dir() else []:
                shutil.move(str(pid_dir), str(raw / f"cam{cam}" / f"{int(pid_dir.name) + offset:04d}"))
        people += [offset + pid for pid in range(1, ids + 1)]
        shutil.rmtree(part)
    # the reader wants all four lists; 12 people are kept out so that val and test are not empty
    lists = {"available_id": people, "train_id": people[:-12], "val_id": people[-12:-6], "test_id": people[-6:]}
    (raw / "exp").mkdir(exist_ok=True)
    for name, pids in lists.items():
        (raw / "exp" / f"{name}.txt").write_text(",".join(map(str, pids)))
    return len(people)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder (data, run)")
    parser.add_argument("--generators", default=",".join(PRETRAIN_GENERATORS))
    parser.add_argument("--ids", type=int, default=500, help="people per generator")
    parser.add_argument("--images-per-camera", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=70, help="of 100 steps")
    parser.add_argument("--decay-epoch", type=int, default=55)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", type=Path, default=None, help="where to write the file (default OUT/tiny-synthetic.pt)")
    parser.add_argument("--run", type=Path, default=None, help="export this finished run instead of training one")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="one more config override on top of the settings above (repeatable)")
    args = parser.parse_args(argv)
    import torch

    from mclnet_cli.config import load_config
    from mclnet_cli.data.prepare import prepare_dataset
    from mclnet_cli.engine.checkpoint import load_model, save_checkpoint
    from mclnet_cli.engine.train import fit
    from mclnet_cli.model.pretrained import packaged_payload

    torch.set_num_threads(args.threads)
    generators = [g.strip() for g in args.generators.split(",") if g.strip()]
    if "crowd" in generators:
        raise SystemExit("crowd is the held-out generator: it never goes into the pretraining set")
    overrides = pretrain_overrides(args.epochs, args.decay_epoch, args.extra)
    config = load_config("tiny", overrides)
    run = args.run
    start = time.perf_counter()
    if run is None:
        raw, prepared, run = args.out / "raw", args.out / "prepared", args.out / "run"
        if not (prepared / "meta.json").is_file():
            people = draw_merged(raw, generators, args.ids, args.images_per_camera)
            prepare_dataset("sysu", raw, prepared, label="synthetic-pretrain", workers=1,
                            cache_size=(config.data.height, config.data.width))
            print(json.dumps({"drawn": people, "generators": generators}), flush=True)
        fit(config, prepared, run, device="cpu")
    loaded = load_model(run / "last.pt", device="cpu")
    model, payload, config = loaded.model, loaded.payload, loaded.config  # --run: that run's own settings
    source = {
        "made_by": "benchmarks/pretrain_tiny.py",
        "generators": ",".join(generators),
        "ids_per_generator": args.ids,
        "seed": SEED,
        "overrides": " ".join(overrides),
        "steps": int(payload.get("epoch", 0)) * config.train.steps_per_epoch,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }
    weights = args.weights or args.out / "tiny-synthetic.pt"
    save_checkpoint(weights, packaged_payload(model, config.model, source))  # temp file + rename
    print(json.dumps({"weights": str(weights), "seconds": round(time.perf_counter() - start, 1), **source}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
