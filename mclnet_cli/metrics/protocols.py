"""Evaluation protocols: which test images are queries and which form the gallery of a trial.

Works on a list of :class:`~mclnet_cli.data.records.Sample` (a prepared dataset's
samples, or samples rebuilt from a features file); a :class:`Trial` holds indices
into that list. Only samples of the ``split`` given (default ``"test"``) take part.

Gallery draws (SYSU-MM01 and LLCM) reproduce the AGW family of evaluation code
bit for bit: for trial t, a ``random.Random(t)`` stream (the same stream as
``random.seed(t)``, without touching the global one), test pids ascending, and
for each pid the gallery cameras in protocol order; for every (pid, camera) that
has images, ``choice(sorted(paths))``. Paths inside one (pid, camera) group share
their folder, so sorting the full paths sorts the file names, as the reference
code's ``sorted(os.listdir(...))`` does. Multi-shot (a choice of ours, as the
literature's multi-shot is not reproducible): ``sample(sorted(paths), min(10, n))``
from the same per-trial stream, so the ten images are distinct and seeded.

Official SYSU-MM01 draws come from ``exp/rand_perm_cam.mat``: ``rand_perm_cam``
is a cell array of the 6 cameras, each a cell array indexed by pid (1..533, the
official ``get_testing_set.m`` reads ``rand_perm_cam{cam_num}{i_id}(run_time,:)``)
holding a [trials x images] matrix, empty where the camera did not see the
person. Row t lists 1-based image numbers; the first ``shots`` are taken, number
k being the k-th image of the folder in name order (``000k.jpg``). Reading the
MATLAB file needs scipy (the optional ``mat`` extra); a file of another layout
is refused with a one-line :class:`DataError`.

Limit of "bit for bit": the reference code draws from ``os.listdir`` of each
folder, mclnet from the prepared samples. A folder whose files differ from its
samples (images dropped by ``prepare --skip-bad``, non-image files) shifts the
draws from that group on; :func:`skipped_in_gallery_folders` finds such drops.

This module owns the protocol names and their checks (:func:`check_protocol`,
:func:`check_choice`); the ranking metrics, the evaluation engine and the CLI
use them rather than their own lists.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mclnet_cli.types import Modality, Sample
from mclnet_cli.config import Direction, Draws, Protocol, SysuMode, names
from mclnet_cli.errors import ConfigError, DataError

PROTOCOLS = names(Protocol)
DIRECTIONS = tuple(d for d in names(Direction) if d != "both")  # one direction per evaluation
SYSU_MODES = names(SysuMode)
SYSU_GALLERY_CAMS = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
LLCM_GALLERY_CAMS = {
    "infrared_to_visible": (1, 2, 3, 4, 5, 6, 7, 8, 9),  # gallery from test_vis
    "visible_to_infrared": (1, 2, 4, 5, 6, 7, 8, 9),  # gallery from test_nir (cam3 is empty)
}
SHOTS = (1, 10)
DRAWS = names(Draws)  # gallery draw families (official: SYSU-MM01 only)
MAX_TRIALS = 10  # gallery draws of one evaluation (trial numbers 0..9)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise a one-line :class:`ConfigError` naming ``name`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name} {value!r} is not allowed; choose from: {', '.join(map(str, choices))}")


def check_protocol(protocol: Any, name: str = "protocol") -> str:
    """The protocol's canonical name (case and spaces ignored), or a :class:`ConfigError`."""
    canonical = str(protocol).strip().lower()
    if canonical not in PROTOCOLS:
        where = "" if name == "protocol" else f" ({name})"
        raise ConfigError(f"unknown protocol {protocol!r}{where}; choose from: {', '.join(PROTOCOLS)}")
    return canonical


