"""Faults a user meets: kills mid-write, two writers, full disks, hostile files (issue 15).

Every test here failed before the fix it guards. Kills are real ``SIGKILL``s of a
child process at a chosen point of a write (a tiny launcher patches one call to
kill its own process there); a full disk is a ``write`` (or ``posix_fallocate``)
that raises ``OSError(ENOSPC)``, as the kernel does. All on CPU, seconds each.
docs/troubleshooting.md ("What happens if...") is the user-facing table of these.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import mclnet_cli.atomic as atomic_module
from mclnet_cli.cli.app import app
from mclnet_cli.config import load_config
from mclnet_cli.data import cache as cache_module
from mclnet_cli.data.records import load_prepared, write_prepared
from mclnet_cli.engine.checkpoint import checkpoint_payload, load_checkpoint, save_checkpoint
from mclnet_cli.errors import DataError
from mclnet_cli.index.store import GalleryIndex, IndexRecord
from mclnet_cli.index.picture import render_ranked_list
from mclnet_cli.model import build_model

sys.path.insert(0, str(Path(__file__).parent))
from test_sources import make_sysu  # noqa: E402

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
FAST = [
    "data.num_ids=2", "data.num_instances=2", "data.workers=0", "train.steps_per_epoch=1",
    "train.log_every=1", "optim.warmup_epochs=1", "optim.milestones=[3]",
]  # fmt: skip
CHILD_TIMEOUT = 300  # seconds; a safety net for a hung child, not a measurement


def _sets(*extra: str) -> list[str]:
    out: list[str] = []
    for item in [*FAST, *extra]:
        out += ["--set", item]
    return out


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--preset", "tiny", "--data", str(data), "--out", str(out), "--quiet", *_sets(*extra)]


def _child(code: str, *args: str, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    """Run ``code`` (a launcher that patches one call, then runs the CLI) in a fresh interpreter."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", textwrap.dedent(code), *args]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT)


def _one_line_error(result, *needles: str) -> str:
    """The CLI failed with exit 1 and one ``error:`` line containing ``needles``, no traceback."""
    text = result.output  # stdout and stderr, as a terminal shows them
    assert result.exit_code == 1, text
    assert "Traceback" not in text and "weights_only=False" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


# Kill the process (SIGKILL, no clean-up runs) inside torch.save of the Nth checkpoint write,
# after part of the file is written.
KILL_IN_SAVE = """
import os, signal, sys, torch
from mclnet_cli.engine import checkpoint
n = int(sys.argv[1]); calls = []
real_save = torch.save
def dying_save(obj, handle, *a, **k):
    calls.append(1)
    if len(calls) == n:
        handle.write(b"PK" + b"x" * 4096); handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, handle, *a, **k)
checkpoint.torch.save = dying_save
from mclnet_cli.cli.app import app
app(sys.argv[2:], prog_name="mclnet")
"""


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------- kill during checkpoint writes


