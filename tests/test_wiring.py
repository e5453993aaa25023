"""Wiring: every setting that is configured or labelled is also applied.

Each test here fails when one piece of plumbing is cut while the parts it
connects still work on their own (each part has its own tests elsewhere):
loss settings reaching the losses, the training loader's modality slots, GeM's
exponent, ``index --add`` normalisation, best.pt selection, ``--rerank`` and
``--flip``, test-time preprocessing, and each image going through its own
modality's stream (with a checkpoint whose two streams differ, so that a wrong
stream shows in the numbers).

References are computed independently: test-time preprocessing with PIL and
numpy, features with ``model.embed`` on those arrays, metrics with
``rank_metrics`` on hand-built distance matrices.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mclnet_cli.cli.app import app
from mclnet_cli.config import load_config
from mclnet_cli.data.records import Modality, Sample, write_prepared
from mclnet_cli.engine.checkpoint import load_checkpoint, load_model
from mclnet_cli.losses import Criterion
from mclnet_cli.losses.functional import hks_loss, id_loss, mmd_loss, supcon_loss, triplet_loss
from mclnet_cli.metrics import as_percent, rank_metrics
from mclnet_cli.metrics.protocols import sysu_trial
from mclnet_cli.model import SCALES, ModelOutput, build_model

# ImageNet statistics, written out here rather than imported from the code under test.
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
METRICS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")


# ----------------------------------------------------------------------------- references


def reference_pixels(path: str | Path, height: int, width: int) -> np.ndarray:
    """Test-time preprocessing by hand: RGB, bilinear resize (PIL), to [0, 1], ImageNet mean/std -> [3, H, W]."""
    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(rgb, dtype=np.float64) / 255.0
    return ((array - MEAN) / STD).transpose(2, 0, 1)


def reference_embed(
    model: torch.nn.Module, paths: Sequence[str], modality: str, height: int, width: int, flip: bool = False
) -> np.ndarray:
    """``model.embed`` of the hand-preprocessed images; with ``flip``, the normalised sum with the mirror's."""
    batch = np.stack([reference_pixels(p, height, width) for p in paths])
    with torch.no_grad():
        features = model.embed(torch.from_numpy(batch).float(), modality)
        if flip:
            mirrored = model.embed(torch.from_numpy(batch[:, :, :, ::-1].copy()).float(), modality)
            features = F.normalize(features + mirrored, dim=1)
    return features.numpy().astype(np.float64)


def reference_metrics(query: list[Sample], gallery: list[Sample], dist: np.ndarray) -> dict[str, float]:
    """Percent metrics of one trial from a given [query, gallery] distance matrix (SYSU rules)."""
    result = rank_metrics(
        dist, np.array([s.pid for s in query]), np.array([s.pid for s in gallery]),
        np.array([s.cam for s in query]), np.array([s.cam for s in gallery]), "sysu",
    )
    return {k: float(v) for k, v in as_percent(result).items() if k in METRICS}


def invoke_json(runner: Any, args: list[str]) -> Any:
    """Run the CLI, require success, parse its JSON stdout."""
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def rows_of(report: dict, key: str = "bn") -> list[dict[str, float]]:
    """The per-trial metric rows of one result key of an evaluation report."""
    return [{k: row[k] for k in METRICS} for row in report["results"][key]["trials"]]


def differ(a: list[dict[str, float]], b: list[dict[str, float]], tol: float = 1e-3) -> bool:
    """True when some metric of some trial differs by more than ``tol``."""
    return any(abs(x[k] - y[k]) > tol for x, y in zip(a, b) for k in METRICS)


# ----------------------------------------------------------------------------- 1, 2: loss settings


def _fake_output(batch: int = 8, dim: int = 6, classes: int = 3, seed: int = 3) -> ModelOutput:
    g = torch.Generator().manual_seed(seed)
    features = {s: torch.randn(batch, dim, generator=g) for s in SCALES}
    return ModelOutput(features=features, bn_feature=features["layer4"], logits=torch.randn(batch, classes, generator=g))


LOSS_SETTINGS = [  # every term on, each setting away from its default (whatever the preset says)
    "loss.weights.id=1.0",
    "loss.weights.supcon=1.0",
    "loss.weights.hks=1.0",
    "loss.weights.mmd=1.0",
    "loss.supcon_temperature=0.37",
    "loss.hks_temperature=2.5",
    "loss.mmd_margin=0.01",
    "loss.label_smoothing=0.3",
    "loss.triplet_margin=2.0",
    "loss.weights.triplet=1.0",
]


def _expected_term(name: str, out: ModelOutput, labels: torch.Tensor, modalities: torch.Tensor, cfg: Any) -> torch.Tensor:
    """The functional loss of one term called with the config's (non-default) setting."""
    f4, vis = out.features["layer4"], modalities == 0
    if name == "supcon":
        return sum(supcon_loss(out.features[s], labels, cfg.supcon_temperature) for s in SCALES)
    if name == "hks":
        return hks_loss([out.features[s] for s in SCALES], cfg.hks_temperature, getattr(cfg, "hks_smoothing", 0.0))
    if name == "id":
        return id_loss(out.logits, labels, cfg.label_smoothing)
    if name == "mmd":
        z = _mmd_input(f4, cfg.mmd_feature)
        return mmd_loss(z[vis], z[~vis], labels[vis], labels[~vis], cfg.mmd_margin)
    return triplet_loss(f4, labels, modalities, cfg.triplet_margin)


