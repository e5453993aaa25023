"""Your own cameras: a folder layout or a CSV manifest, checked row by row and prepared like the public sets.

Two ways to describe a labelled visible/infrared set (docs/usage.md, "Your own cameras"):

- ``folder``: ``ROOT/<spectrum>/<pid>/<image>``. ``<spectrum>`` is one folder per
  spectrum, named by a word ``mclnet query --modality`` accepts (any case):
  visible, rgb, vis, v / infrared, thermal, nir, ir, t. ``<pid>`` folders of the
  same person have the same name in both. With ``cameras=True`` every image is
  named ``<camera>_<anything>.<ext>``: the camera is the file name's text before
  its first underscore. Without it every camera is unknown (camid -1).
- ``csv``: a manifest with a header row ``path,pid,modality[,camera][,split]``
  (any order, any case), paths relative to the manifest's folder.

Person ids and cameras are any text; both are numbered 1, 2, ... in natural
order (digits compare as numbers: ``2`` before ``10``) and the maps are kept in
the prepared folder (``pids.json``, ``cameras.json``). An empty camera is unknown
(-1). Without a split in the manifest (and always for ``folder``), identities are
drawn into train and test with a seeded generator; meta.json records how.

Every problem is collected with where it is (the manifest's line, or the image's
path), sorted in file order, then the first is raised with the count of the rest;
``skip_bad`` drops the rows (and images) instead and reports them. The core never
prints.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from mclnet_cli.atomic import atomic_write_text
from mclnet_cli.data.images import IMAGE_SUFFIXES, is_image_file
from mclnet_cli.data.prepare import PrepareReport, check_images, write_with_cache
from mclnet_cli.data.records import count_samples
from mclnet_cli.errors import DataError
from mclnet_cli.progress import ProgressFactory, no_progress
from mclnet_cli.types import Modality, Sample

FORMATS = ("folder", "csv")  # the dataset names written to meta.json ("dataset" and "reader")
REQUIRED_COLUMNS = ("path", "pid", "modality")
OPTIONAL_COLUMNS = ("camera", "split")
SPLITS = ("train", "val", "test")
DEFAULT_SEED = 0
DEFAULT_TEST_FRACTION = 0.5  # half the identities tested, as SYSU-MM01 and RegDB split theirs
UNKNOWN_CAMERA = -1
PIDS_FILE = "pids.json"
CAMERAS_FILE = "cameras.json"
DEFAULT_OUT = "prepared"  # ROOT/prepared (folder) or the manifest's folder/prepared (csv)
SKIPPED_TOP = ("__MACOSX",)  # archive debris beside the spectrum folders
SHOW_MORE = 3  # where-s of further problems named in the error line
HEADER = "path,pid,modality[,camera][,split]"
NESTED_FOLDER = (
    "a folder inside a person's folder (only the images directly in a person's folder are read; "
    "put the camera in the file name, <camera>_<name>.jpg, with --cameras)"
)


@dataclass(frozen=True)
class Row:
    """One image as the user described it, before pid and camera become numbers."""

    where: str  # "data/manifest.csv line 7", or the image's path (folder layout)
    order: int  # position in file order (the manifest's line, or the listing's index)
    path: str  # absolute
    pid: str
    modality: Modality
    camera: str | None  # None: unknown
    split: str | None  # None: to be drawn


@dataclass(frozen=True)
class Problem:
    """What is wrong at one place; ``paths`` are the images dropped with it under ``skip_bad``."""

    where: str
    reason: str
    order: int = 0
    paths: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {"where": self.where, "reason": self.reason, "paths": list(self.paths)}


@dataclass
class Listing:
    """What a reader found: the rows it could read and the problems of the others."""

    rows: list[Row]
    problems: list[Problem] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # folders beside the spectrum folders, not read
    splits_given: bool = False


@dataclass
class OwnReport(PrepareReport):
    """A :class:`PrepareReport` plus what only own data has: dropped rows, the split and the maps."""

    dropped: list[Problem] = field(default_factory=list)
    split: dict[str, Any] = field(default_factory=dict)
    ids: int = 0
    cameras: dict[str, int] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            **super().to_json(),
            "ids": self.ids,
            "cameras": self.cameras,
            "split": self.split,
            "dropped": [p.to_json() for p in self.dropped],
            "ignored": self.ignored,
            "pids_file": str(Path(self.out) / PIDS_FILE),
            "cameras_file": str(Path(self.out) / CAMERAS_FILE),
        }


# --------------------------------------------------------------------------- small rules


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key comparing runs of digits as numbers: ``p2`` before ``p10``, then the text itself."""
    parts = re.split(r"(\d+)", text)
    return (tuple((0, int(p), p) if p.isdigit() and p.isascii() else (1, 0, p) for p in parts if p), text)


