"""DistributedDataParallel on CPU: torchrun with 2 gloo processes, tiny model, 1 epoch of 2 steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch.distributed as dist
import pytest
from PIL import Image

from mclnet_cli.data.records import Modality, Sample, write_prepared
from mclnet_cli.engine.checkpoint import load_model
from mclnet_cli.engine.distributed import cleanup_distributed, env_dist_info
from mclnet_cli.engine.runlog import read_metrics
from mclnet_cli.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _prepared(root: Path) -> Path:
    rng = np.random.default_rng(1)
    samples = []
    for pid in range(1, 5):
        base = rng.integers(0, 255, size=3)
        for cam, modality in ((1, Modality.VISIBLE), (2, Modality.VISIBLE), (3, Modality.INFRARED), (6, Modality.INFRARED)):
            pixels = np.clip(base + rng.normal(0, 30, size=(32, 16, 3)), 0, 255).astype(np.uint8)
            path = root / f"{pid}_{cam}.png"
            Image.fromarray(pixels).save(path)
            samples.append(Sample(str(path), pid, cam, modality, "train"))
    return write_prepared(root / "prepared", samples, {"dataset": "synthetic"})


TINY_SETS = [
    "data.height=32", "data.width=16", "data.num_ids=2", "data.num_instances=2", "data.workers=0",
    "train.epochs=1", "train.log_every=1",
]


def _torchrun_train(data: Path, out: Path, sets: list[str]) -> dict:
    """``torchrun --nproc_per_node 2 -m mclnet_cli train`` on the tiny preset; returns rank 0's JSON summary."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "mclnet_cli", "train", "--preset", "tiny", "--data", str(data), "--out", str(out),
        "--device", "cpu", "--quiet", "--json",
    ]
    for item in TINY_SETS + sets:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=ROOT, env=env)  # hang guard only
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # only rank 0 prints


def test_env_dist_info_reads_torchrun_variables(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    info = env_dist_info()
    assert (info.rank, info.local_rank, info.world_size, info.is_main, info.enabled) == (2, 0, 4, False, True)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="RANK=4"):
        env_dist_info()
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name)
    assert env_dist_info().world_size == 1 and env_dist_info().is_main


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
@pytest.mark.parametrize("synchronize", [True, False])
def test_cleanup_waits_for_every_rank_only_when_asked(synchronize: bool, tmp_path: Path, monkeypatch) -> None:
    """A finished job meets at a barrier before leaving (a rank leaving early made gloo peers abort at exit);
    a rank leaving on an error must not wait for peers that will never arrive."""
    calls: list[str] = []
    real_barrier = dist.barrier
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: (calls.append("barrier"), real_barrier(*a, **k))[1])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        cleanup_distributed(synchronize=synchronize)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
            pytest.fail("cleanup_distributed left the process group initialised")
    assert calls == (["barrier"] if synchronize else [])


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_torchrun_two_gloo_processes_train_one_epoch(tmp_path: Path) -> None:
    data = _prepared(tmp_path)
    out = tmp_path / "run"
    summary = _torchrun_train(data, out, ["train.steps_per_epoch=2"])
    # only rank 0 prints the summary and writes files
    assert summary["status"] == "complete" and summary["world_size"] == 2
    assert summary["steps_per_epoch"] == 1  # 2 steps over 2 ranks
    env_info = json.loads((out / "environment.json").read_text())
    assert env_info["world_size"] == 2
    rows = read_metrics(out)
    assert [r["kind"] for r in rows] == ["step", "epoch"]  # one writer: no duplicate rows
    assert sorted(p.name for p in out.iterdir()) == [  # the run directory's layout (engine/runlog.py), once
        ".mclnet-lock", "config.yaml", "environment.json", "last.pt", "metrics.jsonl", "summary.json",
    ]
    loaded = load_model(out / "last.pt")
    assert loaded.payload["epoch"] == 1 and len(loaded.label_map) == 4


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_torchrun_trains_when_the_projection_heads_get_no_gradient(tmp_path: Path) -> None:
    """supcon = hks = 0 leaves the projection heads out of the loss: DDP must not wait for their gradients."""
    data = _prepared(tmp_path)
    out = tmp_path / "run"
    # 2 steps per rank: the 2nd would hang or fail if DDP waited for the heads' gradients
    summary = _torchrun_train(data, out, ["train.steps_per_epoch=4", "loss.weights.supcon=0", "loss.weights.hks=0", "loss.mmd_gate=null"])
    assert summary["status"] == "complete" and summary["epochs_completed"] == 1
    assert set(summary["final_losses"]) == {"total", "id", "mmd", "mmd_scale"}  # tiny's ramp logs its factor
    assert load_model(out / "last.pt").payload["epoch"] == 1