def _mmd_input(f4: torch.Tensor, mmd_feature: str) -> torch.Tensor:
    """What MMD aligns under ``loss.mmd_feature`` (``tiny``: standardised f4; checked in test_losses.py)."""
    from mclnet_cli.losses.criterion import standardize

    return standardize(f4) if mmd_feature == "standardized" else f4


def _default_term(
    name: str, out: ModelOutput, labels: torch.Tensor, modalities: torch.Tensor, mmd_feature: str = "pool"
) -> torch.Tensor:
    """The same term with the functional loss's default setting (what a criterion ignoring the config gives);
    MMD on the config's input (``mmd_feature``), so only its margin differs."""
    f4, vis = out.features["layer4"], modalities == 0
    if name == "supcon":
        return sum(supcon_loss(out.features[s], labels) for s in SCALES)
    if name == "hks":
        return hks_loss([out.features[s] for s in SCALES])
    if name == "id":
        return id_loss(out.logits, labels)
    if name == "mmd":
        z = _mmd_input(f4, mmd_feature)
        return mmd_loss(z[vis], z[~vis], labels[vis], labels[~vis])
    return triplet_loss(f4, labels, modalities)


@pytest.mark.parametrize("term", ["supcon", "hks", "id", "mmd", "triplet"])
def test_criterion_passes_configured_settings_to_each_loss(term: str) -> None:
    """Criterion.from_config with non-default temperatures/margins equals the functional losses called with them."""
    cfg = load_config("tiny", LOSS_SETTINGS).loss
    out = _fake_output()
    labels = torch.tensor([0, 0, 1, 2, 0, 0, 1, 2])
    modalities = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    parts = Criterion.from_config(cfg)(out, labels, modalities).parts
    expected = _expected_term(term, out, labels, modalities, cfg)
    assert parts[term].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    # the setting matters on this input, so a criterion ignoring it would be caught
    assert abs(expected.item() - _default_term(term, out, labels, modalities, cfg.mmd_feature).item()) > 1e-3


# ----------------------------------------------------------------------------- 3: training loader slots


def _colour(pid: int, modality: Modality, k: int) -> tuple[int, int, int]:
    """A unique constant colour per file: visible ones are coloured, infrared ones grey."""
    if modality is Modality.VISIBLE:
        return (20 * pid, 60, 10 + 40 * k)
    grey = 100 + 10 * pid + k
    return (grey, grey, grey)


def test_every_training_slot_holds_a_file_of_its_modality_and_pid(tmp_path: Path) -> None:
    """Decode each slot of real training batches back to its file: infrared slots hold infrared files of the row's pid."""
    from mclnet_cli.data.loader import build_train_loader
    from mclnet_cli.data.records import load_prepared

    height, width = 16, 8
    samples, by_colour = [], {}
    for pid in (2, 5, 7, 9):
        for modality, cam in ((Modality.VISIBLE, 1), (Modality.INFRARED, 3)):
            for k in range(3):
                colour = _colour(pid, modality, k)
                path = tmp_path / "raw" / f"{pid}_{cam}_{k}.png"
                path.parent.mkdir(exist_ok=True)
                Image.new("RGB", (width, height), colour).save(path)
                sample = Sample(str(path), pid, cam, modality, "train")
                samples.append(sample)
                by_colour[colour] = sample
    prepared = load_prepared(write_prepared(tmp_path / "prepared", samples, {"dataset": "sysu"}))
    data_cfg = load_config("tiny", [
        f"data.height={height}", f"data.width={width}", "data.pad=0", "data.grayscale_p=0", "data.erasing_p=0", "data.spectrum_p=0",
        "data.pseudo_infrared_p=0", "data.num_ids=2", "data.num_instances=2", "data.workers=0",
    ]).data
    loader = build_train_loader(prepared, data_cfg, seed=0, steps_per_epoch=4)
    pid_of_label = {label: pid for pid, label in loader.label_map.items()}
    seen = {Modality.VISIBLE: set(), Modality.INFRARED: set()}
    for epoch in range(2):
        loader.set_epoch(epoch)
        for batch in loader:
            for slot, modality in ((batch.visible, Modality.VISIBLE), (batch.infrared, Modality.INFRARED)):
                pixels = slot * torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1)
                pixels = pixels + torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)
                for row, label in zip(pixels, batch.labels.tolist()):
                    colour = tuple(int(round(255 * float(row[c].mean()))) for c in range(3))
                    sample = by_colour[colour]  # a KeyError means the slot holds no file's pixels
                    assert sample.modality is modality, f"{modality.value} slot holds {sample.path}"
                    assert sample.pid == pid_of_label[label], f"row labelled pid {pid_of_label[label]} holds {sample.path}"
                    seen[modality].add(sample.path)
    assert len(seen[Modality.VISIBLE]) > 4 and len(seen[Modality.INFRARED]) > 4  # many files, not one by chance


