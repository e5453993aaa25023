"""The remaining edges of the faults table (issue 30): full disks, refused writes, Ctrl-C, foreign checkpoints.

Each test failed before its fix. A full disk is a ``write`` that raises
``OSError(ENOSPC)`` as the kernel does (TorchScript is now serialised in memory and
written through the Python write path, so that simulation reaches it); a refused
write is a read-only folder -- and, since tests may run as root (for whom
``chmod`` blocks nothing), ``mkstemp`` raising ``PermissionError`` for that
folder exactly as the kernel would, naming the temp it could not create. The
user-facing rows are in docs/troubleshooting.md ("What happens if...").
"""

from __future__ import annotations

import errno
import hashlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import mclnet_cli.atomic as atomic_module
from mclnet_cli.cli.app import app
from mclnet_cli.data import synthetic

sys.path.insert(0, str(Path(__file__).parent))
from test_faults import _FullDisk, _fill_disk  # noqa: E402  (one full-disk simulation for both files)
from test_sources import make_sysu  # noqa: E402

runner = CliRunner()


def _one_line_error(result, *needles: str) -> str:
    """Exit 1 and exactly one ``error:`` line holding ``needles``; no traceback."""
    text = result.output
    assert result.exit_code == 1, text
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# --------------------------------------------------------------------------- full disk


def _export_args(checkpoint: Path, out: Path, fmt: str = "torchscript") -> list[str]:
    return ["export", str(checkpoint), "--format", fmt, "--modality", "visible", "--out", str(out)]


def test_a_torchscript_export_on_a_full_disk_is_one_line_naming_the_model_and_leaves_nothing(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch
) -> None:
    """Was: torch's C++ writer aborted (exit 134) and left a 20 MB temp; the model is now written in Python."""
    out = tmp_path / "exports" / "visible.pt"
    _fill_disk(monkeypatch, only="visible.pt.")  # the model's temp (and the sidecar's, never reached)
    result = runner.invoke(app, _export_args(tiny_checkpoint, out))
    line = _one_line_error(result, f"cannot write {out}: No space left on device")
    assert ".tmp" not in line
    assert _leftovers(out.parent) == []  # neither file, nor a temp


def test_prepare_synthetic_on_a_full_disk_names_the_file_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    """Was: a bare "No space left on device" (or "No such file or directory") and a half tree."""
    real_render, saved = synthetic.render, []

    class NoRoomAfterTwo:
        """The rendered image, whose third save meets a full disk (PIL's encoder names no file)."""

        def __init__(self, image: Image.Image) -> None:
            self.image = image

        def save(self, path, **kwargs) -> None:
            saved.append(path)
            if len(saved) > 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.image.save(path, **kwargs)

    monkeypatch.setattr(synthetic, "render", lambda *a, **k: NoRoomAfterTwo(real_render(*a, **k)))
    directory = tmp_path / "syn"
    result = runner.invoke(app, ["prepare", "synthetic", str(directory), "--ids", "10", "--images-per-camera", "1"])
    line = _one_line_error(result, f"cannot write {directory}{os.sep}cam", ".jpg: No space left on device")
    assert synthetic.STAGING_PREFIX not in line and ".tmp" not in line
    assert not directory.exists()  # the command created it: nothing of it is left


# --------------------------------------------------------------------------- refused writes name the user's path


