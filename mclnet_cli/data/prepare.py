"""Prepare a dataset: read its published layout, check every image, write manifest + meta.

The CLI is a thin layer over :func:`prepare_dataset`; progress is reported
through a ``progress(description, total)`` context-manager factory (the CLI
passes its rich progress bar), so this module never prints.
"""

from __future__ import annotations

import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from PIL import Image

from mclnet_cli.data.cache import build_cache, remove_cache
from mclnet_cli.data.images import check_pixels
from mclnet_cli.types import Modality, Sample
from mclnet_cli.data.records import count_samples, write_prepared
from mclnet_cli.data.sources import SOURCES
from mclnet_cli.errors import DataError
from mclnet_cli.progress import ProgressFactory, no_progress

TRAINING_SPLITS = ("train", "val")
SHOW_BAD = 3


def default_workers() -> int:
    """Threads for image checks: decoding releases the GIL and reading waits on I/O, so a few more than the cores."""
    return min(16, (os.cpu_count() or 1) * 4)


def check_image(path: str) -> str | None:
    """None when ``path`` decodes fully as an image, else the reason.

    The whole image is decoded (``load``), as training will: PIL's ``verify``
    only reads the header and passes a truncated JPEG.
    """
    try:
        with Image.open(path) as image:
            check_pixels(image, path)
            image.load()
    except DataError as exc:
        return str(exc)
    except FileNotFoundError:
        return "file not found"
    except Exception as exc:  # PIL raises many types for corrupt files
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None


def check_images(
    paths: Sequence[str], *, workers: int | None = None, on_progress: Callable[[int], None] | None = None
) -> list[tuple[str, str]]:
    """(path, reason) for each image that does not open, in input order; checks run in a thread pool."""
    bad: list[tuple[str, str]] = []
    chunk = 64
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        for start in range(0, len(paths), chunk):
            part = paths[start : start + chunk]
            for path, reason in zip(part, pool.map(check_image, part)):
                if reason is not None:
                    bad.append((path, reason))
            if on_progress is not None:
                on_progress(len(part))
    return bad


def single_modality_ids(samples: Sequence[Sample]) -> list[int]:
    """Training ids (train/val splits) with images in only one modality."""
    seen: dict[int, set[Modality]] = defaultdict(set)
    for s in samples:
        if s.split in TRAINING_SPLITS:
            seen[s.pid].add(s.modality)
    return sorted(pid for pid, modalities in seen.items() if len(modalities) < 2)


@dataclass
class PrepareReport:
    """What ``prepare`` found and wrote."""

    dataset: str
    root: str
    out: str
    counts: dict[str, dict[str, dict[str, int]]]
    skipped: list[str] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)
    single_modality_ids: list[int] = field(default_factory=list)
    options: dict[str, int] = field(default_factory=dict)  # the reader's own options (RegDB: trial)
    cache: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "dataset": self.dataset,
            "root": self.root,
            "out": self.out,
            "counts": self.counts,
            "skipped": self.skipped,
            "bad": [{"path": p, "reason": r} for p, r in self.bad],
            "single_modality_ids": self.single_modality_ids,
            "cache": self.cache,
        }
        return {**payload, **self.options}


def describe_bad(bad: Sequence[tuple[str, str]]) -> str:
    shown = "; ".join(f"{p} ({r})" for p, r in bad[:SHOW_BAD])
    more = f"; and {len(bad) - SHOW_BAD} more" if len(bad) > SHOW_BAD else ""
    return f"{len(bad)} image(s) do not decode: {shown}{more} (fix them, or pass --skip-bad to drop them)"


def source_options(dataset: str, given: Mapping[str, int] | None = None) -> dict[str, int]:
    """The options the reader of ``dataset`` takes, ``given`` over their defaults; an option it does not take is an error."""
    source = SOURCES.get(dataset)
    if source is None:
        raise DataError(f"unknown dataset {dataset!r}; choose from: {', '.join(SOURCES)}")
    own = {option.name: option.default for option in source.options}
    extra = sorted(set(given or {}) - set(own))
    if extra:
        takes = f"only --{', --'.join(own)}" if own else "no option"
        raise DataError(f"--{extra[0]} does not apply to {dataset} (prepare {dataset} takes {takes} of its own)")
    return {**own, **(given or {})}