# ----------------------------------------------------------------------------- 4: index --add


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_added_vectors_are_unit_norm_and_scored_by_cosine(kind: str) -> None:
    """Vectors given to add() at very different lengths are stored normalised: hit scores are cosines."""
    from mclnet_cli.index.store import GalleryIndex, IndexRecord

    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 16))
    records = [IndexRecord(f"/g/{i:04d}.jpg", None, None, "visible") for i in range(60)]
    gallery = GalleryIndex.build(_unit(x[:20]), records[:20], kind)
    lengths = rng.uniform(0.05, 20.0, size=(40, 1))
    assert gallery.add(x[20:] * lengths, records[20:]) == 40
    queries = rng.normal(size=(6, 16))
    cosine = _unit(queries) @ _unit(x).T
    row_of = {r.path: i for i, r in enumerate(records)}
    for q, hits in enumerate(gallery.search(queries, top_k=60)):
        assert len(hits) >= 10
        for hit in hits:
            assert hit.score == pytest.approx(cosine[q, row_of[hit.path]], abs=1e-4), hit.path
        assert row_of[hits[0].path] == int(np.argmax(cosine[q]))
    if kind == "flat":
        stored = gallery.index.reconstruct_n(0, len(gallery))
        np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-5)


def test_index_add_cli_appends_features_of_the_right_stream(
    tmp_path: Path, cli_runner: Any, fake_sysu: tuple[list[Sample], Path], two_stream_checkpoint: Path
) -> None:
    """`index --add` stores unit vectors equal to the infrared stream's embeddings of the new files."""
    from mclnet_cli.index.store import GalleryIndex

    samples, _ = fake_sysu
    infrared = sorted({str(Path(s.path).parent.parent) for s in samples if s.split == "test" and s.cam in (3, 6)})
    out = tmp_path / "index"
    base = ["index", "--checkpoint", str(two_stream_checkpoint), "--modality", "infrared", "--out", str(out)]
    invoke_json(cli_runner, [*base[:1], infrared[0], *base[1:], "--device", "cpu", "--json"])
    added = invoke_json(cli_runner, [*base[:1], infrared[1], *base[1:], "--add", "--device", "cpu", "--json"])
    assert added["appended"] is True and added["added"] > 0
    gallery = GalleryIndex.load(out)
    stored = gallery.index.reconstruct_n(0, len(gallery))
    paths = [r.path for r in gallery.records]
    model = load_model(two_stream_checkpoint).model
    expected = reference_embed(model, paths, "infrared", 64, 32)
    np.testing.assert_allclose(stored, expected, atol=1e-4)
    other = reference_embed(model, paths, "visible", 64, 32)
    assert np.abs(stored - other).max() > 1e-2  # the visible stream would give other vectors


# ----------------------------------------------------------------------------- 5: GeM exponent


def _gem_reference(x: np.ndarray, p: float, eps: float = 1e-6) -> np.ndarray:
    """(mean over H, W of max(x, eps)^p)^(1/p), in float64."""
    return (np.maximum(x, eps) ** p).mean(axis=(2, 3)) ** (1.0 / p)


@pytest.mark.parametrize("p", [3.0, 6.5])
def test_gem_matches_the_formula_at_its_exponent(p: float) -> None:
    from mclnet_cli.model.heads import build_pooling

    x = torch.rand(2, 5, 4, 3, generator=torch.Generator().manual_seed(0)) * 2.0
    got = build_pooling("gem", p)(x).double().numpy()
    np.testing.assert_allclose(got, _gem_reference(x.double().numpy(), p), rtol=1e-5)
    assert np.abs(got - x.double().numpy().mean(axis=(2, 3))).max() > 1e-2  # not a plain average


@pytest.mark.parametrize("pooling, p", [("gem", 3.0), ("gem", 6.5), ("avg", 3.0)])
def test_model_pools_with_the_configured_pooling(pooling: str, p: float) -> None:
    """The pre-BN retrieval feature is the configured pooling of the layer4 map (model.gem_p reaches GeM)."""
    cfg = load_config("tiny", [f"model.pooling={pooling}", f"model.gem_p={p}"])
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=2).eval()
    images = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fmap = model.backbone.forward_shared(model.backbone.forward_specific(images, Modality.VISIBLE)[-1])[-1]
        got = model.embed(images, "visible", feature="pool").double().numpy()
    array = fmap.double().numpy()
    pooled = _gem_reference(array, p) if pooling == "gem" else array.mean(axis=(2, 3))
    np.testing.assert_allclose(got, _unit(pooled), atol=1e-5)


# ----------------------------------------------------------------------------- 6: best.pt


FAST_TRAIN = [
    "data.num_ids=2", "data.num_instances=2", "data.workers=0", "train.steps_per_epoch=2", "train.log_every=1",
    "optim.warmup_epochs=2", "optim.milestones=[3]",
]


