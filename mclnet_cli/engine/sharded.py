"""``mclnet index --chunk N``: index an archive larger than memory, in chunks, on one or many ranks.

Memory is bounded by the chunk (plus the training sample), never by the gallery:

1. Rank 0 embeds a sample of the gallery (``max(N, 100k)`` images, evenly drawn),
   trains the ``--dim`` reduction and the IVF quantiser on it once, and writes them
   to the build's temp area ``<out>/.mclnet-build/``; the other ranks wait, then read
   them from there (the folder must be shared by every node).
2. Each rank embeds its contiguous share of the images ``N`` at a time; every chunk
   becomes a shard file (the chunk added to a copy of the trained index), its
   records, the exact top-k of the tuning queries, and last a ``shard-*.json``
   marker: a chunk with a marker is done and is skipped when the same command runs
   again after a kill. No rank gathers features.
3. Rank 0 merges the shards, in rank and chunk order (the order of one process),
   into ``<out>/lists-<id>.ivfdata`` under the writer lock, tunes ``nprobe`` to the
   recall target against the streamed exact top-k, saves the index and clears the
   temp area.

``progress.json`` in the temp area names what is being built (images, checkpoint,
chunk, world size, settings); a run with other settings starts over. A second
chunked build of the same folder is refused while one runs. ``--add`` with
``--chunk`` adds shards to an existing ivf/ivfpq index (its quantiser and
reduction, never retrained) and merges them with its lists.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mclnet_cli.atomic import atomic_write, atomic_write_text
from mclnet_cli.errors import DataError, IndexStoreError, MclnetError
from mclnet_cli.index import ondisk
from mclnet_cli.index.chunked import (
    TUNING_QUERIES, ChunkedBuilder, ChunkPlan, ExactTopK, plan_chunked, sample_size, tune_nprobe,
)  # fmt: skip
from mclnet_cli.index.store import GalleryIndex, IndexRecord, check_target, is_index_dir, records_for, writer_lock
from mclnet_cli.index.reduction import sample_rows
from mclnet_cli.locks import LOCK_FILE, folder_lock
from mclnet_cli.progress import ProgressFactory, no_progress
from mclnet_cli.types import Modality

WORK_FORMAT = "mclnet-chunked-build/1"
PROGRESS_FILE = "progress.json"
QUERIES_FILE = "queries.npy"
IVF_KINDS = ("ivf", "ivfpq")


@dataclass
class _Job:
    """Everything one rank knows about the chunked build."""

    out_dir: Path
    gallery_root: Path
    todo: list[str]
    skipped: list[tuple[str, str]]
    notices: list[str]
    modality: Modality
    chunk: int
    kind: str
    settings: Any  # IndexConfig
    loaded: Any  # LoadedModel
    device: Any
    info: Any  # DistInfo
    workers: int
    reduce_dim: int | None
    whiten: bool
    existing: GalleryIndex | None
    warnings: list[str] = field(default_factory=list)
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def work(self) -> Path:
        return self.out_dir / ondisk.BUILD_DIR

    @property
    def checkpoint_path(self) -> str:
        return str(Path(self.loaded.path).resolve())

    def chunks(self, rank: int) -> list[tuple[str, int, int]]:
        """(shard name, start, stop) of rank ``rank``'s chunks, in order."""
        from mclnet_cli.engine.distributed import DistInfo, shard_bounds

        start, stop = shard_bounds(len(self.todo), DistInfo(rank, rank, self.info.world_size))
        firsts = range(start, stop, self.chunk)
        return [(f"shard-r{rank:04d}-c{i:06d}", first, min(first + self.chunk, stop)) for i, first in enumerate(firsts)]

    def all_chunks(self) -> list[tuple[str, int, int]]:
        return [c for rank in range(self.info.world_size) for c in self.chunks(rank)]


