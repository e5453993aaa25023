"""``mclnet export``: ONNX and TorchScript files of each spectrum's retrieval path match PyTorch.

The two-stream checkpoint has differing visible and infrared streams, so an
export of the wrong stream would not match. Each export is checked twice: by the
export itself (cosines of the L2-normalised features and the neighbours of random
probes; its max |diff| is information) and here, independently, on a real image
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
from mclnet_cli.engine.export import MIN_COSINE, ExportError, compare_features, export_model, run_exported
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
    assert report["min_cosine"] >= MIN_COSINE and report["ranking"]["same_neighbours"] and report["batch_sizes"] == [1, 3]
    assert report["ranking"]["probes"] == 4 and report["ranking"]["gallery"] == 8 and report["ranking"]["top_k"] == 5
    assert isinstance(report["max_abs_diff"], float)  # reported, as information
    assert report["modality"] == modality and report["dimension"] == load_model(two_stream_checkpoint).model.feature_dim

    sidecar = json.loads((tmp_path / f"{out.name}.json").read_text(encoding="utf-8"))
    assert sidecar["input"]["size"] == [64, 32] and sidecar["input"]["shape"] == ["batch", 3, 64, 32]
    assert sidecar["input"]["mean"] == [0.485, 0.456, 0.406] and sidecar["input"]["std"] == [0.229, 0.224, 0.225]
    assert sidecar["feature"] == "bn" and sidecar["modality"] == modality and sidecar["model_format"] == fmt
    assert sidecar["checkpoint"]["fingerprint"] == file_fingerprint(two_stream_checkpoint)
    assert sidecar["parity"]["max_abs_diff"] == report["max_abs_diff"]
    assert sidecar["parity"]["min_cosine"] == report["min_cosine"] and sidecar["parity"]["min_cosine_required"] == MIN_COSINE

    # Independently: real images, preprocessed from the sidecar, in one batch of 3, against the index's features.
    batch = np.concatenate([_preprocess(p, sidecar) for p in images])
    got = run_exported(out, fmt, batch)
    loaded = load_model(two_stream_checkpoint)
    data = loaded.config.data
    paths = [str(p) for p in images]
    want = extract_features(loaded.model, paths, modality, height=data.height, width=data.width, resize=data.resize).features
    other = "infrared" if modality == "visible" else "visible"
    wrong = extract_features(loaded.model, paths, other, height=data.height, width=data.width, resize=data.resize).features
    assert got.shape == (3, loaded.model.feature_dim)
    assert np.max(np.abs(got - want)) <= TOLERANCE
    assert np.max(np.abs(got - wrong)) > 100 * TOLERANCE  # the stream asked for, not the other one
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_export_text_output_prints_the_parity(two_stream_checkpoint: Path, tmp_path: Path, cli_runner) -> None:
    out = tmp_path / "ir.pt"
    args = ["export", str(two_stream_checkpoint), "-f", "torchscript", "-m", "ir", "-o", str(out)]
    result = cli_runner.invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    assert "max |diff|" in result.stdout and "[batch, 3, 64, 32]" in result.stdout and "infrared" in result.stdout
    text = " ".join(result.stdout.split())  # the console wraps long lines
    assert "min cosine 1.000000 (needs >= 0.9999)" in text and "same top-5 neighbours for 4 random probes" in text


def test_parity_failure_is_an_error_and_writes_nothing(
    two_stream_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli_runner
) -> None:
    real = export_module.run_exported

    def rows_reversed(path, fmt, images):  # a batch-order bug: each row gets another image's feature
        return real(path, fmt, images)[::-1].copy()

    monkeypatch.setattr(export_module, "run_exported", rows_reversed)
    out = tmp_path / "vis.pt"
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_model(two_stream_checkpoint, out, fmt="torchscript", modality="visible")
    assert list(tmp_path.iterdir()) == []  # no file, no sidecar, no temp
    result = cli_runner.invoke(cli_app, ["export", str(two_stream_checkpoint), "-f", "torchscript", "-m", "visible", "-o", str(out)])
    assert result.exit_code == 1 and "min cosine" in result.output and "Traceback" not in result.output


def test_absolute_differences_above_1e4_pass_when_directions_and_ranking_agree(
    two_stream_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli_runner
) -> None:
    """A runtime whose rows come out 1 % longer: |diff| far above 1e-4, the same cosine scores and neighbours."""
    real = export_module.run_exported
    monkeypatch.setattr(export_module, "run_exported", lambda path, fmt, images: real(path, fmt, images) * 1.01)
    out = tmp_path / "vis.pt"
    args = ["export", str(two_stream_checkpoint), "-f", "torchscript", "-m", "visible", "-o", str(out), "--json"]
    result = cli_runner.invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["max_abs_diff"] > TOLERANCE  # what the old fixed 1e-4 check refused
    assert report["min_cosine"] >= MIN_COSINE and report["ranking"]["same_neighbours"]
    assert out.is_file() and (tmp_path / "vis.pt.json").is_file()


def test_changed_neighbours_fail_although_every_cosine_passes(
    two_stream_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export nudges the gallery's best and worst match of the first probe towards each other.

    Each gallery feature moves by less than the cosine threshold allows, but the probes'
    neighbours change: the ranking check alone refuses it.
    """
    real = export_module.run_exported
    probes: list[np.ndarray] = []

    def nudged(path, fmt, images):  # parity runs the probe batches first, then the gallery batch
        got = real(path, fmt, images)
        if len(images) != export_module.RANK_GALLERY:
            probes.append(got)
            return got
        scores = got @ probes[0][0]
        best, worst = int(np.argmax(scores)), int(np.argmin(scores))
        moved = got.copy()
        moved[best] += 0.08 * (got[worst] - got[best])
        moved[worst] += 0.08 * (got[best] - got[worst])
        return moved / np.linalg.norm(moved, axis=1, keepdims=True)

    monkeypatch.setattr(export_module, "run_exported", nudged)
    with pytest.raises(ExportError, match="differs from PyTorch") as caught:
        export_model(two_stream_checkpoint, tmp_path / "vis.pt", fmt="torchscript", modality="visible")
    message = str(caught.value)
    assert "top-5 neighbours of" in message and "of 4 probes among 8 gallery images differ" in message
    assert "min cosine" not in message  # every cosine passed
    assert list(tmp_path.iterdir()) == []


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_compare_features_judges_cosines_and_neighbours_not_absolute_differences() -> None:
    """One probe e1; gallery a and b score 1 - 5e-5 and 1 - 1.1e-4 against it; c is far."""
    e = np.eye(4)
    probe = e[:1]
    gallery = _unit(np.stack([e[0] + 0.010 * e[1], e[0] + 0.015 * e[2], e[3]]))
    same = compare_features(probe, probe, gallery, gallery)
    assert same.passed and same.min_cosine == pytest.approx(1.0) and same.max_abs_diff == 0.0
    # a moves a little (cosine 0.99995 to itself) but now scores below b: the top-2 list changes
    moved = gallery.copy()
    moved[0] = _unit(e[:1] + 0.020 * e[1:2])[0]
    changed = compare_features(probe, probe, gallery, moved, top_k=2)
    assert changed.min_cosine >= MIN_COSINE and changed.probes_reordered == 1 and not changed.passed
    # longer rows: large absolute differences, same directions, same neighbours
    longer = compare_features(probe, 1.5 * probe, gallery, 1.5 * gallery)
    assert longer.passed and longer.max_abs_diff > 0.4
    # two gallery items tied within RANK_TIE may come out in either order
    tied = _unit(np.stack([e[0] + 0.010 * e[1], e[0] + 0.0100001 * e[2], e[3]]))
    swapped = tied.copy()
    swapped[0] = _unit(e[:1] + 0.0100002 * e[1:2])[0]
    assert compare_features(probe, probe, tied, swapped, top_k=2).passed
    # a NaN is never a pass
    broken = gallery.copy()
    broken[2, 0] = np.nan
    assert not compare_features(probe, probe, gallery, broken).passed