def test_best_checkpoint_keeps_the_epoch_with_the_best_validation_map(
    prepared_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scripted val mAPs 10, 30, 20: best.pt holds epoch 2's weights and score, whatever came after."""
    from mclnet_cli.engine import train as train_mod

    scores = iter([10.0, 30.0, 20.0])
    snapshots: list[dict[str, torch.Tensor]] = []

    def scripted_validate(model: torch.nn.Module, *args: Any, **kwargs: Any) -> dict[str, Any]:
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        mAP = next(scores)
        return {"mAP": mAP, "rank1": mAP, "rank5": mAP, "mINP": mAP, "queries": 6, "gallery": 6}

    monkeypatch.setattr(train_mod, "validate", scripted_validate)
    cfg = load_config("tiny", [*FAST_TRAIN, "train.epochs=3", "train.eval_every=1", "data.train_on_val=false"])
    result = train_mod.fit(cfg, prepared_dataset, tmp_path / "run", device="cpu")
    assert len(snapshots) == 3
    assert result.best is not None and result.best["mAP"] == 30.0 and result.best["epoch"] == 1
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["epoch"] == 2 and best["val"]["mAP"] == 30.0
    for name, value in best["model"].items():
        assert torch.equal(value, snapshots[1][name]), name
    assert any(not torch.equal(best["model"][k], snapshots[2][k]) for k in best["model"])  # training moved on
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_val"]["mAP"] == 30.0


def test_validation_runs_every_eval_every_epochs_and_after_the_last(
    prepared_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.eval_every=2 over 3 epochs validates after epochs 2 and 3 (the last), not after each."""
    from mclnet_cli.engine import train as train_mod

    epochs_seen: list[int] = []

    class Counter(train_mod.Reporter):
        def epoch_end(self, epoch: int, row: Any) -> None:
            if "val" in row:
                epochs_seen.append(epoch)

    monkeypatch.setattr(
        train_mod, "validate",
        lambda *a, **k: {"mAP": 1.0, "rank1": 1.0, "rank5": 1.0, "mINP": 1.0, "queries": 6, "gallery": 6},
    )
    cfg = load_config("tiny", [*FAST_TRAIN, "train.epochs=3", "train.eval_every=2", "data.train_on_val=false"])
    train_mod.fit(cfg, prepared_dataset, tmp_path / "run", device="cpu", reporter=Counter())
    assert epochs_seen == [1, 2]


def test_config_seed_reaches_the_initial_weights_and_the_loader(
    prepared_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same seed gives the same initial weights; another seed other weights; the loader gets the seed."""
    from mclnet_cli.data import loader as loader_mod
    from mclnet_cli.engine import train as train_mod

    loader_seeds: list[int] = []
    real_loader = loader_mod.build_train_loader

    def spy(*args: Any, **kwargs: Any) -> Any:
        loader_seeds.append(kwargs["seed"])
        return real_loader(*args, **kwargs)

    monkeypatch.setattr(loader_mod, "build_train_loader", spy)
    initial: list[dict[str, torch.Tensor]] = []
    for run, seed in enumerate((5, 5, 6)):
        out = tmp_path / f"run{run}"

        class Grab(train_mod.Reporter):
            def start(self, info: Any, out: Path = out) -> None:
                initial.append(load_checkpoint(out / "last.pt")["model"])  # saved before the first step

        cfg = load_config("tiny", [*FAST_TRAIN, "train.epochs=1", "train.steps_per_epoch=1", f"seed={seed}"])
        train_mod.fit(cfg, prepared_dataset, out, device="cpu", reporter=Grab())
    assert loader_seeds == [5, 5, 6]
    assert all(torch.equal(initial[0][k], initial[1][k]) for k in initial[0])
    assert any(not torch.equal(initial[0][k], initial[2][k]) for k in initial[0])


# ----------------------------------------------------------------------------- 9: test-time preprocessing


@pytest.mark.parametrize("height, width", [(64, 32), (40, 24)])
def test_test_transform_matches_a_pil_numpy_reference(tmp_path: Path, height: int, width: int) -> None:
    from mclnet_cli.data.transforms import test_transform

    path = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 23, 3), dtype=np.uint8)).save(path)
    with Image.open(path) as image:
        got = test_transform(height, width)(image.convert("RGB")).numpy()
    np.testing.assert_allclose(got, reference_pixels(path, height, width), atol=1e-5)


def test_extract_features_preprocess_like_the_reference(fake_sysu: tuple[list[Sample], Path], tiny_checkpoint: Path) -> None:
    """extract_features (decode, resize, normalise, embed) equals embed() of the hand-preprocessed images."""
    from mclnet_cli.engine.extract import extract_features

    samples, _ = fake_sysu
    paths = [s.path for s in samples if s.split == "test"][:6]
    model = load_model(tiny_checkpoint).model
    got = extract_features(model, paths, "visible", height=64, width=32, batch_size=4).features
    np.testing.assert_allclose(got, reference_embed(model, paths, "visible", 64, 32), atol=1e-4)


# ----------------------------------------------------------------------------- 7, 8, 10: evaluate


def _test_split(samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if s.split == "test"]


