"""Benchmark ``mclnet serve``: one-probe search latency over HTTP against the same search in-process.

For each model preset and gallery size:

1. **bare**: forward pass of one pre-decoded probe tensor + FAISS search (no file, no decode);
2. **in-process**: :meth:`SearchEngine.rank` on one probe file (decode + resize + embed + search),
   the code behind both ``mclnet query`` and the server;
3. **HTTP**: ``mclnet serve`` started as its own process on 127.0.0.1, one probe per
   ``POST /search`` (multipart upload, validation, temp file, JSON).

1-3 are measured interleaved (bare, in-process, HTTP, bare, ...), so a busy shared machine
slows all three alike; the server overhead is the median of HTTP - in-process over the
iterations. Each answer also carries the server's own decode, embed and search times, so
"HTTP + framework" (median of client time - those) isolates transport, multipart parsing,
validation, thread hand-offs and JSON from the model's work. Then 1, 4 and 16 concurrent clients (threads, one ``httpx.Client`` each) hit
the server: p50/p95 latency, throughput, errors.
   With ``--adds`` a writer uploads a new gallery image every ``--add-every`` seconds during
   the concurrent runs; every search must still answer 200 with a gallery count that never
   goes down (no half-updated index).

FAISS runs with one OpenMP thread in both processes (the server's default, ``faiss_threads=1``).

The gallery holds random unit-length features (search cost depends on its size, not on what
the vectors are), with records pointing at placeholder paths; the probe is a real 128x64 JPEG.
Models are untrained (latency does not depend on the weights).

Usage::

    .venv/bin/python benchmarks/bench_serve.py --presets tiny --sizes 10000 --requests 40
    .venv/bin/python benchmarks/bench_serve.py --presets tiny base --sizes 10000 100000 --adds

Prints Markdown tables (for docs/benchmarks.md); ``--json FILE`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MODALITY = "infrared"  # probes; the gallery is visible


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _percentiles(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values) * 1000.0
    return float(np.percentile(array, 50)), float(np.percentile(array, 95))


def _setup(root: Path, preset: str, size: int) -> tuple[Path, Path]:
    """A checkpoint of ``preset`` and an index of ``size`` random features built for it."""
    import torch
    from PIL import Image

    from mclnet_cli.config import load_config
    from mclnet_cli.engine.checkpoint import checkpoint_payload, file_fingerprint, save_checkpoint
    from mclnet_cli.index.store import GalleryIndex, IndexRecord
    from mclnet_cli.model import build_model

    cfg = load_config(preset, ["model.pretrained=none"])
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=10)
    ckpt = save_checkpoint(root / f"{preset}.pt", checkpoint_payload(model, cfg, {i: i for i in range(10)}))
    rng = np.random.default_rng(0)
    features = rng.normal(size=(size, model.feature_dim)).astype(np.float32)
    records = [IndexRecord(f"/gallery/cam1/{i // 10 + 1:05d}/{i % 10 + 1:04d}.jpg", "visible", i // 10 + 1, 1) for i in range(size)]
    extra = {
        "modality": "visible",
        "checkpoint": {"path": str(ckpt.resolve()), "fingerprint": file_fingerprint(ckpt)},
        "feature": "bn",
        "image_size": [cfg.data.height, cfg.data.width],
        "resize": cfg.data.resize,
    }
    index_dir = root / f"index-{preset}-{size}"
    GalleryIndex.build(features, records, "flat", extra=extra).save(index_dir)
    probe = root / "probe.jpg"
    Image.fromarray(rng.integers(0, 256, size=(128, 64, 3), dtype=np.uint8)).convert("L").convert("RGB").save(probe, quality=90)
    return index_dir, probe


def _paired(index_dir: Path, probe: Path, url: str, requests: int) -> dict:
    """Bare, in-process and HTTP one-probe searches, interleaved, so machine load hits all three alike.

    The overhead is the median over iterations of (HTTP - in-process) of the same iteration.
    """
    import faiss
    import httpx
    import torch

    from mclnet_cli.data.images import load_rgb
    from mclnet_cli.data.transforms import test_transform
    from mclnet_cli.engine.search import SearchEngine

    faiss.omp_set_num_threads(1)  # as the server does (ServeSettings.faiss_threads): same conditions on both sides
    engine = SearchEngine.open(index_dir, device="cpu")
    data = engine.loaded.config.data
    tensor = test_transform(data.height, data.width, data.resize)(load_rgb(probe))[None]
    payload = probe.read_bytes()
    bare, ranked, http = [], [], []
    with torch.no_grad(), httpx.Client(timeout=120) as session:

        inside: list[float] = []  # the server's own decode + embed + search time of each request

        def over_http() -> None:
            response = session.post(
                f"{url}/search", files={"probes": ("p.jpg", payload, "image/jpeg")}, data={"modality": MODALITY, "top_k": "10"}
            )
            response.raise_for_status()
            answer = response.json()
            inside.append((answer["decode_ms"] + answer["embed_ms"] + answer["search_ms"]) / 1000.0)

        for _ in range(3):  # warm-up
            engine.gallery.search(engine.loaded.model.embed(tensor, MODALITY).numpy(), 10)
            engine.rank([str(probe)], MODALITY, 10)
            over_http()
        for _ in range(requests):
            started = time.perf_counter()
            engine.gallery.search(engine.loaded.model.embed(tensor, MODALITY).numpy(), 10)
            bare.append(time.perf_counter() - started)
            started = time.perf_counter()
            engine.rank([str(probe)], MODALITY, 10)
            ranked.append(time.perf_counter() - started)
            started = time.perf_counter()
            over_http()
            http.append(time.perf_counter() - started)
    overhead = float(np.median(np.asarray(http) - np.asarray(ranked)) * 1000.0)
    inside = inside[-len(http):]
    framework = float(np.median(np.asarray(http) - np.asarray(inside)) * 1000.0)
    return {
        "bare": _percentiles(bare),
        "in_process": _percentiles(ranked),
        "http_1": _percentiles(http),
        "server_inside": _percentiles(inside),
        "overhead_ms": overhead,
        "http_framework_ms": framework,
    }


class _Server:
    """``mclnet serve`` as a child process on 127.0.0.1."""

    def __init__(self, index_dir: Path, uploads: Path, model_threads: int = 1) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        mclnet = Path(sys.executable).with_name("mclnet")
        command = [str(mclnet), "serve", "--index", str(index_dir), "--port", str(self.port), "--device", "cpu",
                   "--uploads", str(uploads), "--model-threads", str(model_threads)]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def __enter__(self) -> "_Server":
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mclnet serve exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("mclnet serve did not come up")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _http(url: str, probe: Path, clients: int, requests: int, adds: bool, add_every: float) -> dict:
    import httpx
    from PIL import Image

    payload = probe.read_bytes()
    latencies: list[float] = []
    errors: list[str] = []
    shrunk: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        last_count = -1
        with httpx.Client(timeout=120) as session:
            session.post(f"{url}/search", files={"probes": ("p.jpg", payload, "image/jpeg")}, data={"modality": MODALITY})
            for _ in range(requests):
                started = time.perf_counter()
                response = session.post(
                    f"{url}/search", files={"probes": ("p.jpg", payload, "image/jpeg")}, data={"modality": MODALITY, "top_k": "10"}
                )
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status_code != 200:
                        errors.append(f"{response.status_code}: {response.text[:200]}")
                        continue
                    latencies.append(elapsed)
                    count = response.json()["gallery"]["count"]
                    if count < last_count:
                        shrunk.append(f"{last_count} -> {count}")
                    last_count = count

    added = 0

    def writer() -> None:
        nonlocal added
        rng = np.random.default_rng(1)
        with httpx.Client(timeout=300) as session:
            while not stop.wait(add_every):
                image = Image.fromarray(rng.integers(0, 256, size=(128, 64, 3), dtype=np.uint8))
                path = Path(tempfile.mkstemp(suffix=".png")[1])
                image.save(path)
                response = session.post(f"{url}/gallery", files={"images": ("new.png", path.read_bytes(), "image/png")})
                path.unlink()
                with lock:
                    if response.status_code == 200:
                        added += response.json()["added"]
                    else:
                        errors.append(f"add {response.status_code}: {response.text[:200]}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    writer_thread = threading.Thread(target=writer) if adds else None
    started = time.perf_counter()
    if writer_thread:
        writer_thread.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    stop.set()
    if writer_thread:
        writer_thread.join()
    p50, p95 = _percentiles(latencies) if latencies else (float("nan"), float("nan"))
    return {
        "clients": clients,
        "requests": len(latencies),
        "p50_ms": p50,
        "p95_ms": p95,
        "throughput_per_s": len(latencies) / wall,
        "errors": errors,
        "count_went_down": shrunk,
        "added_during_run": added,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny"], help="model presets (tiny, base = resnet50 288x144)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[10_000], help="gallery sizes")
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=40, help="timed requests per client (and in-process repeats)")
    parser.add_argument("--adds", action="store_true", help="upload gallery images during the concurrent runs")
    parser.add_argument("--add-every", type=float, default=1.0, help="seconds between uploads with --adds")
    parser.add_argument("--model-threads", type=int, default=1, help="mclnet serve --model-threads")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for preset in args.presets:
            for size in args.sizes:
                index_dir, probe = _setup(root, preset, size)
                with _Server(index_dir, root / f"uploads-{preset}-{size}", args.model_threads) as server:
                    local = _paired(index_dir, probe, server.url, args.requests)
                    print(json.dumps({"preset": preset, "gallery": size, **local}), file=sys.stderr, flush=True)
                    for clients in args.clients:
                        result = _http(server.url, probe, clients, args.requests, args.adds and clients > 1, args.add_every)
                        rows.append({"preset": preset, "gallery": size, **local, **result})
                        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print()
    print("| model | gallery | bare forward+FAISS p50 / p95 | in-process rank p50 / p95 | HTTP p50 / p95 (interleaved) | "
          "overhead: median of HTTP - in-process | server's own decode+embed+search p50 | "
          "HTTP + framework: median of HTTP - server's own |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        if row["clients"] != args.clients[0]:
            continue
        print(
            f"| {row['preset']} | {row['gallery']:,} | {row['bare'][0]:.1f} / {row['bare'][1]:.1f} ms | "
            f"{row['in_process'][0]:.1f} / {row['in_process'][1]:.1f} ms | {row['http_1'][0]:.1f} / {row['http_1'][1]:.1f} ms | "
            f"{row['overhead_ms']:.1f} ms | {row['server_inside'][0]:.1f} ms | {row['http_framework_ms']:.1f} ms |"
        )
    print()
    print("| model | gallery | clients | HTTP p50 / p95 | throughput | errors | gallery count went down | images added during the run |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['preset']} | {row['gallery']:,} | {row['clients']} | {row['p50_ms']:.1f} / {row['p95_ms']:.1f} ms | "
            f"{row['throughput_per_s']:.1f}/s | {len(row['errors'])} | {len(row['count_went_down'])} | {row['added_during_run']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
