"""Index a folder of gallery images: the build job behind ``mclnet index`` and :func:`mclnet_cli.api.build_index`.

:func:`build_gallery_index` walks a folder, embeds every image with the stream of
its modality, builds (or ``add`` s to) a :class:`~mclnet_cli.index.store.GalleryIndex`
and saves it atomically under the folder's writer lock; under ``torchrun`` every rank
embeds a share and rank 0 writes. Adding to an index that exists goes through
:func:`mclnet_cli.engine.updates.add_to_index`, the transaction the server's uploads
use too (removing: ``remove_from_index``). This module also owns what the search job
(:mod:`mclnet_cli.engine.search`) shares with it: :data:`FEATURE`, the progress and
batch-size helpers and :func:`list_gallery`.

Nothing here prints: progress goes through an optional ``progress(description, total)``
factory that returns a context manager yielding ``advance(n)`` (default:
:func:`mclnet_cli.progress.no_progress`); notices come back in the report.
Index parameters not given come from the checkpoint's config ``index`` section.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager

from mclnet_cli.data.images import IMAGE_SUFFIXES, is_image_file
from mclnet_cli.engine.health import model_warnings
from mclnet_cli.errors import DataError, IndexStoreError
from mclnet_cli.types import Modality
from mclnet_cli.index.store import (
    BUILD_KINDS, GalleryIndex, check_target, is_index_dir, read_meta, records_for, writer_lock,
)  # fmt: skip
from mclnet_cli.engine.updates import add_to_index, check_fingerprint, check_modality, layout_notices
from mclnet_cli.progress import ProgressFactory, no_progress

if TYPE_CHECKING:
    from mclnet_cli.config import IndexConfig

FEATURE = "bn"  # BNNeck output: the method's retrieval feature


def _progress(progress: ProgressFactory | None, description: str, total: int) -> ContextManager[Callable[[int], None]]:
    return (progress or no_progress)(description, total)


def _check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")


def resolve_index_settings(config: "IndexConfig", **given: Any) -> "IndexConfig":
    """``config`` (a checkpoint's ``index`` section) with each argument given (not ``None``) in its place.

    Keywords: ``kind``, ``batch_size``, ``nlist``, ``nprobe``, ``hnsw_m``, ``pq_m``, ``recall``, ``memory_gb``.
    """
    return dataclasses.replace(config, **{key: value for key, value in given.items() if value is not None})


@dataclass
class BuildReport:
    """What :func:`build_gallery_index` did."""

    index_dir: Path
    modality: str
    kind: str
    factory: str
    dimension: int
    count: int  # rows in the index now
    added: int  # rows embedded and added by this call
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): not an image, or unreadable
    notices: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # the model looks collapsed (engine/health.py)
    checkpoint: str = ""
    fingerprint: str = ""
    seconds: float = 0.0
    images_per_s: float = 0.0
    appended: bool = False  # True when --add extended an existing index
    replaced: int | str | None = None  # force=True: rows of the index this call replaced ("?" if unknown)
    auto: dict[str, Any] | None = None  # --kind auto: target, achieved recall@10, memory

    def to_json(self) -> dict[str, Any]:
        return {
            "index": str(self.index_dir),
            "modality": self.modality,
            "kind": self.kind,
            "factory": self.factory,
            "dimension": self.dimension,
            "count": self.count,
            "added": self.added,
            "appended": self.appended,
            "replaced": self.replaced,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "notices": list(self.notices),
            "warnings": list(self.warnings),
            "checkpoint": self.checkpoint,
            "fingerprint": self.fingerprint,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 2),
            "auto": self.auto,
        }


# --------------------------------------------------------------------------- files


def list_gallery(folder: Path | str, exclude: Path | str | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """Image files under ``folder`` (recursive, resolved, sorted) and the other files, with a reason.

    ``exclude`` is a folder to leave out (the index being written, when it lies inside the gallery).
    """
    root = Path(folder)
    skip = Path(exclude).resolve() if exclude is not None else None
    if not root.is_dir():
        raise DataError(f"gallery folder not found: {root}")
    images: list[str] = []
    others: list[tuple[str, str]] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue  # hidden files and folders (.DS_Store, staging folders of an index)
        resolved_path = path.resolve()
        if skip is not None and resolved_path.is_relative_to(skip):
            continue
        resolved = str(resolved_path)
        if is_image_file(path):
            images.append(resolved)
        else:
            others.append((resolved, f"not an image file (expected {', '.join(IMAGE_SUFFIXES)})"))
    return sorted(images), others


# --------------------------------------------------------------------------- build


def build_gallery_index(
    checkpoint: Path | str,
    gallery_dir: Path | str,
    modality: Modality | str,
    out_dir: Path | str,
    *,
    kind: str | None = None,
    add: bool = False,
    force: bool = False,
    batch_size: int | None = None,
    workers: int = 0,
    device: str = "auto",
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int | None = None,
    pq_m: int | None = None,
    recall: float | None = None,
    memory_gb: float | None = None,
    progress: ProgressFactory | None = None,
    on_wait: Callable[[str], None] | None = None,
    dim: int | None = None,
    whiten: bool = False,
    chunk: int | None = None,
) -> BuildReport:
    """Embed every image under ``gallery_dir`` with the ``modality`` stream and save an index in ``out_dir``.

    Unreadable and non-image files are skipped and listed in the report. With ``add``, images already in
    the index at ``out_dir`` (same resolved path) are not embedded again and the rest are appended (IVF
    cells are not retrained); without an index there yet, ``add`` builds one. An index already at
    ``out_dir`` is never replaced silently: without ``add`` it needs ``force`` (the report's ``replaced``
    says how many rows went), else :class:`IndexStoreError`.

    Concurrent writers never lose rows: images are embedded without a lock, then the index is re-read and
    updated under the folder's writer lock (another writer's save in progress is waited for;
    ``on_wait(message)`` is called once).

    ``kind``, ``batch_size``, ``nlist``, ``nprobe``, ``hnsw_m``, ``pq_m``, ``recall`` and ``memory_gb``
    left ``None`` come from the checkpoint's config ``index`` section (``flat``, 64 and automatic IVF/PQ
    parameters unless the training preset says otherwise). ``kind="auto"`` picks the structure within
    ``memory_gb`` and tunes it to recall@10 >= ``recall`` (achieved value in meta.json).

    Launched by ``torchrun`` (one process per GPU, or gloo on CPU, one or many nodes), each rank embeds a
    contiguous share of the images; rank 0 gathers them in order and writes the index, so the result
    equals a single-process run.

    ``dim``: reduce features with a PCA to ``dim`` dimensions (``whiten``: whitened), trained once on a
    sample and stored with the index (see :mod:`mclnet_cli.index.reduction`). ``chunk``: embed and add
    ``chunk`` images at a time into an on-disk IVF index, resumably, with no rank gathering features
    (see :mod:`mclnet_cli.engine.sharded`).
    """
    from mclnet_cli.engine import distributed

    modality = Modality.parse(modality)
    _check_build_options(kind, add, force, batch_size, dim, whiten)
    info = distributed.env_dist_info()
    options: dict[str, Any] = dict(
        kind=kind, add=add, force=force, batch_size=batch_size, workers=workers, device=device, nlist=nlist, nprobe=nprobe,
        hnsw_m=hnsw_m, pq_m=pq_m, recall=recall, memory_gb=memory_gb, on_wait=on_wait, info=info, dim=dim, whiten=whiten,
    )
    runner = _runner(chunk)
    return _rank_zero_report(
        info, out_dir, lambda shown: runner(checkpoint, gallery_dir, modality, out_dir, progress=shown, **options), progress
    )


def _check_build_options(
    kind: str | None, add: bool, force: bool, batch_size: int | None, dim: int | None, whiten: bool
) -> None:
    """Refuse options of :func:`build_gallery_index` that cannot go together, before anything is read."""
    _check_batch_size(batch_size)
    if kind is not None and kind not in BUILD_KINDS:
        raise IndexStoreError(f"unknown index kind {kind!r}; choose from: {', '.join(BUILD_KINDS)}")
    if add and force:
        raise IndexStoreError("--add appends to the index, --force replaces it: give one of them")
    if whiten and dim is None:
        raise IndexStoreError("--whiten whitens the --dim reduction: give --dim too")


def _runner(chunk: int | None) -> Callable[..., Any]:
    """What builds on this rank: :func:`_build`, or the resumable chunked build of ``chunk`` images at a time."""
    if chunk is None:
        return _build
    from mclnet_cli.engine.sharded import build_chunked

    return functools.partial(build_chunked, chunk=chunk)


def _rank_zero_report(
    info: Any, out_dir: Path | str, run: Callable[[ProgressFactory | None], Any], progress: ProgressFactory | None
) -> BuildReport:
    """``run(progress)`` in this process; launched by torchrun, on every rank, each returning rank 0's report.

    Every rank embeds one shard and rank 0 writes (only it shows ``progress``).
    """
    from mclnet_cli.engine import distributed

    if not info.enabled:
        return run(progress)
    in_step = False  # every rank has passed the same collectives
    try:
        report = None
        try:
            report = run(progress if info.is_main else None)
        finally:
            shared = [report]
            distributed.broadcast_object(shared)
            in_step = True
        if shared[0] is None:
            raise IndexStoreError(f"rank 0 failed to write the index in {out_dir} (see its message)")
        return shared[0]
    finally:
        distributed.cleanup_distributed(synchronize=in_step)


def _existing_count(out_dir: Path) -> int | str:
    """Rows of the index at ``out_dir`` as its meta.json records them ("?" when unreadable)."""
    try:
        return int(read_meta(out_dir)["count"])
    except (IndexStoreError, OSError, ValueError, KeyError, TypeError):
        return "?"


def _rows(count: int | str) -> str:
    return f" of {count} image(s)" if isinstance(count, int) else " (its meta.json does not say how many images)"


def _refuse_replacing(out_dir: Path, add: bool, force: bool) -> int | str | None:
    """Rows of the index at ``out_dir`` that this build (without ``add``) replaces; refused without ``force``."""
    if add or not is_index_dir(out_dir):
        return None
    count = _existing_count(out_dir)
    if not force:
        raise IndexStoreError(f"{out_dir} already holds an index{_rows(count)}: --add appends to it, --force replaces it")
    return count


def _build(
    checkpoint: Path | str,
    gallery_dir: Path | str,
    modality: Modality,
    out_dir: Path | str,
    *,
    kind: str | None,
    add: bool,
    force: bool,
    batch_size: int | None,
    workers: int,
    device: str,
    nlist: int | None,
    nprobe: int | None,
    hnsw_m: int | None,
    pq_m: int | None,
    recall: float | None,
    memory_gb: float | None,
    progress: ProgressFactory | None,
    on_wait: Callable[[str], None] | None,
    info: Any,
    dim: int | None = None,
    whiten: bool = False,
) -> BuildReport:
    """:func:`build_gallery_index` on this rank: embed its shard, gather on rank 0, which writes."""
    out_dir = check_target(Path(out_dir))  # also puts back an index an older version left hidden
    gallery_root = Path(gallery_dir)
    images, skipped, notices, existing = _gallery_images(out_dir, gallery_root, modality, add, force)
    checkpoint_path = str(Path(checkpoint).resolve())
    loaded, torch_device = _load_for_index(checkpoint, checkpoint_path, device, existing, out_dir)
    settings = resolve_index_settings(
        loaded.config.index, kind=kind, batch_size=batch_size, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, pq_m=pq_m,
        recall=recall, memory_gb=memory_gb,
    )
    known = existing.paths() if existing is not None else set()
    todo = [p for p in images if p not in known]
    started = time.perf_counter()
    extracted = _embed_shard(loaded, todo, modality, settings.batch_size, workers, torch_device, info, progress)
    if extracted is None:
        return None  # type: ignore[return-value]  # not rank 0: rank 0's report is broadcast by the caller
    seconds = time.perf_counter() - started
    skipped = skipped + [(p, r) for p, r in extracted.failed]
    records = records_for(extracted.paths, modality.value)
    warnings = model_warnings(checkpoint_path, extracted.features, loaded.degenerate_neck_channels)
    if existing is None and not records:
        first = f" (e.g. {extracted.failed[0][1]})" if extracted.failed else ""
        raise DataError(f"none of the {len(todo)} image files under {gallery_root} could be decoded{first}")
    extra = _index_meta(loaded, checkpoint_path, modality, gallery_root)
    written = _commit(
        out_dir, extracted.features, records, modality, settings, extra, kind, add, force, on_wait, reduce_dim=dim, whiten=whiten
    )
    return _build_report(out_dir, modality, written, skipped, notices, warnings, extra["checkpoint"], len(todo), seconds)


def _gallery_images(
    out_dir: Path, gallery_root: Path, modality: Modality, add: bool, force: bool
) -> tuple[list[str], list[tuple[str, str]], list[str], GalleryIndex | None]:
    """What a build has to do: (the gallery's images, the files skipped, notices, the index ``add`` extends).

    An index already at ``out_dir`` is refused here (without ``add`` or ``force``), before any embedding;
    again under the writer lock when the build saves.
    """
    _refuse_replacing(out_dir, add, force)
    images, skipped = list_gallery(gallery_root, exclude=out_dir)
    notices: list[str] = []
    existing = _existing_index(out_dir, modality, notices) if add else None
    if not images and existing is None:
        raise DataError(f"no image files under {gallery_root} ({', '.join(IMAGE_SUFFIXES)})")
    return images, skipped, notices, existing


def _load_for_index(
    checkpoint: Path | str, checkpoint_path: str, device: str, existing: GalleryIndex | None, out_dir: Path
) -> tuple[Any, Any]:
    """(the model, its device) on this rank, joining torchrun's process group; checked against an index ``add`` extends."""
    from mclnet_cli.engine import distributed
    from mclnet_cli.engine.checkpoint import load_model
    from mclnet_cli.engine.device import resolve_device

    _, torch_device = distributed.init_distributed(resolve_device(device))
    loaded = load_model(checkpoint, torch_device)
    if existing is not None:
        check_fingerprint(existing, out_dir, checkpoint_path, loaded.fingerprint)
    return loaded, torch_device


def _build_report(
    out_dir: Path, modality: Modality, written: "_Written", skipped: list[tuple[str, str]], notices: list[str],
    warnings: list[str], checkpoint: dict[str, str], embedded: int, seconds: float,
) -> BuildReport:
    """The report of a build that saved ``written`` after embedding ``embedded`` images in ``seconds``."""
    gallery = written.gallery
    return BuildReport(
        index_dir=out_dir, modality=modality.value, kind=gallery.kind, factory=gallery.factory,
        dimension=gallery.dimension, count=len(gallery), added=written.added, skipped=skipped,
        notices=notices + written.notices, warnings=warnings, checkpoint=checkpoint["path"],
        fingerprint=checkpoint["fingerprint"], seconds=seconds,
        images_per_s=(embedded / seconds) if seconds > 0 else 0.0, appended=written.appended,
        auto=gallery.extra.get("auto") if not written.appended else None, replaced=written.replaced,
    )


def _index_meta(loaded: Any, checkpoint_path: str, modality: Modality, gallery_root: Path) -> dict[str, Any]:
    """What a new index records in meta.json besides its structure: spectrum, checkpoint, preprocessing, source."""
    preprocess = loaded.preprocess  # what embedded the gallery: probes get the same (SearchEngine.preprocess)
    return {
        "modality": modality.value,
        "checkpoint": {"path": checkpoint_path, "fingerprint": loaded.fingerprint},
        "feature": preprocess.feature,
        "image_size": [preprocess.height, preprocess.width],
        "resize": preprocess.resize,
        "gallery_dir": str(gallery_root.resolve()),
    }


def _existing_index(out_dir: Path, modality: Modality, notices: list[str]) -> GalleryIndex | None:
    """``--add``: the index already at ``out_dir`` (checked to hold ``modality``), or None with a notice."""
    if not is_index_dir(out_dir):
        notices.append(f"no index in {out_dir} yet: building a new one")
        return None
    existing = GalleryIndex.load(out_dir)
    check_modality(existing, out_dir, modality)
    return existing


def _embed_shard(
    loaded: Any,
    todo: list[str],
    modality: Modality,
    batch_size: int,
    workers: int,
    device: Any,
    info: Any,
    progress: ProgressFactory | None,
) -> Any:
    """This rank's share of ``todo`` embedded; under torchrun, rank 0 gets every rank's rows (others get None)."""
    from mclnet_cli.engine import distributed
    from mclnet_cli.engine.extract import NonFiniteFeatures, extract_features

    start, stop = distributed.shard_bounds(len(todo), info)
    with _progress(progress, "embedding gallery", stop - start) as advance:
        try:
            extracted = extract_features(
                loaded, todo[start:stop], modality, preprocess=loaded.preprocess,
                batch_size=batch_size, device=device, workers=workers, skip_bad=True, on_progress=advance,
            )
        except NonFiniteFeatures as exc:
            raise exc.at(loaded.path, "index, embedding the gallery") from exc
    if not info.enabled:
        return extracted
    extracted = _gather_extracted(extracted, distributed)  # rank order is list order: the rows of one process
    return extracted if info.is_main else None


@dataclass
class _Written:
    """What the locked part of a build saved."""

    gallery: GalleryIndex
    added: int
    notices: list[str]
    appended: bool  # added to an index already there
    replaced: int | str | None = None  # --force: rows of the index replaced


def _commit(
    out_dir: Path,
    features: Any,
    records: list[Any],
    modality: Modality,
    settings: "IndexConfig",
    extra: dict[str, Any],
    kind: str | None,
    add: bool,
    force: bool,
    on_wait: Callable[[str], None] | None,
    *,
    reduce_dim: int | None = None,
    whiten: bool = False,
) -> _Written:
    """Under the writer lock: add to the index at ``out_dir`` (``add``, and one is there by now) or save a new one.

    ``reduce_dim``/``whiten``: a new index reduces its features (an existing one keeps its own reduction).
    """
    checkpoint = extra["checkpoint"]
    with writer_lock(out_dir, on_wait=on_wait):
        if add and is_index_dir(out_dir):  # read again under the lock: another writer may have saved since we looked
            outcome = add_to_index(
                out_dir, features, records, modality, checkpoint=checkpoint["path"],
                fingerprint=checkpoint["fingerprint"], kind=kind, locked=True,
            )  # fmt: skip
            return _Written(outcome.gallery, outcome.added, outcome.notices, appended=True)
        replaced = _refuse_replacing(out_dir, add, force)  # another writer may have saved one since
        gallery = GalleryIndex.build(
            features, records, settings.kind, nlist=settings.nlist, nprobe=settings.nprobe, hnsw_m=settings.hnsw_m,
            pq_m=settings.pq_m, extra=extra, recall=settings.recall,
            memory_bytes=int(settings.memory_gb * 2**30) if settings.memory_gb else None, reduce_dim=reduce_dim, whiten=whiten,
        )
        gallery.save(out_dir, locked=True)
    notices = layout_notices([r.path for r in records], modality)
    if replaced is not None:
        notices.append(f"replaced the previous index{_rows(replaced)} in {out_dir} (--force)")
    return _Written(gallery, len(records), notices + list(gallery.notices), appended=False, replaced=replaced)


def _gather_extracted(extracted: Any, distributed: Any) -> Any:
    """Every rank's features, paths and failures on rank 0, concatenated in rank order."""
    import numpy as np

    from mclnet_cli.engine.extract import Extracted

    parts = distributed.gather_objects((extracted.features, extracted.paths, extracted.failed))
    if parts is None:
        return extracted
    features = np.concatenate([p[0] for p in parts]).astype(np.float32)
    paths = [path for p in parts for path in p[1]]
    failed = [item for p in parts for item in p[2]]
    return Extracted(features, paths, failed, {FEATURE: features})