@dataclass(frozen=True)
class Trial:
    """One evaluation trial: query and gallery indices into the sample list."""

    protocol: str  # sysu | regdb | llcm
    trial: int  # draw seed (0-based); 0 for regdb, which draws nothing
    direction: str  # visible_to_infrared | infrared_to_visible (sysu: always infrared_to_visible)
    query: np.ndarray  # int64 indices
    gallery: np.ndarray  # int64 indices
    mode: str | None = None  # sysu: all | indoor
    shots: int = 1
    draws: str = "agw"  # agw | official | none (regdb)

    def describe(self) -> dict[str, Any]:
        """Plain-dict summary (no indices) for reports."""
        return {
            "protocol": self.protocol,
            "trial": self.trial,
            "direction": self.direction,
            "mode": self.mode,
            "shots": self.shots,
            "draws": self.draws,
            "queries": int(len(self.query)),
            "gallery": int(len(self.gallery)),
        }


class OfficialDraws:
    """The official SYSU-MM01 gallery permutations: (cam, pid) -> [trials, images] 1-based numbers."""

    def __init__(self, table: Mapping[tuple[int, int], np.ndarray], source: str = "rand_perm_cam") -> None:
        self.table = {key: np.atleast_2d(np.asarray(value)) for key, value in table.items()}
        self.source = source

    def pick(self, pid: int, cam: int, trial: int, shots: int, available: int) -> list[int]:
        """0-based positions (into the group's sorted paths) of the images drawn for trial ``trial``."""
        perm = self.table.get((cam, pid))
        if perm is None or perm.size == 0:
            raise DataError(f"{self.source}: no permutation for camera {cam}, pid {pid}")
        if trial >= perm.shape[0]:
            raise DataError(f"{self.source}: camera {cam}, pid {pid} has {perm.shape[0]} trials, trial {trial} asked")
        numbers = [int(k) for k in perm[trial, :shots]]
        bad = [k for k in numbers if not 1 <= k <= available]
        if bad:
            raise DataError(
                f"{self.source}: camera {cam}, pid {pid} draws image {bad[0]} but the folder has {available} images"
            )
        return [k - 1 for k in numbers]


def load_official_draws(path: Path | str) -> OfficialDraws:
    """Read ``rand_perm_cam.mat`` (needs scipy, imported here only)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"official draws file not found: {path} (expected SYSU-MM01/exp/rand_perm_cam.mat)")
    try:
        from scipy.io import loadmat
    except ImportError as exc:
        raise ConfigError(f"reading {path} needs scipy: pip install 'mclnet[mat]' (or use the default AGW draws)") from exc
    try:
        cells = loadmat(str(path))["rand_perm_cam"]
    except KeyError as exc:
        raise DataError(f"{path}: no variable 'rand_perm_cam' in the MATLAB file") from exc
    except Exception as exc:  # scipy raises several types for corrupt files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot read the MATLAB file ({reason})") from exc
    return OfficialDraws(_official_table(cells, path), source=str(path))


SYSU_CAMERAS = 6  # rand_perm_cam holds one cell per camera, cam1..cam6


def _is_cell(value: Any) -> bool:
    """A MATLAB cell array as scipy reads it: an object array (a struct has named fields)."""
    return isinstance(value, np.ndarray) and value.dtype == object and value.dtype.names is None


def _matlab_kind(value: Any) -> str:
    """What a value read by scipy's loadmat is, in MATLAB words, for error messages."""
    if not isinstance(value, np.ndarray):
        return f"a {type(value).__name__}"
    shape = "x".join(map(str, value.shape))
    if value.dtype.names is not None:
        return f"a {shape} struct"
    if value.dtype == object:
        return f"a {shape} cell array"
    return f"a {shape} {value.dtype} matrix"