def number(names: Iterable[str]) -> dict[str, int]:
    """Each distinct name -> 1, 2, ... in natural order."""
    return {name: i for i, name in enumerate(sorted(set(names), key=natural_key), start=1)}


def modality_words() -> str:
    return ", ".join(Modality.words())


def parse_modality(text: str) -> Modality | None:
    """The spectrum a word names, or None."""
    try:
        return Modality.parse(text)
    except DataError:
        return None


def camera_of(file_name: str) -> str | None:
    """``door_0001.jpg`` -> ``door``; None when the name has no ``<camera>_`` at its start."""
    head, sep, _ = Path(file_name).stem.partition("_")
    return head if sep and head else None


def default_out(fmt: str, source: Path | str) -> Path:
    """Where a prepared dataset goes without ``--out``: ROOT/prepared, or beside the manifest."""
    source = Path(source)
    return (source if fmt == "folder" else source.parent) / DEFAULT_OUT


# --------------------------------------------------------------------------- the folder layout


def read_folder(root: Path | str, *, cameras: bool = False) -> Listing:
    """Rows of ``ROOT/<spectrum>/<pid>/<image>`` in name order; see the module doc for the rules."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected {root}/visible/<pid>/<image> and {root}/infrared/<pid>/<image>)")
    spectra: dict[Modality, Path] = {}
    ignored: list[str] = []
    for name in sorted(os.listdir(root)):
        path = root / name
        if not path.is_dir() or name.startswith(".") or name in SKIPPED_TOP or name == DEFAULT_OUT:
            continue
        modality = parse_modality(name)
        if modality is None:
            ignored.append(str(path))
            continue
        if modality in spectra:
            raise DataError(f"{root}: both {spectra[modality].name}/ and {name}/ are {modality} folders; keep one")
        spectra[modality] = path
    for modality in Modality:
        if modality not in spectra:
            found = f"; found {', '.join(Path(p).name + '/' for p in ignored)}" if ignored else ""
            raise DataError(
                f"{root}: no {modality} folder (expected {root}/{modality.value}/<pid>/<image>; the spectrum "
                f"folders are named one of {modality_words()}){found}"
            )
    rows: list[Row] = []
    problems: list[Problem] = []

    def problem(path: Path, reason: str, *, drops: bool = True) -> None:
        problems.append(Problem(str(path), reason, len(rows) + len(problems), (os.path.abspath(path),) if drops else ()))

    for modality, folder in spectra.items():
        for pid in sorted(os.listdir(folder), key=natural_key):
            pid_dir = folder / pid
            if pid.startswith("."):
                continue
            if not pid_dir.is_dir():
                if is_image_file(pid):
                    problem(pid_dir, f"an image directly in the spectrum folder; put it in its person's folder ({folder}/<pid>/{pid})")
                continue
            for name in sorted(os.listdir(pid_dir), key=natural_key):
                path = pid_dir / name
                if name.startswith("."):  # hidden files and macOS "._" metadata
                    continue
                if path.is_dir():
                    problem(path, NESTED_FOLDER, drops=False)
                    continue
                if not is_image_file(name):
                    continue
                camera = camera_of(name) if cameras else None
                if cameras and camera is None:
                    problem(path, f"file name {name!r} does not start with <camera>_ (--cameras: every image is named "
                            "<camera>_<anything>.<ext>)")
                    continue
                rows.append(Row(str(path), len(rows) + len(problems), os.path.abspath(path), pid, modality, camera, None))
    return Listing(rows, problems, ignored)


# --------------------------------------------------------------------------- the CSV manifest


def _header(names: list[str], where: str) -> dict[str, int]:
    """Column name -> index of a manifest's header row; every structural mistake is one error."""
    known = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
    columns: dict[str, int] = {}
    for index, raw in enumerate(names):
        name = raw.strip().lower()
        if not name:
            raise DataError(f"{where}: column {index + 1} of the header row has no name (expected {HEADER})")
        if name in columns:
            raise DataError(f"{where}: column {name!r} appears twice in the header row")
        if name not in known:
            if not any(n.strip().lower() in known for n in names):
                raise DataError(f"{where}: the first row is not a header row (a header row is required: {HEADER})")
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DataError(f"{where}: unknown column {raw.strip()!r}{hint}; the columns are {', '.join(known)}")
        columns[name] = index
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise DataError(f"{where}: missing column {missing[0]!r} (the header row names {HEADER})")
    return columns


