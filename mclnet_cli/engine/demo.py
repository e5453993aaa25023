"""The whole journey on synthetic data: draw, prepare, train, evaluate, index, query, picture.

:func:`run_demo` writes everything under one output folder::

    OUT/.mclnet-demo        marker: this folder is a demo output (safe to overwrite with force)
    OUT/synthetic/          the raw synthetic tree (SYSU-MM01 layout)
    OUT/prepared/           the prepared dataset
    OUT/run/                the training run (config, metrics, summary, last.pt)
    OUT/untrained.pt        the same model, randomly initialised with the same seed
    OUT/start.pt            the preset's shipped start before training (model.pretrained=synthetic)
    OUT/gallery/camN/<pid>/ the test ids' visible images, copied in SYSU layout
    OUT/index/              the FAISS gallery index of OUT/gallery
    OUT/ranked_list.png     the ranked lists of the first few infrared test probes, in order
    OUT/demo.json           the summary (also returned)

The untrained model is evaluated under the same protocol so that the summary
shows what training bought. The core never prints: stage messages go to
``on_stage`` and training events to a :class:`~mclnet_cli.engine.train.Reporter`.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from mclnet_cli.atomic import atomic_write_text
from mclnet_cli.types import Modality
from mclnet_cli.errors import ConfigError, Interrupted, TrainingError
from mclnet_cli.progress import ProgressFactory, no_progress

MARKER = ".mclnet-demo"
SUMMARY = "demo.json"
# Everything a demo writes; ``force`` removes exactly these and nothing else.
START = "start.pt"  # the preset's shipped start before training (model.pretrained=synthetic)
ARTEFACTS = ("synthetic", "prepared", "run", "untrained.pt", START, "gallery", "index", "ranked_list.png", SUMMARY)
PRESET = "tiny"
SEED = 0
TOP_K = 10
FEATURE = "bn"  # what the demo scores and indexes: the method's retrieval feature (BNNeck output)
PICTURE_ROWS = 4  # the picture shows this many probes, the first ones in order
METRICS = ("rank1", "rank5", "mAP", "mINP")

StageCallback = Callable[[str], None]


@dataclass(frozen=True)
class DemoPlan:
    """Size of a demo: the synthetic dataset, the training schedule and the evaluation trials."""

    name: str
    ids: int
    images_per_camera: int
    epochs: int
    steps_per_epoch: int
    milestones: tuple[int, ...]
    trials: int
    extra: tuple[str, ...] = ()  # further ``--set`` overrides (learning rate, augmentation, ...)

    def overrides(self, seed: int = SEED) -> list[str]:
        """``--set``-style overrides applied on top of the tiny preset."""
        milestones = "[" + ",".join(str(m) for m in self.milestones) + "]"
        return [
            f"seed={seed}",
            "data.dataset=synthetic",
            "data.workers=0",
            f"train.epochs={self.epochs}",
            f"train.steps_per_epoch={self.steps_per_epoch}",
            "train.eval_every=0",
            "optim.warmup_epochs=1",
            f"optim.milestones={milestones}",
            f"eval.trials={self.trials}",
            "train.stop_on_collapse=false",  # the demo finishes and says so in its summary (training.health)
            *self.extra,
        ]


# The full demo trains the tiny preset as it is (its differences from the recipe are named in
# tiny.yaml and docs/method.md); its plan only sizes the dataset and the schedule. More test
# identities make the untrained baseline (and chance) lower and the comparison fairer.
# The quick demo's 200 steps are too few for the preset's augmentation (random erasing,
# spectrum mixing and pseudo-infrared pairs) to pay off: with it the quick demo ends at the untrained mAP (19.7 vs 19.2,
# seed 0), without it at 1.5x (docs/benchmarks.md, "demo"; measured from a random start, before tiny's shipped one),
# so the quick plan switches it off.
QUICK_OVERRIDES: tuple[str, ...] = ("data.erasing_p=0", "data.spectrum_p=0", "data.pseudo_infrared_p=0")
FULL = DemoPlan("full", ids=90, images_per_camera=3, epochs=16, steps_per_epoch=100, milestones=(12,), trials=10)
QUICK = DemoPlan("quick", ids=40, images_per_camera=3, epochs=8, steps_per_epoch=25, milestones=(6,), trials=10,
                 extra=QUICK_OVERRIDES)


@dataclass
class DemoResult:
    """Where every artefact is, and the numbers; :meth:`to_json` is the ``--json`` document."""

    out: Path
    summary: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dict(self.summary)


def is_demo_dir(out: Path | str) -> bool:
    """True when ``out`` holds the marker of a previous demo."""
    return (Path(out) / MARKER).is_file()


def check_out_dir(out: Path | str, force: bool) -> None:
    """Refuse a file, a non-empty folder that is not a demo output, and a previous demo without ``force``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; expected a folder for the demo")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not is_demo_dir(out):
        raise ConfigError(
            f"--out {out} is not empty and is not a previous demo output (no {MARKER}); choose a new or empty folder"
        )
    if not force:
        raise ConfigError(f"--out {out} holds a previous demo; pass --force to overwrite it or choose another folder")


