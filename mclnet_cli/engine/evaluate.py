"""Evaluation: embed the test images once, then score every protocol trial by indexing into them.

Two entry points build an :class:`EvaluationReport` (values in percent):

- :func:`evaluate_checkpoint`: a checkpoint and a prepared dataset; each image
  goes through its own modality's stream; both retrieval features ``bn``
  (BNNeck f4, the method's) and ``pool`` (pre-BN f4) are scored.
- :func:`evaluate_features_file`: features computed elsewhere, in an ``.npz``
  with arrays ``features`` [N, D], ``pids``, ``cams``, ``modalities`` (strings or
  0 visible / 1 infrared) and ``paths``; scored as the feature ``features``.

:func:`split_trial` gives the queries and gallery of one trial without a model
(``mclnet split``); training's validation (:func:`validate`, at the end) reuses
:func:`embed_samples` and :func:`score_trials`. What a protocol does (directions,
gallery, exclusions, CMC, result keys, options that apply) is its
``ProtocolSpec`` in ``metrics.protocols``; nothing here tests a protocol's name.

Result keys: SYSU-MM01 has one direction (infrared -> visible), so results are
keyed by feature name (``bn``, ``pool``); RegDB, LLCM and own data always key them
``<direction>/<feature>`` (e.g. ``visible_to_infrared/bn``), one entry per
direction asked. Distances are 1 - cosine similarity of L2-normalised features,
or k-reciprocal re-ranked distances with ``rerank``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mclnet_cli.config import Config, EvalConfig
from mclnet_cli.types import Modality, Sample
from mclnet_cli.data.preprocess import Preprocess
from mclnet_cli.data.records import PreparedDataset, load_prepared
from mclnet_cli.errors import ConfigError, DataError
from mclnet_cli.metrics.protocols import (
    DIRECTIONS,
    DRAWS,
    MAX_TRIALS,
    PROTOCOLS,
    SHOTS,
    SYSU_MODES,
    PROTOCOL_SPECS,
    OfficialDraws,
    Trial,
    check_choice,
    check_protocol,
    get_protocol,
    load_official_draws,
    protocol_for_dataset,
    protocol_trial,
    protocol_trials,
    refuse_inapplicable,
    skipped_in_gallery_folders,
)
from mclnet_cli.metrics.report import METRIC_KEYS, as_percent, mean_std
from mclnet_cli.progress import ProgressFactory, no_progress

NPZ_ARRAYS = ("features", "pids", "cams", "modalities", "paths")


@dataclass(frozen=True)
class EvalSettings(EvalConfig):
    """The protocol choices of one evaluation run: a config ``eval`` section plus the gallery-draw family."""

    draws: str = "agw"  # a command option, not a config key

    @classmethod
    def resolve(cls, defaults: EvalConfig, **overrides: Any) -> "EvalSettings":
        """Config ``eval`` section, with every non-None override on top; values checked."""
        values: dict[str, Any] = dataclasses.asdict(defaults)
        given = {k: v for k, v in overrides.items() if v is not None}
        values.update(given)
        values["protocol"] = check_protocol(values["protocol"], "--protocol")
        refuse_inapplicable(values["protocol"], given)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Every choice against the protocol module's lists (one line naming the option on error)."""
        if self.protocol not in PROTOCOLS:
            check_protocol(self.protocol, "--protocol")
            raise ConfigError(f"--protocol {self.protocol!r}: write it in lower case ({self.protocol.strip().lower()})")
        choices = {"mode": SYSU_MODES, "shots": SHOTS, "direction": DIRECTIONS + ("both",), "draws": DRAWS}
        for name, allowed in choices.items():
            check_choice(f"--{name}", getattr(self, name), allowed)
        spec = get_protocol(self.protocol)
        fewest = 0 if spec.whole_at_zero_trials else 1
        if not fewest <= self.trials <= MAX_TRIALS:
            whole = " (0: the whole gallery)" if fewest == 0 else ""
            raise ConfigError(f"--trials must be between {fewest} and {MAX_TRIALS}{whole}, got {self.trials}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be positive, got {self.batch_size}")
        if self.draws not in spec.draw_families and (spec.draw_families or self.draws != "agw"):
            holders = [s.name for s in PROTOCOL_SPECS.values() if self.draws in s.draw_families]
            raise ConfigError(f"--draws {self.draws} exists for the {' and '.join(holders)} protocol only")