def read_source(dataset: str, root: Path | str, options: Mapping[str, int] | None = None) -> list[Sample]:
    """Samples of a raw dataset tree via its reader in the dataset table."""
    chosen = source_options(dataset, options)
    if not Path(root).exists():
        raise DataError(f"dataset root not found: {root}")
    return SOURCES[dataset].read(root, **chosen)


def write_with_cache(
    out_dir: Path,
    kept: Sequence[Sample],
    meta: dict[str, Any],
    *,
    cache_size: tuple[int, int] | None,
    workers: int | None,
    progress: ProgressFactory,
) -> dict[str, Any] | None:
    """Write the prepared dataset (``meta`` gains the cache record); returns the cache info or None.

    Any cache of an earlier prepare in ``out_dir`` is removed first; ``cache_size``
    (height, width) builds the uint8 cache of the training images.
    """
    cache_info = None
    remove_cache(out_dir)  # a cache of an earlier prepare never outlives it
    if cache_size is not None:
        train = [s for s in kept if s.split in TRAINING_SPLITS]
        height, width = cache_size
        with progress(f"caching {height}x{width}", len(train)) as advance:
            cache_info = build_cache(out_dir, train, height, width, workers=workers or default_workers(), on_progress=advance)
        meta["cache"] = {"height": height, "width": width, "images": len(train), "token": cache_info["token"]}
    write_prepared(out_dir, kept, meta)
    return cache_info


def prepare_dataset(
    dataset: str,
    root: Path | str,
    out: Path | str,
    *,
    options: Mapping[str, int] | None = None,
    skip_bad: bool = False,
    cache_size: tuple[int, int] | None = None,
    workers: int | None = None,
    progress: ProgressFactory = no_progress,
    label: str | None = None,
) -> PrepareReport:
    """Read ``root`` in the layout of ``dataset``, verify images, write the prepared dataset to ``out``.

    ``label`` overrides the dataset name written to meta.json (the synthetic set
    is read with the SYSU reader but recorded as "synthetic"). ``options`` are the
    reader's own (RegDB: ``{"trial": N}``), recorded in meta.json. ``cache_size``
    (height, width) also writes the uint8 training-image cache; any cache of an
    earlier prepare in ``out`` is removed either way.
    """
    if Path(out).exists() and not Path(out).is_dir():  # before decoding every image, not after
        raise DataError(f"--out {out} exists and is not a folder; choose a folder for the prepared dataset")
    chosen = source_options(dataset, options)
    samples = read_source(dataset, root, chosen)
    paths = [s.path for s in samples]
    with progress("checking images", len(paths)) as advance:
        bad = check_images(paths, workers=workers, on_progress=advance)
    if bad and not skip_bad:
        raise DataError(describe_bad(bad))
    bad_paths = {p for p, _ in bad}
    kept = [s for s in samples if s.path not in bad_paths]
    if not kept:
        raise DataError(f"{root}: no usable images left after dropping {len(bad)} bad one(s)")
    name = label or dataset
    out_dir = Path(out).resolve()
    meta: dict[str, Any] = {"dataset": name, "root": str(Path(root).resolve()), "reader": dataset, **chosen}
    if bad:
        meta["skipped"] = sorted(bad_paths)
    cache_info = write_with_cache(out_dir, kept, meta, cache_size=cache_size, workers=workers, progress=progress)
    return PrepareReport(
        dataset=name,
        root=meta["root"],
        out=str(out_dir),
        counts=count_samples(kept),
        skipped=sorted(bad_paths),
        bad=list(bad),
        single_modality_ids=single_modality_ids(kept),
        options=chosen,
        cache=cache_info,
    )


def prepare_synthetic(
    directory: Path | str,
    out: Path | str,
    *,
    ids: int,
    seed: int = 0,
    images_per_camera: int = 4,
    cache_size: tuple[int, int] | None = None,
    workers: int | None = None,
    progress: ProgressFactory = no_progress,
) -> tuple[PrepareReport, dict[str, Any]]:
    """Draw the synthetic dataset into ``directory`` (SYSU-MM01 layout) and prepare it into ``out``.

    Returns the prepare report (recorded as dataset "synthetic") and the generator's summary.
    """
    from mclnet_cli.data.synthetic import generate_synthetic

    with progress("drawing identities", ids) as advance:
        summary = generate_synthetic(directory, ids=ids, seed=seed, images_per_camera=images_per_camera, on_progress=advance)
    report = prepare_dataset(
        "sysu", directory, out, cache_size=cache_size, workers=workers, progress=progress, label="synthetic"
    )
    return report, summary
