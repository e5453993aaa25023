"""The prepared-dataset format (a JSONL manifest + meta.json).

A prepared dataset is a folder with ``manifest.jsonl`` (one sample a line) and
``meta.json`` (dataset, root, counts, mclnet version). Only ``prepare`` reads raw
dataset layouts; everything downstream reads a prepared dataset.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

from mclnet_cli.atomic import atomic_write_text
from mclnet_cli.errors import DataError, MclnetError
from mclnet_cli.types import Modality, Sample  # re-exported: older imports keep working

T = TypeVar("T")
MANIFEST = "manifest.jsonl"
META = "meta.json"
SPLITS = ("train", "val", "test")


@dataclass
class PreparedDataset:
    """A prepared dataset as loaded from disk."""

    root: Path
    samples: list[Sample]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.meta.get("dataset", "unknown"))

    def select(self, split: str, modality: Modality | None = None) -> list[Sample]:
        return [s for s in self.samples if s.split == split and (modality is None or s.modality is modality)]


def count_samples(samples: Iterable[Sample]) -> dict[str, dict[str, dict[str, int]]]:
    """``{split: {modality: {"ids": n, "images": n}}}`` for the splits present."""
    ids: dict[tuple[str, str], set[int]] = defaultdict(set)
    images: dict[tuple[str, str], int] = defaultdict(int)
    for s in samples:
        key = (s.split, s.modality.value)
        ids[key].add(s.pid)
        images[key] += 1
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for split in sorted({k[0] for k in images}, key=lambda x: (SPLITS.index(x) if x in SPLITS else 99, x)):
        counts[split] = {
            m.value: {"ids": len(ids[(split, m.value)]), "images": images[(split, m.value)]} for m in Modality
        }
    return counts


def write_prepared(out_dir: Path, samples: Sequence[Sample], meta: dict[str, Any]) -> Path:
    """Write ``manifest.jsonl`` and ``meta.json`` (counts added) atomically; returns ``out_dir``."""
    from mclnet_cli import __version__

    out_dir = Path(out_dir)
    manifest = "".join(json.dumps(s.to_json()) + "\n" for s in samples)
    atomic_write_text(out_dir / MANIFEST, manifest)
    # meta.json is the commit record: it names the manifest it belongs to (rows and SHA-256), so a
    # crash between the two writes leaves a pair that load_prepared refuses instead of mixing.
    full_meta = {
        "mclnet_version": __version__,
        **meta,
        "counts": count_samples(samples),
        "manifest": {"rows": len(samples), "sha256": hashlib.sha256(manifest.encode("utf-8")).hexdigest()},
    }
    atomic_write_text(out_dir / META, json.dumps(full_meta, indent=2) + "\n")
    return out_dir


def load_prepared(path: Path | str) -> PreparedDataset:
    """Load a prepared dataset folder written by ``mclnet prepare``."""
    root = Path(path)
    manifest, meta_path = root / MANIFEST, root / META
    if not root.is_dir():
        raise DataError(f"prepared dataset not found: {root} (run 'mclnet prepare' first)")
    if not manifest.is_file() or not meta_path.is_file():
        inside = root / "prepared"  # where 'mclnet prepare synthetic DIR' (and the demo) write it by default
        if (inside / MANIFEST).is_file() and (inside / META).is_file():
            raise DataError(f"{root} is not a prepared dataset (no {MANIFEST} and {META}); did you mean {inside}?")
        raise DataError(f"{root} is not a prepared dataset: expected {MANIFEST} and {META} (run 'mclnet prepare')")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{meta_path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected a JSON object (run 'mclnet prepare' again)")
    raw = manifest.read_bytes()
    recorded = meta.get("manifest")
    if isinstance(recorded, dict) and recorded.get("sha256") != hashlib.sha256(raw).hexdigest():
        raise DataError(
            f"{manifest} is not the manifest {meta_path} was written with (an interrupted or concurrent "
            f"prepare?); run 'mclnet prepare' again into {root}"
        )
    samples = []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{manifest}: not UTF-8 text ({exc.reason})") from exc
    samples = parse_jsonl(text.split("\n"), manifest, Sample.from_json, DataError, "manifest line")
    return PreparedDataset(root=root, samples=samples, meta=meta)


def parse_jsonl(
    lines: Iterable[str], where: Path | str, parse: Callable[[dict[str, Any]], T], error: type[MclnetError], what: str
) -> list[T]:
    """One object per non-blank line through ``parse``; a bad line raises ``error`` naming ``where:line``."""
    rows: list[T] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(parse(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise error(f"{where}:{lineno}: malformed {what} ({exc})") from exc
    return rows