@dataclass
class FeatureResult:
    """One feature (in one direction): per-trial rows and their mean and std, in percent."""

    trials: list[dict[str, Any]]
    mean: dict[str, float]
    std: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "trials": self.trials}


@dataclass
class EvaluationReport:
    """Everything an evaluation measured, ready to render or dump as JSON."""

    protocol: dict[str, Any]
    results: dict[str, FeatureResult]
    failed: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "results": {k: v.to_json() for k, v in self.results.items()}}


# ----------------------------------------------------------------------------
# Scoring (no model): features aligned with a sample list


def l2_normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def trial_distances(query: np.ndarray, gallery: np.ndarray, rerank: bool = False) -> np.ndarray:
    """[queries, gallery] distances: 1 - cosine, or k-reciprocal re-ranked (k1=20, k2=6, lambda=0.3)."""
    if rerank:
        from mclnet_cli.metrics.rerank import k_reciprocal_distance

        return k_reciprocal_distance(query, gallery, k1=20, k2=6, lambda_value=0.3)
    return 1.0 - query @ gallery.T


def result_key(protocol: str, direction: str, feature: str) -> str:
    """``feature`` for a one-direction protocol (sysu); ``direction/feature`` for the others."""
    return get_protocol(protocol).result_key(direction, feature)


def score_trials(
    samples: Sequence[Sample],
    features: Mapping[str, np.ndarray],
    rows: np.ndarray,
    trials: Sequence[Trial],
    *,
    rerank: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, FeatureResult]:
    """Score each trial with each feature. ``rows[i]`` is sample i's row in the feature arrays.

    ``on_progress(1)`` after each (trial, feature): with re-ranking a trial takes seconds at full size.
    """
    pids = np.array([s.pid for s in samples], dtype=np.int64)
    cams = np.array([s.cam for s in samples], dtype=np.int64)
    table: dict[str, list[dict[str, Any]]] = {}
    for trial in trials:
        spec = get_protocol(trial.protocol)
        q, g = trial.query, trial.gallery
        if rerank:
            # k-reciprocal neighbour sets break distance ties (duplicate or near-identical images) by position,
            # and a tie decided differently changes every distance built on those sets. Sample order makes
            # trials that draw the same images (10-shot groups of <= 10 images, drawn in another order) score
            # the same. Without rerank the draw order is kept: ranking ties go by column, as in the reference code.
            q, g = np.sort(q), np.sort(g)
        for name, array in features.items():
            dist = trial_distances(array[rows[q]], array[rows[g]], rerank=rerank)
            result = spec.rank(dist, pids[q], pids[g], cams[q], cams[g])
            row: dict[str, Any] = {"trial": trial.trial, **as_percent(result)}
            row.update(
                queries=int(len(q)), valid_queries=result.num_valid, skipped_queries=result.num_skipped,
                gallery=int(len(g)), ranks_available=result.num_ranks,
            )
            table.setdefault(spec.result_key(trial.direction, name), []).append(row)
            if on_progress is not None:
                on_progress(1)
    results = {}
    for key, trial_rows in table.items():
        mean, std = mean_std(trial_rows, METRIC_KEYS)
        results[key] = FeatureResult(trial_rows, mean, std)
    return results


def describe_protocol(settings: EvalSettings, trials: Sequence[Trial], **extra: Any) -> dict[str, Any]:
    """The ``protocol`` block of a report: what was measured and how."""
    spec = get_protocol(settings.protocol)
    info: dict[str, Any] = {"name": spec.name, **spec.report_fields(settings.mode, settings.shots, trials[0].draws)}
    info.update(
        directions=sorted({t.direction for t in trials}, key=DIRECTIONS.index),
        trials=sorted({t.trial for t in trials}),
        cmc=spec.cmc,
        distance="k-reciprocal (k1=20, k2=6, lambda=0.3)" if settings.rerank else "1 - cosine",
        flip=settings.flip,
        rerank=settings.rerank,
        units="percent",
        std="population (ddof=0) over trials",
    )
    info.update(extra)
    return info