def build_chunked(
    checkpoint: Path | str, gallery_dir: Path | str, modality: Modality, out_dir: Path | str, *, chunk: int,
    kind: str | None, add: bool, force: bool, batch_size: int | None, workers: int, device: str, nlist: int | None,
    nprobe: int | None, hnsw_m: int | None, pq_m: int | None, recall: float | None, memory_gb: float | None,
    progress: ProgressFactory | None, on_wait: Callable[[str], None] | None, info: Any, dim: int | None = None,
    whiten: bool = False,
) -> Any:
    """:func:`mclnet_cli.engine.indexing.build_gallery_index` with ``chunk``: rank 0 gets the report, other ranks None."""
    if chunk < 1:
        raise DataError(f"--chunk must be at least 1, got {chunk}")
    started = time.perf_counter()
    job = _setup(checkpoint, gallery_dir, modality, out_dir, chunk, kind, add, force, batch_size, workers, device,
                 nlist, nprobe, pq_m, recall, info, dim, whiten)  # fmt: skip
    if not job.todo:  # --add and every image is indexed already (the same answer on every rank)
        return _unchanged(job, started) if info.is_main else None
    with job.stack:  # rank 0 holds the temp area's lock in here
        _on_main(job, lambda: _prepare(job, progress))
        _on_every_rank(job, lambda: _embed_chunks(job, progress if info.is_main else None))
        if not info.is_main:
            return None
        report = _finish(job, started, add, force, on_wait)
    shutil.rmtree(job.work, ignore_errors=True)  # emptied by _finish; only its lock file was left
    return report


def _setup(
    checkpoint: Path | str, gallery_dir: Path | str, modality: Modality, out_dir: Path | str, chunk: int,
    kind: str | None, add: bool, force: bool, batch_size: int | None, workers: int, device: str, nlist: int | None,
    nprobe: int | None, pq_m: int | None, recall: float | None, info: Any, dim: int | None, whiten: bool,
) -> _Job:
    """List the images, load the model and an existing index (``add``), settle the kind; no collective here."""
    from mclnet_cli.engine import distributed
    from mclnet_cli.engine.checkpoint import load_model
    from mclnet_cli.engine.device import resolve_device
    from mclnet_cli.engine.indexing import _refuse_replacing, list_gallery, resolve_index_settings
    from mclnet_cli.engine.updates import check_fingerprint, check_modality

    out_dir = check_target(Path(out_dir))
    _refuse_replacing(out_dir, add, force)
    gallery_root = Path(gallery_dir)
    images, skipped = list_gallery(gallery_root, exclude=out_dir)
    notices: list[str] = []
    existing = GalleryIndex.load(out_dir) if add and is_index_dir(out_dir) else None
    if add and existing is None:
        notices.append(f"no index in {out_dir} yet: building a new one")
    if existing is not None:
        check_modality(existing, out_dir, modality)
    if not images and existing is None:
        raise DataError(f"no image files under {gallery_root}")
    _, torch_device = distributed.init_distributed(resolve_device(device))
    loaded = load_model(checkpoint, torch_device)
    if existing is not None:
        check_fingerprint(existing, out_dir, str(Path(checkpoint).resolve()), loaded.fingerprint)
    settings = resolve_index_settings(loaded.config.index, kind=kind, batch_size=batch_size, nlist=nlist, nprobe=nprobe,
                                      pq_m=pq_m, recall=recall)  # fmt: skip
    chosen = _chunk_kind(kind, settings.kind, existing, out_dir, notices)
    if existing is not None and dim is not None:
        notices.append("--dim ignored: adding to an index keeps its own reduction")
    known = existing.paths() if existing is not None else set()
    todo = [p for p in images if p not in known]
    return _Job(out_dir, gallery_root, todo, skipped, notices, modality, chunk, chosen, settings, loaded, torch_device,
                info, workers, dim, whiten, existing)  # fmt: skip


def _chunk_kind(given: str | None, configured: str, existing: GalleryIndex | None, out_dir: Path, notices: list[str]) -> str:
    """The IVF kind a chunked build makes: the existing index's, the one asked for, else ivf (tuned nprobe)."""
    if existing is not None:
        if existing.kind not in IVF_KINDS:
            raise IndexStoreError(f"{out_dir} holds a {existing.kind} index; --chunk adds only to ivf/ivfpq indices "
                                  "(add without --chunk, or rebuild with --kind ivf --force)")  # fmt: skip
        return existing.kind
    if given in ("flat", "hnsw"):
        raise IndexStoreError(f"--chunk builds an on-disk ivf or ivfpq index; --kind {given} cannot be built in chunks")
    if given in IVF_KINDS:
        return given
    if given is None and configured in IVF_KINDS:
        return configured
    notices.append("--chunk: building an on-disk ivf index, nprobe tuned to the --recall target")
    return "ivf"


