"""Benchmark gallery indexing and search.

1. Indexing throughput (images/s) of the full ``build_gallery_index`` pipeline
   (walk, decode, resize, embed, FAISS, atomic save) against the model's own
   forward pass on pre-decoded tensors, with the tiny model (resnet18, 64x32).
2. Query latency and recall@10 of flat vs hnsw / ivf / ivfpq on synthetic
   512-d features: identity-like clusters (10 images per person) and queries
   that are new images of gallery people. The same data serves every kind;
   ground truth is exact (flat) search.

Usage::

    .venv/bin/python benchmarks/bench_index.py --images 300 --sizes 100000 --queries 200
    .venv/bin/python benchmarks/bench_index.py --skip-pipeline --sizes 1000000 --kinds flat ivf
    .venv/bin/python benchmarks/real_features.py RUN/last.pt --people 10000 --out /tmp/real.npz
    .venv/bin/python benchmarks/bench_index.py --skip-pipeline --features /tmp/real.npz --kinds flat ivf auto

With ``--features``, the gallery and queries are a trained checkpoint's features of
fresh synthetic persons (visible gallery, infrared probes) instead of the
identity-like random vectors, and a "person in top 10" column says how often the
probe's person is among the hits.

Prints Markdown tables (for docs/benchmarks.md) and, with ``--json``, writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _pipeline(n_images: int, batch_size: int, repeats: int = 3, workers: int = 0, preset: str = "tiny") -> dict:
    import torch
    from PIL import Image

    from mclnet_cli.config import load_config
    from mclnet_cli.data.images import load_rgb
    from mclnet_cli.data.transforms import test_transform
    from mclnet_cli.engine.checkpoint import checkpoint_payload, save_checkpoint
    from mclnet_cli.engine.indexing import build_gallery_index
    from mclnet_cli.model import build_model

    cfg = load_config(preset, [] if preset == "tiny" else ["model.pretrained=none"])
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=10)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = save_checkpoint(root / f"{preset}.pt", checkpoint_payload(model, cfg, {i: i for i in range(10)}))
        paths = []
        for i in range(n_images):
            path = root / "gallery" / f"cam1/{i // 10 + 1:04d}/{i % 10 + 1:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, size=(128, 64, 3), dtype=np.uint8)).save(path, quality=90)
            paths.append(path)

        transform = test_transform(cfg.data.height, cfg.data.width)
        tensors = torch.stack([transform(load_rgb(p)) for p in paths])
        model.eval()
        embed_rates, total_rates, forward_rates = [], [], []
        for repeat in range(repeats):  # interleaved, best of N: the machine is shared
            start = time.perf_counter()
            report = build_gallery_index(
                ckpt, root / "gallery", "visible", root / f"idx{repeat}", device="cpu", batch_size=batch_size, workers=workers
            )
            total_rates.append(n_images / (time.perf_counter() - start))  # whole call: load model, walk, embed, save
            embed_rates.append(report.images_per_s)  # decode + resize + forward
            with torch.no_grad():
                start = time.perf_counter()
                for i in range(0, len(tensors), batch_size):
                    model.embed(tensors[i : i + batch_size], "visible")
                forward_rates.append(n_images / (time.perf_counter() - start))
    return {
        "preset": preset,
        "model": f"{cfg.model.arch} at {cfg.data.height}x{cfg.data.width}",
        "images": n_images,
        "batch_size": batch_size,
        "workers": workers,
        "torch_threads": torch.get_num_threads(),
        "repeats": repeats,
        "embed_over_forward": round(max(embed_rates) / max(forward_rates), 3),
        "total_over_forward": round(max(total_rates) / max(forward_rates), 3),
        "pipeline_embed_images_per_s": round(max(embed_rates), 1),
        "pipeline_total_images_per_s": round(max(total_rates), 1),
        "forward_only_images_per_s": round(max(forward_rates), 1),
    }


def _synthetic(n: int, dim: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Identity-like features: ``n / 10`` people, 10 noisy images each; queries are new images of them.

    Drawn and L2-normalised in row blocks, so 10^6 x 2,048 needs the 8 GB of the
    matrix and little more (the index then uses it without a copy).
    """
    rng = np.random.default_rng(seed)
    people = max(n // 10, 1)
    centres = rng.standard_normal((people, dim), dtype=np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    block = 65_536
    for start in range(0, n, block):
        stop = min(n, start + block)
        x[start:stop] = centres[rng.integers(0, people, stop - start)]
        x[start:stop] += rng.standard_normal((stop - start, dim), dtype=np.float32)
        x[start:stop] /= np.linalg.norm(x[start:stop], axis=1, keepdims=True)
    q = centres[rng.integers(0, people, queries)] + rng.standard_normal((queries, dim), dtype=np.float32)
    return x, q


def _index_bytes(index) -> int:
    """Bytes of the serialised FAISS index (what ``index.faiss`` takes on disk, and about what it takes in RAM)."""
    import faiss

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "index.faiss")
        faiss.write_index(index, path)
        return os.path.getsize(path)


def _ann(x: np.ndarray, q: np.ndarray, kinds: list[str], top_k: int = 10, recall: float = 0.95,
         memory_gb: float | None = None, source: str = "synthetic", pids: tuple[np.ndarray, np.ndarray] | None = None) -> list[dict]:
    """One row per kind: build time, latency, recall@10 against exact search (and, with ``pids``
    = (gallery pids, query pids), how often the probe's person is in the top 10)."""
    from mclnet_cli.index.store import GalleryIndex, IndexRecord

    n, dim = x.shape
    n_queries = q.shape[0]
    records = [IndexRecord(str(i)) for i in range(n)]
    rows = []
    truth: list[set[int]] | None = None
    for kind in ["flat"] + [k for k in kinds if k != "flat"]:
        start = time.perf_counter()
        auto = {"recall": recall, "memory_bytes": int(memory_gb * 2**30) if memory_gb else None} if kind == "auto" else {}
        gallery = GalleryIndex.build(x, records, kind=kind, **auto)
        build_s = time.perf_counter() - start
        gallery.search(q[:1], top_k)  # warm-up
        latencies = []
        found = []
        for i in range(n_queries):
            t0 = time.perf_counter()
            (hits,) = gallery.search(q[i : i + 1], top_k)
            latencies.append((time.perf_counter() - t0) * 1000)
            found.append({int(h.path) for h in hits})
        t0 = time.perf_counter()
        gallery.search(q, top_k)
        batch_ms = (time.perf_counter() - t0) * 1000 / n_queries
        if kind == "flat":
            truth = found
        assert truth is not None
        recall_found = statistics.mean(len(f & t) / top_k for f, t in zip(found, truth))
        person_hit = None
        if pids is not None:
            person_hit = statistics.mean(float(any(pids[0][i] == qp for i in f)) for f, qp in zip(found, pids[1]))
        rows.append(
            {
                "n": n,
                "dim": dim,
                "features": source,
                "kind": gallery.kind,
                "factory": gallery.factory,
                "params": gallery.params,
                "build_s": round(build_s, 2),
                "latency_ms_median": round(statistics.median(latencies), 3),
                "latency_ms_p95": round(float(np.percentile(latencies, 95)), 3),
                "batch_ms_per_query": round(batch_ms, 3),
                "recall_at_10": round(recall_found, 4),
                "person_in_top10": None if person_hit is None else round(person_hit, 4),
                "index_bytes": _index_bytes(gallery.index),
                "auto": gallery.extra.get("auto"),
            }
        )
        print(f"  n={n} {kind}: {rows[-1]}", file=sys.stderr, flush=True)
        del gallery
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="images for the pipeline benchmark")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0], help="decoding processes (one pipeline row each)")
    parser.add_argument("--preset", default="tiny", help="model of the pipeline benchmark (tiny, base = resnet50 288x144)")
    parser.add_argument("--repeats", type=int, default=3, help="pipeline passes (best of)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000], help="gallery sizes for the ANN benchmark")
    parser.add_argument("--kinds", nargs="*", default=["flat", "hnsw", "ivf", "ivfpq"])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--recall", type=float, default=0.95, help="target of --kinds auto")
    parser.add_argument("--memory-gb", type=float, default=None, help="memory budget of --kinds auto")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--features", type=Path, default=None,
                        help="search benchmark on the features of benchmarks/real_features.py (.npz) instead of --sizes")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args()

    import faiss

    result: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "faiss": faiss.__version__,
        "faiss_threads": faiss.omp_get_max_threads(),
    }
    if not args.skip_pipeline:
        result["pipeline"] = [
            _pipeline(args.images, args.batch_size, args.repeats, workers=w, preset=args.preset) for w in args.workers
        ]
        print("| model | images | batch | workers | torch threads | forward only (img/s) | pipeline, embed phase (img/s) | "
              "pipeline, whole call (img/s) | embed / forward | whole / forward |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for p in result["pipeline"]:
            print(
                f"| {p['model']} | {p['images']} | {p['batch_size']} | {p['workers']} | {p['torch_threads']} | {p['forward_only_images_per_s']} | "
                f"{p['pipeline_embed_images_per_s']} | {p['pipeline_total_images_per_s']} | {p['embed_over_forward']} | "
                f"{p['total_over_forward']} |"
            )
        print()
    result["ann"] = []
    if args.features is not None:
        with np.load(args.features) as data:
            x, q = data["gallery"].astype(np.float32), data["queries"].astype(np.float32)
            pids = (data["gallery_pids"], data["query_pids"])
        result["ann"].extend(_ann(x, q, args.kinds, recall=args.recall, memory_gb=args.memory_gb,
                                  source=str(args.features), pids=pids))
        del x
    else:
        for n in args.sizes:
            x, q = _synthetic(n, args.dim, args.queries)
            result["ann"].extend(_ann(x, q, args.kinds, recall=args.recall, memory_gb=args.memory_gb))
            del x
    if result["ann"]:
        print("| gallery | dim | kind | factory | params | build (s) | latency median (ms) | p95 (ms) | batched (ms/query) | "
              "recall@10 | person in top 10 | index (GB) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in result["ann"]:
            params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
            if r.get("auto"):
                params += f" (auto: target {r['auto']['target_recall']}, tuned {r['auto']['recall_at_10']})"
            print(
                f"| {r['n']:,} | {r['dim']} | {r['kind']} | {r['factory']} | {params} | {r['build_s']} | {r['latency_ms_median']} | "
                f"{r['latency_ms_p95']} | {r['batch_ms_per_query']} | {r['recall_at_10']:.3f} | "
                f"{'-' if r['person_in_top10'] is None else format(r['person_in_top10'], '.3f')} | {r['index_bytes'] / 1e9:.2f} |"
            )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