def test_kill_during_the_first_checkpoint_save_leaves_a_run_that_starts_again(prepared_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    killed = _child(KILL_IN_SAVE, "1", *_train_args(prepared_dataset, out, "train.epochs=1"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "last.pt").exists() and _temps(out)  # the torn temp of the first save
    again = runner.invoke(app, _train_args(prepared_dataset, out, "train.epochs=1"))
    assert again.exit_code == 0, again.output  # no manual deletion, no --resume needed
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert _temps(out) == []


def test_kill_during_a_later_checkpoint_write_resumes_and_cleans_the_temp(prepared_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    killed = _child(KILL_IN_SAVE, "2", *_train_args(prepared_dataset, out, "train.epochs=2"))  # 2nd save: epoch 1
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert load_checkpoint(out / "last.pt")["epoch"] == 0  # the previous last.pt is intact
    assert _temps(out)
    resumed = runner.invoke(app, [*_train_args(prepared_dataset, out, "train.epochs=2"), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert load_checkpoint(out / "last.pt")["epoch"] == 2
    assert _temps(out) == []  # the killed writer's temp is gone


def test_resume_of_a_run_killed_before_its_first_save_says_to_start_again(prepared_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    killed = _child(KILL_IN_SAVE, "1", *_train_args(prepared_dataset, out, "train.epochs=1"))
    assert killed.returncode == -signal.SIGKILL
    result = runner.invoke(app, [*_train_args(prepared_dataset, out, "train.epochs=1"), "--resume"])
    _one_line_error(result, "nothing to resume", "stopped before its first checkpoint", "without --resume")


def test_a_users_own_config_in_the_run_directory_is_never_cleared(prepared_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("mine: true\n")
    result = runner.invoke(app, _train_args(prepared_dataset, out, "train.epochs=1"))
    _one_line_error(result, "not empty")
    assert (out / "config.yaml").read_text() == "mine: true\n"


# --------------------------------------------------------------------------- two trainings on one run directory

# Train, and stop (SIGSTOP) right after the first metrics row: last.pt exists, the lock is held.
STOP_AFTER_FIRST_ROW = """
import os, signal, sys
from mclnet_cli.engine import runlog
real_write = runlog.MetricsLog.write
def write_then_stop(self, row):
    real_write(self, row)
    os.kill(os.getpid(), signal.SIGSTOP)
runlog.MetricsLog.write = write_then_stop
from mclnet_cli.cli.app import app
app(sys.argv[1:], prog_name="mclnet")
"""


def test_a_second_training_on_a_busy_run_directory_is_refused_then_resumes_after_the_first_dies(
    prepared_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    first = _child(STOP_AFTER_FIRST_ROW, *_train_args(prepared_dataset, out, "train.epochs=2"), wait=False)
    try:
        deadline = time.monotonic() + CHILD_TIMEOUT  # safety net only
        while not (out / "metrics.jsonl").is_file() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, first.communicate()
        second = runner.invoke(app, [*_train_args(prepared_dataset, out, "train.epochs=2"), "--resume"])
        _one_line_error(second, str(out), "in use by another mclnet training", f"pid {first.pid}")
        rows = (out / "metrics.jsonl").read_text().splitlines()
        assert len(rows) == 1  # the refused run wrote nothing
    finally:
        first.kill()
        first.communicate()
    # The kernel dropped the lock with the process: the other order works.
    third = runner.invoke(app, [*_train_args(prepared_dataset, out, "train.epochs=2"), "--resume"])
    assert third.exit_code == 0, third.output
    assert load_checkpoint(out / "last.pt")["epoch"] == 2


# --------------------------------------------------------------------------- index: two writers, crash in a swap


def _gallery(root: Path, start: int, count: int) -> Path:
    rng = np.random.default_rng(start)
    for i in range(start, start + count):
        path = root / "cam1" / f"{i:04d}" / "0001.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(path)
    return root


def _index_args(gallery: Path, checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return ["index", str(gallery), "-c", str(checkpoint), "-m", "visible", "-o", str(out), "--device", "cpu", *extra]


def _rows(out: Path) -> list[str]:
    return [r.path for r in GalleryIndex.load(out).records]


def test_two_concurrent_index_adds_both_land(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    first = runner.invoke(app, _index_args(_gallery(tmp_path / "g0", 0, 3), tiny_checkpoint, out))
    assert first.exit_code == 0, first.output
    launcher = "import sys\nfrom mclnet_cli.cli.app import app\napp(sys.argv[1:], prog_name='mclnet')"
    a = _child(launcher, *_index_args(_gallery(tmp_path / "ga", 100, 12), tiny_checkpoint, out, "--add"), wait=False)
    b = _child(launcher, *_index_args(_gallery(tmp_path / "gb", 200, 10), tiny_checkpoint, out, "--add"), wait=False)
    for proc in (a, b):
        _, err = proc.communicate(timeout=CHILD_TIMEOUT)
        assert proc.returncode == 0, err
    assert len(set(_rows(out))) == 3 + 12 + 10


def test_an_index_writer_waits_for_the_one_holding_the_lock(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    assert runner.invoke(app, _index_args(_gallery(tmp_path / "g0", 0, 3), tiny_checkpoint, out)).exit_code == 0
    # Another process holds the writer lock (a live writer, stopped in the middle of its update).
    holder = _child(
        "import os, signal, sys\nfrom mclnet_cli.index.store import writer_lock\n"
        "with writer_lock(sys.argv[1]):\n    print('locked', flush=True)\n    os.kill(os.getpid(), signal.SIGSTOP)\n",
        str(out),
        wait=False,
    )
    adder = None
    try:
        assert holder.stdout.readline().strip() == "locked"
        launcher = "import sys\nfrom mclnet_cli.cli.app import app\napp(sys.argv[1:], prog_name='mclnet')"
        adder = _child(launcher, *_index_args(_gallery(tmp_path / "ga", 100, 4), tiny_checkpoint, out, "--add"), wait=False)
        waited = ""
        while "waiting for another mclnet index writer" not in waited and adder.poll() is None:
            waited += adder.stderr.readline()
        assert adder.poll() is None and str(out) in waited  # it waits, and says so
    finally:
        holder.kill()  # the lock goes with the holder, whatever state it was in
        holder.communicate()
    _, err = adder.communicate(timeout=CHILD_TIMEOUT)
    assert adder.returncode == 0, err
    assert len(_rows(out)) == 3 + 4


# Kill the process when the index folder's content is being swapped: old versions renamed a
# new folder onto the index (dst == the index folder); now files are renamed into it, records
# second (after index.faiss). Either way the kill lands between two steps of the swap.
KILL_IN_SWAP = """
import os, signal, sys
from pathlib import Path
import numpy as np
out = Path(sys.argv[1]).resolve()
def dying(real):
    def rename(src, dst, *a, **k):
        d = Path(dst).resolve()
        if d == out or d == out / "records.jsonl":
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst, *a, **k)
    return rename
from mclnet_cli.index.store import GalleryIndex, IndexRecord
gallery = GalleryIndex.load(out)
rng = np.random.default_rng(5)
gallery.add(rng.normal(size=(5, gallery.dimension)), [IndexRecord(f"/crashed/{i}.jpg", "visible") for i in range(5)])
os.rename, os.replace = dying(os.rename), dying(os.replace)
gallery.save(out)
"""


def test_a_kill_between_swap_steps_loses_nothing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    assert runner.invoke(app, _index_args(_gallery(tmp_path / "g0", 0, 3), tiny_checkpoint, out)).exit_code == 0
    killed = _child(KILL_IN_SWAP, str(out))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    added = runner.invoke(app, _index_args(_gallery(tmp_path / "ga", 100, 2), tiny_checkpoint, out, "--add"))
    assert added.exit_code == 0, added.output
    rows = _rows(out)
    assert len(rows) == 3 + 5 + 2 and sum(r.startswith("/crashed/") for r in rows) == 5  # the committed batch too
    probe = next((tmp_path / "ga").rglob("*.jpg"))
    found = runner.invoke(app, ["query", str(probe), "-i", str(out), "-m", "infrared", "--device", "cpu", "--json"])
    assert found.exit_code == 0, found.output
    assert len(json.loads(found.stdout)[0]["results"]) == 10
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no hidden leftovers


KILL_WHILE_STAGING = """
import os, signal, sys
from pathlib import Path
import numpy as np
out = Path(sys.argv[1]).resolve()
real = os.replace
def replace(src, dst, *a, **k):
    d = Path(dst).resolve()
    if d.name == "meta.json" and d.parent != out:  # the new meta.json, in the staging folder
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *a, **k)
from mclnet_cli.index.store import GalleryIndex, IndexRecord
gallery = GalleryIndex.load(out)
gallery.add(np.ones((2, gallery.dimension)), [IndexRecord(f"/lost/{i}.jpg", "visible") for i in range(2)])
os.replace = replace
gallery.save(out)
"""


def test_a_kill_while_writing_the_new_files_keeps_the_old_index_and_leaves_no_orphans(tmp_path: Path) -> None:
    out = tmp_path / "idx"
    GalleryIndex.build(np.eye(4, 8), [IndexRecord(f"/g/{i}.jpg", "visible") for i in range(4)]).save(out)
    killed = _child(KILL_WHILE_STAGING, str(out))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [r.path for r in GalleryIndex.load(out).records] == [f"/g/{i}.jpg" for i in range(4)]  # rolled back
    GalleryIndex.build(np.eye(2, 8), [IndexRecord(f"/h/{i}.jpg", "visible") for i in range(2)]).save(out)
    leftovers = [p.name for p in [*out.iterdir(), *tmp_path.iterdir()] if p.name.startswith(".") and p.name != ".mclnet-lock"]
    assert leftovers == []


# Kill `mclnet index --remove` at one step of its save: while the new files are staged (before
# the commit), or between two renames of the swap (after it).
KILL_IN_REMOVAL = """
import os, signal, sys
from pathlib import Path
out, where = Path(sys.argv[1]).resolve(), sys.argv[2]
real = os.replace
def replace(src, dst, *a, **k):
    d = Path(dst).resolve()
    staged = d.name == "meta.json" and d.parent != out  # the new meta.json, in the staging folder
    swapping = d == out / "records.jsonl"  # index.faiss is already the new one
    if (where == "staging" and staged) or (where == "swap" and swapping):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *a, **k)
os.replace = replace
from mclnet_cli.cli.app import app
app(sys.argv[3:], prog_name="mclnet")
"""


@pytest.mark.parametrize("where, survivor", [("staging", "old"), ("swap", "new")])
def test_a_kill_during_a_removal_leaves_the_old_or_the_new_index(where: str, survivor: str, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    paths = [f"/g/{i}.jpg" for i in range(6)]
    GalleryIndex.build(np.random.default_rng(3).normal(size=(6, 8)), [IndexRecord(p, "visible") for p in paths]).save(out)
    killed = _child(KILL_IN_REMOVAL, str(out), where, "index", "--remove", "/g/1.jpg", "/g/4.jpg", "-o", str(out))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    expected = paths if survivor == "old" else [p for p in paths if p not in ("/g/1.jpg", "/g/4.jpg")]
    loaded = GalleryIndex.load(out)  # one complete save, never a mix of the two
    assert [r.path for r in loaded.records] == expected and len(loaded) == len(expected)
    assert {h.path for h in loaded.search(np.ones((1, 8)), 10)[0]} == set(expected)
    again = runner.invoke(app, ["index", "--remove", "/g/0.jpg", "-o", str(out), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["count"] == len(expected) - 1
    assert [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".mclnet-lock"] == []


# --------------------------------------------------------------------------- full disk


class _FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written (as a full disk does)."""

    def __init__(self, handle, room: int) -> None:
        self._handle, self._room = handle, room

    def write(self, data) -> int:
        self._room -= len(data)
        if self._room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()


def _fill_disk(monkeypatch: pytest.MonkeyPatch, room: int = 1024, only: str = "") -> None:
    """Writes into atomic-write temps (of target names starting with ``only``) fail past ``room`` bytes."""
    real_fdopen = os.fdopen

    def fdopen(fd, *args, **kwargs):
        handle = real_fdopen(fd, *args, **kwargs)
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        return _FullDisk(handle, room) if name.startswith(f".{only}") else handle

    monkeypatch.setattr(atomic_module.os, "fdopen", fdopen)


def test_full_disk_while_saving_a_checkpoint_is_one_line_naming_it(prepared_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "run"
    _fill_disk(monkeypatch, only="last.pt.")
    result = runner.invoke(app, _train_args(prepared_dataset, out, "train.epochs=1"))
    line = _one_line_error(result, f"cannot write {out / 'last.pt'}", "No space left on device")
    assert ".tmp" not in line
    summary = json.loads((out / "summary.json").read_text())  # what happened is recorded (the disk had room for it)
    assert summary["status"] == "stopped" and "No space left on device" in json.dumps(summary)
    monkeypatch.undo()
    assert _temps(out) == []
    again = runner.invoke(app, _train_args(prepared_dataset, out, "train.epochs=1"))  # space freed: start again
    assert again.exit_code == 0, again.output


def test_full_disk_while_saving_an_index_names_the_index(tiny_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "idx"
    gallery = _gallery(tmp_path / "g0", 0, 3)
    assert runner.invoke(app, _index_args(gallery, tiny_checkpoint, out)).exit_code == 0
    before = _rows(out)
    _fill_disk(monkeypatch, room=64)
    result = runner.invoke(app, _index_args(_gallery(tmp_path / "ga", 100, 2), tiny_checkpoint, out, "--add"))
    line = _one_line_error(result, f"cannot write {out}", "No space left on device")
    assert ".staging" not in line and ".tmp" not in line
    monkeypatch.undo()
    assert _rows(out) == before


def test_full_disk_while_caching_is_one_line_not_sigbus(tmp_path: Path, monkeypatch) -> None:
    root = make_sysu(tmp_path / "SYSU-MM01")

    def no_room(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache_module.os, "posix_fallocate", no_room)
    out = tmp_path / "prep"
    result = runner.invoke(app, ["prepare", "sysu", str(root), "--out", str(out), "--cache", "--cache-size", "32x16"])
    _one_line_error(result, "cannot write", "train_uint8_32x16.npy", "No space left on device")
    assert not (out / "cache").exists() or not list((out / "cache").iterdir())


def test_a_cache_larger_than_the_free_space_is_refused_before_writing(tmp_path: Path, monkeypatch) -> None:
    root = make_sysu(tmp_path / "SYSU-MM01")
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: type("U", (), {"free": 1000})())
    result = runner.invoke(app, ["prepare", "sysu", str(root), "--out", str(tmp_path / "p"), "--cache", "--cache-size", "32x16"])
    _one_line_error(result, "the cache needs", "free")


def test_an_absurd_cache_size_is_refused(tmp_path: Path) -> None:
    root = make_sysu(tmp_path / "SYSU-MM01")
    result = runner.invoke(app, ["prepare", "sysu", str(root), "--out", str(tmp_path / "p"), "--cache", "--cache-size", "100000x100000"])
    _one_line_error(result, "too large")


# --------------------------------------------------------------------------- hostile files


def _bomb(path: Path) -> Path:
    """A PNG of 20000x10000 pixels (200 MP, past Pillow's bomb threshold) that is a few KB on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("1", (20000, 10000)).save(path, optimize=True)
    return path


def test_a_decompression_bomb_in_a_gallery_is_skipped_with_a_note(tiny_checkpoint: Path, tmp_path: Path) -> None:
    gallery = _gallery(tmp_path / "g", 0, 3)
    _bomb(gallery / "cam1" / "0099" / "0001.png")
    out = tmp_path / "idx"
    result = runner.invoke(app, _index_args(gallery, tiny_checkpoint, out))
    assert result.exit_code == 0, result.output
    assert "too large" in result.output and "0099" in result.output
    assert len(_rows(out)) == 3
    probe = runner.invoke(app, ["query", str(gallery / "cam1" / "0099" / "0001.png"), "-i", str(out), "-m", "infrared", "--device", "cpu"])
    _one_line_error(probe, "too large")


def test_the_pixel_limit_is_configurable(tiny_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    gallery = _gallery(tmp_path / "g", 0, 2)  # 64x32 = 2048 pixels each
    monkeypatch.setenv("MCLNET_MAX_IMAGE_PIXELS", "1000")
    result = runner.invoke(app, _index_args(gallery, tiny_checkpoint, tmp_path / "idx"))
    _one_line_error(result, "could be decoded", "too large")


def _payload(**changes):
    config = load_config("tiny")
    model = build_model(config.model, num_classes=4)
    payload = checkpoint_payload(model, config, {1: 0, 2: 1, 3: 2, 4: 3})
    for key, value in changes.items():
        if value is _DROP:
            payload.pop(key)
        else:
            payload[key] = value(payload) if callable(value) else value
    return payload


_DROP = object()


def _arch(payload):
    config = dict(payload["config"])
    config["model"] = {**config["model"], "arch": "resnet50"}
    return config


def _more_rows(payload):
    return {k: (torch.zeros(7, v.shape[1]) if k.endswith("classifier.weight") else v) for k, v in payload["model"].items()}


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"model": _DROP}, "no 'model' weights"),
        ({"num_classes": "four"}, "'num_classes' must be a positive integer"),
        ({"num_classes": 4.0}, "'num_classes' must be a positive integer"),
        ({"model": _more_rows}, "has 7 rows but 'num_classes' is 4"),
        ({"config": _arch}, "the model in its config needs"),
        ({"config": "tiny"}, "no 'config' dict"),
    ],
    ids=["no-model", "num-classes-str", "num-classes-float", "classifier-rows", "arch-vs-shapes", "config-not-dict"],
)
def test_a_malformed_checkpoint_field_is_one_line(tmp_path: Path, changes, needle) -> None:
    bad = tmp_path / "bad.pt"
    torch.save(_payload(**changes), bad)
    result = runner.invoke(app, _index_args(_gallery(tmp_path / "g", 0, 1), bad, tmp_path / "idx"))
    _one_line_error(result, str(bad), needle)


def test_a_pickle_with_foreign_objects_never_suggests_weights_only_false(tmp_path: Path) -> None:
    bad = tmp_path / "evil.pt"
    torch.save({"format": "mclnet-checkpoint/1", "thing": Path("/etc")}, bad)  # a class, not a tensor
    result = runner.invoke(app, _index_args(_gallery(tmp_path / "g", 0, 1), bad, tmp_path / "idx"))
    line = _one_line_error(result, str(bad), "not loaded")
    assert "weights_only" not in line


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("kind", "hnsw", "holds a flat index"),
        ("params", {"nprobe": "x"}, "params.nprobe must be a positive integer"),
        ("image_size", [64, 32, 3], "image_size must be [height, width]"),
        ("count", "many", "count must be a non-negative integer"),
        ("checkpoint", "me", "checkpoint must be"),
        ("feature", "gem", "feature must be one of bn, pool, got 'gem'"),
    ],
)
def test_a_tampered_index_meta_field_is_one_line(tiny_checkpoint: Path, tmp_path: Path, field, value, needle) -> None:
    gallery = _gallery(tmp_path / "g", 0, 2)
    out = tmp_path / "idx"
    assert runner.invoke(app, _index_args(gallery, tiny_checkpoint, out)).exit_code == 0
    meta = json.loads((out / "meta.json").read_text())
    meta[field] = value
    (out / "meta.json").write_text(json.dumps(meta))
    probe = next(gallery.rglob("*.jpg"))
    result = runner.invoke(app, ["query", str(probe), "-i", str(out), "-m", "infrared", "--device", "cpu"])
    _one_line_error(result, needle)


def test_the_picture_width_follows_the_hits_not_top_k() -> None:
    from mclnet_cli.index.store import Hit

    hits = [Hit(i + 1, 0.5, "/missing.jpg", None, None) for i in range(3)]
    assert render_ranked_list([("/p.jpg", None, hits)], top_k=1000).width == render_ranked_list([("/p.jpg", None, hits)]).width


def test_an_absurd_top_k_is_one_line(tiny_checkpoint: Path, tmp_path: Path) -> None:
    gallery = _gallery(tmp_path / "g", 0, 2)
    out = tmp_path / "idx"
    assert runner.invoke(app, _index_args(gallery, tiny_checkpoint, out)).exit_code == 0
    probe = next(gallery.rglob("*.jpg"))
    result = runner.invoke(app, ["query", str(probe), "-i", str(out), "-m", "infrared", "-k", "1000000", "--save", str(tmp_path / "p.png")])
    _one_line_error(result, "--top-k must be between 1 and")


# --------------------------------------------------------------------------- prepared datasets, sharing, orphans


def test_a_manifest_and_meta_from_two_writes_are_refused(fake_sysu, tmp_path: Path) -> None:
    samples, _ = fake_sysu
    out = write_prepared(tmp_path / "prep", samples, {"dataset": "sysu"})
    newer = tmp_path / "newer"
    write_prepared(newer, samples[:3], {"dataset": "sysu"})
    (out / "manifest.jsonl").write_bytes((newer / "manifest.jsonl").read_bytes())  # as if killed between the two
    with pytest.raises(DataError, match="not the manifest"):
        load_prepared(out)


def test_outputs_honour_the_umask(tmp_path: Path, fake_sysu) -> None:
    old = os.umask(0o022)
    try:
        ckpt = save_checkpoint(tmp_path / "c.pt", {"format": "x", "w": torch.zeros(2)})
        index = GalleryIndex.build(np.eye(2, 4), [IndexRecord("/a.jpg"), IndexRecord("/b.jpg")]).save(tmp_path / "idx")
        prep = write_prepared(tmp_path / "prep", fake_sysu[0], {"dataset": "sysu"})
    finally:
        os.umask(old)
    for path in (ckpt, index / "index.faiss", index / "meta.json", index / "records.jsonl", prep / "manifest.jsonl", prep / "meta.json"):
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_orphan_temps_of_an_earlier_process_are_removed_at_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    orphan = tmp_path / ".last.pt.k1ll3d.tmp"
    orphan.write_bytes(b"x" * 100)
    os.utime(orphan, (time.time() - 3600, time.time() - 3600))  # from a process that died an hour ago
    unrelated = tmp_path / ".other.pt.abc.tmp"
    unrelated.write_bytes(b"keep")
    save_checkpoint(target, {"format": "x"})
    assert not orphan.exists() and unrelated.exists()


# --------------------------------------------------------------------------- smaller items


def test_a_split_file_with_a_utf8_bom_and_macos_metadata_files_are_fine(tmp_path: Path) -> None:
    root = make_sysu(tmp_path / "SYSU-MM01")
    ids = root / "exp" / "train_id.txt"
    ids.write_bytes(b"\xef\xbb\xbf" + ids.read_bytes())  # saved by a Windows editor
    first = next(root.rglob("*.jpg"))
    (first.parent / f"._{first.name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # copied from a Mac
    result = runner.invoke(app, ["prepare", "sysu", str(root), "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output


def test_prepare_into_a_file_fails_before_reading_images(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    result = runner.invoke(app, ["prepare", "sysu", str(tmp_path / "nowhere"), "--out", str(target)])
    _one_line_error(result, str(target), "not a folder")


def test_an_interrupted_synthetic_generation_does_not_block_the_next(tmp_path: Path, monkeypatch) -> None:
    from mclnet_cli.data import synthetic

    real_render, calls = synthetic.render, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate_synthetic(tmp_path / "syn", ids=10, images_per_camera=1)
    monkeypatch.undo()
    summary = synthetic.generate_synthetic(tmp_path / "syn", ids=10, images_per_camera=1)
    assert summary["ids"] == 10


@pytest.mark.parametrize("setting", ["optim.lr=inf", "data.workers=-3", "data.height=100000"])
def test_absurd_settings_are_refused(setting: str) -> None:
    from mclnet_cli.errors import ConfigError

    with pytest.raises(ConfigError):
        load_config("tiny", [setting])


def test_resume_may_lower_the_learning_rate_with_a_note(prepared_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert runner.invoke(app, _train_args(prepared_dataset, out, "train.epochs=1")).exit_code == 0
    args = [a for a in _train_args(prepared_dataset, out, "train.epochs=2", "optim.lr=0.0005", "optim.head_lr=0.005") if a != "--quiet"]
    resumed = runner.invoke(app, [*args, "--resume"])  # e.g. after a NaN stop
    assert resumed.exit_code == 0, resumed.output
    assert "optim.lr" in resumed.output and "0.0005" in resumed.output
    state = load_checkpoint(out / "last.pt")
    bases = {g["name"]: g["initial_lr"] for g in state["optimizer"]["param_groups"]}
    assert bases == {"head": 0.005, "backbone": 0.0005}
    assert state["config"]["optim"]["lr"] == 0.0005
    refused = runner.invoke(app, [*_train_args(prepared_dataset, out, "train.epochs=3", "optim.name=adam"), "--resume"])
    _one_line_error(refused, "optim.name")


def test_export_on_a_full_disk_is_one_line_naming_the_file(tiny_checkpoint, tmp_path, monkeypatch, cli_runner) -> None:
    """torch wraps ENOSPC in a RuntimeError's text: still one line naming the user's file, and no temp left behind."""
    import torch

    from mclnet_cli.cli.app import app

    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4096 vs 0: No space left on device")

    monkeypatch.setattr(torch.jit, "save", full_disk)
    out = tmp_path / "exports" / "visible.pt"
    result = cli_runner.invoke(app, ["export", str(tiny_checkpoint), "--format", "torchscript", "--modality", "visible", "--out", str(out)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert f"cannot write {out}" in lines[0] and "No space left on device" in lines[0]
    assert list(out.parent.iterdir()) == []  # neither the file nor a temp


def _export_args(checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return ["export", str(checkpoint), "--format", "torchscript", "--modality", "visible", "--out", str(out), *extra]


def test_an_export_whose_sidecar_cannot_be_written_leaves_neither_file(tiny_checkpoint, tmp_path, monkeypatch) -> None:
    """Model and sidecar are one unit: a full disk at the sidecar leaves no model behind, and names the sidecar."""
    out = tmp_path / "exports" / "visible.pt"
    _fill_disk(monkeypatch, room=16, only="visible.pt.json.")
    result = runner.invoke(app, _export_args(tiny_checkpoint, out))
    line = _one_line_error(result, f"cannot write {out}.json", "No space left on device")
    assert ".tmp" not in line
    assert list(out.parent.iterdir()) == []  # neither file, nor a temp


def test_a_forced_export_that_fails_keeps_the_previous_pair(tiny_checkpoint, tmp_path, monkeypatch) -> None:
    out = tmp_path / "visible.pt"
    out.write_bytes(b"previous model")
    (tmp_path / "visible.pt.json").write_text('{"previous": true}')
    _fill_disk(monkeypatch, room=16, only="visible.pt.json.")
    _one_line_error(runner.invoke(app, _export_args(tiny_checkpoint, out, "--force")), "No space left on device")
    assert out.read_bytes() == b"previous model"
    assert json.loads((tmp_path / "visible.pt.json").read_text()) == {"previous": True}
    assert _temps(tmp_path) == []


def test_a_failed_rename_of_a_pair_restores_the_first_file(tmp_path, monkeypatch) -> None:
    """commit_together: the second rename fails, so the first target gets its previous content back."""
    first, second = tmp_path / "model.pt", tmp_path / "model.pt.json"
    first.write_bytes(b"old model")
    temps = [atomic_module.write_temp(t, lambda h, d=d: h.write(d)) for t, d in ((first, b"new model"), (second, b"{}"))]
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst) == second:
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(atomic_module.os, "replace", replace)
    with pytest.raises(Exception, match=f"cannot write {second}") as caught:
        atomic_module.commit_together(list(zip(temps, (first, second))))
    assert ".tmp" not in str(caught.value)
    monkeypatch.undo()
    assert first.read_bytes() == b"old model" and not second.exists()
    assert _temps(tmp_path) == []  # neither the temps nor the backup of the first file


def test_library_errors_that_name_a_full_disk_become_storage_errors(tmp_path) -> None:
    from mclnet_cli.atomic import storage_error

    wrapped = storage_error(RuntimeError("write failed: Disk quota exceeded"), tmp_path / "x.faiss")
    assert wrapped is not None and str(wrapped).startswith(f"cannot write {tmp_path / 'x.faiss'}: Disk quota exceeded")
    assert storage_error(RuntimeError("shape mismatch"), tmp_path / "x") is None
