"""The public Python API: load a model, embed images, build and search a gallery index, evaluate.

Five functions, the same ones the ``mclnet`` commands call::

    from mclnet_cli import api

    model = api.load("run/last.pt")
    vectors = api.embed(model, ["probe.jpg"], "infrared")      # [N, D] float32, unit rows
    api.build_index("run/last.pt", "gallery/", "visible", "gallery-index")
    report = api.search("gallery-index", ["probe.jpg"], "infrared", top_k=5)
    scores = api.evaluate("run/last.pt", "prepared/sysu")

Images are file paths or PIL images; ``modality`` is ``"visible"`` or
``"infrared"`` (aliases: rgb, vis, v; thermal, nir, ir, t). Every function raises
:class:`mclnet_cli.errors.MclnetError` subclasses with a one-line message on bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, Union

import numpy as np
from PIL import Image

from mclnet_cli.types import Modality
from mclnet_cli.engine.checkpoint import LoadedModel

if TYPE_CHECKING:
    from mclnet_cli.engine.evaluate import EvaluationReport
    from mclnet_cli.engine.indexing import BuildReport
    from mclnet_cli.engine.search import SearchReport

ImageLike = Union[str, Path, Image.Image]

__all__ = ["load", "embed", "build_index", "search", "evaluate", "LoadedModel", "Modality"]


def load(checkpoint: Path | str, device: str = "auto") -> LoadedModel:
    """Rebuild the model a checkpoint was trained as (eval mode) on ``device`` (auto, cpu, cuda).

    The result carries ``.model``, ``.config`` (image size, resize filter, ...) and
    ``.fingerprint``; pass it to :func:`embed`.
    """
    from mclnet_cli.engine.checkpoint import load_model
    from mclnet_cli.engine.device import resolve_device

    return load_model(checkpoint, resolve_device(device))


def embed(
    model: LoadedModel,
    images: Sequence[ImageLike],
    modality: Modality | str,
    *,
    feature: str = "bn",
    batch_size: int = 64,
    flip: bool = False,
) -> np.ndarray:
    """L2-normalised features [len(images), D] (float32) through the ``modality`` stream.

    Preprocessing is the checkpoint's own record, ``model.preprocess`` (size, resize
    filter, mean/std from its config), through the loop ``mclnet index`` and ``query``
    run. ``feature`` is ``"bn"`` (BNNeck output, the method's retrieval feature) or
    ``"pool"``; ``flip`` averages each image with its mirror.
    """
    from mclnet_cli.engine.extract import NonFiniteFeatures, extract_features
    from mclnet_cli.errors import ConfigError
    from mclnet_cli.types import FEATURES

    if feature not in FEATURES:
        raise ConfigError(f"feature: unknown {feature!r}; choose from: {', '.join(FEATURES)}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    try:
        return extract_features(model, list(images), modality, feature=feature, batch_size=batch_size, flip=flip).features
    except NonFiniteFeatures as exc:
        raise exc.at(model.path, "embedding images") from exc


def build_index(
    checkpoint: Path | str, gallery_dir: Path | str, modality: Modality | str, out_dir: Path | str, **options: Any
) -> BuildReport:
    """Embed every image under ``gallery_dir`` and write a FAISS index to ``out_dir``; returns a ``BuildReport``.

    ``options`` are those of ``mclnet index``: ``kind``, ``add``, ``force``, ``batch_size``,
    ``workers``, ``device``, ``nlist``, ``nprobe``, ``hnsw_m``, ``pq_m``, ``dim`` and
    ``whiten`` (PCA reduction, applied again by :func:`search`), ``chunk`` (an on-disk
    IVF index built ``chunk`` images at a time). An index
    already in ``out_dir`` is extended with ``add=True``, replaced with ``force=True``
    (``report.replaced`` rows), and otherwise refused with ``IndexStoreError``.
    """
    from mclnet_cli.engine.indexing import build_gallery_index

    return build_gallery_index(checkpoint, gallery_dir, modality, out_dir, **options)


def search(
    index_dir: Path | str, probes: Sequence[Path | str], modality: Modality | str, top_k: int = 10, **options: Any
) -> SearchReport:
    """Rank the gallery of ``index_dir`` for each probe file (or folder); returns a ``SearchReport``.

    ``report.results[i].hits`` are ranked ``Hit``s (rank, score = cosine, path, pid,
    cam); ``report.to_json()`` is what ``mclnet query --json`` prints.
    """
    from mclnet_cli.engine.search import search_gallery

    return search_gallery(index_dir, probes, modality, top_k, **options)


def evaluate(checkpoint: Path | str, data: Path | str, **options: Any) -> EvaluationReport:
    """Score a checkpoint on a prepared dataset's test split under its protocol; returns an ``EvaluationReport``.

    ``options`` are those of ``mclnet evaluate`` (``protocol``, ``mode``, ``shots``,
    ``trials``, ``direction``, ``flip``, ``rerank``, ...); unset ones come from the
    checkpoint's ``eval`` config. ``report.to_json()`` is ``mclnet evaluate --json``.
    """
    from mclnet_cli.engine.evaluate import evaluate_checkpoint

    return evaluate_checkpoint(checkpoint, data, **options)
