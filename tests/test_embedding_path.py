"""One embedding path: evaluate, ``index``, ``query``, ``serve`` and ``api.embed`` give the same vectors.

Every one of them goes through ``engine.extract`` with the checkpoint's
``Preprocess`` record (``LoadedModel.preprocess``). The checkpoint here has
differing visible and infrared streams, so a path that routed an image through
the wrong stream, or preprocessed it otherwise, would not give the same numbers.
The second half checks that the record comes from the checkpoint's config and is
used: a checkpoint saved at another size, filter and mean/std embeds exactly as
a hand-made reference of that preprocessing, and not as the default one.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mclnet_cli import api
from mclnet_cli.data.preprocess import Preprocess
from mclnet_cli.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mclnet_cli.engine.checkpoint import load_checkpoint, load_model, save_checkpoint
from mclnet_cli.engine.evaluate import embed_samples
from mclnet_cli.engine.extract import extract_features
from mclnet_cli.engine.indexing import build_gallery_index
from mclnet_cli.engine.search import SearchEngine, search_gallery
from mclnet_cli.errors import ConfigError, DataError
from mclnet_cli.index.store import GalleryIndex
from mclnet_cli.types import Modality, Sample

OTHER = ("data.height=48", "data.width=24", "data.resize=lanczos", "data.mean=[0.5,0.4,0.3]", "data.std=[0.2,0.25,0.3]")


def _picture(seed: int, size: tuple[int, int], gray: bool) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    if gray:
        pixels[:] = pixels.mean(axis=2, keepdims=True).astype(np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path] | Path]:
    """A visible gallery (cam1, 3 people x 2) and infrared probes (cam3), at sizes unlike the model's."""
    root = tmp_path_factory.mktemp("one_path")
    gallery, probes = [], []
    for pid in (1, 2, 3):
        for k in (1, 2):
            path = root / "gallery" / "cam1" / f"{pid:04d}" / f"{k:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            _picture(10 * pid + k, (70 + 9 * k, 30 + 5 * pid), gray=False).save(path)
            gallery.append(path.resolve())
        path = root / "probes" / "cam3" / f"{pid:04d}" / "0001.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        _picture(100 + pid, (90, 41), gray=True).save(path)
        probes.append(path.resolve())
    return {"root": root, "gallery": sorted(gallery), "probes": probes}


@pytest.fixture(scope="module")
def index_dir(tree: dict, two_stream_checkpoint: Path) -> Path:
    out = tree["root"] / "index"
    build_gallery_index(two_stream_checkpoint, tree["root"] / "gallery", "visible", out, device="cpu")
    return out


def _stored(index_dir: Path) -> dict[str, np.ndarray]:
    """The vectors the (flat) index holds, by path."""
    gallery = GalleryIndex.load(index_dir)
    vectors = gallery.index.reconstruct_n(0, len(gallery))
    return {record.path: vectors[row] for row, record in enumerate(gallery.records)}


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_evaluate_index_query_and_api_embed_the_same_vectors(
    tree: dict, index_dir: Path, two_stream_checkpoint: Path
) -> None:
    loaded = api.load(two_stream_checkpoint, device="cpu")
    gallery, probes = [str(p) for p in tree["gallery"]], [str(p) for p in tree["probes"]]
    by_api = api.embed(loaded, gallery, "visible")
    probes_by_api = api.embed(loaded, probes, "infrared")

    # evaluate: each sample through its own stream, in one batch per modality, as here
    samples = [Sample(p, 1, 1, Modality.VISIBLE, "test") for p in gallery]
    samples += [Sample(p, 1, 3, Modality.INFRARED, "test") for p in probes]
    features, rows = embed_samples(loaded, samples, range(len(samples)), batch_size=64, device="cpu")
    assert np.array_equal(features["bn"][rows[: len(gallery)]], by_api)  # the same batch: the same bits
    assert np.array_equal(features["bn"][rows[len(gallery) :]], probes_by_api)

    # index: the vectors it stores
    stored = _stored(index_dir)
    assert np.array_equal(np.stack([stored[p] for p in gallery]), by_api)

    # query: the engine's embedding of probes, and the scores it ranks with
    engine = SearchEngine.open(index_dir, device="cpu")
    assert engine.preprocess() == loaded.preprocess
    assert np.array_equal(engine.embed(probes, "infrared").features, probes_by_api)
    report = search_gallery(index_dir, probes, "infrared", top_k=6, device="cpu")
    for probe_vector, result in zip(probes_by_api, report.results):
        expected = [float(stored[hit.path] @ probe_vector) for hit in result.hits]
        assert [hit.score for hit in result.hits] == pytest.approx(expected, abs=1e-6)
    # the wrong stream is not the same vector: the comparison above can fail
    assert not np.allclose(api.embed(loaded, probes, "visible"), probes_by_api, atol=1e-3)


