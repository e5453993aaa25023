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

Each protocol is one :class:`ProtocolSpec` in :data:`PROTOCOL_SPECS` (see
:func:`get_protocol`): its directions, gallery cameras, exclusion rule, CMC kind,
how a trial forms its gallery, which options apply and how results are named.
The evaluation engine and the CLI read the spec rather than test protocol
names; :mod:`~mclnet_cli.metrics.ranking` gets the rule as plain arguments.
This module also owns the checks (:func:`check_protocol`, :func:`check_choice`).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from mclnet_cli.types import Modality, Sample
from mclnet_cli.config import Direction, Draws, Protocol, SysuMode, names
from mclnet_cli.errors import ConfigError, DataError
from mclnet_cli.metrics.ranking import CmcKind, RankingResult, evaluate_ranking, exclusion_mask

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
    if canonical not in PROTOCOL_SPECS:
        where = "" if name == "protocol" else f" ({name})"
        raise ConfigError(f"unknown protocol {protocol!r}{where}; choose from: {', '.join(PROTOCOL_SPECS)}")
    return canonical


def get_protocol(protocol: Any, name: str = "protocol") -> ProtocolSpec:
    """The :class:`ProtocolSpec` of a protocol name (case and spaces ignored); an unknown name is a :class:`ConfigError`."""
    return PROTOCOL_SPECS[check_protocol(protocol, name)]


GalleryKind = Literal["drawn", "whole"]


@dataclass(frozen=True)
class ProtocolSpec:
    """One evaluation protocol: who queries, who is in the gallery, what is excluded, how it is scored and named.

    The queries of a direction are every test image of its query spectrum. A
    ``drawn`` gallery takes, per trial, ``shots`` images of each (pid, camera) of
    the other spectrum's test images (:func:`draw_gallery`); a ``whole`` gallery
    is every one of them, compared once per direction (trial 0).
    """

    name: str
    title: str  # the dataset's name in prose
    directions: tuple[str, ...]  # directions evaluated, in report order; a single one keys results by feature alone
    gallery: GalleryKind = "drawn"
    # gallery cameras in draw order, keyed by mode (a protocol with modes) or by direction; absent: every camera
    gallery_cameras: Mapping[str, tuple[int, ...]] = field(default_factory=dict, hash=False)
    modes: tuple[str, ...] = ()  # search modes (--mode); () when the protocol has none
    shots: tuple[int, ...] = (1,)  # images per (pid, camera) a drawn gallery may take (--shots)
    draw_families: tuple[str, ...] = ()  # gallery-draw families (--draws)
    whole_at_zero_trials: bool = False  # --trials 0: one comparison against the whole gallery instead of draws
    camera_pairs: tuple[tuple[int, int], ...] = ()  # exclusion: (query camera, gallery camera), whatever the pids
    same_pid_same_camera: bool = False  # exclusion: the query's pid seen by the query's camera
    known_cameras_only: bool = False  # ... only where the camera is known (camid >= 0; -1 is unknown)
    cmc: CmcKind = "dedup"
    datasets: tuple[str, ...] = ()  # prepared-dataset readers (meta.json) that imply this protocol
    gallery_text: str = ""  # how the gallery is formed (in refusals of --shots)
    trials_text: str = ""  # what its trials are, for a protocol that draws no gallery
    split_report_key: str | None = None  # report key for the prepared dataset's meta "trial" (its identity split)

    @property
    def options(self) -> frozenset[str]:
        """The evaluation options that apply; any other one given explicitly is refused."""
        found = {"direction"} if len(self.directions) > 1 else set()
        if self.modes:
            found.add("mode")
        if self.gallery == "drawn":
            found.add("trials")
            if len(self.shots) > 1:
                found.add("shots")
        if self.draw_families:
            found.add("draws")
        return frozenset(found)

    def cameras(self, direction: str, mode: str | None = None) -> tuple[int, ...] | None:
        """Gallery cameras of a drawn gallery, in draw order; None: every camera of the gallery images."""
        return self.gallery_cameras.get(mode if self.modes else direction)

    def mask(
        self, query_pids: np.ndarray, gallery_pids: np.ndarray, query_cams: np.ndarray, gallery_cams: np.ndarray
    ) -> np.ndarray | None:
        """The protocol's validity mask (True = counts), or None when it excludes nothing."""
        return exclusion_mask(
            query_pids, gallery_pids, query_cams, gallery_cams, camera_pairs=self.camera_pairs,
            same_pid_same_camera=self.same_pid_same_camera, known_cameras_only=self.known_cameras_only,
        )

    def rank(
        self, distmat: np.ndarray, query_pids: np.ndarray, gallery_pids: np.ndarray,
        query_cams: np.ndarray, gallery_cams: np.ndarray, max_rank: int = 20,
    ) -> RankingResult:
        """Score a [queries, gallery] distance matrix with the protocol's exclusions and CMC kind."""
        mask = self.mask(query_pids, gallery_pids, query_cams, gallery_cams)
        return evaluate_ranking(distmat, query_pids, gallery_pids, mask, cmc=self.cmc, max_rank=max_rank)

    def result_key(self, direction: str, feature: str) -> str:
        """``feature`` for a one-direction protocol, else ``direction/feature``."""
        return feature if len(self.directions) == 1 else f"{direction}/{feature}"

    def report_fields(self, mode: str, shots: int, draws: str) -> dict[str, Any]:
        """The gallery entries of a report's ``protocol`` block (draws ``none``: the whole gallery)."""
        if self.gallery == "whole":
            return {}
        fields: dict[str, Any] = {"mode": mode} if self.modes else {}
        if draws != "none":
            fields["shots"] = shots
        fields["draws"] = draws
        return fields

    def gallery_words(self, mode: str | None, shots: int, draws: str) -> str | None:
        """How the gallery was formed, for report headers ("all-search 1-shot, agw draws"); None: nothing to say."""
        if self.gallery == "whole":
            return None
        if draws == "none":
            return "whole gallery"
        words = f"{shots}-shot, {draws} draws"
        return f"{mode}-search {words}" if self.modes else words