def _official(settings: EvalSettings, perm_file: Path | str | None, root: str | None) -> OfficialDraws | None:
    if settings.draws != "official":
        return None
    if perm_file is None:
        if not root:
            raise ConfigError("--draws official needs --perm-file (the prepared dataset does not record its root)")
        perm_file = Path(root) / "exp" / "rand_perm_cam.mat"
    return load_official_draws(perm_file)


def _trials(samples: Sequence[Sample], settings: EvalSettings, official: OfficialDraws | None) -> list[Trial]:
    return protocol_trials(
        samples, settings.protocol, mode=settings.mode, shots=settings.shots,
        trials=settings.trials, direction=settings.direction, official=official,
    )


def draw_notes(samples: Sequence[Sample], trials: Sequence[Trial], meta: Mapping[str, Any]) -> list[str]:
    """Remarks on the draws for the report's ``protocol.notes`` (empty when there is nothing to say).

    Files dropped at prepare time (``--skip-bad``) from a folder the gallery is
    drawn from make the draws differ from the reference code's, which lists the
    folder itself (see ``metrics.protocols``).
    """
    skipped = [str(p) for p in meta.get("skipped") or ()]
    hit = skipped_in_gallery_folders(samples, trials, skipped) if skipped else []
    if not hit:
        return []
    shown = ", ".join(hit[:3]) + (f" and {len(hit) - 3} more" if len(hit) > 3 else "")
    return [
        f"{len(hit)} file(s) skipped at prepare time lie in test gallery folders ({shown}); the reference code "
        f"draws from the folder listing, so the {trials[0].draws} gallery draws are not bit for bit the reference's"
    ]


def dataset_protocol(meta: Mapping[str, Any]) -> str | None:
    """The protocol a prepared dataset's reader implies, or None (e.g. synthetic).

    sysu, regdb and llcm datasets imply their own protocol; ``mclnet prepare folder``
    and ``prepare csv`` datasets imply ``own`` (each spec's ``datasets``).
    """
    return protocol_for_dataset(str(meta.get("reader") or meta.get("dataset") or ""))