def _clear_previous(out: Path) -> None:
    """Remove the artefacts of a previous demo (only the names a demo writes)."""
    for name in ARTEFACTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _metrics(report: Any) -> dict[str, Any]:
    """Mean (and std) over trials of the method's feature (``bn``), in percent."""
    result = report.results[FEATURE]
    row: dict[str, Any] = {key: round(float(result.mean[key]), 2) for key in METRICS}
    row["std"] = {key: round(float(result.std[key]), 2) for key in METRICS}
    return row


def save_untrained(config: Any, label_map: dict[int, int], path: Path, *, start: bool = False) -> Path:
    """The same architecture before training, with the config's seed, saved as a checkpoint.

    Randomly initialised, even when the preset starts from shipped weights (``model.pretrained=synthetic``):
    the comparison is with a model that has learnt nothing. ``start=True``: the preset's own start
    instead (the shipped weights, a fresh classifier), to show what the run's training added to it.
    """
    import dataclasses

    from mclnet_cli.engine.checkpoint import checkpoint_payload, save_checkpoint
    from mclnet_cli.engine.state import seed_everything
    from mclnet_cli.model import build_model

    if not start:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, pretrained="none"))  # what it is
    seed_everything(config.seed)
    model = build_model(config.model, len(label_map))
    payload = checkpoint_payload(model, config, label_map, kind="start" if start else "untrained", epoch=0)
    return save_checkpoint(path, payload)


def copy_gallery(samples: list[Any], gallery: Path) -> int:
    """Copy visible test images to ``gallery/camN/<pid>/<file>`` (SYSU layout, so the index knows pid and cam)."""
    count = 0
    for sample in samples:
        target = gallery / f"cam{sample.cam}" / f"{sample.pid:04d}" / Path(sample.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample.path, target)
        count += 1
    return count


def run_demo(
    out: Path | str,
    *,
    quick: bool = False,
    force: bool = False,
    device: str = "auto",
    on_stage: StageCallback | None = None,
    reporter: Any = None,
    progress: ProgressFactory | None = None,
    plan: DemoPlan | None = None,
    seed: int = SEED,
) -> DemoResult:
    """Run the whole journey into ``out`` and return its summary (metrics in percent).

    ``seed`` draws the synthetic dataset and seeds training (and the untrained
    model's initialisation); ``plan`` overrides the size chosen by ``quick``
    (for tuning and benchmarks).
    """
    from mclnet_cli.config import load_config

    plan = plan or (QUICK if quick else FULL)
    progress = progress or no_progress
    out = Path(out)
    check_out_dir(out, force)
    stages = _Stages(on_stage or (lambda message: None), total=7)
    config = load_config(PRESET, plan.overrides(seed))
    _start_out_dir(out, plan, seed)
    prepared_dir, run_dir = out / "prepared", out / "run"

    prepared, dataset = _dataset_stage(stages, out, plan, seed, progress)
    with stages.stage("train", f"training the {PRESET} preset ({plan.epochs} epochs x {plan.steps_per_epoch} steps)"):
        trained, label_map = _train(config, prepared_dir, run_dir, device, reporter, restart=restart_command(out, quick, seed))
    checkpoint = trained.last_checkpoint
    untrained, metrics = _evaluate_stages(stages, config, label_map, checkpoint, out, plan, device, progress)
    retrieval = _retrieval_stages(stages, prepared, checkpoint, out, device, progress)

    summary: dict[str, Any] = {
        "out": str(out.resolve()),
        "mode": plan.name,
        "seed": seed,
        "dataset": dataset,
        "run_dir": str(run_dir.resolve()),
        "checkpoint": str(Path(checkpoint).resolve()),
        "untrained_checkpoint": str(untrained.resolve()),
        **({"start_checkpoint": str((out / START).resolve())} if "start" in metrics else {}),
        "training": _training_summary(plan, trained),
        "metrics": metrics,
        **retrieval,  # index, query, probes, picture
        "stage_times_s": stages.times,
        "time_s": round(time.perf_counter() - stages.started, 2),
    }
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2, default=str) + "\n")
    return DemoResult(out, summary)