NOISE = 140.0  # pixel noise of the sysu_eval copies: retrieval by an untrained model is good, not perfect


@pytest.fixture(scope="module")
def sysu_eval(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Sample], Path]:
    """A fake SYSU test split big enough for metrics to move: 8 ids, 4 visible + 2 infrared cameras.

    Each id has a random coarse colour pattern; its images, in every camera, are noisy copies of it
    (kept in colour, so that cameras of both spectra mix among the nearest neighbours and
    re-ranking has neighbourhoods to work with).
    """
    root = tmp_path_factory.mktemp("sysu_eval")
    rng = np.random.default_rng(7)
    samples = []
    for pid in range(1, 9):
        base = rng.integers(0, 256, size=(6, 3, 3)).astype(np.float64)
        for cam in (1, 2, 3, 4, 5, 6):
            modality = Modality.INFRARED if cam in (3, 6) else Modality.VISIBLE
            for k in range(1, 3):
                pixels = np.kron(base, np.ones((4, 4, 1))) + rng.normal(0, NOISE, size=(24, 12, 3))
                path = root / "SYSU" / f"cam{cam}" / f"{pid:04d}" / f"{k:04d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
                samples.append(Sample(str(path), pid, cam, modality, "test"))
    return samples, write_prepared(root / "prep", samples, {"dataset": "sysu", "reader": "sysu"})


def engine_embed(
    model: torch.nn.Module, paths: Sequence[str], modality: str, height: int, width: int, flip: bool = False
) -> np.ndarray:
    """The engine's own features (extract_features), bit for bit what evaluate scores.

    Re-ranking builds discrete neighbour sets, so features that differ in their last
    float bit could flip a near-tie; its reference therefore starts from these
    features, which the routing and flip tests check against :func:`reference_embed`.
    """
    from mclnet_cli.engine.extract import extract_features

    return extract_features(model, list(paths), modality, height=height, width=width, flip=flip).features


def _reference_report(
    model: torch.nn.Module, samples: list[Sample], trials: int, *, flip: bool = False, rerank: bool = False,
    query_stream: str = "infrared", embed: Any = reference_embed,
) -> list[dict[str, float]]:
    """Per-trial bn metrics by hand: SYSU all-search single-shot draws, each image through the stream asked."""
    from mclnet_cli.metrics.rerank import k_reciprocal_distance

    test = _test_split(samples)
    rows = []
    for t in range(trials):
        trial = sysu_trial(test, "all", 1, t)
        query, gallery = [test[i] for i in trial.query], [test[i] for i in trial.gallery]
        qf = embed(model, [s.path for s in query], query_stream, 64, 32, flip=flip)
        gf = embed(model, [s.path for s in gallery], "visible", 64, 32, flip=flip)
        if rerank:
            dist = k_reciprocal_distance(qf.astype(np.float32), gf.astype(np.float32), k1=20, k2=6, lambda_value=0.3)
        else:
            dist = 1.0 - qf @ gf.T
        rows.append(reference_metrics(query, gallery, dist))
    return rows


def _evaluate(runner: Any, checkpoint: Path, prepared: Path, *extra: str) -> dict:
    return invoke_json(runner, ["evaluate", str(checkpoint), "--data", str(prepared), "--device", "cpu", "--json", *extra])


def test_evaluate_routes_each_image_through_its_own_stream(
    cli_runner: Any, sysu_eval: tuple[list[Sample], Path], two_stream_checkpoint: Path
) -> None:
    from mclnet_cli.engine.evaluate import embed_samples

    samples, prepared = sysu_eval
    model = load_model(two_stream_checkpoint).model
    test = _test_split(samples)
    features, rows = embed_samples(model, test, range(len(test)), height=64, width=32, batch_size=5, device="cpu")
    for modality in Modality:
        chosen = [i for i, s in enumerate(test) if s.modality is modality]
        expected = reference_embed(model, [test[i].path for i in chosen], modality.value, 64, 32)
        np.testing.assert_allclose(features["bn"][rows[chosen]], expected, atol=1e-4)
        wrong = reference_embed(model, [test[i].path for i in chosen], modality.other().value, 64, 32)
        assert np.abs(features["bn"][rows[chosen]] - wrong).max() > 1e-2

    report = _evaluate(cli_runner, two_stream_checkpoint, prepared)
    expected_rows = _reference_report(model, samples, trials=2)
    assert rows_of(report) == [pytest.approx(r, abs=1e-3) for r in expected_rows]
    assert differ(expected_rows, _reference_report(model, samples, trials=2, query_stream="visible"))


def test_evaluate_rerank_applies_k_reciprocal_distances(
    cli_runner: Any, sysu_eval: tuple[list[Sample], Path], tiny_checkpoint: Path
) -> None:
    """With identical streams both spectra share neighbourhoods, so re-ranking reorders the gallery."""
    samples, prepared = sysu_eval
    model = load_model(tiny_checkpoint).model
    report = _evaluate(cli_runner, tiny_checkpoint, prepared, "--rerank")
    assert report["protocol"]["rerank"] is True
    expected_rows = _reference_report(model, samples, trials=2, rerank=True, embed=engine_embed)
    assert rows_of(report) == [pytest.approx(r, abs=1e-3) for r in expected_rows]
    assert differ(expected_rows, _reference_report(model, samples, trials=2))  # re-ranking changes these numbers