def _on_main(job: _Job, step: Callable[[], None]) -> None:
    """Run ``step`` on rank 0 while the others wait; every rank raises when it failed."""
    from mclnet_cli.engine import distributed

    error: BaseException | None = None
    if job.info.is_main:
        try:
            step()
        except Exception as exc:  # every rank must reach the broadcast below, whatever went wrong
            error = exc
    box = [None if error is None else str(error)]
    distributed.broadcast_object(box)
    if error is not None:
        raise error
    if box[0] is not None:
        raise IndexStoreError(f"rank 0 failed: {box[0]}")


def _on_every_rank(job: _Job, step: Callable[[], None]) -> None:
    """Run ``step`` on every rank; rank 0 raises when any rank failed (the others return)."""
    from mclnet_cli.engine import distributed

    error: BaseException | None = None
    try:
        step()
    except Exception as exc:  # every rank must reach the gather below
        error = exc
    messages = distributed.gather_objects(None if error is None else f"rank {job.info.rank}: {error}")
    if error is not None and job.info.is_main:
        raise error
    if messages is not None and job.info.is_main:
        failed = [m for m in messages if m]
        if failed:
            raise IndexStoreError(f"{failed[0]} (the finished chunks are kept: run the same command again)")


def _key(job: _Job) -> dict[str, Any]:
    """What the temp area is building: a different key starts over."""
    existing = job.existing
    return {
        "format": WORK_FORMAT, "gallery": str(job.gallery_root.resolve()), "count": len(job.todo),
        "images": hashlib.sha256("\n".join(job.todo).encode("utf-8")).hexdigest(),
        "fingerprint": job.loaded.fingerprint, "modality": job.modality.value, "chunk": job.chunk,
        "world_size": job.info.world_size, "kind": job.kind, "nlist": job.settings.nlist, "pq_m": job.settings.pq_m,
        "dim": job.reduce_dim, "whiten": job.whiten,
        "existing": None if existing is None else {"count": len(existing), "created": existing.created},
    }  # fmt: skip


def _clear(work: Path) -> None:
    """Empty the temp area, keeping its lock file (held by this process)."""
    for entry in work.iterdir():
        if entry.name == LOCK_FILE:
            continue
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)