def _official_table(cells: Any, path: Path) -> dict[tuple[int, int], np.ndarray]:
    """Check the layout of ``rand_perm_cam`` (a cell per camera holding a cell per pid) and flatten it."""
    expected = "rand_perm_cam{cam}{pid}: a cell array of 6 cameras, each a cell array of [trials x images] matrices"
    if not _is_cell(cells) or cells.size != SYSU_CAMERAS:
        raise DataError(f"{path}: 'rand_perm_cam' is {_matlab_kind(cells)}; expected {expected}")
    table: dict[tuple[int, int], np.ndarray] = {}
    for cam_index, per_cam in enumerate(cells.ravel(), start=1):
        if not _is_cell(per_cam):
            raise DataError(f"{path}: rand_perm_cam{{{cam_index}}} is {_matlab_kind(per_cam)}; expected {expected}")
        for pid_index, perm in enumerate(per_cam.ravel(), start=1):
            array = np.asarray(perm)
            if array.size == 0:
                continue
            where = f"{path}: rand_perm_cam{{{cam_index}}}{{{pid_index}}}"
            if array.ndim > 2 or array.dtype.kind not in "iuf":
                raise DataError(f"{where} is {_matlab_kind(array)}; expected a numeric [trials x images] matrix")
            if not (np.isfinite(array).all() and (array == np.round(array)).all() and (array >= 1).all()):
                raise DataError(f"{where} holds values that are not 1-based image numbers (whole numbers from 1)")
            table[(cam_index, pid_index)] = np.atleast_2d(array).astype(np.int64)
    return table


def _pool(samples: Sequence[Sample], split: str, modality: Modality, cams: Sequence[int] | None = None) -> list[int]:
    return [
        i
        for i, s in enumerate(samples)
        if s.split == split and s.modality is modality and (cams is None or s.cam in cams)
    ]


def _ordered(samples: Sequence[Sample], indices: Sequence[int]) -> np.ndarray:
    """Indices ordered as the reference code lists queries: pid, camera, path."""
    ordered = sorted(indices, key=lambda i: (samples[i].pid, samples[i].cam, samples[i].path))
    return np.asarray(ordered, dtype=np.int64)


def draw_gallery(
    samples: Sequence[Sample],
    candidates: Sequence[int],
    cams: Sequence[int],
    trial: int,
    shots: int = 1,
    official: OfficialDraws | None = None,
) -> np.ndarray:
    """Draw ``shots`` images per (pid, camera) group of ``candidates`` for trial ``trial`` (see module doc)."""
    groups: dict[tuple[int, int], list[str]] = defaultdict(list)
    index_of: dict[str, int] = {}
    for i in candidates:
        s = samples[i]
        groups[(s.pid, s.cam)].append(s.path)
        if s.path in index_of:
            raise DataError(f"duplicate test image in the sample list: {s.path}")
        index_of[s.path] = i
    rng = random.Random(trial)
    chosen: list[int] = []
    for pid in sorted({pid for pid, _ in groups}):
        for cam in cams:
            paths = groups.get((pid, cam))
            if not paths:
                continue
            paths = sorted(paths)
            if official is not None:
                picked = [paths[k] for k in official.pick(pid, cam, trial, shots, len(paths))]
            elif shots == 1:
                picked = [rng.choice(paths)]
            else:
                picked = rng.sample(paths, min(shots, len(paths)))
            chosen.extend(index_of[p] for p in picked)
    return np.asarray(chosen, dtype=np.int64)


def sysu_trial(
    samples: Sequence[Sample],
    mode: str = "all",
    shots: int = 1,
    trial: int = 0,
    *,
    official: OfficialDraws | None = None,
    split: str = "test",
) -> Trial:
    """SYSU-MM01: queries = every infrared test image; gallery drawn from the mode's visible cameras."""
    check_choice("mode", mode, SYSU_MODES)
    check_choice("shots", shots, SHOTS)
    cams = SYSU_GALLERY_CAMS[mode]
    query = _ordered(samples, _pool(samples, split, Modality.INFRARED))
    gallery = draw_gallery(samples, _pool(samples, split, Modality.VISIBLE, cams), cams, trial, shots, official)
    _require(query, gallery, f"sysu {mode}", split)
    return Trial(
        "sysu", trial, "infrared_to_visible", query, gallery, mode=mode, shots=shots,
        draws="official" if official is not None else "agw",
    )


