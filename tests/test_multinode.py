"""torchrun on CPU (gloo): sharded `mclnet index` equals one process; training across 2 localhost "nodes" runs and resumes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mclnet_cli.engine.distributed import DistInfo, shard_bounds
from mclnet_cli.index.store import GalleryIndex

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("count,world", [(0, 2), (1, 2), (7, 2), (10, 3), (5, 8)])
def test_shards_cover_every_item_once_in_order(count: int, world: int) -> None:
    bounds = [shard_bounds(count, DistInfo(rank=r, local_rank=r, world_size=world)) for r in range(world)]
    assert [i for start, stop in bounds for i in range(start, stop)] == list(range(count))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1


def _gallery(root: Path, count: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 255, size=(40, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{seed}_{i:03d}.png")
    return root


def _index_cmd(gallery: Path, checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "mclnet_cli", "--quiet", "index", str(gallery), "--checkpoint", str(checkpoint),
            "--modality", "visible", "--out", str(out), "--device", "cpu", "--json", *extra]


def _run(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, env=ENV)  # hang guard only
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # only rank 0 prints


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _contents(index_dir: Path) -> tuple[list[str], np.ndarray]:
    gallery = GalleryIndex.load(index_dir)
    vectors = gallery.index.reconstruct_n(0, gallery.index.ntotal)
    return [r.path for r in gallery.records], vectors


def test_two_processes_and_add_give_the_single_process_index(two_stream_checkpoint: Path, tmp_path: Path) -> None:
    first, second = _gallery(tmp_path / "g1", 9, 1), _gallery(tmp_path / "g2", 5, 2)
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    _run([sys.executable, *_index_cmd(first, two_stream_checkpoint, single)])
    _run([sys.executable, *_index_cmd(second, two_stream_checkpoint, single, "--add")])
    report = _run(_torchrun("--standalone", "--nproc_per_node", "2", *_index_cmd(first, two_stream_checkpoint, sharded)))
    assert report["count"] == report["added"] == 9
    report = _run(_torchrun("--standalone", "--nproc_per_node", "2", *_index_cmd(second, two_stream_checkpoint, sharded, "--add")))
    assert report["count"] == 14 and report["added"] == 5
    paths, vectors = _contents(sharded)
    expected_paths, expected_vectors = _contents(single)
    assert paths == expected_paths
    assert np.allclose(vectors, expected_vectors, atol=1e-5)


def test_two_nodes_on_localhost_give_the_single_process_index(two_stream_checkpoint: Path, tmp_path: Path) -> None:
    gallery = _gallery(tmp_path / "g", 7, 3)
    single, sharded = tmp_path / "single", tmp_path / "nodes"
    _run([sys.executable, *_index_cmd(gallery, two_stream_checkpoint, single)])
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            _torchrun("--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank), "--master_addr", "127.0.0.1",
                      "--master_port", port, *_index_cmd(gallery, two_stream_checkpoint, sharded)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=900) for p in procs]  # hang guard only
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    assert json.loads(outputs[0][0])["count"] == 7 and outputs[1][0].strip() == ""  # node 1's rank stays quiet
    paths, vectors = _contents(sharded)
    expected_paths, expected_vectors = _contents(single)
    assert paths == expected_paths
    assert np.allclose(vectors, expected_vectors, atol=1e-5)


def _two_node_train(data: Path, out: Path, *extra: str) -> dict:
    port = str(_free_port())
    sets = ["data.height=32", "data.width=16", "data.num_ids=2", "data.num_instances=2", "data.workers=0",
            "train.steps_per_epoch=2", "train.log_every=1"]
    cmd_tail = ["-m", "mclnet_cli", "train", "--preset", "tiny", "--data", str(data), "--out", str(out),
                "--device", "cpu", "--quiet", "--json", *extra, *[x for s in sets for x in ("--set", s)]]
    procs = [
        subprocess.Popen(
            _torchrun("--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank), "--master_addr", "127.0.0.1",
                      "--master_port", port, *cmd_tail),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=900) for p in procs]  # hang guard only
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    assert outputs[1][0].strip() == ""
    return json.loads(outputs[0][0])


def test_two_node_training_runs_and_resumes(prepared_dataset: Path, tmp_path: Path) -> None:
    from mclnet_cli.engine.checkpoint import load_model
    from mclnet_cli.engine.runlog import read_metrics

    out = tmp_path / "run"
    first = _two_node_train(prepared_dataset, out, "--set", "train.epochs=1")
    assert first["status"] == "complete" and first["world_size"] == 2 and first["steps_per_epoch"] == 1
    second = _two_node_train(prepared_dataset, out, "--resume", "--set", "train.epochs=2")
    assert second["status"] == "complete" and second["epochs_completed"] == 2
    epochs = [r["epoch"] for r in read_metrics(out) if r["kind"] == "epoch"]
    assert epochs == sorted(set(epochs)) and len(epochs) == 2  # one writer, no repeated epoch after resume
    assert load_model(out / "last.pt").payload["epoch"] == 2