def _dataset_stage(
    stages: "_Stages", out: Path, plan: DemoPlan, seed: int, progress: ProgressFactory
) -> tuple[Any, dict[str, Any]]:
    """Stage 1: draw the synthetic dataset into ``out/synthetic``, prepare it into ``out/prepared``.

    Returns the prepared dataset and the summary's ``dataset`` entry.
    """
    from mclnet_cli.data.prepare import prepare_synthetic
    from mclnet_cli.data.records import load_prepared

    raw, prepared_dir = out / "synthetic", out / "prepared"
    with stages.stage("dataset", f"drawing a synthetic dataset of {plan.ids} ids and preparing it"):
        report, _ = prepare_synthetic(
            raw, prepared_dir, ids=plan.ids, seed=seed, images_per_camera=plan.images_per_camera, progress=progress
        )
        prepared = load_prepared(prepared_dir)
    return prepared, {
        "name": report.dataset, "raw": str(raw.resolve()), "prepared": report.out, "ids": plan.ids,
        "images_per_camera": plan.images_per_camera, "counts": report.counts,
    }


def _evaluate_stages(
    stages: "_Stages", config: Any, label_map: dict[int, int], checkpoint: Path, out: Path, plan: DemoPlan, device: str,
    progress: ProgressFactory,
) -> tuple[Path, dict[str, Any]]:
    """Stages 3 and 4: evaluate the trained model, then the untrained one (same config and seed).

    Returns the untrained checkpoint and the summary's ``metrics`` entry.
    """
    from mclnet_cli.engine.evaluate import evaluate_checkpoint
    from mclnet_cli.model.pretrained import is_packaged

    def evaluate(path: Path, what: str) -> Any:
        return evaluate_checkpoint(
            path, out / "prepared", device=device,
            progress=lambda description, total: progress(f"{description} ({what})", total),
        )

    with stages.stage("evaluate", f"evaluating the trained model (SYSU protocol, all-search, {plan.trials} trials)"):
        trained_report = evaluate(checkpoint, "trained")
    shipped = is_packaged(config.model.pretrained)
    what = "the untrained model and the preset's shipped start" if shipped else "the untrained model"
    with stages.stage("evaluate_untrained", f"evaluating {what} (same config and seed)"):
        untrained = save_untrained(config, label_map, out / "untrained.pt")
        untrained_report = evaluate(untrained, "untrained")
        start_report = evaluate(save_untrained(config, label_map, out / START, start=True), "start") if shipped else None
    return untrained, _metrics_summary(trained_report, untrained_report, start_report)


def _retrieval_stages(
    stages: "_Stages", prepared: Any, checkpoint: Path, out: Path, device: str, progress: ProgressFactory
) -> dict[str, Any]:
    """Stages 5 to 7: index the test ids' visible images, query with every infrared one, draw the first ranked lists.

    Returns the summary's ``index``, ``query``, ``probes`` and ``picture`` entries.
    """
    from mclnet_cli.index.picture import save_ranked_list

    with stages.stage("index", "indexing the visible gallery of the test ids"):
        built = _index_gallery(prepared, checkpoint, out, device, progress)
    infrared = sorted(prepared.select("test", Modality.INFRARED), key=lambda s: (s.pid, s.cam, s.path))
    with stages.stage("query", f"querying it with every infrared test image ({len(infrared)} probes)"):
        hit_lists = _query(out / "index", infrared, device)
    # The picture shows the first PICTURE_ROWS probes in the fixed (pid, cam, path) order: none is picked.
    with stages.stage("picture", f"drawing the ranked lists of the first {min(PICTURE_ROWS, len(infrared))} probes"):
        rows = [(s.path, s.pid, hits, s.cam) for s, hits in zip(infrared[:PICTURE_ROWS], hit_lists[:PICTURE_ROWS])]
        picture = save_ranked_list(
            out / "ranked_list.png", rows, top_k=TOP_K,
            probe_modality=Modality.INFRARED.value, gallery_modality=Modality.VISIBLE.value,
        )
    return {
        "index": {
            "dir": str(built.index_dir.resolve()), "gallery": str((out / "gallery").resolve()), "count": built.count,
            "kind": built.kind, "dimension": built.dimension, "feature": FEATURE,
        },
        "query": _first_probe(infrared[0], hit_lists[0]),
        "probes": _probe_summary(infrared, hit_lists, len(rows)),
        "picture": str(Path(picture).resolve()),
    }


class _Stages:
    """Numbered stage messages (``[n/total] message``) and the seconds each stage took."""

    def __init__(self, on_stage: StageCallback, total: int) -> None:
        self.on_stage, self.total, self.number = on_stage, total, 0
        self.times: dict[str, float] = {}
        self.started = time.perf_counter()

    @contextmanager
    def stage(self, name: str, message: str) -> Iterator[None]:
        """Announce the next stage; its time is recorded when it finishes (not when it fails)."""
        self.number += 1
        self.on_stage(f"[{self.number}/{self.total}] {message}")
        begin = time.perf_counter()
        yield
        self.times[name] = round(time.perf_counter() - begin, 2)