def regdb_trial(samples: Sequence[Sample], direction: str, *, split: str = "test") -> Trial:
    """RegDB: every test image of one modality queries every test image of the other (no sampling)."""
    check_choice("direction", direction, DIRECTIONS)
    source = Modality.VISIBLE if direction == "visible_to_infrared" else Modality.INFRARED
    query = _ordered(samples, _pool(samples, split, source))
    gallery = _ordered(samples, _pool(samples, split, source.other()))
    _require(query, gallery, f"regdb {direction}", split)
    return Trial("regdb", 0, direction, query, gallery, draws="none")


def llcm_trial(
    samples: Sequence[Sample], direction: str, trial: int = 0, shots: int = 1, *, split: str = "test"
) -> Trial:
    """LLCM: all test images of the query modality; one image per (pid, camera) of the other, drawn as SYSU."""
    check_choice("direction", direction, DIRECTIONS)
    check_choice("shots", shots, SHOTS)
    source = Modality.VISIBLE if direction == "visible_to_infrared" else Modality.INFRARED
    cams = LLCM_GALLERY_CAMS[direction]
    query = _ordered(samples, _pool(samples, split, source))
    gallery = draw_gallery(samples, _pool(samples, split, source.other(), cams), cams, trial, shots)
    _require(query, gallery, f"llcm {direction}", split)
    return Trial("llcm", trial, direction, query, gallery, shots=shots)


def _require(query: np.ndarray, gallery: np.ndarray, what: str, split: str) -> None:
    if len(query) == 0:
        raise DataError(f"{what}: no query images in split {split!r} (is this the right dataset/protocol?)")
    if len(gallery) == 0:
        raise DataError(f"{what}: no gallery images in split {split!r} (is this the right dataset/protocol?)")


def expand_directions(direction: str) -> tuple[str, ...]:
    """``both`` -> the two directions; a single direction -> itself."""
    if direction == "both":
        return DIRECTIONS
    check_choice("direction", direction, DIRECTIONS + ("both",))
    return (direction,)


def protocol_trials(
    samples: Sequence[Sample],
    protocol: str,
    *,
    mode: str = "all",
    shots: int = 1,
    trials: int | Sequence[int] = 10,
    direction: str = "both",
    official: OfficialDraws | None = None,
    split: str = "test",
) -> list[Trial]:
    """Every trial of a protocol run: ``trials`` is a count (0..n-1) or explicit trial numbers.

    sysu ignores ``direction``; regdb has a single trial per direction (its ten
    trials are ten dataset splits, each with its own model); llcm and regdb
    expand ``direction="both"`` into both directions (visible->infrared first).
    """
    protocol = check_protocol(protocol)
    numbers = list(range(trials)) if isinstance(trials, int) else [int(t) for t in trials]
    if not numbers or any(t < 0 for t in numbers):
        raise ConfigError(f"trials must be a positive count or non-negative trial numbers, got {trials!r}")
    if official is not None and protocol != "sysu":
        raise ConfigError("official draws exist for SYSU-MM01 only")
    if protocol == "sysu":
        return [sysu_trial(samples, mode, shots, t, official=official, split=split) for t in numbers]
    if protocol == "regdb":
        return [regdb_trial(samples, d, split=split) for d in expand_directions(direction)]
    return [llcm_trial(samples, d, t, shots, split=split) for d in expand_directions(direction) for t in numbers]


def skipped_in_gallery_folders(samples: Sequence[Sample], trials: Sequence[Trial], skipped: Sequence[str]) -> list[str]:
    """The ``skipped`` paths (dropped at prepare time) that lie in a folder a trial draws its gallery from.

    The reference code draws from the folder's listing, which still holds them,
    so the draws of such a folder (and of every later group, as they share one
    random stream) differ from the reference's. RegDB draws nothing: never any.
    """
    folders = {str(Path(samples[i].path).parent) for t in trials if t.draws != "none" for i in t.gallery}
    return sorted(str(p) for p in skipped if str(Path(str(p)).parent) in folders)