PROTOCOL_SPECS: dict[str, ProtocolSpec] = {
    spec.name: spec
    for spec in (
        ProtocolSpec(
            "sysu", "SYSU-MM01", ("infrared_to_visible",), gallery_cameras=SYSU_GALLERY_CAMS, modes=SYSU_MODES,
            shots=SHOTS, draw_families=DRAWS, camera_pairs=((3, 2),), datasets=("sysu",),
        ),
        ProtocolSpec(
            "regdb", "RegDB", DIRECTIONS, gallery="whole", cmc="standard", datasets=("regdb",),
            gallery_text="regdb's gallery is every image of the other spectrum",
            trials_text="its ten trials are ten prepared splits, one model each", split_report_key="regdb_split",
        ),
        ProtocolSpec(
            "llcm", "LLCM", DIRECTIONS, gallery_cameras=LLCM_GALLERY_CAMS, shots=SHOTS, draw_families=("agw",),
            same_pid_same_camera=True, datasets=("llcm",),
        ),
        ProtocolSpec(
            "own", "own data", DIRECTIONS, draw_families=("agw",), whole_at_zero_trials=True,
            same_pid_same_camera=True, known_cameras_only=True, cmc="standard", datasets=("folder", "csv"),
            gallery_text="own draws one image per (pid, camera), or takes every image with --trials 0",
        ),
    )
}


def protocol_for_dataset(reader: str) -> str | None:
    """The protocol a prepared dataset's reader (meta.json) implies, or None (e.g. synthetic)."""
    return next((spec.name for spec in PROTOCOL_SPECS.values() if reader in spec.datasets), None)


