"""Benchmark archives beyond memory (issue 28): chunked on-disk IVF builds, and what ``--dim`` costs in recall.

1. ``--size N``: N synthetic vectors of the reduced dimension (clustered Gaussian,
   ``--clusters`` centres, so IVF cells mean something) are generated chunk by chunk
   from per-chunk seeds, never all in memory, and indexed exactly as ``mclnet index
   --chunk`` does (mclnet_cli.index.chunked): train the quantiser once on a sample,
   one shard file per chunk, merge into one lists file, search it memory-mapped.
   Reported: build time by phase, peak RSS (VmHWM, and the peak of anonymous memory
   sampled every 50 ms: file pages of the mapped lists are page cache, not the
   process's own), disk, recall@10 against exact search (computed by streaming over
   the same chunks) on ``--queries`` new vectors, and one-query latency median/p95
   per nprobe.
2. ``--features real.npz`` (from benchmarks/real_features.py): a trained checkpoint's
   gallery and probe features reduced by PCA to each of ``--dims`` (trained on at
   most 100k gallery features, as ``mclnet index --dim``): recall@10 of exact search
   in the reduced space against exact full-dimension search, and how often the
   probe's person is in the top 10, for full and reduced features.

Usage::

    .venv/bin/python benchmarks/bench_archive.py --size 1000000 --dim 256 --chunk 100000 --json /tmp/bench_archive_1e6.json
    .venv/bin/python benchmarks/bench_archive.py --features /tmp/real.npz --dims 256 128 64 32 --json /tmp/bench_dim.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class AnonPeak:
    """Peak anonymous resident memory (RssAnon), sampled in a thread: the memory the process itself holds."""

    def __init__(self, every_s: float = 0.05) -> None:
        self.peak_kb, self._every, self._stop = 0, every_s, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, _status_kb("RssAnon"))
            self._stop.wait(self._every)

    def __enter__(self) -> "AnonPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, _status_kb("RssAnon"))


class Archive:
    """Clustered Gaussian unit vectors, chunk ``i`` drawn from seed ``(seed, i)``: any chunk can be made again."""

    def __init__(self, size: int, dim: int, chunk: int, clusters: int, noise: float, seed: int = 0) -> None:
        self.size, self.dim, self.chunk, self.noise, self.seed = size, dim, chunk, noise, seed
        self.centres = np.random.default_rng([seed, 10**9]).normal(size=(clusters, dim)).astype(np.float32)

    def draw(self, count: int, stream: list[int]) -> np.ndarray:
        rng = np.random.default_rng(stream)
        x = self.centres[rng.integers(0, len(self.centres), count)]
        x = x + self.noise * rng.normal(size=(count, self.dim)).astype(np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def chunks(self):
        for i, start in enumerate(range(0, self.size, self.chunk)):
            yield i, start, self.draw(min(self.chunk, self.size - start), [self.seed, i])


def _latency(index, queries: np.ndarray, k: int = 10) -> tuple[float, float]:
    times = []
    for q in queries:
        started = time.perf_counter()
        index.search(q[None, :], k)
        times.append(1000 * (time.perf_counter() - started))
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def _build(archive: Archive, work: Path, queries: np.ndarray) -> tuple[dict, object, object]:
    """Train, add chunk by chunk (streaming the exact top-k), merge: timings, the exact top-k, the lists path."""
    from mclnet_cli.index import ondisk
    from mclnet_cli.index.chunked import ChunkedBuilder, ExactTopK, plan_chunked, sample_size

    timings: dict = {}
    started = time.perf_counter()
    sample = archive.draw(sample_size(archive.size, archive.chunk), [archive.seed, 10**9 + 1])  # a fresh draw: a random sample
    plan = plan_chunked("ivf", archive.size, archive.dim, sample.shape[0])
    builder = ChunkedBuilder.train(work, sample, plan)
    del sample
    timings["train_s"] = time.perf_counter() - started
    truth, names, shard_bytes = ExactTopK(queries), [], 0
    started = time.perf_counter()
    for i, first, vectors in archive.chunks():
        truth.update(vectors, first)
        names.append(f"shard-{i:06d}")
        shard_bytes += builder.add_chunk(names[-1], builder.prepare(vectors)).stat().st_size
        print(f"\r  added {first + len(vectors):,} / {archive.size:,}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    timings["add_s"] = time.perf_counter() - started
    started = time.perf_counter()
    lists = work / ondisk.new_lists_name()
    merged = builder.merge(names, lists)
    ondisk.write_index_file(merged, work / "index.faiss")
    del merged
    timings["merge_s"] = time.perf_counter() - started
    for name in names:
        (work / f"{name}.faiss").unlink()
    timings.update(plan=plan.factory, nlist=plan.params["nlist"], sample=plan.sample, shard_bytes=shard_bytes,
                   lists_bytes=lists.stat().st_size)  # fmt: skip
    return timings, truth, lists


def run_archive(args: argparse.Namespace) -> dict:
    """Part 1: the chunked build and memory-mapped search (see the module doc)."""
    import faiss

    from mclnet_cli.index.chunked import recall_at_10

    archive = Archive(args.size, args.dim, args.chunk, args.clusters, args.noise)
    queries = archive.draw(args.queries, [archive.seed, 10**9 + 2])  # new vectors, not in the gallery
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        with AnonPeak() as build_peak:
            timings, truth, lists = _build(archive, work, queries)
        timings["build_s"] = time.perf_counter() - started
        build_hwm = _status_kb("VmHWM")
        with AnonPeak() as search_peak:
            index = faiss.read_index(str(work / "index.faiss"), faiss.IO_FLAG_READ_ONLY)  # lists memory-mapped
            ivf = faiss.extract_index_ivf(index)
            rows = []
            for nprobe in [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256) if p <= ivf.nlist]:
                ivf.nprobe = nprobe
                recall = recall_at_10(index.search(queries, 11)[1], truth)
                median, p95 = _latency(index, queries)
                rows.append({"nprobe": nprobe, "recall_at_10": round(recall, 4), "median_ms": round(median, 3),
                             "p95_ms": round(p95, 3)})  # fmt: skip
                print(f"  nprobe {nprobe}: recall@10 {recall:.3f}, {median:.2f} / {p95:.2f} ms", file=sys.stderr)
        del index
    return {
        "size": args.size, "dim": args.dim, "chunk": args.chunk, "clusters": args.clusters, "noise": args.noise,
        "queries": args.queries, **{k: round(v, 2) if isinstance(v, float) else v for k, v in timings.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "build_vmhwm_mb": round(build_hwm / 1024, 1), "build_peak_anon_mb": round(build_peak.peak_kb / 1024, 1),
        "search_peak_anon_mb": round(search_peak.peak_kb / 1024, 1), "search": rows,
    }  # fmt: skip


def _exact(gallery: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    import faiss

    return faiss.knn(np.ascontiguousarray(queries), np.ascontiguousarray(gallery), k, metric=faiss.METRIC_INNER_PRODUCT)[1]


def run_dims(args: argparse.Namespace) -> dict:
    """Part 2: recall@10 and person-in-top-10 of PCA-reduced exact search against full-dimension exact search."""
    from mclnet_cli.index.reduction import sample_rows, train_reduction

    data = np.load(args.features, allow_pickle=False)
    gallery, queries = data["gallery"].astype(np.float32), data["queries"].astype(np.float32)
    gallery_pids, query_pids = data["gallery_pids"], data["query_pids"]
    full = _exact(gallery, queries)

    def person(top: np.ndarray) -> float:
        return float(np.mean([q in set(gallery_pids[row].tolist()) for q, row in zip(query_pids, top)]))

    rows = [{"dim": gallery.shape[1], "whiten": False, "recall_at_10": 1.0, "person_in_top10": round(person(full), 4),
             "variance_kept": 1.0}]  # fmt: skip
    for dim in args.dims:
        for whiten in (False, True):
            reduction = train_reduction(gallery[sample_rows(gallery.shape[0])], dim, whiten=whiten)
            top = _exact(reduction.apply(gallery), reduction.apply(queries))
            recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, full)]))
            rows.append({"dim": dim, "whiten": whiten, "recall_at_10": round(recall, 4),
                         "person_in_top10": round(person(top), 4), "variance_kept": round(reduction.variance_kept, 4)})  # fmt: skip
            print(f"  dim {dim} whiten {whiten}: recall@10 {recall:.3f}, person in top 10 {person(top):.3f}", file=sys.stderr)
    return {"features": str(args.features), "gallery": int(gallery.shape[0]), "queries": int(queries.shape[0]), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, help="synthetic archive vectors (part 1)")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=100_000)
    parser.add_argument("--clusters", type=int, default=10_000)
    parser.add_argument("--noise", type=float, default=1.0, help="per-coordinate noise around a centre (centres: unit normal)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--workdir", type=Path, default=None, help="where shards and lists are written (default: /tmp)")
    parser.add_argument("--features", type=Path, help="an .npz of benchmarks/real_features.py (part 2)")
    parser.add_argument("--dims", type=int, nargs="+", default=[256, 128, 64])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.size is None and args.features is None:
        parser.error("give --size (chunked on-disk build) and/or --features (recall cost of --dim)")
    out: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
                 "cpus": __import__("os").cpu_count()}  # fmt: skip
    if args.size is not None:
        out["archive"] = run_archive(args)
    if args.features is not None:
        out["dims"] = run_dims(args)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
