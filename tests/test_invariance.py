"""The same image gives the same feature alone and in any batch, through every entry point,
for a healthy checkpoint and for a collapsed one (issue: a collapsed model's recalibrated
BNNeck divided float rounding by a near-zero spread, cosine 0.12 between one image alone
and in a batch).

The collapsed fixture is built the way such a model behaves: its stems ignore the image
(weights x 1e-8 under a constant bias), so f4 is the same for every image up to float
rounding, and its neck holds the statistics recalibration measures on such f4 (variance
~1e-13), written as a checkpoint from before the fix would hold them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mclnet_cli import api
from mclnet_cli.cli.app import app as cli_app
from mclnet_cli.config import load_config
from mclnet_cli.data.records import load_prepared
from mclnet_cli.engine.checkpoint import checkpoint_payload, load_model, save_checkpoint
from mclnet_cli.engine.evaluate import embed_samples
from mclnet_cli.engine.extract import extract_features
from mclnet_cli.engine.recalibrate import DEGENERATE_SPREAD, inference_f4, mixture_statistics, steady_statistics
from mclnet_cli.model import build_model
from mclnet_cli.types import Modality

from conftest import PINNED

LIMIT = 0.9999


@pytest.fixture(scope="module")
def collapsed_checkpoint(tmp_path_factory: pytest.TempPathFactory, prepared_dataset: Path) -> Path:
    torch.manual_seed(0)
    config = load_config("tiny", [*PINNED, "model.pretrained=none"])  # random weights: the stem scaling reaches every channel
    model = build_model(config.model, num_classes=9).eval()
    with torch.no_grad():
        for stream in (model.backbone.specific.visible, model.backbone.specific.infrared):
            stream[0][0].weight.mul_(1e-8)  # the stem conv: the image barely reaches f4
            stream[0][1].bias.fill_(1.0)
    samples = load_prepared(prepared_dataset).select("train")
    f4 = {
        m: inference_f4(model, [s.path for s in samples if s.modality is m], m, height=64, width=32,
                        resize="bilinear", batch_size=8, device=torch.device("cpu"))
        for m in (Modality.VISIBLE, Modality.INFRARED)
    }
    mean, var = mixture_statistics(f4[Modality.VISIBLE], f4[Modality.INFRARED])
    model.neck.bn.running_mean.copy_(mean.float())
    model.neck.bn.running_var.copy_(var.float())  # no steadying: what an older checkpoint holds
    path = tmp_path_factory.mktemp("collapsed") / "collapsed.pt"
    return save_checkpoint(path, checkpoint_payload(model, config, {pid: i for i, pid in enumerate(range(1, 10))}))


@pytest.fixture(scope="module")
def gallery(prepared_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("gallery")
    visible = [s for s in load_prepared(prepared_dataset).samples if s.modality is Modality.VISIBLE][:8]
    paths = []
    for i, sample in enumerate(visible):
        paths.append(root / f"{i:02d}.png")
        shutil.copy(sample.path, paths[-1])
    return paths


@pytest.fixture(params=["healthy", "collapsed"])
def checkpoint(request: pytest.FixtureRequest, tiny_checkpoint: Path, collapsed_checkpoint: Path) -> Path:
    return tiny_checkpoint if request.param == "healthy" else collapsed_checkpoint


def test_the_fixture_is_collapsed(collapsed_checkpoint: Path, gallery: list[Path]) -> None:
    loaded = load_model(collapsed_checkpoint)
    assert loaded.degenerate_neck_channels == loaded.model.neck.bn.num_features  # every channel
    pool = api.embed(loaded, gallery, "visible", feature="pool")
    assert float((pool @ pool.T).min()) > 0.9999  # every image the same point


def test_steady_statistics_leave_resolvable_channels_alone() -> None:
    mean = torch.tensor([1.0, 1.0, 0.0, 2.0])
    var = torch.tensor([1e-14, 0.25, 0.0, (2 * DEGENERATE_SPREAD) ** 2 * 4])
    new_mean, new_var, changed = steady_statistics(mean, var)
    assert changed == 1
    assert new_mean.tolist()[1:] == mean.tolist()[1:] and new_var.tolist()[1:] == pytest.approx(var.tolist()[1:])
    assert new_mean[0] == 0 and float(new_var[0]) == pytest.approx(1.0 / DEGENERATE_SPREAD**2, rel=1e-6)
    again = steady_statistics(new_mean, new_var)
    assert again[2] == 0  # idempotent


def _same_rows(a: np.ndarray, b: np.ndarray) -> None:
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert float(cos.min()) >= LIMIT, cos


@pytest.mark.parametrize("feature", ["bn", "pool"])
def test_api_embed_alone_equals_in_a_batch(checkpoint: Path, gallery: list[Path], feature: str) -> None:
    loaded = load_model(checkpoint)
    alone = np.concatenate([api.embed(loaded, [p], "visible", feature=feature) for p in gallery[:3]])
    batch = api.embed(loaded, gallery, "visible", feature=feature)[:3]
    pair = api.embed(loaded, gallery[:2], "visible", feature=feature)
    _same_rows(alone, batch)
    _same_rows(alone[:2], pair)


def test_index_query_and_evaluate_paths_do_not_depend_on_the_batch(
    checkpoint: Path, gallery: list[Path], prepared_dataset: Path
) -> None:
    loaded = load_model(checkpoint)
    paths = [str(p) for p in gallery]
    for modality in ("visible", "infrared"):
        one = extract_features(loaded.model, paths, modality, height=64, width=32, batch_size=1)
        many = extract_features(loaded.model, paths, modality, height=64, width=32, batch_size=7)
        _same_rows(one.features, many.features)
    samples = load_prepared(prepared_dataset).samples
    rows = np.arange(len(samples))
    one, _ = embed_samples(loaded.model, samples, rows, height=64, width=32, batch_size=1, device="cpu", features=("bn", "pool"))
    many, _ = embed_samples(loaded.model, samples, rows, height=64, width=32, batch_size=5, device="cpu", features=("bn", "pool"))
    for name in ("bn", "pool"):
        _same_rows(one[name], many[name])


def test_a_gallery_image_queried_as_itself_scores_one(checkpoint: Path, gallery: list[Path], tmp_path: Path, cli_runner) -> None:
    index = tmp_path / "index"
    built = cli_runner.invoke(cli_app, ["index", str(gallery[0].parent), "-c", str(checkpoint), "-m", "visible",
                                        "-o", str(index), "--batch-size", "8", "--device", "cpu", "--json"])
    assert built.exit_code == 0, built.output
    collapsed = "collapsed" in checkpoint.name
    assert ("warning:" in built.stderr) is collapsed  # the degenerate model is named, the healthy one is not
    result = cli_runner.invoke(cli_app, ["query", str(gallery[3]), "--index", str(index), "-m", "visible",
                                         "-k", "8", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)[0]["results"]
    own = next(h for h in hits if Path(h["path"]).name == gallery[3].name)
    assert own["score"] >= LIMIT


def test_served_search_scores_a_gallery_image_as_itself(checkpoint: Path, gallery: list[Path], tmp_path: Path) -> None:
    pytest.importorskip("fastapi", reason="needs the serve extra")
    from fastapi.testclient import TestClient

    from mclnet_cli.engine.indexing import build_gallery_index
    from mclnet_cli.serve import ServeSettings, create_app

    index = tmp_path / "index"
    build_gallery_index(checkpoint, gallery[0].parent, Modality.VISIBLE, index, device="cpu", batch_size=8)
    client = TestClient(create_app(ServeSettings(index_dir=index, device="cpu")))
    probe = gallery[5]
    files = [("probes", (probe.name, probe.read_bytes(), "image/png"))]
    response = client.post("/search", files=files, data={"modality": "visible", "top_k": "8"})
    assert response.status_code == 200, response.text
    hits = response.json()["results"][0]["results"]
    assert next(h for h in hits if Path(h["path"]).name == probe.name)["score"] >= LIMIT


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_model_gives_the_pytorch_feature(checkpoint: Path, gallery: list[Path], tmp_path: Path, fmt: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="needs the export extra")
    from mclnet_cli.data.images import load_rgb
    from mclnet_cli.data.transforms import test_transform
    from mclnet_cli.engine.export import export_model, run_exported

    out = tmp_path / ("model.onnx" if fmt == "onnx" else "model.pt")
    export_model(checkpoint, out, fmt=fmt, modality="visible")
    transform = test_transform(64, 32, "bilinear")
    batch = torch.stack([transform(load_rgb(p)) for p in gallery]).numpy()
    got = run_exported(out, fmt, batch)
    want = api.embed(load_model(checkpoint), gallery, "visible")
    _same_rows(got, want)