def cmc_kind(protocol: str) -> CmcKind:
    """The CMC kind a protocol reports (deduplicated for sysu and llcm, standard for regdb and own)."""
    return get_protocol(protocol).cmc


def rank_metrics(
    distmat: np.ndarray,
    query_pids: np.ndarray,
    gallery_pids: np.ndarray,
    query_cams: np.ndarray,
    gallery_cams: np.ndarray,
    protocol: str,
    max_rank: int = 20,
) -> RankingResult:
    """Score a distance matrix under a protocol's exclusions and CMC kind (an unknown name is a ConfigError)."""
    return get_protocol(protocol).rank(distmat, query_pids, gallery_pids, query_cams, gallery_cams, max_rank)


def _listed(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _having(option: str) -> list[str]:
    return [spec.name for spec in PROTOCOL_SPECS.values() if option in spec.options]


def _inapplicable(spec: ProtocolSpec, given: Mapping[str, Any]) -> str | None:
    """Why an option in ``given`` does not apply to ``spec`` (None: they all do)."""
    direction = given.get("direction")
    if "direction" not in spec.options and direction not in (None, *spec.directions):
        return f"{spec.name} has one direction ({spec.directions[0]}); --direction applies to {_listed(_having('direction'))}"
    if "mode" in given and "mode" not in spec.options:
        modes = _having("mode")
        return f"--mode applies to {_listed(modes)}{' only' if len(modes) == 1 else ''} ({spec.name} has no search modes)"
    if "shots" in given and "shots" not in spec.options:
        return f"--shots applies to {_listed(_having('shots'))} ({spec.gallery_text})"
    if "trials" not in spec.options and int(given.get("trials") or 1) > 1:
        return f"{spec.name} has one trial per direction ({spec.trials_text}): drop --trials"
    if "draws" in given and "draws" not in spec.options:
        families = [f"{s.name} ({', '.join(s.draw_families)})" for s in PROTOCOL_SPECS.values() if s.draw_families]
        return f"--draws applies to {_listed(families)}: {spec.name} draws no gallery"
    if "draws" in given and spec.whole_at_zero_trials and given.get("trials") == 0:
        return "--trials 0 compares with the whole gallery, drawing nothing: drop --draws"
    return None


def refuse_inapplicable(protocol: str, given: Mapping[str, Any]) -> None:
    """One line naming an option the user gave that the protocol would ignore (never silently ignored).

    ``given`` holds only the options set explicitly; which apply is :attr:`ProtocolSpec.options`.
    """
    spec = get_protocol(protocol)
    reason = _inapplicable(spec, given)
    if reason is not None:
        raise ConfigError(f"{reason}; --protocol is {spec.name}")


@dataclass(frozen=True)
class Trial:
    """One evaluation trial: query and gallery indices into the sample list."""

    protocol: str  # sysu | regdb | llcm | own
    trial: int  # draw seed (0-based); 0 for a whole gallery (regdb, own with --trials 0)
    direction: str  # visible_to_infrared | infrared_to_visible (sysu: always infrared_to_visible)
    query: np.ndarray  # int64 indices
    gallery: np.ndarray  # int64 indices
    mode: str | None = None  # sysu: all | indoor
    shots: int = 1
    draws: str = "agw"  # agw | official | none (a whole gallery)

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


def protocol_trial(
    samples: Sequence[Sample],
    protocol: str,
    direction: str | None = None,
    trial: int = 0,
    *,
    mode: str = "all",
    shots: int = 1,
    official: OfficialDraws | None = None,
    whole: bool = False,
    split: str = "test",
) -> Trial:
    """One trial of a protocol: every test image of the direction's query spectrum against its gallery.

    A one-direction protocol (sysu) ignores ``direction``. The gallery is drawn
    for trial ``trial`` (see module doc), or is the whole other spectrum when the
    protocol's gallery is ``whole`` or ``whole`` is asked (then trial 0, draws "none").
    """
    spec = get_protocol(protocol)
    direction = spec.directions[0] if len(spec.directions) == 1 else direction
    check_choice("direction", direction, spec.directions)
    source = Modality.VISIBLE if direction == "visible_to_infrared" else Modality.INFRARED
    what = f"{spec.name} {mode if spec.modes else direction}"
    if spec.gallery == "whole" or whole:
        query = _ordered(samples, _pool(samples, split, source))
        gallery = _ordered(samples, _pool(samples, split, source.other()))
        _require(query, gallery, what, split)
        return Trial(spec.name, 0, direction, query, gallery, draws="none")
    if spec.modes:
        check_choice("mode", mode, spec.modes)
    check_choice("shots", shots, spec.shots)
    cams = spec.cameras(direction, mode)
    query = _ordered(samples, _pool(samples, split, source))
    candidates = _pool(samples, split, source.other(), cams)
    if cams is None:  # every camera, ascending (-1, an unknown camera, first)
        cams = tuple(sorted({samples[i].cam for i in candidates}))
    gallery = draw_gallery(samples, candidates, cams, trial, shots, official)
    _require(query, gallery, what, split)
    return Trial(
        spec.name, trial, direction, query, gallery, mode=mode if spec.modes else None, shots=shots,
        draws="official" if official is not None else "agw",
    )


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
    return protocol_trial(samples, "sysu", None, trial, mode=mode, shots=shots, official=official, split=split)


def regdb_trial(samples: Sequence[Sample], direction: str, *, split: str = "test") -> Trial:
    """RegDB: every test image of one modality queries every test image of the other (no sampling)."""
    return protocol_trial(samples, "regdb", direction, split=split)


def llcm_trial(
    samples: Sequence[Sample], direction: str, trial: int = 0, shots: int = 1, *, split: str = "test"
) -> Trial:
    """LLCM: all test images of the query modality; one image per (pid, camera) of the other, drawn as SYSU."""
    return protocol_trial(samples, "llcm", direction, trial, shots=shots, split=split)


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

    A one-direction protocol (sysu) ignores ``direction``; the others expand
    ``direction="both"`` into both directions (visible->infrared first). A whole
    gallery (regdb; own with ``trials=0``) is one trial per direction (regdb's
    ten trials are ten dataset splits, each with its own model).
    """
    spec = get_protocol(protocol)
    zero_whole = spec.whole_at_zero_trials and isinstance(trials, int) and trials == 0
    numbers = list(range(trials)) if isinstance(trials, int) else [int(t) for t in trials]
    if not zero_whole and (not numbers or any(t < 0 for t in numbers)):
        raise ConfigError(f"trials must be a positive count or non-negative trial numbers, got {trials!r}")
    if official is not None and "official" not in spec.draw_families:
        holders = [s.title for s in PROTOCOL_SPECS.values() if "official" in s.draw_families]
        raise ConfigError(f"official draws exist for {_listed(holders)} only")
    directions = spec.directions if len(spec.directions) == 1 else expand_directions(direction)
    whole = zero_whole or spec.gallery == "whole"
    return [
        protocol_trial(samples, spec.name, d, t, mode=mode, shots=shots, official=official, whole=whole, split=split)
        for d in directions
        for t in ([0] if whole else numbers)
    ]


def skipped_in_gallery_folders(samples: Sequence[Sample], trials: Sequence[Trial], skipped: Sequence[str]) -> list[str]:
    """The ``skipped`` paths (dropped at prepare time) that lie in a folder a trial draws its gallery from.

    The reference code draws from the folder's listing, which still holds them,
    so the draws of such a folder (and of every later group, as they share one
    random stream) differ from the reference's. RegDB draws nothing: never any.
    """
    folders = {str(Path(samples[i].path).parent) for t in trials if t.draws != "none" for i in t.gallery}
    return sorted(str(p) for p in skipped if str(Path(str(p)).parent) in folders)