def embed_samples(
    model: Any,
    samples: Sequence[Sample],
    indices: Sequence[int] | np.ndarray,
    *,
    preprocess: Preprocess | None = None,
    height: int | None = None,
    width: int | None = None,
    resize: str | None = None,
    batch_size: int,
    device: Any,
    workers: int = 0,
    features: Sequence[str] = ("bn",),
    flip: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Embed ``samples[i]`` for each i in ``indices``, each through its own modality's stream (visible first).

    ``model`` is a network or a ``LoadedModel``; images are preprocessed as
    :func:`~mclnet_cli.engine.extract.extract_features` (the path ``index`` and ``query`` take)
    does with ``preprocess`` (default: the loaded model's record; ``height``/``width``/``resize``
    given in its place). Returns the feature arrays by name and ``rows`` with ``rows[i]``
    the row of sample i in them (-1 for samples not embedded), as :func:`score_trials` takes.
    """
    from mclnet_cli.engine.extract import extract_features

    rows = np.full(len(samples), -1, dtype=np.int64)
    blocks: dict[str, list[np.ndarray]] = {name: [] for name in features}
    order: list[int] = []
    wanted = [int(i) for i in indices]
    for modality in (Modality.VISIBLE, Modality.INFRARED):
        chosen = [i for i in wanted if samples[i].modality is modality]
        if not chosen:
            continue
        out = extract_features(
            model, [samples[i].path for i in chosen], modality, preprocess=preprocess, height=height, width=width,
            resize=resize, batch_size=batch_size, device=device, workers=workers, feature=tuple(features), flip=flip,
            on_progress=on_progress,
        )
        for name in features:
            blocks[name].append(out.by_name[name])
        order.extend(chosen)
    rows[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
    arrays = {
        name: np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32) for name, parts in blocks.items()
    }
    return arrays, rows


@dataclass(frozen=True)
class SplitView:
    """One trial of a prepared dataset: the trial's indices point into ``samples``."""

    trial: Trial
    samples: list[Sample]
    data: Path


def split_trial(
    data: Path | str,
    trial: int = 0,
    *,
    protocol: str | None = None,
    mode: str | None = None,
    shots: int | None = None,
    direction: str | None = None,
    draws: str | None = None,
    perm_file: Path | str | None = None,
) -> SplitView:
    """The queries and gallery of trial ``trial`` of a prepared dataset (what ``mclnet split`` shows).

    ``protocol`` None takes the dataset's own (sysu for a dataset of another
    reader, e.g. synthetic). One trial has one direction: ``both`` is refused.
    """
    prepared = load_prepared(data)
    name = check_protocol(protocol if protocol is not None else (dataset_protocol(prepared.meta) or "sysu"), "--protocol")
    given = {k: v for k, v in dict(mode=mode, shots=shots, direction=direction, draws=draws).items() if v is not None}
    refuse_inapplicable(name, given)
    settings = EvalSettings(
        protocol=name, mode=mode or "all", shots=shots or 1, trials=1,
        direction=direction or "infrared_to_visible", draws=draws or "agw",
    )
    settings.check()
    if trial < 0:
        raise ConfigError(f"--trial must be 0 or more, got {trial}")
    spec = get_protocol(name)
    if "direction" in spec.options:
        check_choice("--direction", settings.direction, spec.directions)
    if spec.gallery == "whole" and trial != 0:
        raise ConfigError(f"{name} draws no gallery: its only trial is 0 ({spec.trials_text})")
    official = _official(settings, perm_file, prepared.meta.get("root"))
    samples = prepared.samples
    chosen = protocol_trial(samples, name, settings.direction, trial, mode=settings.mode, shots=settings.shots, official=official)
    return SplitView(chosen, samples, prepared.root)


# ----------------------------------------------------------------------------
# Features file


def load_features_npz(path: Path | str) -> tuple[list[Sample], np.ndarray]:
    """Samples (split "test") and their [N, D] features from an ``.npz`` file (no pickle)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"features file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [name for name in NPZ_ARRAYS if name not in data.files]
            if missing:
                raise DataError(
                    f"{path}: missing array(s) {', '.join(missing)}; expected {', '.join(NPZ_ARRAYS)}"
                )
            arrays = {name: data[name] for name in NPZ_ARRAYS}
    except DataError:
        raise
    except Exception as exc:  # not a zip, object arrays refused, truncated file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot read as an .npz of plain arrays ({reason})") from exc
    features = arrays["features"]
    if features.ndim != 2 or not np.issubdtype(features.dtype, np.number):
        raise DataError(f"{path}: 'features' must be a 2-D numeric array [N, D], got shape {features.shape}")
    n = features.shape[0]
    for name in NPZ_ARRAYS[1:]:
        if arrays[name].shape != (n,):
            raise DataError(f"{path}: {name!r} must have shape ({n},) like the rows of 'features', got {arrays[name].shape}")
    for name in ("pids", "cams"):
        if not np.issubdtype(arrays[name].dtype, np.integer):
            raise DataError(f"{path}: {name!r} must hold integers, got dtype {arrays[name].dtype}")
    if not np.isfinite(features).all():
        raise DataError(f"{path}: 'features' holds NaN or infinite values")
    modalities = [_parse_modality(value, path) for value in arrays["modalities"].tolist()]
    samples = [
        Sample(str(p), int(pid), int(cam), m, "test")
        for p, pid, cam, m in zip(arrays["paths"].tolist(), arrays["pids"].tolist(), arrays["cams"].tolist(), modalities)
    ]
    return samples, features.astype(np.float32)


def _parse_modality(value: Any, path: Path) -> Modality:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value in (0, 1):
            return Modality.VISIBLE if value == 0 else Modality.INFRARED
        raise DataError(f"{path}: modality {value} is not 0 (visible) or 1 (infrared)")
    try:
        return Modality.parse(str(value))
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc


def _scoring(settings: EvalSettings) -> str:
    return "scoring trials (re-ranked)" if settings.rerank else "scoring trials"


def evaluate_features_file(
    path: Path | str,
    settings: EvalSettings,
    *,
    perm_file: Path | str | None = None,
    progress: ProgressFactory | None = None,
) -> EvaluationReport:
    """Score features computed elsewhere under a protocol (see module doc for the file format)."""
    samples, features = load_features_npz(path)
    trials = _trials(samples, settings, _official(settings, perm_file, None))
    rows = np.arange(len(samples))
    with (progress or no_progress)(_scoring(settings), len(trials)) as advance:
        results = score_trials(
            samples, {"features": l2_normalise(features)}, rows, trials, rerank=settings.rerank, on_progress=advance
        )
    protocol = describe_protocol(settings, trials, source="features", features_file=str(path))
    return EvaluationReport(protocol, results)


# ----------------------------------------------------------------------------
# Checkpoint


def _check_dataset(settings: EvalSettings, meta: Mapping[str, Any], protocol_given: bool, data: Path) -> None:
    """Refuse a protocol default that does not fit the prepared dataset (e.g. sysu on RegDB)."""
    reader = dataset_protocol(meta)
    if reader is not None and reader != settings.protocol and not protocol_given:
        kind = str(meta.get("reader") or meta.get("dataset"))
        raise ConfigError(
            f"the checkpoint's eval.protocol is {settings.protocol!r} but {data} is a {kind} dataset; "
            f"pass --protocol {reader}"
        )


def evaluate_checkpoint(
    checkpoint: Path | str,
    data: Path | str,
    *,
    protocol: str | None = None,
    mode: str | None = None,
    shots: int | None = None,
    trials: int | None = None,
    direction: str | None = None,
    batch_size: int | None = None,
    flip: bool | None = None,
    rerank: bool | None = None,
    draws: str | None = None,
    perm_file: Path | str | None = None,
    device: str = "auto",
    workers: int | None = None,
    progress: ProgressFactory | None = None,
) -> EvaluationReport:
    """Evaluate a checkpoint on a prepared dataset's test split; None options take the checkpoint's ``eval`` config.

    Only the test images some trial uses are embedded (each once, through its own
    modality's stream); ``progress("embedding test images", total)`` is entered around the embedding.
    """
    from mclnet_cli.engine.checkpoint import load_model
    from mclnet_cli.engine.device import resolve_device

    torch_device = resolve_device(device)
    loaded = load_model(checkpoint, device=torch_device)
    settings = EvalSettings.resolve(
        loaded.config.eval, protocol=protocol, mode=mode, shots=shots, trials=trials, direction=direction,
        batch_size=batch_size, flip=flip, rerank=rerank, draws=draws,
    )
    prepared = load_prepared(data)
    _check_dataset(settings, prepared.meta, protocol is not None, prepared.root)
    samples = prepared.samples
    trial_list = _trials(samples, settings, _official(settings, perm_file, prepared.meta.get("root")))
    workers = loaded.config.data.workers if workers is None else workers
    features, rows = _embed_used(loaded, samples, trial_list, settings, torch_device, workers, progress)
    with (progress or no_progress)(_scoring(settings), len(trial_list) * len(features)) as advance:
        results = score_trials(samples, features, rows, trial_list, rerank=settings.rerank, on_progress=advance)
    protocol_info = describe_protocol(
        settings, trial_list, source="checkpoint", checkpoint=str(loaded.path), fingerprint=loaded.fingerprint,
        data=str(prepared.root), dataset=prepared.name, device=str(torch_device), images_embedded=int((rows >= 0).sum()),
        **_checkpoint_extra(loaded, features, samples, trial_list, prepared, settings),
    )
    return EvaluationReport(protocol_info, results)


def _embed_used(
    loaded: Any, samples: Sequence[Sample], trial_list: Sequence[Trial], settings: EvalSettings, device: Any,
    workers: int, progress: ProgressFactory | None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Embed the test images some trial uses, each once: (features by name, each sample's row or -1)."""
    from mclnet_cli.engine.extract import NonFiniteFeatures
    from mclnet_cli.model.net import FEATURES

    used = np.unique(np.concatenate([np.concatenate([t.query, t.gallery]) for t in trial_list]))
    with (progress or no_progress)("embedding test images", len(used)) as advance:
        try:
            return embed_samples(
                loaded, samples, used, batch_size=settings.batch_size, device=device, workers=workers,
                features=FEATURES, flip=settings.flip, on_progress=advance,
            )
        except NonFiniteFeatures as exc:
            raise exc.at(loaded.path, "evaluate, embedding test images") from exc


def _checkpoint_extra(
    loaded: Any, features: dict[str, np.ndarray], samples: Sequence[Sample], trial_list: Sequence[Trial], prepared: Any,
    settings: EvalSettings,
) -> dict[str, Any]:
    """What a checkpoint's protocol block adds when there is something to say: collapse warnings, draw notes, the split."""
    from mclnet_cli.engine.health import model_warnings

    extra: dict[str, Any] = {}
    warnings = model_warnings(str(loaded.path), features.get("bn"), loaded.degenerate_neck_channels)
    if warnings:
        extra["warnings"] = warnings
    notes = draw_notes(samples, trial_list, prepared.meta)
    if notes:
        extra["notes"] = notes
    split_key = get_protocol(settings.protocol).split_report_key
    if split_key is not None and prepared.meta.get("trial") is not None:
        extra[split_key] = prepared.meta["trial"]  # regdb: the idx split (1-10) prepared; one model per split
    return extra


# ----------------------------------------------------------------------------
# Validation during training (held-out ids, never the test set)

FEATURE_STATEMENT = "bn: L2-normalised BNNeck(f4), cosine distance"


def check_validation(prepared: PreparedDataset, config: Config, train_pids: set[int]) -> None:
    """Periodic validation needs a val split whose ids are not trained on (never the test set)."""
    if config.train.eval_every <= 0:
        return
    val = prepared.select("val")
    if not val:
        raise ConfigError(
            f"train.eval_every={config.train.eval_every} but {prepared.root} has no val split "
            "(validation never uses the test set); set train.eval_every=0"
        )
    vis = {s.pid for s in val if s.modality is Modality.VISIBLE}
    ir = {s.pid for s in val if s.modality is Modality.INFRARED}
    if not vis or not ir:
        raise ConfigError(f"{prepared.root}: the val split needs both visible and infrared images for validation")
    if (vis | ir) & train_pids:
        raise ConfigError(
            "train.eval_every > 0 but the val ids are also trained on; set data.train_on_val=false "
            "to hold them out, or train.eval_every=0"
        )


def validation_statement(config: Config) -> str:
    """What a validation number means (written to summary.json and best.pt)."""
    return (
        f"validation split (held-out ids, not the test set): queries = all val infrared images, "
        f"gallery = all val visible images, {config.eval.protocol} exclusions and CMC, "
        f"feature {FEATURE_STATEMENT}; best.pt picked by val mAP"
    )


def validate(model: Any, prepared: PreparedDataset, config: Config, device: Any) -> dict[str, Any]:
    """mAP / Rank-1 / Rank-5 / mINP (percent) of val infrared queries against all val visible images.

    :func:`embed_samples` and :func:`score_trials`, on one trial whose queries and
    gallery are the whole val split (no draws), under ``config.eval.protocol``'s
    exclusions and CMC. The model's train/eval mode is restored afterwards.
    """
    samples = prepared.select("val")
    query = [i for i, s in enumerate(samples) if s.modality is Modality.INFRARED]
    gallery = [i for i, s in enumerate(samples) if s.modality is Modality.VISIBLE]
    was_training = model.training
    try:
        features, rows = embed_samples(
            model, samples, gallery + query, preprocess=Preprocess.from_config(config),
            batch_size=config.eval.batch_size, device=device, features=("bn",),
        )
    finally:
        model.train(was_training)
    trial = Trial(
        config.eval.protocol, 0, "infrared_to_visible",
        np.asarray(query, dtype=np.int64), np.asarray(gallery, dtype=np.int64), draws="none",
    )
    (result,) = score_trials(samples, features, rows, [trial]).values()
    row = result.trials[0]
    return {
        "mAP": row["mAP"], "rank1": row["rank1"], "rank5": row["rank5"], "mINP": row["mINP"],
        "queries": row["valid_queries"], "gallery": row["gallery"],
    }