def _decode(manifest: Path) -> str:
    raw = manifest.read_bytes()
    try:
        return raw.decode("utf-8-sig")  # -sig: a BOM (spreadsheet exports) is fine
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{manifest} line {line}: not UTF-8 text (save the manifest as UTF-8)") from None


def read_manifest(manifest: Path | str) -> Listing:
    """Rows of a CSV manifest, each checked on its own; problems name the manifest's line."""
    manifest = Path(manifest)
    if manifest.is_dir():
        raise DataError(f"{manifest} is a folder; give the manifest file (CSV with a header row {HEADER})")
    if not manifest.is_file():
        raise DataError(f"manifest not found: {manifest}")
    base = manifest.resolve().parent
    reader = csv.reader(io.StringIO(_decode(manifest), newline=""))
    columns: dict[str, int] | None = None
    rows: list[Row] = []
    problems: list[Problem] = []
    first_line: dict[str, int] = {}  # absolute path -> the line that listed it first
    try:
        for fields in reader:
            line = reader.line_num
            where = f"{manifest} line {line}"
            if not any(f.strip() for f in fields):
                continue  # blank lines
            if columns is None:
                columns = _header(fields, where)
                continue
            if len(fields) != len(columns):
                problems.append(Problem(where, f"{len(fields)} field(s), the header row has {len(columns)} ({HEADER})", line))
                continue
            row, problem = _row(fields, columns, where, line, base, first_line)
            if problem is not None:
                problems.append(problem)
            if row is not None:
                rows.append(row)
    except csv.Error as exc:
        raise DataError(f"{manifest} line {reader.line_num}: not valid CSV ({exc})") from None
    if columns is None:
        raise DataError(f"{manifest}: empty (a header row is required: {HEADER})")
    if not rows and not problems:
        raise DataError(f"{manifest}: no rows after the header row")
    return Listing(rows, problems, splits_given="split" in columns)


def _row(
    fields: list[str], columns: dict[str, int], where: str, line: int, base: Path, first_line: dict[str, int]
) -> tuple[Row | None, Problem | None]:
    """One manifest row, or the problem with it (its image named when there is one to drop)."""
    value = {name: fields[index].strip() for name, index in columns.items()}
    text = value["path"]
    if not text:
        return None, Problem(where, "empty path", line)
    path = os.path.normpath(base / text.replace("\\", "/"))  # paths written on Windows
    problem = _path_problem(text, Path(path), base)
    if problem is not None:
        return None, Problem(where, problem, line, (path,))
    if path in first_line:
        return None, Problem(where, f"image {text!r} is listed again (first on line {first_line[path]})", line)
    first_line[path] = line
    if not value["pid"]:
        return None, Problem(where, "empty pid", line, (path,))
    if not value["modality"]:
        return None, Problem(where, f"empty modality (expected one of {modality_words()})", line, (path,))
    modality = parse_modality(value["modality"])
    if modality is None:
        return None, Problem(where, f"modality {value['modality']!r} is not one of {modality_words()}", line, (path,))
    split = value.get("split", "").lower() or None
    if split is not None and split not in SPLITS:
        return None, Problem(where, f"split {value['split']!r} is not one of {', '.join(SPLITS)} (or empty)", line, (path,))
    camera = value.get("camera") or None
    return Row(where, line, path, value["pid"], modality, camera, split), None


def _path_problem(text: str, path: Path, base: Path) -> str | None:
    if not is_image_file(text):
        return f"{text!r} is not an image file (expected {', '.join(IMAGE_SUFFIXES)})"
    if path.is_dir():
        return f"{text!r} is a folder, not an image"
    if not path.is_file():
        return f"image {text!r} not found (paths are relative to the manifest's folder, {base})"
    return None


# --------------------------------------------------------------------------- checks across rows