def test_evaluate_flip_averages_with_the_mirrored_image(
    cli_runner: Any, sysu_eval: tuple[list[Sample], Path], two_stream_checkpoint: Path
) -> None:
    samples, prepared = sysu_eval
    model = load_model(two_stream_checkpoint).model
    report = _evaluate(cli_runner, two_stream_checkpoint, prepared, "--flip")
    assert report["protocol"]["flip"] is True
    expected_rows = _reference_report(model, samples, trials=2, flip=True)
    assert rows_of(report) == [pytest.approx(r, abs=1e-3) for r in expected_rows]
    assert differ(expected_rows, _reference_report(model, samples, trials=2))  # flipping changes these numbers


def test_evaluate_takes_flip_and_rerank_from_the_checkpoint_config(
    tmp_path: Path, cli_runner: Any, sysu_eval: tuple[list[Sample], Path], make_checkpoint: Any
) -> None:
    """eval.flip / eval.rerank in the training config apply when the options are left out."""
    samples, prepared = sysu_eval
    path = make_checkpoint(
        tmp_path / "cfg.pt", overrides=("eval.trials=2", "eval.flip=true", "eval.rerank=true"))
    report = _evaluate(cli_runner, path, prepared)
    assert report["protocol"]["flip"] is True and report["protocol"]["rerank"] is True
    model = load_model(path).model
    expected = _reference_report(model, samples, 2, flip=True, rerank=True, embed=engine_embed)
    assert rows_of(report) == [pytest.approx(r, abs=1e-3) for r in expected]


def test_evaluate_features_file_rerank_is_applied(tmp_path: Path, cli_runner: Any) -> None:
    """`evaluate --features --rerank` scores k-reciprocal distances, not cosine ones."""
    from mclnet_cli.metrics.rerank import k_reciprocal_distance

    samples = [
        Sample(f"/d/cam{cam}/{pid:04d}/{k:04d}.jpg", pid, cam, Modality.INFRARED if cam == 3 else Modality.VISIBLE, "test")
        for pid in range(1, 7) for cam in (1, 2, 3) for k in range(2)
    ]
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(7, 8))
    features = _unit(centres[[s.pid for s in samples]] + 1.2 * rng.normal(size=(len(samples), 8))).astype(np.float32)
    npz = tmp_path / "f.npz"
    np.savez(
        npz, features=features, pids=np.array([s.pid for s in samples]), cams=np.array([s.cam for s in samples]),
        modalities=np.array([s.modality.value for s in samples]), paths=np.array([s.path for s in samples]),
    )
    report = invoke_json(cli_runner, ["evaluate", "--features", str(npz), "--trials", "2", "--rerank", "--json"])
    expected, plain = [], []
    for t in range(2):
        trial = sysu_trial(samples, "all", 1, t)
        query, gallery = [samples[i] for i in trial.query], [samples[i] for i in trial.gallery]
        qf, gf = features[trial.query], features[trial.gallery]
        expected.append(reference_metrics(query, gallery, k_reciprocal_distance(qf, gf, k1=20, k2=6, lambda_value=0.3)))
        plain.append(reference_metrics(query, gallery, 1.0 - qf @ gf.T))
    assert rows_of(report, "features") == [pytest.approx(r, abs=1e-3) for r in expected]
    assert differ(expected, plain)


def test_evaluate_shots_10_is_applied_not_only_reported(
    cli_runner: Any, sysu_eval: tuple[list[Sample], Path], tiny_checkpoint: Path
) -> None:
    """`--shots 10` reaches the gallery draw: every image of each (pid, camera), not one, is scored."""
    samples, prepared = sysu_eval
    model = load_model(tiny_checkpoint).model
    report = _evaluate(cli_runner, tiny_checkpoint, prepared, "--shots", "10", "--trials", "2")
    assert report["protocol"]["shots"] == 10
    # 8 ids x visible cameras 1, 2, 4, 5 x 2 images: 10-shot takes all 64, single-shot 32
    assert [row["gallery"] for row in report["results"]["bn"]["trials"]] == [64, 64]
    test = _test_split(samples)

    def by_hand(shots: int) -> list[dict[str, float]]:
        rows = []
        for t in range(2):
            trial = sysu_trial(test, "all", shots, t)
            query, gallery = [test[i] for i in trial.query], [test[i] for i in trial.gallery]
            qf = engine_embed(model, [s.path for s in query], "infrared", 64, 32)
            gf = engine_embed(model, [s.path for s in gallery], "visible", 64, 32)
            rows.append(reference_metrics(query, gallery, 1.0 - qf @ gf.T))
        return rows

    ten = by_hand(10)
    assert rows_of(report) == [pytest.approx(r, abs=1e-3) for r in ten]
    assert differ(ten, by_hand(1))  # single-shot scores differ: a report of 10 shots scored as 1 would fail