def _copy(path: Path, to: Path) -> Path:
    to.write_bytes(path.read_bytes())
    return to


def test_an_existing_output_is_refused_without_force_and_replaced_with_it(
    two_stream_checkpoint: Path, tmp_path: Path, cli_runner
) -> None:
    out = tmp_path / "vis.pt"
    out.write_bytes(b"someone else's file")
    args = ["export", str(two_stream_checkpoint), "-f", "torchscript", "-m", "visible", "-o", str(out)]
    result = cli_runner.invoke(cli_app, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{out} already exists" in result.output and "--force" in result.output
    assert out.read_bytes() == b"someone else's file" and not (tmp_path / "vis.pt.json").exists()
    # a sidecar alone is an output too
    out.unlink()
    (tmp_path / "vis.pt.json").write_text("{}")
    result = cli_runner.invoke(cli_app, args)
    assert result.exit_code == 1 and "vis.pt.json already exists" in result.output and not out.exists()
    result = cli_runner.invoke(cli_app, [*args, "--force"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "vis.pt.json").read_text())["file"] == "vis.pt" and out.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vis.pt", "vis.pt.json"]  # no temp, no backup left


def test_the_checkpoint_is_never_the_output_not_even_with_force(
    two_stream_checkpoint: Path, tmp_path: Path, cli_runner
) -> None:
    checkpoint = _copy(two_stream_checkpoint, tmp_path / "c.pt")
    before = checkpoint.read_bytes()
    (tmp_path / "link.pt").symlink_to(checkpoint)
    (tmp_path / "sub").mkdir()
    cases = [
        ["-o", str(checkpoint)],  # the file itself
        ["-o", str(tmp_path / "link.pt")],  # through a symbolic link
        ["-o", str(tmp_path / "sub" / ".." / "c.pt")],  # another spelling of the same path
    ]
    for out in cases:
        for force in ([], ["--force"]):
            result = cli_runner.invoke(cli_app, ["export", str(checkpoint), "-f", "torchscript", "-m", "ir", *out, *force])
            assert result.exit_code == 1 and "Traceback" not in result.output, result.output
            assert "is the input" in result.output and "never overwritten" in result.output
    # the sidecar of the output would be the checkpoint
    named = _copy(two_stream_checkpoint, tmp_path / "m.pt.json")
    result = cli_runner.invoke(cli_app, ["export", str(named), "-f", "torchscript", "-m", "ir", "-o", str(tmp_path / "m.pt"), "--force"])
    assert result.exit_code == 1 and "is the input" in result.output and not (tmp_path / "m.pt").exists()
    assert checkpoint.read_bytes() == before and named.read_bytes() == before


def test_bad_arguments_are_one_line(two_stream_checkpoint: Path, tmp_path: Path, cli_runner) -> None:
    result = cli_runner.invoke(cli_app, ["export", str(two_stream_checkpoint), "-f", "torchscript", "-m", "uv", "-o", str(tmp_path / "x.pt")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    result = cli_runner.invoke(cli_app, ["export", str(two_stream_checkpoint), "-f", "torchscript", "-m", "ir", "-o", str(tmp_path)])
    assert result.exit_code == 1 and "is a folder" in result.output
    result = cli_runner.invoke(cli_app, ["export", str(tmp_path / "missing.pt"), "-f", "onnx", "-m", "ir", "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1 and "not found" in result.output
    result = cli_runner.invoke(cli_app, ["export", str(two_stream_checkpoint), "-f", "tflite", "-m", "ir", "-o", str(tmp_path / "m")])
    assert result.exit_code == 2
