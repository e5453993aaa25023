"""``mclnet export``: ONNX and TorchScript files of each spectrum's retrieval path match PyTorch.

The two-stream checkpoint has differing visible and infrared streams, so an
export of the wrong stream would not match. Each export is checked twice: by the
export itself (its printed max |diff|) and here, independently, on a real image
preprocessed as the sidecar says, against the features ``mclnet index`` stores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mclnet_cli.cli.app import app as cli_app
from mclnet_cli.engine import export as export_module
from mclnet_cli.engine.checkpoint import file_fingerprint, load_model
from mclnet_cli.engine.export import ExportError, export_model, run_exported
from mclnet_cli.engine.extract import extract_features

TOLERANCE = 1e-4
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


def _needs(fmt: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnx", reason="needs the export extra")
        pytest.importorskip("onnxruntime", reason="needs the export extra")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("export_images")
    rng = np.random.default_rng(3)
    paths = []
    for i, size in enumerate(((120, 50), (64, 32), (200, 90))):  # not the model's size: the resize matters
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _preprocess(path: Path, sidecar: dict) -> np.ndarray:
    """What a program outside mclnet does, from the sidecar alone."""
    spec = sidecar["input"]
    height, width = spec["size"]
    assert spec["resize"] == "bilinear"
    image = Image.open(path).convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = (pixels - np.array(spec["mean"], dtype=np.float32)) / np.array(spec["std"], dtype=np.float32)
    return pixels.transpose(2, 0, 1)[None].astype(np.float32)


@pytest.mark.parametrize("modality", ["visible", "infrared"])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch(
    fmt: str, modality: str, two_stream_checkpoint: Path, images: list[Path], tmp_path: Path, cli_runner
) -> None:
    _needs(fmt)
    out = tmp_path / f"model{SUFFIX[fmt]}"
    args = ["export", str(two_stream_checkpoint), "--format", fmt, "--modality", modality, "--out", str(out), "--json"]
    result = cli_runner.invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # stdout holds the JSON only (the exporter's chatter goes to stderr)
    assert report["max_abs_diff"] <= TOLERANCE and report["batch_sizes"] == [1, 3]
    assert report["modality"] == modality and report["dimension"] == 512

    sidecar = json.loads((tmp_path / f"{out.name}.json").read_text(encoding="utf-8"))
    assert sidecar["input"]["size"] == [64, 32] and sidecar["input"]["shape"] == ["batch", 3, 64, 32]
    assert sidecar["input"]["mean"] == [0.485, 0.456, 0.406] and sidecar["input"]["std"] == [0.229, 0.224, 0.225]
    assert sidecar["feature"] == "bn" and sidecar["modality"] == modality and sidecar["model_format"] == fmt
    assert sidecar["checkpoint"]["fingerprint"] == file_fingerprint(two_stream_checkpoint)
    assert sidecar["parity"]["max_abs_diff"] == report["max_abs_diff"]

    # Independently: real images, preprocessed from the sidecar, in one batch of 3, against the index's features.
    batch = np.concatenate([_preprocess(p, sidecar) for p in images])
    got = run_exported(out, fmt, batch)
    loaded = load_model(two_stream_checkpoint)
    data = loaded.config.data
    paths = [str(p) for p in images]
    want = extract_features(loaded.model, paths, modality, height=data.height, width=data.width, resize=data.resize).features
    other = "infrared" if modality == "visible" else "visible"
    wrong = extract_features(loaded.model, paths, other, height=data.height, width=data.width, resize=data.resize).features
    assert got.shape == (3, 512)
    assert np.max(np.abs(got - want)) <= TOLERANCE
    assert np.max(np.abs(got - wrong)) > 100 * TOLERANCE  # the stream asked for, not the other one
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_export_text_output_prints_the_parity(two_stream_checkpoint: Path, tmp_path: Path, cli_runner) -> None:
    out = tmp_path / "ir.pt"
    args = ["export", str(two_stream_checkpoint), "-f", "torchscript", "-m", "ir", "-o", str(out)]
    result = cli_runner.invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    assert "max |diff|" in result.stdout and "[batch, 3, 64, 32]" in result.stdout and "infrared" in result.stdout


def test_parity_failure_is_an_error_and_writes_nothing(
    two_stream_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli_runner
) -> None:
    real = export_module.run_exported

    def off_by_a_bit(path, fmt, images):
        return real(path, fmt, images) + 2e-4

    monkeypatch.setattr(export_module, "run_exported", off_by_a_bit)
    out = tmp_path / "vis.pt"
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_model(two_stream_checkpoint, out, fmt="torchscript", modality="visible")
    assert list(tmp_path.iterdir()) == []  # no file, no sidecar, no temp
    result = cli_runner.invoke(cli_app, ["export", str(two_stream_checkpoint), "-f", "torchscript", "-m", "visible", "-o", str(out)])
    assert result.exit_code == 1 and "tolerance" in result.output and "Traceback" not in result.output


def test_bad_arguments_are_one_line(two_stream_checkpoint: Path, tmp_path: Path, cli_runner) -> None:
    result = cli_runner.invoke(cli_app, ["export", str(two_stream_checkpoint), "-f", "torchscript", "-m", "uv", "-o", str(tmp_path / "x.pt")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    result = cli_runner.invoke(cli_app, ["export", str(two_stream_checkpoint), "-f", "torchscript", "-m", "ir", "-o", str(tmp_path)])
    assert result.exit_code == 1 and "is a folder" in result.output
    result = cli_runner.invoke(cli_app, ["export", str(tmp_path / "missing.pt"), "-f", "onnx", "-m", "ir", "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1 and "not found" in result.output
    result = cli_runner.invoke(cli_app, ["export", str(two_stream_checkpoint), "-f", "tflite", "-m", "ir", "-o", str(tmp_path / "m")])
    assert result.exit_code == 2
