"""A checkpoint with a NaN weight is never hidden: every command that runs it says so, in one line (issue 30).

The checkpoint here has one NaN in the first convolution of its infrared stream
only, so that its visible stream still works: an index of visible images builds,
and the failure shows exactly where infrared images are embedded -- in
``evaluate`` (both spectra), ``index --modality infrared``, ``query`` with
infrared probes, ``export --modality infrared`` and the Python API. Each error
names the checkpoint, the stage and the first layer whose output is not finite.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mclnet_cli.cli.app import app

STREAM_PREFIX = "backbone.specific.infrared."


def _one_line_error(result, *needles: str) -> str:
    text = result.output
    assert result.exit_code == 1, text
    assert "Traceback" not in text, text
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), text
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory: pytest.TempPathFactory, make_checkpoint) -> tuple[Path, str]:
    """(checkpoint, the layer holding the NaN): one NaN in the infrared stream's first convolution weight."""
    import torch

    from mclnet_cli.engine.checkpoint import load_checkpoint, save_checkpoint

    path = make_checkpoint(tmp_path_factory.mktemp("nan") / "nan.pt", overrides=("eval.trials=1",))
    payload = load_checkpoint(path)
    key = next(k for k, v in payload["model"].items() if k.startswith(STREAM_PREFIX) and v.dim() == 4)
    weight = payload["model"][key].clone()
    weight.view(-1)[0] = float("nan")
    payload["model"][key] = weight
    save_checkpoint(path, payload)
    assert not torch.isfinite(weight).all()
    return path, key.rsplit(".", 1)[0]


def _folder(root: Path, count: int = 3) -> Path:
    rng = np.random.default_rng(1)
    for i in range(count):
        path = root / "cam1" / f"{i + 1:04d}" / "0001.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(path)
    return root


def test_evaluate_names_the_checkpoint_and_the_stage(nan_checkpoint, prepared_dataset: Path, cli_runner) -> None:
    checkpoint, layer = nan_checkpoint
    result = cli_runner.invoke(app, ["evaluate", str(checkpoint), "--data", str(prepared_dataset), "--device", "cpu"])
    _one_line_error(result, f"checkpoint {checkpoint}", "evaluate", "infrared stream's outputs are not finite", layer)


def test_index_names_the_checkpoint_and_the_stage(nan_checkpoint, tmp_path: Path, cli_runner) -> None:
    checkpoint, layer = nan_checkpoint
    out = tmp_path / "idx"
    args = ["index", str(_folder(tmp_path / "g")), "-c", str(checkpoint), "-m", "infrared", "-o", str(out), "--device", "cpu"]
    _one_line_error(cli_runner.invoke(app, args), f"checkpoint {checkpoint}", "index", "not finite", layer)
    assert not out.exists() or not any(out.iterdir())


def test_query_names_the_checkpoint_and_the_stage(nan_checkpoint, tmp_path: Path, cli_runner) -> None:
    checkpoint, layer = nan_checkpoint
    gallery = _folder(tmp_path / "g")
    out = tmp_path / "idx"
    built = cli_runner.invoke(app, ["index", str(gallery), "-c", str(checkpoint), "-m", "visible", "-o", str(out), "--device", "cpu"])
    assert built.exit_code == 0, built.output  # the visible stream is finite
    probe = next(gallery.rglob("*.jpg"))
    result = cli_runner.invoke(app, ["query", str(probe), "-i", str(out), "-m", "infrared", "--device", "cpu"])
    _one_line_error(result, f"checkpoint {checkpoint.resolve()}", "query", "infrared stream's outputs are not finite", layer)


def test_export_says_the_outputs_are_not_finite_and_writes_nothing(nan_checkpoint, tmp_path: Path, cli_runner) -> None:
    checkpoint, layer = nan_checkpoint
    out = tmp_path / "exports" / "ir.pt"
    result = cli_runner.invoke(app, ["export", str(checkpoint), "-f", "torchscript", "-m", "infrared", "-o", str(out)])
    _one_line_error(result, f"checkpoint {checkpoint}", "export", "not finite", layer)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    # the other stream is finite and exports
    result = cli_runner.invoke(app, ["export", str(checkpoint), "-f", "torchscript", "-m", "visible", "-o", str(out)])
    assert result.exit_code == 0, result.output


def test_the_api_raises_naming_the_checkpoint(nan_checkpoint, tmp_path: Path) -> None:
    from mclnet_cli import api
    from mclnet_cli.errors import CheckpointError

    checkpoint, layer = nan_checkpoint
    model = api.load(checkpoint)
    image = next(_folder(tmp_path / "g", 1).rglob("*.jpg"))
    assert np.isfinite(api.embed(model, [image], "visible")).all()
    with pytest.raises(CheckpointError, match="not finite") as caught:
        api.embed(model, [image], "infrared")
    assert str(checkpoint) in str(caught.value) and layer in str(caught.value)