def _refuse_writes_in(folder: Path, monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...] = ()) -> None:
    """``folder`` read-only: new files there are refused as the kernel refuses them.

    As root ``chmod`` blocks nothing, so ``mkstemp`` there (for targets named in ``names``,
    or all) raises the kernel's PermissionError, naming the temp it could not create.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if not names:
        folder.chmod(0o555)
    if names or os.access(folder, os.W_OK):
        real_mkstemp = tempfile.mkstemp

        def mkstemp(suffix=None, prefix=None, dir=None, text=False):
            wanted = not names or any(str(prefix).startswith(f".{name}.") for name in names)
            if dir is not None and Path(dir) == folder and wanted:
                temp = os.path.join(dir, f"{prefix}k3x9q2{suffix}")
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), temp)
            return real_mkstemp(suffix=suffix, prefix=prefix, dir=dir, text=text)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.fixture
def writable_again(tmp_path: Path):
    """Give every folder under ``tmp_path`` its write bit back after the test (for pytest's clean-up)."""
    yield
    for path in [tmp_path, *tmp_path.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)


def test_prepare_into_a_read_only_folder_names_the_manifest_not_a_temp(tmp_path: Path, monkeypatch, writable_again) -> None:
    root = make_sysu(tmp_path / "SYSU-MM01")
    out = tmp_path / "prepared"
    _refuse_writes_in(out, monkeypatch)
    result = runner.invoke(app, ["prepare", "sysu", str(root), "--out", str(out)])
    line = _one_line_error(result, "Permission denied", str(out / "manifest.jsonl"))
    assert ".tmp" not in line


def test_query_save_into_a_read_only_folder_names_the_picture(tiny_checkpoint: Path, tmp_path: Path, monkeypatch, writable_again) -> None:
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(gallery / f"{i}.png")
    index = tmp_path / "idx"
    built = runner.invoke(app, ["index", str(gallery), "-c", str(tiny_checkpoint), "-m", "visible", "-o", str(index), "--device", "cpu"])
    assert built.exit_code == 0, built.output
    picture = tmp_path / "pictures" / "ranked.png"
    _refuse_writes_in(picture.parent, monkeypatch)
    result = runner.invoke(
        app, ["query", str(gallery / "0.png"), "--index", str(index), "-m", "infrared", "--save", str(picture), "--device", "cpu"]
    )
    line = _one_line_error(result, "Permission denied", str(picture))
    assert ".tmp" not in line


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_an_export_into_a_read_only_folder_names_the_model(tiny_checkpoint: Path, tmp_path: Path, monkeypatch, writable_again, fmt) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnx")
    out = tmp_path / "exports" / "visible.model"
    _refuse_writes_in(out.parent, monkeypatch)
    line = _one_line_error(runner.invoke(app, _export_args(tiny_checkpoint, out, fmt)), "Permission denied", str(out))
    assert ".tmp" not in line


def test_an_export_whose_description_is_refused_leaves_no_model_and_names_the_description(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "exports" / "visible.pt"
    _refuse_writes_in(out.parent, monkeypatch, names=("visible.pt.json",))  # only OUT.json's temp is refused
    result = runner.invoke(app, _export_args(tiny_checkpoint, out))
    line = _one_line_error(result, "Permission denied", f"{out}.json")
    assert ".tmp" not in line
    assert _leftovers(out.parent) == []  # both or neither: no model without its description


# --------------------------------------------------------------------------- Ctrl-C in prepare synthetic


def _interrupt_render_at(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    real_render, calls = synthetic.render, []

    def render(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render", render)


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


def test_ctrl_c_in_prepare_synthetic_leaves_nothing_half_written(tmp_path: Path, monkeypatch) -> None:
    """Was: "nothing half-written is left" while cam1-cam3 of a half-drawn tree stayed in DIR."""
    directory = tmp_path / "syn"
    _interrupt_render_at(monkeypatch, 20)  # a few identities in
    result = runner.invoke(app, ["prepare", "synthetic", str(directory), "--ids", "10", "--images-per-camera", "1"])
    assert result.exit_code == 130, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("interrupted:")]
    assert len(lines) == 1 and "nothing half-written is left" in lines[0], result.output
    assert "Traceback" not in result.output
    assert not directory.exists()  # created by the command, removed with everything drawn into it


def test_ctrl_c_while_redrawing_keeps_the_previous_synthetic_dataset(tmp_path: Path, monkeypatch) -> None:
    directory = tmp_path / "syn"
    synthetic.generate_synthetic(directory, ids=10, seed=0, images_per_camera=1)
    before = _tree(directory)
    _interrupt_render_at(monkeypatch, 20)
    result = runner.invoke(app, ["prepare", "synthetic", str(directory), "--ids", "10", "--seed", "1", "--images-per-camera", "1"])
    assert result.exit_code == 130, result.output
    assert _tree(directory) == before  # every file of the earlier draw as it was; no staging folder
    monkeypatch.undo()
    again = runner.invoke(app, ["prepare", "synthetic", str(directory), "--ids", "10", "--seed", "1", "--images-per-camera", "1"])
    assert again.exit_code == 0, again.output
    assert _tree(directory) != before and not [p for p in directory.iterdir() if p.name.startswith(synthetic.STAGING_PREFIX)]


def test_a_staging_folder_of_a_killed_draw_is_removed_by_the_next(tmp_path: Path, monkeypatch) -> None:
    """A SIGKILL leaves the hidden staging folder (no clean-up runs): the next draw removes it, not "not empty"."""
    directory = tmp_path / "syn"
    orphan = directory / f"{synthetic.STAGING_PREFIX}x1y2z3.tmp"
    (orphan / "cam1" / "0001").mkdir(parents=True)
    (orphan / "cam1" / "0001" / "0001.jpg").write_bytes(b"half")
    old = atomic_module.PROCESS_START - 60
    os.utime(orphan, (old, old))
    summary = synthetic.generate_synthetic(directory, ids=10, images_per_camera=1)
    assert summary["ids"] == 10 and not orphan.exists()


# --------------------------------------------------------------------------- foreign checkpoints


def _noise(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(7).bytes(4096))
    return path


def _foreign_pickle(path: Path) -> Path:
    torch.save({"format": "mclnet-checkpoint/1", "thing": Path("/etc")}, path)  # a class, not a tensor
    return path


def _command(name: str, checkpoint: Path, tmp_path: Path, prepared: Path) -> list[str]:
    gallery = tmp_path / "gallery"
    if not gallery.is_dir():
        gallery.mkdir()
        Image.fromarray(np.zeros((64, 32, 3), dtype=np.uint8)).save(gallery / "0.png")
    return {
        "evaluate": ["evaluate", str(checkpoint), "--data", str(prepared), "--device", "cpu"],
        "index": ["index", str(gallery), "-c", str(checkpoint), "-m", "visible", "-o", str(tmp_path / "idx"), "--device", "cpu"],
        "export": _export_args(checkpoint, tmp_path / "out.pt"),
        "convert": ["convert", str(checkpoint), "--out", str(tmp_path / "converted.pt")],
    }[name]


@pytest.mark.parametrize("command", ["evaluate", "index", "export", "convert"])
def test_random_bytes_as_a_checkpoint_are_not_a_pytorch_checkpoint(command: str, tmp_path: Path, prepared_dataset: Path) -> None:
    """Was: "it holds objects other than tensors" for bytes that are no pickle at all."""
    noise = _noise(tmp_path / "noise.pt")
    line = _one_line_error(runner.invoke(app, _command(command, noise, tmp_path, prepared_dataset)), str(noise))
    assert "not a PyTorch checkpoint" in line
    assert "objects other than tensors" not in line and "other than tensors" not in line


@pytest.mark.parametrize("command", ["index", "convert"])
def test_a_pickle_with_foreign_objects_keeps_the_unpickling_message(command: str, tmp_path: Path, prepared_dataset: Path) -> None:
    evil = _foreign_pickle(tmp_path / "evil.pt")
    line = _one_line_error(runner.invoke(app, _command(command, evil, tmp_path, prepared_dataset)), str(evil))
    assert "other than tensors" in line and "not a PyTorch checkpoint" not in line


def test_a_query_with_random_bytes_as_its_checkpoint_says_so(tiny_checkpoint: Path, tmp_path: Path, prepared_dataset: Path) -> None:
    args = _command("index", tiny_checkpoint, tmp_path, prepared_dataset)
    assert runner.invoke(app, args).exit_code == 0
    noise = _noise(tmp_path / "noise.pt")
    result = runner.invoke(
        app, ["query", str(tmp_path / "gallery" / "0.png"), "--index", str(tmp_path / "idx"), "-m", "infrared", "-c", str(noise)]
    )
    line = _one_line_error(result, str(noise), "not a PyTorch checkpoint")
    assert "other than tensors" not in line


# --------------------------------------------------------------------------- Ctrl-C in the demo


def test_ctrl_c_in_the_demo_exits_130_with_one_line(tmp_path: Path, monkeypatch) -> None:
    """docs/usage.md: Ctrl-C exits 130; the line says the demo cannot resume and how to start it over."""
    _interrupt_render_at(monkeypatch, 5)  # stage 1: drawing the synthetic dataset
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--quick", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith(("interrupted:", "error:"))]
    assert len(lines) == 1 and lines[0].startswith("interrupted:") and "cannot resume" in lines[0], result.output
    assert f"mclnet demo --out {out} --force --quick" in lines[0]
    assert not (out / "synthetic").exists()  # the half-drawn dataset went with its staging folder


# --------------------------------------------------------------------------- SIGTERM


class _InterruptedWrite(_FullDisk):
    """A file whose write past ``room`` bytes meets a Ctrl-C (or the KeyboardInterrupt a SIGTERM becomes)."""

    def write(self, data) -> int:
        self._room -= len(data)
        if self._room < 0:
            raise KeyboardInterrupt
        return self._handle.write(data)


def test_a_ctrl_c_inside_torch_save_stays_a_ctrl_c_and_leaves_no_temp(tmp_path: Path, monkeypatch) -> None:
    """torch's C++ writer turned the KeyboardInterrupt of its write callback into "enforce fail ... unexpected pos"."""
    from mclnet_cli.engine.checkpoint import save_checkpoint

    real_fdopen = os.fdopen

    def fdopen(fd, *args, **kwargs):
        return _InterruptedWrite(real_fdopen(fd, *args, **kwargs), 100_000)

    monkeypatch.setattr(atomic_module.os, "fdopen", fdopen)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "model.pt", {"format": "mclnet-checkpoint/1", "weights": torch.zeros(200_000)})
    assert _leftovers(tmp_path) == []


# SIGTERM arrives while torch.save is half-way through the first checkpoint write (the rest of the
# write would follow); the command must clean up as for Ctrl-C, not vanish and leave the temp.
SIGTERM_IN_SAVE = """
import os, signal, sys, torch
from mclnet_cli.engine import checkpoint
real_save = torch.save
def save_then_sigterm(obj, handle, *a, **k):
    handle.write(b"PK" + b"x" * 4096); handle.flush()
    os.kill(os.getpid(), signal.SIGTERM)
    return real_save(obj, handle, *a, **k)
checkpoint.torch.save = save_then_sigterm
from mclnet_cli.cli.app import app
app(sys.argv[1:], prog_name="mclnet")
"""


def test_sigterm_during_a_checkpoint_write_removes_the_temp_and_says_so(prepared_dataset: Path, tmp_path: Path) -> None:
    import subprocess
    import textwrap

    out = tmp_path / "run"
    sets = ["data.num_ids=2", "data.num_instances=2", "data.workers=0", "train.steps_per_epoch=1", "train.epochs=1"]
    args = ["train", "--preset", "tiny", "--data", str(prepared_dataset), "--out", str(out), "--quiet",
            *[x for item in sets for x in ("--set", item)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(SIGTERM_IN_SAVE), *args], env=env,
                          capture_output=True, text=True, timeout=300)  # a hang guard, not a timing
    assert proc.returncode == 143, proc.stderr[-2000:]  # 128 + SIGTERM, as a shell reports it
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("interrupted:")]
    assert len(lines) == 1 and "stopped by SIGTERM" in lines[0], proc.stderr[-2000:]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # the half-written temp is gone
    assert not (out / "last.pt").exists()