#: LLCM gallery cameras as docs/protocols.md states them, written out here
LLCM_CAMERAS = {"infrared_to_visible": (1, 2, 3, 4, 5, 6, 7, 8, 9), "visible_to_infrared": (1, 2, 4, 5, 6, 7, 8, 9)}


def _llcm_by_hand(samples: list[Sample], unit: np.ndarray, direction: str, cams: Sequence[int], trials: int) -> tuple:
    """Per-trial metrics and gallery sizes of an LLCM direction drawn from ``cams`` (AGW draw, written plainly)."""
    import random

    source = Modality.INFRARED if direction == "infrared_to_visible" else Modality.VISIBLE
    query = [i for i, s in enumerate(samples) if s.modality is source]
    rows, sizes = [], []
    for t in range(trials):
        rng, gallery = random.Random(t), []
        for pid in sorted({s.pid for s in samples}):
            for cam in cams:
                group = sorted((s.path, i) for i, s in enumerate(samples)
                               if s.modality is not source and (s.pid, s.cam) == (pid, cam))
                if group:
                    gallery.append(dict(group)[rng.choice([p for p, _ in group])])
        result = rank_metrics(
            1.0 - unit[query] @ unit[gallery].T, np.array([samples[i].pid for i in query]),
            np.array([samples[i].pid for i in gallery]), np.array([samples[i].cam for i in query]),
            np.array([samples[i].cam for i in gallery]), "llcm",
        )
        rows.append({k: float(v) for k, v in as_percent(result).items() if k in METRICS})
        sizes.append(len(gallery))
    return rows, sizes


def test_llcm_directions_draw_from_their_own_gallery_cameras(tmp_path: Path, cli_runner: Any) -> None:
    """infrared->visible draws visible cameras 1-9, visible->infrared infrared cameras 1, 2, 4-9.

    Both spectra have camera-3 images here, so drawing one direction from the
    other's camera list changes the gallery (and the draws after it).
    """
    samples = [
        Sample(f"/llcm/test_{'vis' if m is Modality.VISIBLE else 'nir'}/cam{cam}/{pid:04d}/{k}.jpg", pid, cam, m, "test")
        for m in Modality for pid in range(1, 6) for cam in range(1, 10) for k in range(2)
    ]
    rng = np.random.default_rng(5)
    features = _unit(np.eye(8)[[s.pid for s in samples]] + 0.7 * rng.normal(size=(len(samples), 8))).astype(np.float32)
    npz = tmp_path / "f.npz"
    np.savez(
        npz, features=features, pids=np.array([s.pid for s in samples]), cams=np.array([s.cam for s in samples]),
        modalities=np.array([s.modality.value for s in samples]), paths=np.array([s.path for s in samples]),
    )
    report = invoke_json(cli_runner, ["evaluate", "--features", str(npz), "--protocol", "llcm", "--trials", "2", "--json"])
    for direction, cams in LLCM_CAMERAS.items():
        other = next(c for d, c in LLCM_CAMERAS.items() if d != direction)
        expected, sizes = _llcm_by_hand(samples, features, direction, cams, 2)
        swapped, swapped_sizes = _llcm_by_hand(samples, features, direction, other, 2)
        rows = report["results"][f"{direction}/features"]["trials"]
        assert [row["gallery"] for row in rows] == sizes == [5 * len(cams)] * 2 != swapped_sizes
        assert [{k: row[k] for k in METRICS} for row in rows] == [pytest.approx(r, abs=1e-3) for r in expected]
        assert differ(expected, swapped)


# ----------------------------------------------------------------------------- 10: index and query streams


@pytest.mark.parametrize("gallery_modality", ["visible", "infrared"])
def test_index_and_query_embed_with_the_stream_of_their_modality(
    tmp_path: Path, cli_runner: Any, fake_sysu: tuple[list[Sample], Path], two_stream_checkpoint: Path,
    gallery_modality: str,
) -> None:
    """Gallery vectors come from --modality's stream at index time; probe scores from --modality's at query time."""
    samples, _ = fake_sysu
    probe_modality = Modality.parse(gallery_modality).other().value
    folders = {
        m: sorted({str(Path(s.path).parent.parent) for s in samples if s.split == "test" and s.modality.value == m})
        for m in ("visible", "infrared")
    }
    out = tmp_path / "index"
    invoke_json(cli_runner, [
        "index", folders[gallery_modality][0], "--checkpoint", str(two_stream_checkpoint),
        "--modality", gallery_modality, "--out", str(out), "--device", "cpu", "--json",
    ])
    probes = [s.path for s in samples if s.split == "test" and s.modality.value == probe_modality][:4]
    found = invoke_json(cli_runner, [
        "query", *probes, "--index", str(out), "--modality", probe_modality, "--top-k", "50", "--device", "cpu", "--json",
    ])
    model = load_model(two_stream_checkpoint).model
    gallery_paths = [hit["path"] for hit in found[0]["results"]]
    gallery = dict(zip(gallery_paths, reference_embed(model, gallery_paths, gallery_modality, 64, 32)))
    right = reference_embed(model, probes, probe_modality, 64, 32)
    wrong = reference_embed(model, probes, gallery_modality, 64, 32)
    for row, probe, ok, bad in zip(found, probes, right, wrong):
        assert row["probe"] == str(Path(probe).resolve())
        scores = np.array([hit["score"] for hit in row["results"]])
        expected = np.array([gallery[hit["path"]] @ ok for hit in row["results"]])
        np.testing.assert_allclose(scores, expected, atol=1e-4)
        other = np.array([gallery[hit["path"]] @ bad for hit in row["results"]])
        assert np.abs(scores - other).max() > 1e-2