def _start_out_dir(out: Path, plan: DemoPlan, seed: int) -> None:
    """Create ``out``, remove a previous demo's artefacts and write the marker."""
    out.mkdir(parents=True, exist_ok=True)
    if is_demo_dir(out):
        _clear_previous(out)
    atomic_write_text(out / MARKER, json.dumps({"demo": plan.name, "seed": seed}) + "\n")


def restart_command(out: Path, quick: bool, seed: int = SEED) -> str:
    """The command that starts this demo over."""
    seed_option = f" --seed {seed}" if seed != SEED else ""
    return f"mclnet demo --out {shlex.quote(str(out))} --force{' --quick' if quick else ''}{seed_option}"


def _train(
    config: Any, prepared_dir: Path, run_dir: Path, device: str, reporter: Any, *, restart: str
) -> tuple[Any, dict[int, int]]:
    """Train into ``run_dir``: (the training result, the checkpoint's label map); a run that did not finish stops the demo."""
    from mclnet_cli.engine.checkpoint import load_checkpoint
    from mclnet_cli.engine.train import fit

    trained = fit(config, prepared_dir, run_dir, device=device, reporter=reporter)
    if trained.status != "complete":  # interrupted: the trainer saved what it had and wrote its summary
        raise (Interrupted if trained.status == "interrupted" else TrainingError)(
            f"training was {trained.status} after {trained.epochs_completed} of {trained.epochs} epoch(s) "
            f"(saved in {run_dir}); the demo stopped before evaluating and cannot resume (it runs its stages in one go "
            f"and records none as finished); start it over with: {restart}"
        )
    label_map = {int(k): int(v) for k, v in load_checkpoint(trained.last_checkpoint)["label_map"].items()}
    return trained, label_map


def _index_gallery(prepared: Any, checkpoint: Path, out: Path, device: str, progress: ProgressFactory) -> Any:
    """Copy the test ids' visible images to ``out/gallery`` and index them into ``out/index``."""
    from mclnet_cli.engine.indexing import build_gallery_index

    visible = sorted(prepared.select("test", Modality.VISIBLE), key=lambda s: (s.pid, s.cam, s.path))
    copy_gallery(visible, out / "gallery")
    return build_gallery_index(checkpoint, out / "gallery", Modality.VISIBLE, out / "index", device=device, progress=progress)


def _query(index_dir: Path, probes: list[Any], device: str) -> list[list[Any]]:
    """The top-``TOP_K`` hits of each probe."""
    from mclnet_cli.engine.search import search_gallery

    search = search_gallery(index_dir, [s.path for s in probes], Modality.INFRARED, TOP_K, device=device)
    return [result.hits for result in search.results]


def _training_summary(plan: DemoPlan, trained: Any) -> dict[str, Any]:
    return {
        "preset": PRESET,
        "overrides": plan.overrides(),
        "epochs": trained.epochs_completed,
        "steps_per_epoch": plan.steps_per_epoch,
        "final_losses": {k: round(float(v), 4) for k, v in trained.final_losses.items()},
        "time_s": round(trained.time_s, 2),
        "health": trained.summary.get("health"),
    }


def _metrics_summary(trained: Any, untrained: Any, start: Any = None) -> dict[str, Any]:
    """The trained and untrained models' numbers (and the shipped start's, if any) under the same protocol."""
    return {
        "trained": _metrics(trained),
        "untrained": _metrics(untrained),
        **({"start": _metrics(start)} if start is not None else {}),
        "units": "percent",
        "feature": FEATURE,
        "protocol": {k: v for k, v in trained.protocol.items() if k not in ("checkpoint", "fingerprint")},
    }


def _first_probe(probe: Any, hits: list[Any]) -> dict[str, Any]:
    """The first probe's ranked list (the one the text summary shows)."""
    match_ranks = [hit.rank for hit in hits if hit.pid == probe.pid]
    return {
        "probe": probe.path,
        "pid": probe.pid,
        "cam": probe.cam,
        "top_k": TOP_K,
        "first_match_rank": match_ranks[0] if match_ranks else None,
        "matches_in_top_k": len(match_ranks),
        "results": [hit.to_json() for hit in hits],
    }


def _probe_summary(probes: list[Any], hit_lists: list[list[Any]], picture_rows: int) -> dict[str, Any]:
    """How many probes found their person among the top-k gallery images."""
    found = sum(any(hit.pid == s.pid for hit in hits) for s, hits in zip(probes, hit_lists))
    return {
        "count": len(probes),
        "top_k": TOP_K,
        "found_in_top_k": int(found),
        "hit_rate": round(100.0 * found / len(probes), 2) if probes else None,
        "units": "percent of the infrared test images whose person is among the top-k visible gallery images",
        "picture_rows": picture_rows,
    }
