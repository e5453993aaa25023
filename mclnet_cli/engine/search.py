"""Search a gallery index with probe images: the search job behind ``mclnet query``, ``mclnet serve`` and the API.

:class:`SearchEngine` holds a model and a gallery index loaded once, ready to embed
probes with their own modality's stream and rank the gallery (the server keeps one and
swaps in a fresh index when the folder changes); :func:`search_gallery` opens one per
call, refusing a checkpoint that is not the one that built the index. Nothing here
prints: progress goes through the optional ``progress`` factory of
:mod:`mclnet_cli.engine.indexing`, notices come back in the :class:`SearchReport`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from mclnet_cli.data.images import IMAGE_SUFFIXES, is_image_file
from mclnet_cli.engine.health import model_warnings
from mclnet_cli.errors import DataError, IndexStoreError
from mclnet_cli.types import Modality
from mclnet_cli.index.store import GalleryIndex, Hit, read_meta
from mclnet_cli.data.sources.layout import identify
from mclnet_cli.engine.indexing import FEATURE, _check_batch_size, _progress, list_gallery
from mclnet_cli.engine.updates import check_fingerprint
from mclnet_cli.progress import ProgressFactory

if TYPE_CHECKING:
    from mclnet_cli.data.preprocess import Preprocess

MAX_TOP_K = 10_000  # results per probe; FAISS allocates probes x k scores up front


@dataclass
class ProbeResult:
    """The ranked gallery for one probe (``error`` set when the probe could not be decoded)."""

    probe: str
    pid: int | None
    cam: int | None
    hits: list[Hit]
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"probe": self.probe, "results": [h.to_json() for h in self.hits]}
        if self.error is not None:
            row["error"] = self.error
        return row


@dataclass
class SearchReport:
    """What :func:`search_gallery` found, plus what the caller should be told."""

    results: list[ProbeResult]
    index_dir: Path
    gallery_modality: str
    probe_modality: str
    checkpoint: str
    notices: list[str] = field(default_factory=list)
    feature: str = FEATURE
    mapped: bool = False  # the index was searched memory-mapped

    def to_json(self) -> list[dict[str, Any]]:
        """One ``{probe, results}`` per probe, each also naming the index, feature, checkpoint and spectra searched."""
        context = {
            "index": str(self.index_dir), "feature": self.feature, "checkpoint": str(self.checkpoint),
            "probe_modality": self.probe_modality, "gallery_modality": self.gallery_modality, "mapped": self.mapped,
        }
        return [{**r.to_json(), **context} for r in self.results]


def expand_probes(probes: Sequence[Path | str]) -> list[str]:
    """Probe files as given plus the images inside probe folders (recursive, sorted), resolved."""
    if not probes:
        raise DataError("no probe given: pass one or more images or folders of images")
    out: list[str] = []
    for probe in probes:
        path = Path(probe)
        if path.is_dir():
            images, _ = list_gallery(path)
            if not images:
                raise DataError(f"probe folder {path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(images)
        elif path.is_file():
            if not is_image_file(path):
                raise DataError(f"probe {path} is not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
            out.append(str(path.resolve()))
        else:
            raise DataError(f"probe not found: {path}")
    return list(dict.fromkeys(out))


@dataclass
class SearchEngine:
    """A model and a gallery index loaded once, ready to embed images and rank the gallery.

    :func:`search_gallery` opens one per call; a long-running server keeps one and
    swaps in a fresh :attr:`gallery` when the index folder changes (see
    :meth:`reload_gallery`). Nothing here prints.
    """

    index_dir: Path
    gallery: GalleryIndex
    loaded: Any  # mclnet_cli.engine.checkpoint.LoadedModel
    checkpoint_path: str
    device: Any  # torch.device
    batch_size: int
    mmap: bool | None = None  # how :meth:`reload_gallery` opens the index (see GalleryIndex.load)

    @classmethod
    def open(
        cls,
        index_dir: Path | str,
        *,
        checkpoint: Path | str | None = None,
        batch_size: int | None = None,
        device: str = "auto",
        mmap: bool | None = None,
    ) -> "SearchEngine":
        """Load the index of ``index_dir`` and the checkpoint that built it (or ``checkpoint``, same fingerprint).

        ``mmap``: map the index file instead of reading it (``None``: only large
        files, :data:`~mclnet_cli.index.store.MMAP_AUTO_BYTES` and up).
        """
        from mclnet_cli.engine.checkpoint import load_model
        from mclnet_cli.engine.device import resolve_device

        _check_batch_size(batch_size)
        index_dir = Path(index_dir)
        read_meta(index_dir)  # fail fast on a wrong folder
        gallery = GalleryIndex.load(index_dir, mmap=mmap)
        recorded = dict(gallery.extra.get("checkpoint") or {})
        if checkpoint is None:
            if not recorded.get("path"):
                raise IndexStoreError(f"{index_dir} records no checkpoint; pass --checkpoint")
            checkpoint = recorded["path"]
            if not Path(checkpoint).is_file():
                raise IndexStoreError(
                    f"checkpoint {checkpoint} recorded in {index_dir}/meta.json is missing; pass --checkpoint "
                    "with the same file at its new place"
                )
        checkpoint_path = str(Path(checkpoint).resolve())
        if not Path(checkpoint_path).is_file():
            raise IndexStoreError(f"checkpoint not found: {checkpoint}")
        torch_device = resolve_device(device)
        loaded = load_model(checkpoint_path, torch_device)  # hashes the file once: loaded.fingerprint
        engine = cls(
            index_dir,
            gallery,
            loaded,
            checkpoint_path,
            torch_device,
            batch_size if batch_size is not None else loaded.config.index.batch_size,
            mmap,
        )
        engine.check_gallery(gallery)
        return engine

    @property
    def fingerprint(self) -> str:
        return str(self.loaded.fingerprint)

    def check_gallery(self, gallery: GalleryIndex) -> None:
        """Refuse a gallery built by another checkpoint or holding features of another dimension."""
        check_fingerprint(gallery, self.index_dir, self.checkpoint_path, self.fingerprint)
        feature_dim = int(getattr(self.loaded.model, "feature_dim", 0))
        if feature_dim != gallery.feature_dimension:
            raise IndexStoreError(
                f"checkpoint {self.checkpoint_path} makes {feature_dim}-d features but {self.index_dir} "
                f"holds {gallery.feature_dimension}-d ones"
            )

    def reload_gallery(self) -> GalleryIndex:
        """Read the index folder again, check it against the model, and make it :attr:`gallery`."""
        gallery = GalleryIndex.load(self.index_dir, mmap=self.mmap)
        self.check_gallery(gallery)
        self.gallery = gallery
        return gallery

    def preprocess(self, gallery: GalleryIndex | None = None) -> "Preprocess":
        """How probes are fed to match ``gallery`` (default: :attr:`gallery`): the checkpoint's record with
        what the index recorded (size, resize filter, feature) in its place."""
        gallery = gallery if gallery is not None else self.gallery
        return self.loaded.preprocess.recorded_in(gallery.extra)

    def embed(
        self,
        paths: Sequence[str],
        modality: Modality | str,
        *,
        gallery: GalleryIndex | None = None,
        on_progress: Callable[[int], None] | None = None,
        workers: int = 0,
        stage: str = "query, embedding the probes",
    ):
        """Embed image files with the ``modality`` stream exactly as the gallery was embedded (size, resize, feature).

        Returns :class:`mclnet_cli.engine.extract.Extracted`; files that do not decode are in its ``failed``.
        Non-finite features raise :class:`~mclnet_cli.engine.extract.NonFiniteFeatures` naming the checkpoint and ``stage``.
        """
        from mclnet_cli.engine.extract import NonFiniteFeatures, extract_features

        gallery = gallery if gallery is not None else self.gallery
        try:
            return extract_features(
                self.loaded,
                list(paths),
                Modality.parse(modality),
                preprocess=self.preprocess(gallery),
                batch_size=self.batch_size,
                device=self.device,
                workers=workers,
                skip_bad=True,
                on_progress=on_progress,
            )
        except NonFiniteFeatures as exc:
            raise exc.at(self.checkpoint_path, stage) from exc

    def health_warnings(self, sample: int = 16) -> list[str]:
        """Warnings about the model, measured on one batch of up to ``sample`` gallery images (evenly spaced)."""
        records = self.gallery.records
        step = max(1, len(records) // sample)
        chosen = [r for r in records[::step][:sample] if Path(r.path).is_file()]
        modality = str(self.gallery.extra.get("modality") or Modality.VISIBLE.value)
        stage = "checking the model on gallery images"
        features = self.embed([r.path for r in chosen], modality, stage=stage).features if len(chosen) >= 2 else None
        return model_warnings(self.checkpoint_path, features, self.loaded.degenerate_neck_channels)

    def notices_for(self, modality: Modality | str, gallery: GalleryIndex | None = None) -> list[str]:
        """What a caller should be told about searching ``gallery`` with probes of ``modality``."""
        gallery = gallery if gallery is not None else self.gallery
        modality = Modality.parse(modality)
        notices = []
        if str(gallery.extra.get("modality", "")) == modality.value:
            notices.append(
                f"probes and gallery are both {modality.value}: same-spectrum search "
                "(MCLNet is trained for cross-spectrum matching)"
            )
        auto = gallery.extra.get("auto")
        if isinstance(auto, dict) and gallery.kind != "flat":
            notices.append(
                f"approximate {gallery.kind} index ({gallery.factory}, chosen by --kind auto): recall@10 "
                f"{auto.get('recall_at_10')} against exact search (target {auto.get('target_recall')})"
            )
        return notices

    def rank(
        self,
        probe_paths: Sequence[str],
        modality: Modality | str,
        top_k: int = 10,
        *,
        gallery: GalleryIndex | None = None,
        on_progress: Callable[[int], None] | None = None,
        workers: int = 0,
    ) -> tuple[list[ProbeResult], float, float]:
        """Rank ``gallery`` (default: :attr:`gallery`) for each probe file: (results, embed seconds, search seconds).

        A probe that does not decode gets an empty result with ``error`` set; when none decodes,
        :class:`DataError` is raised.
        """
        if top_k < 1:
            raise DataError(f"--top-k must be at least 1, got {top_k}")
        gallery = gallery if gallery is not None else self.gallery
        probe_paths = list(probe_paths)
        started = time.perf_counter()
        extracted = self.embed(probe_paths, modality, gallery=gallery, on_progress=on_progress, workers=workers)
        embedded = time.perf_counter()
        if not extracted.paths:
            raise DataError(
                f"none of the {len(probe_paths)} probe image(s) could be decoded (e.g. {extracted.failed[0][1]})"
            )
        ranked = dict(zip(extracted.paths, gallery.search(extracted.features, top_k)))
        searched = time.perf_counter()
        failed = dict(extracted.failed)
        results = []
        for path in probe_paths:
            found = identify(path)
            pid, cam = (found.pid, found.cam) if found else (None, None)
            results.append(ProbeResult(path, pid, cam, ranked.get(path, []), failed.get(path)))
        return results, embedded - started, searched - embedded


def search_gallery(
    index_dir: Path | str,
    probes: Sequence[Path | str],
    modality: Modality | str,
    top_k: int = 10,
    *,
    checkpoint: Path | str | None = None,
    batch_size: int | None = None,
    workers: int = 0,
    device: str = "auto",
    progress: ProgressFactory | None = None,
    mmap: bool | None = None,
) -> SearchReport:
    """Embed ``probes`` (files or folders) with the ``modality`` stream and rank the gallery of ``index_dir``.

    The checkpoint defaults to the one recorded in the index; another path is
    accepted only when its fingerprint matches, and its feature dimension must
    equal the index's. ``batch_size`` ``None`` takes the checkpoint's ``index.batch_size``.
    ``mmap`` maps the index file instead of reading it (``None``: files of 1 GiB and up).
    """
    modality = Modality.parse(modality)
    if not 1 <= top_k <= MAX_TOP_K:
        raise DataError(f"--top-k must be between 1 and {MAX_TOP_K}, got {top_k}")
    _check_batch_size(batch_size)
    read_meta(index_dir)  # fail fast on a wrong folder before touching probes
    probe_paths = expand_probes(probes)
    engine = SearchEngine.open(index_dir, checkpoint=checkpoint, batch_size=batch_size, device=device, mmap=mmap)
    notices = engine.notices_for(modality)
    with _progress(progress, "embedding probes", len(probe_paths)) as advance:
        results, _, _ = engine.rank(probe_paths, modality, top_k, on_progress=advance, workers=workers)
    gallery_modality = str(engine.gallery.extra.get("modality", ""))
    feature = engine.preprocess().feature
    return SearchReport(
        results, Path(index_dir), gallery_modality, modality.value, engine.checkpoint_path, notices, feature=feature,
        mapped=engine.gallery.mapped,
    )