def cross_row_problems(rows: Sequence[Row], splits_given: bool) -> list[Problem]:
    """Split agreement per person (and on every row or none), and both spectra for every person."""
    problems: list[Problem] = []
    if splits_given:
        with_split = [r for r in rows if r.split is not None]
        if with_split and len(with_split) < len(rows):
            first = with_split[0]
            problems += [
                Problem(r.where, f"empty split, but line {first.order} gives one (give every row a split, or none)",
                        r.order, (r.path,))
                for r in rows if r.split is None
            ]
        seen: dict[str, Row] = {}
        for r in with_split:
            earlier = seen.setdefault(r.pid, r)
            if earlier.split != r.split:
                problems.append(Problem(r.where, f"pid {r.pid!r} is in split {r.split!r} here but {earlier.split!r} "
                                        f"at {earlier.where}", r.order, (r.path,)))
    spectra: dict[str, dict[Modality, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        spectra[r.pid][r.modality].append(r)
    for pid, by_modality in spectra.items():
        if len(by_modality) == 2:
            continue
        (modality, own), = by_modality.items()
        first = own[0]
        problems.append(Problem(
            first.where, f"pid {pid!r} has {modality} images only ({len(own)}); every person needs images in both "
            f"spectra ({modality.other()} missing)", first.order, tuple(r.path for r in own),
        ))
    return problems


def draw_split(pids: Iterable[str], test_fraction: float, seed: int) -> dict[str, str]:
    """pid -> train | test: ``round(fraction x ids)`` test ids drawn by a seeded permutation.

    A fraction strictly between 0 and 1 keeps at least one id on each side (given two ids or more).
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise DataError(f"--test-fraction must be between 0 and 1, got {test_fraction}")
    order = sorted(set(pids), key=natural_key)
    count = int(round(test_fraction * len(order)))
    if 0.0 < test_fraction < 1.0 and len(order) >= 2:
        count = min(max(count, 1), len(order) - 1)
    test = {order[i] for i in np.random.default_rng(seed).permutation(len(order))[:count]}
    return {pid: "test" if pid in test else "train" for pid in order}


# --------------------------------------------------------------------------- prepare


def describe_problems(problems: Sequence[Problem]) -> str:
    """The first problem, then how many more and where (one line)."""
    first = str(problems[0])
    rest = problems[1:]
    if not rest:
        return f"{first} (fix it, or pass --skip-bad to drop it)"
    named = ", ".join(p.where for p in rest[:SHOW_MORE]) + (", ..." if len(rest) > SHOW_MORE else "")
    return f"{first}; and {len(rest)} more problem(s): {named} (fix them, or pass --skip-bad to drop them)"


def _refuse_split_options(listing: Listing, source: Path, seed: int | None, test_fraction: float | None) -> None:
    drawn = not any(r.split is not None for r in listing.rows)
    if not drawn and (seed is not None or test_fraction is not None):
        option = "--seed" if seed is not None else "--test-fraction"
        raise DataError(f"{source} gives a split on its rows; {option} draws one only for a manifest without splits")


def _out_folder(fmt: str, source: Path, out: Path | str | None) -> Path:
    """Where ``prepare_own`` writes (``out``, else :func:`default_out`); an unknown format or a file there is refused."""
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; choose from: {', '.join(FORMATS)}")
    out_dir = Path(out if out is not None else default_out(fmt, source))
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir} exists and is not a folder; choose a folder for the prepared dataset")
    return out_dir


def _read_listing(fmt: str, source: Path, cameras: bool) -> Listing:
    """The rows of ``source``: a ROOT folder (``folder``) or a manifest (``csv``, which names its cameras itself)."""
    if fmt == "folder":
        return read_folder(source, cameras=cameras)
    if cameras:
        raise DataError("--cameras is for the folder layout; a manifest names cameras in its camera column")
    return read_manifest(source)


def _usable_rows(
    listing: Listing, source: Path, *, skip_bad: bool, workers: int | None, progress: ProgressFactory
) -> tuple[list[Row], list[Problem], set[str], dict[str, str]]:
    """The rows to prepare: (rows, every problem in row order, the paths dropped, the images that do not decode).

    Any problem is refused unless ``skip_bad``: then its rows are dropped, and the cross-row checks
    run again on what is left.
    """
    problems = list(listing.problems)
    with progress("checking images", len(listing.rows)) as advance:
        bad = dict(check_images([r.path for r in listing.rows], workers=workers, on_progress=advance))
    problems += [Problem(r.where, f"image does not decode ({bad[r.path]})", r.order, (r.path,))
                 for r in listing.rows if r.path in bad]
    rows = [r for r in listing.rows if r.path not in bad]
    cross = cross_row_problems(rows, listing.splits_given)
    problems += cross
    problems.sort(key=lambda p: p.order)
    if problems and not skip_bad:
        raise DataError(describe_problems(problems))
    dropped = {path for p in problems for path in p.paths}
    rows = [r for r in rows if r.path not in dropped]
    if skip_bad and cross:  # dropping a row may leave a person in one spectrum, or a split on some rows only
        again = cross_row_problems(rows, listing.splits_given)
        problems += again
        dropped |= {path for p in again for path in p.paths}
        rows = [r for r in rows if r.path not in dropped]
    if not rows:
        raise DataError(f"{source}: no usable images left after dropping {len(problems)} problem(s), e.g. {problems[0]}"
                        if problems else f"{source}: no images found (docs/usage.md, 'Your own cameras')")
    return rows, problems, dropped, bad


def _split(rows: list[Row], seed: int | None, test_fraction: float | None) -> tuple[dict[str, str], dict[str, Any]]:
    """Each person's split (the rows' own, else drawn with ``seed`` and ``test_fraction``) and meta.json's ``split``."""
    drawn = all(r.split is None for r in rows)
    chosen_seed = DEFAULT_SEED if seed is None else seed
    fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
    splits = draw_split((r.pid for r in rows), fraction, chosen_seed) if drawn else {r.pid: str(r.split) for r in rows}
    per_split = Counter(splits.values())
    split_info: dict[str, Any] = {"drawn": drawn}
    if drawn:
        split_info.update(seed=chosen_seed, test_fraction=fraction)
    split_info["ids"] = {name: per_split[name] for name in SPLITS if per_split[name]}
    return splits, split_info


def prepare_own(
    fmt: str,
    source: Path | str,
    out: Path | str | None = None,
    *,
    cameras: bool = False,
    seed: int | None = None,
    test_fraction: float | None = None,
    skip_bad: bool = False,
    cache_size: tuple[int, int] | None = None,
    workers: int | None = None,
    progress: ProgressFactory = no_progress,
) -> OwnReport:
    """Read ``source`` (a ROOT folder for ``folder``, a manifest for ``csv``), check it, write a prepared dataset.

    ``out`` None: :func:`default_out`. ``seed`` / ``test_fraction`` None: 0 and 0.5 when the
    split is drawn; given with a manifest that has its own split, they are refused.
    """
    source = Path(source)
    out_dir = _out_folder(fmt, source, out)
    listing = _read_listing(fmt, source, cameras)
    _refuse_split_options(listing, source, seed, test_fraction)
    rows, problems, dropped, bad = _usable_rows(listing, source, skip_bad=skip_bad, workers=workers, progress=progress)
    splits, split_info = _split(rows, seed, test_fraction)
    pid_numbers = number(r.pid for r in rows)
    camera_numbers = number(r.camera for r in rows if r.camera is not None)
    samples = [
        Sample(r.path, pid_numbers[r.pid], UNKNOWN_CAMERA if r.camera is None else camera_numbers[r.camera],
               r.modality, splits[r.pid])
        for r in rows
    ]
    root = source.resolve() if fmt == "folder" else source.resolve().parent
    meta: dict[str, Any] = {
        "dataset": fmt, "reader": fmt, "root": str(root), "source": str(source.resolve()), "split": split_info,
        "pid_map": PIDS_FILE, "camera_map": CAMERAS_FILE, "known_cameras": len(camera_numbers),
        "unknown_camera_images": sum(1 for s in samples if s.cam == UNKNOWN_CAMERA),
    }
    if dropped:
        meta["skipped"] = sorted(dropped)
        meta["dropped"] = [str(p) for p in problems]
    out_dir = out_dir.resolve()
    # the maps before meta.json: meta.json is the commit record of a prepared folder
    atomic_write_text(out_dir / PIDS_FILE, json.dumps(pid_numbers, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out_dir / CAMERAS_FILE, json.dumps(camera_numbers, indent=2, ensure_ascii=False) + "\n")
    cache_info = write_with_cache(out_dir, samples, meta, cache_size=cache_size, workers=workers, progress=progress)
    return OwnReport(
        dataset=fmt, root=str(root), out=str(out_dir), counts=count_samples(samples), skipped=sorted(dropped),
        bad=[(path, reason) for path, reason in bad.items()], cache=cache_info, dropped=problems, split=split_info,
        ids=len(pid_numbers), cameras=camera_numbers, ignored=listing.ignored,
    )

