"""Compact features: a PCA reduction applied before indexing (``mclnet index --dim N [--whiten]``).

The reduction is trained once, on a sample of at most :data:`MAX_TRAIN` gallery
features, and stored in the index folder as ``reduction.npy``: a plain float32
NumPy array of shape ``[dim + 1, input_dim]`` (``numpy.load(path,
allow_pickle=False)`` reads it). Row 0 is the mean of the training sample, rows
``1..dim`` the projection (principal directions, largest variance first; with
whitening each row is divided by the square root of its variance). A unit
feature ``x`` becomes::

    y = (x - A[0]) @ A[1:].T
    y = y / ||y||          # cosine search on the reduced features

``meta.json`` describes it under ``"reduction"`` (method, file, input and
output dimension, whitening, sample size, share of variance kept). Searches,
``--add`` and uploads to a server apply the stored reduction; nothing retrains it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import faiss
import numpy as np

from mclnet_cli.atomic import atomic_write
from mclnet_cli.errors import IndexStoreError

REDUCTION_FILE = "reduction.npy"
MAX_TRAIN = 100_000  # features the PCA is trained on at most (a random sample beyond that)
_BLOCK_ROWS = 65_536  # rows reduced at a time (bounds the temporary memory)
_WHITEN_FLOOR = 1e-6  # whitening divides by sqrt(max(variance, floor x the largest variance))


class ReductionMismatch(IndexStoreError):
    """``reduction.npy`` is not the one ``meta.json`` describes (another save replaced it while it was read)."""


@dataclass(frozen=True)
class Reduction:
    """A trained PCA (mean and projection rows), applied as ``normalise((x - mean) @ projection.T)``."""

    mean: np.ndarray  # [input_dim] float32
    projection: np.ndarray  # [dim, input_dim] float32, whitening folded in
    whiten: bool = False
    trained_on: int = 0
    variance_kept: float = 1.0

    @property
    def input_dimension(self) -> int:
        return int(self.projection.shape[1])

    @property
    def dimension(self) -> int:
        return int(self.projection.shape[0])

    def apply(self, features: np.ndarray) -> np.ndarray:
        """Reduce unit features [N, input_dim] to unit features [N, dim] (float32, C-contiguous)."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.input_dimension:
            raise IndexStoreError(
                f"reduction: features have dimension {features.shape[-1]}, the index reduces "
                f"{self.input_dimension}-d features"
            )
        out = np.empty((features.shape[0], self.dimension), dtype=np.float32)
        for start in range(0, features.shape[0], _BLOCK_ROWS):
            block = features[start : start + _BLOCK_ROWS] - self.mean
            out[start : start + _BLOCK_ROWS] = block @ self.projection.T
        faiss.normalize_L2(out)
        return out

    def meta(self) -> dict[str, Any]:
        """The ``meta.json`` ``"reduction"`` block."""
        return {
            "method": "pca",
            "file": REDUCTION_FILE,
            "input_dimension": self.input_dimension,
            "dimension": self.dimension,
            "whiten": self.whiten,
            "trained_on": self.trained_on,
            "variance_kept": round(float(self.variance_kept), 6),
            "sha256": hashlib.sha256(self._array().tobytes()).hexdigest(),
        }

    def _array(self) -> np.ndarray:
        return np.vstack([self.mean[None, :], self.projection]).astype(np.float32)

    def save(self, folder: Path | str) -> Path:
        """Write ``reduction.npy`` into ``folder`` atomically."""
        array = self._array()

        def write(handle: BinaryIO) -> None:
            np.save(handle, array, allow_pickle=False)

        return atomic_write(Path(folder) / REDUCTION_FILE, write)

    @classmethod
    def load(cls, folder: Path | str, meta: dict[str, Any]) -> "Reduction":
        """Read ``reduction.npy`` of ``folder`` as ``meta`` (the ``"reduction"`` block) describes it."""
        path = Path(folder) / str(meta.get("file") or REDUCTION_FILE)
        if not isinstance(meta, dict) or meta.get("method") != "pca":
            raise IndexStoreError(f"{folder}/meta.json: reduction must be a PCA block, got {meta!r}")
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise IndexStoreError(f"{folder} is not a complete mclnet index: {path.name} is missing") from None
        except (OSError, ValueError) as exc:
            raise IndexStoreError(f"{path}: not a reduction array ({exc})") from exc
        want = (int(meta.get("dimension", -1)) + 1, int(meta.get("input_dimension", -1)))
        if array.dtype != np.float32 or array.shape != want or not np.isfinite(array).all():
            raise ReductionMismatch(f"{path}: expected finite float32 {list(want)}, got {array.dtype} {list(array.shape)}")
        if meta.get("sha256") and hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest() != meta["sha256"]:
            raise ReductionMismatch(
                f"{path} is not the reduction meta.json describes (changed outside mclnet?); rebuild the index"
            )
        return cls(
            np.ascontiguousarray(array[0]), np.ascontiguousarray(array[1:]), bool(meta.get("whiten", False)),
            int(meta.get("trained_on", 0)), float(meta.get("variance_kept", 1.0)),
        )


def check_dimension(dim: int, input_dim: int) -> None:
    """Refuse a ``--dim`` that does not reduce the features."""
    if not 1 <= dim < input_dim:
        raise IndexStoreError(f"--dim must be between 1 and {input_dim - 1} (the features are {input_dim}-d), got {dim}")


def sample_rows(count: int, limit: int = MAX_TRAIN, seed: int = 0) -> np.ndarray:
    """Sorted row numbers of a reproducible random sample of at most ``limit`` of ``count`` rows."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))


def train_reduction(sample: np.ndarray, dim: int, *, whiten: bool = False) -> Reduction:
    """PCA of ``sample`` [n, D] (unit features) keeping ``dim`` directions; needs ``n > dim``."""
    sample = np.asarray(sample, dtype=np.float32)
    count, input_dim = sample.shape
    check_dimension(dim, input_dim)
    if count <= dim:
        raise IndexStoreError(f"--dim {dim} needs more than {dim} gallery images to train the reduction, got {count}")
    mean = sample.mean(axis=0, dtype=np.float64)
    scatter = np.zeros((input_dim, input_dim), dtype=np.float64)
    for start in range(0, count, _BLOCK_ROWS):
        block = sample[start : start + _BLOCK_ROWS].astype(np.float64) - mean
        scatter += block.T @ block
    values, vectors = np.linalg.eigh(scatter / count)  # ascending
    order = np.argsort(values)[::-1][:dim]
    kept, directions = np.clip(values[order], 0.0, None), vectors[:, order].T
    largest = directions[np.arange(dim), np.abs(directions).argmax(axis=1)]
    directions *= np.where(largest < 0, -1.0, 1.0)[:, None]  # a fixed sign per direction: reproducible files
    if whiten:
        floor = max(float(kept[0]), 1e-30) * _WHITEN_FLOOR
        directions = directions / np.sqrt(np.maximum(kept, floor))[:, None]
    total = float(np.clip(values, 0.0, None).sum())
    return Reduction(
        mean.astype(np.float32), np.ascontiguousarray(directions, dtype=np.float32), whiten, count,
        float(kept.sum() / total) if total > 0 else 1.0,
    )