# ----------------------------------------------------------------------------- other settings that must reach their use


def _spy_extraction(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record the keyword arguments of every extract_features call (the call itself still runs)."""
    from mclnet_cli.engine import extract

    calls: list[dict[str, Any]] = []
    real = extract.extract_features

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(extract, "extract_features", spy)
    return calls


def test_evaluate_batch_size_and_workers_reach_extraction(
    tmp_path: Path, cli_runner: Any, fake_sysu: tuple[list[Sample], Path], make_checkpoint: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Left out, they come from the checkpoint's eval.batch_size and data.workers; given, the options win."""
    _, prepared = fake_sysu
    path = make_checkpoint(tmp_path / "c.pt", overrides=("eval.trials=1", "eval.batch_size=7", "data.workers=0"))
    calls = _spy_extraction(monkeypatch)
    _evaluate(cli_runner, path, prepared)
    assert calls and {(c["batch_size"], c["workers"]) for c in calls} == {(7, 0)}
    calls.clear()
    _evaluate(cli_runner, path, prepared, "--batch-size", "3", "--workers", "1")
    assert calls and {(c["batch_size"], c["workers"]) for c in calls} == {(3, 1)}


def test_query_batch_size_reaches_extraction(
    tmp_path: Path, cli_runner: Any, fake_sysu: tuple[list[Sample], Path], make_checkpoint: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`query` embeds probes in batches of the checkpoint's index.batch_size, or of --batch-size."""
    samples, _ = fake_sysu
    path = make_checkpoint(tmp_path / "c.pt", overrides=("index.batch_size=5",))
    gallery = str(Path(next(s.path for s in samples if s.cam == 1)).parent.parent)
    probe = next(s.path for s in samples if s.cam == 3)
    out = tmp_path / "index"
    invoke_json(cli_runner, ["index", gallery, "-c", str(path), "-m", "visible", "-o", str(out), "--device", "cpu", "--json"])
    calls = _spy_extraction(monkeypatch)
    invoke_json(cli_runner, ["query", probe, "-i", str(out), "-m", "infrared", "--device", "cpu", "--json"])
    invoke_json(cli_runner, ["query", probe, "-i", str(out), "-m", "infrared", "--batch-size", "2", "--device", "cpu", "--json"])
    assert [c["batch_size"] for c in calls] == [5, 2]


def test_index_hnsw_m_comes_from_the_checkpoint_config(
    tmp_path: Path, cli_runner: Any, fake_sysu: tuple[list[Sample], Path], make_checkpoint: Any
) -> None:
    samples, _ = fake_sysu
    path = make_checkpoint(tmp_path / "c.pt", overrides=("index.kind=hnsw", "index.hnsw_m=8"))
    gallery = str(Path(next(s.path for s in samples if s.cam == 1)).parent.parent)
    report = invoke_json(cli_runner, [
        "index", gallery, "-c", str(path), "-m", "visible", "-o", str(tmp_path / "idx"), "--device", "cpu", "--json",
    ])
    assert report["kind"] == "hnsw" and report["factory"] == "HNSW8,Flat"


def test_demo_seed_reaches_the_dataset_draw_and_the_training_config(tmp_path: Path, cli_runner: Any, monkeypatch) -> None:
    """``demo --seed`` draws another dataset and seeds training; stopped at the draw (nothing trains)."""
    import mclnet_cli.config as config_module
    import mclnet_cli.data.prepare as prepare_module
    from mclnet_cli.engine.demo import MARKER

    seen: dict[str, Any] = {}
    real_load_config = config_module.load_config

    def load_config_spy(preset: str, overrides: Sequence[str] = ()) -> Any:
        seen["config"] = real_load_config(preset, overrides)
        return seen["config"]

    def prepare_spy(raw: Path, prepared: Path, *, seed: int, **kwargs: Any) -> Any:
        seen["draw_seed"] = seed
        raise KeyboardInterrupt  # stop here: the demo reports how to start over

    monkeypatch.setattr(config_module, "load_config", load_config_spy)
    monkeypatch.setattr(prepare_module, "prepare_synthetic", prepare_spy)
    out = tmp_path / "demo"
    result = cli_runner.invoke(app, ["demo", "--quick", "--seed", "3", "--out", str(out)])
    assert result.exit_code == 130, result.output
    assert seen["draw_seed"] == 3 and seen["config"].seed == 3
    assert "--seed 3" in result.output  # the restart command keeps the seed
    assert json.loads((out / MARKER).read_text())["seed"] == 3