def _prepare(job: _Job, progress: ProgressFactory | None) -> None:
    """Rank 0: lock the temp area, resume it or start over, and train once (quantiser, reduction, tuning queries)."""
    job.stack.enter_context(folder_lock(job.work, what="chunked index build", wait=False))
    key = _key(job)
    try:
        previous = json.loads((job.work / PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    if previous == key:
        done = sum((job.work / f"{name}.json").is_file() for name, _, _ in job.all_chunks())
        job.notices.append(f"resuming the chunked build in {job.work}: {done} of {len(job.all_chunks())} chunk(s) done")
    else:
        if previous is not None:
            job.notices.append(f"starting over: the unfinished chunked build in {job.work} was for other images or settings")
        _clear(job.work)
        atomic_write_text(job.work / PROGRESS_FILE, json.dumps(key, indent=2) + "\n")
    if ChunkedBuilder.open(job.work) is None:
        _train(job, progress)


def _train(job: _Job, progress: ProgressFactory | None) -> None:
    """Rank 0: the trained empty index (and reduction) in the temp area; tuning queries for a new index."""
    from mclnet_cli.engine.health import model_warnings

    existing = job.existing
    if existing is not None:
        plan = ChunkPlan(existing.kind, existing.factory, dict(existing.params), existing.trained_on)
        ChunkedBuilder.from_index(job.work, existing.index, plan, existing.reduction)
        return
    rows = sample_rows(len(job.todo), sample_size(len(job.todo), job.chunk))
    with (progress or no_progress)("embedding the training sample", len(rows)) as advance:
        extracted = _embed(job, [job.todo[i] for i in rows], advance)
    if not extracted.paths:
        first = f" (e.g. {extracted.failed[0][1]})" if extracted.failed else ""
        raise DataError(f"none of the {len(rows)} sampled image files under {job.gallery_root} could be decoded{first}")
    features = extracted.features
    dim = job.reduce_dim or features.shape[1]
    plan = plan_chunked(job.kind, len(job.todo), dim, features.shape[0], nlist=job.settings.nlist,
                        nprobe=job.settings.nprobe, pq_m=job.settings.pq_m)  # fmt: skip
    builder = ChunkedBuilder.train(job.work, features, plan, reduce_dim=job.reduce_dim, whiten=job.whiten)
    queries = builder.prepare(features[sample_rows(features.shape[0], TUNING_QUERIES, seed=1)])
    atomic_write(job.work / QUERIES_FILE, lambda handle: np.save(handle, queries, allow_pickle=False))
    job.warnings = model_warnings(job.checkpoint_path, features, job.loaded.degenerate_neck_channels)


def _embed(job: _Job, paths: list[str], advance: Callable[[int], None]) -> Any:
    from mclnet_cli.engine.extract import NonFiniteFeatures, extract_features

    try:
        return extract_features(
            job.loaded, paths, job.modality, preprocess=job.loaded.preprocess, batch_size=job.settings.batch_size,
            device=job.device, workers=job.workers, skip_bad=True, on_progress=advance,
        )  # fmt: skip
    except NonFiniteFeatures as exc:
        raise exc.at(job.loaded.path, "index, embedding the gallery") from exc


def _embed_chunks(job: _Job, progress: ProgressFactory | None) -> None:
    """Every rank: embed each of its chunks not done yet into a shard, its records and its exact top-k."""
    builder = ChunkedBuilder.open(job.work)
    if builder is None:
        raise IndexStoreError(f"{job.work}/{ondisk.BUILD_DIR}: the trained index is not there; under torchrun on "
                              "several nodes --out must be a folder every node shares")  # fmt: skip
    queries_path = job.work / QUERIES_FILE
    queries = np.load(queries_path, allow_pickle=False) if queries_path.is_file() else None
    mine = job.chunks(job.info.rank)
    with (progress or no_progress)("embedding gallery", sum(stop - start for _, start, stop in mine)) as advance:
        for name, start, stop in mine:
            if (job.work / f"{name}.json").is_file():
                advance(stop - start)
                continue
            extracted = _embed(job, job.todo[start:stop], advance)
            vectors = builder.prepare(extracted.features) if extracted.paths else np.zeros((0, 1), dtype=np.float32)
            builder.add_chunk(name, vectors)
            lines = "".join(json.dumps(r.to_json()) + "\n" for r in records_for(extracted.paths, job.modality.value))
            atomic_write_text(job.work / f"{name}.jsonl", lines)
            if queries is not None:
                top = ExactTopK(queries)
                top.update(vectors, 0)
                top.save(job.work / f"{name}.top.npy")
            marker = {"rows": len(extracted.paths), "failed": [list(item) for item in extracted.failed]}
            atomic_write_text(job.work / f"{name}.json", json.dumps(marker) + "\n")  # last: the chunk is done


def _collect(job: _Job) -> tuple[list[str], list[IndexRecord], list[tuple[str, str]], ExactTopK | None]:
    """Rank 0: shard names, records and failures of every chunk in order, and the merged exact top-k."""
    names, records, failed = [], [], []
    queries_path = job.work / QUERIES_FILE
    truth = ExactTopK(np.load(queries_path, allow_pickle=False)) if queries_path.is_file() else None
    for name, _, _ in job.all_chunks():
        marker = json.loads((job.work / f"{name}.json").read_text(encoding="utf-8"))
        with (job.work / f"{name}.jsonl").open(encoding="utf-8") as handle:
            rows = [IndexRecord.from_json(json.loads(line)) for line in handle if line.strip()]
        if len(rows) != int(marker["rows"]):
            raise IndexStoreError(f"{job.work}/{name}.jsonl does not match its marker; remove {job.work} and run again")
        if truth is not None:
            truth.merge_file(job.work / f"{name}.top.npy", len(records))
        names.append(name)
        records.extend(rows)
        failed.extend((str(p), str(r)) for p, r in marker["failed"])
    return names, records, failed, truth


def _finish(job: _Job, started: float, add: bool, force: bool, on_wait: Any) -> Any:
    """Rank 0: merge every shard into a lists file in --out, tune nprobe, save under the writer lock, clear the temp area."""
    from mclnet_cli.engine.indexing import _refuse_replacing, _rows

    names, records, failed, truth = _collect(job)
    job.skipped.extend(failed)
    if not records and job.existing is None:
        raise DataError(f"none of the {len(job.todo)} image files under {job.gallery_root} could be decoded")
    builder = ChunkedBuilder.open(job.work)
    if builder is None:
        raise IndexStoreError(f"{job.work}: the trained index went missing; run the same command again")
    with writer_lock(job.out_dir, on_wait=on_wait):
        replaced = _refuse_replacing(job.out_dir, add, force)
        if replaced is not None:
            job.notices.append(f"replaced the previous index{_rows(replaced)} in {job.out_dir} (--force)")
        current = _current(job)
        before = [current.index] if current is not None else []
        merged = builder.merge(names, job.out_dir / ondisk.new_lists_name(), before)
        gallery = _gallery(job, merged, builder, current, records)
        if truth is not None and current is None:
            chosen, achieved = tune_nprobe(merged, truth, float(job.settings.recall), fixed=job.settings.nprobe)
            gallery.params["nprobe"] = chosen
            gallery.extra["chunked"]["tuned"] = {"target_recall": job.settings.recall, "recall_at_10": round(achieved, 4),
                                                 "nprobe": chosen, "tuned_on_queries": int(truth.queries.shape[0])}  # fmt: skip
        gallery.save(job.out_dir, locked=True)
    _clear(job.work)
    return _report(job, gallery, len(records), started, replaced)


def _current(job: _Job) -> GalleryIndex | None:
    """``--add``: the index as it is now (under the lock); refused when another writer changed it meanwhile."""
    if job.existing is None:
        return None
    current = GalleryIndex.load(job.out_dir)
    if len(current) != len(job.existing) or current.created != job.existing.created:
        raise IndexStoreError(f"{job.out_dir} changed while this chunked --add ran; run the same command again")
    return current


def _gallery(
    job: _Job, merged: Any, builder: ChunkedBuilder, current: GalleryIndex | None, records: list[IndexRecord]
) -> GalleryIndex:
    """The merged index with its records and metadata (an existing index's, extended)."""
    from mclnet_cli.engine.indexing import _index_meta

    chunked = {"chunk": job.chunk, "shards": len(job.all_chunks()), "world_size": job.info.world_size}
    ondisk_state = ondisk.OnDisk.of(merged)
    if current is not None:
        extra = {**current.extra, "chunked": {**dict(current.extra.get("chunked") or {}), **chunked}}
        return GalleryIndex(merged, current.records + records, current.kind, current.factory, dict(current.params), extra,
                            current.trained_on, current.created, reduction=current.reduction, ondisk=ondisk_state)  # fmt: skip
    extra = {**_index_meta(job.loaded, job.checkpoint_path, job.modality, job.gallery_root), "chunked": chunked}
    plan = builder.plan
    job.notices.extend(plan.notices)
    return GalleryIndex(merged, records, plan.kind, plan.factory, dict(plan.params), extra, builder.trained_on,
                        reduction=builder.reduction, ondisk=ondisk_state)  # fmt: skip


def _report(job: _Job, gallery: GalleryIndex, added: int, started: float, replaced: Any) -> Any:
    from mclnet_cli.engine.indexing import BuildReport

    seconds = time.perf_counter() - started
    return BuildReport(
        index_dir=job.out_dir, modality=job.modality.value, kind=gallery.kind, factory=gallery.factory,
        dimension=gallery.dimension, count=len(gallery), added=added, skipped=job.skipped, notices=job.notices,
        warnings=job.warnings, checkpoint=job.checkpoint_path, fingerprint=job.loaded.fingerprint, seconds=seconds,
        images_per_s=len(job.todo) / seconds if seconds > 0 else 0.0, appended=job.existing is not None,
        replaced=replaced,
    )  # fmt: skip


def _unchanged(job: _Job, started: float) -> Any:
    job.notices.append("nothing new to add: the index is unchanged")
    return _report(job, job.existing, 0, started, None)  # type: ignore[arg-type]  # todo is empty only with --add