# Rank 1 of a torchrun job SIGKILLs itself at its Nth call of a step (train) or of feature extraction
# (index); rank 0 runs unpatched. torchrun then stops rank 0 (SIGTERM), or rank 0's next collective
# fails first ("Connection closed by peer"): either way one clear line, nothing half-written.
KILL_RANK_ONE = """
import os, signal, sys
what, n = os.environ["MCLNET_TEST_KILL"].split(":")
if os.environ.get("RANK") == "1":
    calls = []
    def dying(real):
        def call(*args, **kwargs):
            calls.append(1)
            if len(calls) == int(n):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return call
    if what == "train":
        from mclnet_cli.engine import train
        train._train_step = dying(train._train_step)
    else:
        from mclnet_cli.engine import extract
        extract.extract_features = dying(extract.extract_features)
from mclnet_cli.cli.app import app
app(sys.argv[1:], prog_name="mclnet")
"""


def _torchrun_killing_rank_one(tmp_path: Path, kill: str, args: list[str]) -> subprocess.CompletedProcess:
    launcher = tmp_path / "kill_rank_one.py"
    launcher.write_text(KILL_RANK_ONE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(launcher), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "MCLNET_TEST_KILL": kill}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)  # a hang guard, not a timing


def _rank0_says_why(proc: subprocess.CompletedProcess) -> str:
    """The job failed; rank 0 said so in one line of its own; no traceback from mclnet's code."""
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert f'File "{ROOT / "mclnet_cli"}' not in proc.stderr, proc.stderr[-3000:]  # torchrun's own summary only
    lines = [line for line in proc.stderr.splitlines() if line.startswith(("error:", "interrupted:"))]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "another process of this torchrun job stopped" in lines[0] or "stopped by SIGTERM" in lines[0], lines[0]
    return lines[0]


def _no_temp_left_unless_force_killed(out: Path, proc: subprocess.CompletedProcess) -> None:
    """Rank 0 handles torchrun's SIGTERM and removes the temp of a write it was in. Only when torchrun had to
    SIGKILL it (no clean-up can run then) may a temp stay, and the next writer, a new process, removes it
    (mclnet_cli/atomic.py, "Orphans")."""
    temps = [p for p in out.iterdir() if p.name.endswith(".tmp")]
    if not temps:
        return
    assert "forcefully exiting via" in proc.stderr, f"temps left {[p.name for p in temps]}: {proc.stderr[-4000:]}"
    for temp in temps:
        target = out / temp.name[1:].rsplit(".", 2)[0]  # .NAME.<random>.tmp
        subprocess.run([sys.executable, "-c", "import sys; from mclnet_cli.atomic import remove_orphan_temps; "
                        "remove_orphan_temps(sys.argv[1])", str(target)], check=True, cwd=ROOT, timeout=120)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_a_sigkilled_rank_stops_training_with_one_line_and_a_complete_last_checkpoint(tmp_path: Path) -> None:
    data = _prepared(tmp_path)
    out = tmp_path / "run"
    sets = [*TINY_SETS, "train.epochs=3", "train.steps_per_epoch=4"]
    args = ["train", "--preset", "tiny", "--data", str(data), "--out", str(out), "--device", "cpu", "--quiet",
            *[x for item in sets for x in ("--set", item)]]
    proc = _torchrun_killing_rank_one(tmp_path, "train:3", args)  # rank 1 dies entering epoch 2 (2 steps per rank)
    _rank0_says_why(proc)
    _no_temp_left_unless_force_killed(out, proc)  # no half-written checkpoint
    if (out / "last.pt").exists():  # a checkpoint that is there is whole
        assert load_model(out / "last.pt").payload["epoch"] in (0, 1)
    if (out / "summary.json").exists():
        assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_a_sigkilled_rank_stops_indexing_with_one_line_and_no_index(tiny_checkpoint: Path, tmp_path: Path) -> None:
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (40, 20, 3), dtype=np.uint8)).save(gallery / f"{i}.png")
    out = tmp_path / "idx"
    args = ["--quiet", "index", str(gallery), "--checkpoint", str(tiny_checkpoint), "--modality", "visible",
            "--out", str(out), "--device", "cpu"]
    _rank0_says_why(_torchrun_killing_rank_one(tmp_path, "index:1", args))
    leftovers = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert not [name for name in leftovers if name not in (".mclnet-lock",)], leftovers  # no index, no staging