def test_serve_embeds_uploads_as_api_embed(tree: dict, index_dir: Path, two_stream_checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("fastapi", reason="needs the serve extra")
    pytest.importorskip("httpx", reason="needs httpx (test extra)")
    from fastapi.testclient import TestClient

    from mclnet_cli.serve import ServeSettings, create_app

    fresh = tmp_path / "index"
    shutil.copytree(index_dir, fresh, ignore=shutil.ignore_patterns(".*"))
    client = TestClient(create_app(ServeSettings(index_dir=fresh, device="cpu", uploads_dir=tmp_path / "uploads")))
    loaded = api.load(two_stream_checkpoint, device="cpu")

    newcomer = _picture(77, (83, 37), gray=False)
    buffer = io.BytesIO()
    newcomer.save(buffer, format="PNG")
    added = client.post("/gallery", files=[("images", ("new.png", buffer.getvalue(), "image/png"))])
    assert added.status_code == 200, added.text
    path = added.json()["records"][0]["path"]
    stored = _stored(fresh)[path]
    assert _cosines(stored[None], api.embed(loaded, [newcomer], "visible"))[0] >= 0.9999

    probes = tree["probes"]
    files = [("probes", (p.name, p.read_bytes(), "image/png")) for p in probes]
    answer = client.post("/search", files=files, data={"modality": "infrared", "top_k": "7"})
    assert answer.status_code == 200, answer.text
    vectors = _stored(fresh)
    for probe_vector, row in zip(api.embed(loaded, [str(p) for p in probes], "infrared"), answer.json()["results"]):
        assert len(row["results"]) == 7
        expected = [float(vectors[hit["path"]] @ probe_vector) for hit in row["results"]]
        assert [hit["score"] for hit in row["results"]] == pytest.approx(expected, abs=1e-5)


def test_tensors_pil_images_and_files_embed_alike(tree: dict, two_stream_checkpoint: Path) -> None:
    loaded = load_model(two_stream_checkpoint)
    paths = [str(p) for p in tree["gallery"][:3]]
    transform = loaded.preprocess.transform()
    tensors = [transform(Image.open(p).convert("RGB")) for p in paths]
    from_files = extract_features(loaded, paths, "infrared")
    from_tensors = extract_features(loaded, tensors, "infrared")
    from_pil = extract_features(loaded, [Image.open(p) for p in paths], "infrared")
    assert np.array_equal(from_files.features, from_tensors.features)
    assert np.array_equal(from_files.features, from_pil.features)
    assert from_tensors.paths == ["image 0 (tensor)", "image 1 (tensor)", "image 2 (tensor)"]
    with pytest.raises(DataError, match=r"image 1 \(tensor\): expected a preprocessed float tensor of shape \[3, 64, 32\]"):
        extract_features(loaded, [tensors[0], torch.zeros(3, 32, 16)], "infrared")
    with pytest.raises(ConfigError, match="no preprocessing"):
        extract_features(loaded.model, paths, "infrared")  # a bare network needs a record or a size


# --------------------------------------------------------------------------- the record comes from the checkpoint


def _hand_preprocessed(paths: list[str], height: int, width: int, pil_filter, mean, std) -> torch.Tensor:
    rows = []
    for path in paths:
        image = Image.open(path).convert("RGB").resize((width, height), pil_filter)
        pixels = (np.asarray(image, dtype=np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        rows.append(torch.from_numpy(pixels.transpose(2, 0, 1).copy()))
    return torch.stack(rows)


def test_the_record_is_the_checkpoint_config_and_is_used(tree: dict, tmp_path: Path, make_checkpoint) -> None:
    checkpoint = make_checkpoint(tmp_path / "other.pt", overrides=OTHER, distinct_streams=True)
    loaded = api.load(checkpoint, device="cpu")
    assert loaded.preprocess == Preprocess(48, 24, "lanczos", (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "bn")

    paths = [str(p) for p in tree["gallery"]]
    got = api.embed(loaded, paths, "infrared")
    with torch.no_grad():
        want = loaded.model.embed_all(
            _hand_preprocessed(paths, 48, 24, Image.Resampling.LANCZOS, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)), "infrared"
        )["bn"].numpy()
        default = loaded.model.embed_all(
            _hand_preprocessed(paths, 64, 32, Image.Resampling.BILINEAR, IMAGENET_MEAN, IMAGENET_STD), "infrared"
        )["bn"].numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(got - default).max() > 1e-2  # the record is not the default one, and it was the one used

    out = tmp_path / "index"
    build_gallery_index(checkpoint, tree["root"] / "gallery", "visible", out, device="cpu")
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["image_size"], meta["resize"], meta["feature"]) == ([48, 24], "lanczos", "bn")
    engine = SearchEngine.open(out, device="cpu")
    assert engine.preprocess() == loaded.preprocess
    assert np.array_equal(engine.embed(paths, "infrared").features, got)
    features, rows = embed_samples(loaded, [Sample(p, 1, 3, Modality.INFRARED, "test") for p in paths], range(len(paths)),
                                   batch_size=64, device="cpu")
    assert np.array_equal(features["bn"][rows], got)


def test_export_sidecar_states_the_record(tmp_path: Path, make_checkpoint) -> None:
    from mclnet_cli.engine.export import export_model

    checkpoint = make_checkpoint(tmp_path / "other.pt", overrides=OTHER)
    report = export_model(checkpoint, tmp_path / "model.pt", fmt="torchscript", modality="visible")
    sidecar = json.loads(report.sidecar.read_text())
    assert sidecar["input"]["shape"] == ["batch", 3, 48, 24] and report.input_size == (48, 24)
    assert {k: sidecar["input"][k] for k in ("size", "resize", "mean", "std")} == {
        "size": [48, 24], "resize": "lanczos", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3],
    }
    assert sidecar["feature"] == report.feature == "bn"


def test_old_checkpoints_and_indexes_fall_back_to_the_defaults(
    tree: dict, index_dir: Path, two_stream_checkpoint: Path, tmp_path: Path
) -> None:
    payload = load_checkpoint(two_stream_checkpoint)
    for key in ("mean", "std"):
        del payload["config"]["data"][key]  # written before data.mean/data.std existed
    old = save_checkpoint(tmp_path / "old.pt", payload)
    record = load_model(old).preprocess
    assert (record.mean, record.std, record.size) == (IMAGENET_MEAN, IMAGENET_STD, (64, 32))

    legacy = tmp_path / "legacy-index"
    shutil.copytree(index_dir, legacy, ignore=shutil.ignore_patterns(".*"))
    meta = json.loads((legacy / "meta.json").read_text())
    for key in ("image_size", "resize", "feature"):
        del meta[key]  # an index written before these were recorded
    (legacy / "meta.json").write_text(json.dumps(meta))
    engine = SearchEngine.open(legacy, device="cpu")
    assert engine.preprocess() == engine.loaded.preprocess
    probes = [str(p) for p in tree["probes"]]
    assert np.array_equal(engine.embed(probes, "infrared").features, api.embed(engine.loaded, probes, "infrared"))


def test_an_index_records_its_preprocessing_for_the_probes(tree: dict, index_dir: Path, tmp_path: Path) -> None:
    """Probes are fed as the index's meta.json says its gallery was, over the checkpoint's own record."""
    edited = tmp_path / "edited-index"
    shutil.copytree(index_dir, edited, ignore=shutil.ignore_patterns(".*"))
    meta = json.loads((edited / "meta.json").read_text())
    meta.update(image_size=[40, 20], resize="lanczos", feature="pool")
    (edited / "meta.json").write_text(json.dumps(meta))
    engine = SearchEngine.open(edited, device="cpu")
    record = engine.loaded.preprocess
    assert engine.preprocess() == Preprocess(40, 20, "lanczos", record.mean, record.std, "pool")
    assert record.recorded_in({}) == record
    probes = [str(p) for p in tree["probes"]]
    got = engine.embed(probes, "infrared").features
    want = extract_features(engine.loaded, probes, "infrared", height=40, width=20, resize="lanczos", feature="pool")
    assert np.array_equal(got, want.features)
    checkpoints_own = api.embed(engine.loaded, probes, "infrared", feature="pool")
    assert np.abs(got - checkpoints_own).max() > 1e-3  # the index's size and filter, not the checkpoint's


def test_training_normalises_with_the_config_mean_and_std(tmp_path: Path) -> None:
    from mclnet_cli.config import load_config
    from mclnet_cli.data.transforms import train_transform

    config = load_config("tiny", ["data.height=8", "data.width=4", "data.pad=0", "data.flip_p=0", "data.grayscale_p=0",
                                  "data.erasing_p=0", "data.spectrum_p=0", "data.channel_aug=false", *OTHER[3:]])
    image = _picture(5, (8, 4), gray=False)
    got = train_transform(config.data, "visible")(image).numpy()
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    want = ((pixels - np.array([0.5, 0.4, 0.3])) / np.array([0.2, 0.25, 0.3])).transpose(2, 0, 1)
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize(("override", "needle"), [
    ("data.mean=[0.5,0.5]", "data.mean must be 3 finite numbers"),
    ("data.std=[0.2,0,0.2]", "data.std must be 3 positive finite numbers"),
])
def test_a_bad_mean_or_std_is_one_line(override: str, needle: str) -> None:
    from mclnet_cli.config import load_config

    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config("tiny", [override])
