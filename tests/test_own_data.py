"""``mclnet prepare folder`` and ``prepare csv``: your own cameras, every bad row named by its line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mclnet_cli.cli.app import app

runner = CliRunner()
PIDS = ("alice", "bob", "p2", "p10")  # natural order: alice, bob, p2, p10


def invoke(*args: object):
    return runner.invoke(app, ["--quiet", *map(str, args)])


def one_error_line(result) -> str:
    """Exit 1, one ``error:`` line on stderr, no traceback, nothing on stdout."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert result.stdout == ""
    return lines[0]


def image(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(value).integers(0, 255, (24, 12, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def make_folder(root: Path, *, cameras: bool, spectra: tuple[str, str] = ("visible", "infrared"), pids=PIDS) -> Path:
    """ROOT/<spectrum>/<pid>/ with two images each; named <camera>_<n>.png when ``cameras``."""
    for s, spectrum in enumerate(spectra):
        for p, pid in enumerate(pids):
            for k, camera in enumerate(("door", "gate") if s == 0 else ("gate", "yard")):
                name = f"{camera}_{k}.png" if cameras else f"{k:04d}.png"
                image(root / spectrum / pid / name, value=100 * s + 10 * p + k)
    return root


def read_prepared(out: Path) -> tuple[list[dict], dict, dict, dict]:
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    meta = json.loads((out / "meta.json").read_text())
    return rows, meta, json.loads((out / "pids.json").read_text()), json.loads((out / "cameras.json").read_text())


# --------------------------------------------------------------------------- the folder layout


def test_folder_with_cameras_numbers_pids_and_cameras_in_natural_order(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine", cameras=True)
    result = invoke("prepare", "folder", root, "--cameras", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    out = root / "prepared"  # the default --out
    rows, meta, pids, cameras = read_prepared(out)
    assert report["out"] == str(out.resolve()) and report["dataset"] == meta["dataset"] == meta["reader"] == "folder"
    assert pids == {"alice": 1, "bob": 2, "p2": 3, "p10": 4}
    assert cameras == {"door": 1, "gate": 2, "yard": 3}  # one namespace: "gate" is the same camera in both spectra
    for row in rows:
        name = Path(row["path"]).name
        assert row["cam"] == cameras[name.split("_")[0]]
        assert Path(row["path"]).parent.name == next(p for p, n in pids.items() if n == row["pid"])
    assert {r["modality"] for r in rows if Path(r["path"]).parts[-3] == "visible"} == {"visible"}
    assert len(rows) == 16 and report["ids"] == 4 and report["dropped"] == []


def test_folder_without_cameras_and_with_alias_spectrum_names(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine", cameras=False, spectra=("RGB", "Thermal"))
    (root / "notes").mkdir()  # not a spectrum word: listed as not read, never an error
    result = invoke("prepare", "folder", root, "--out", tmp_path / "p", "--json")
    assert result.exit_code == 0, result.output
    rows, meta, _, cameras = read_prepared(tmp_path / "p")
    assert {r["cam"] for r in rows} == {-1} and cameras == {} and meta["known_cameras"] == 0
    assert {r["modality"] for r in rows} == {"visible", "infrared"}
    assert json.loads(result.stdout)["ignored"] == [str(root / "notes")]


def test_folder_camera_prefix_is_required_with_cameras(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine", cameras=True)
    odd = image(root / "infrared" / "bob" / "nocamera.png", value=99)
    line = one_error_line(invoke("prepare", "folder", root, "--cameras"))
    assert str(odd) in line and "does not start with <camera>_" in line and "--skip-bad" in line
    assert not (root / "prepared" / "manifest.jsonl").exists()
    result = invoke("prepare", "folder", root, "--cameras", "--skip-bad", "--json")
    assert result.exit_code == 0, result.output
    dropped = json.loads(result.stdout)["dropped"]
    assert [d["where"] for d in dropped] == [str(odd)] and dropped[0]["paths"] == [str(odd.resolve())]
    rows, meta, _, _ = read_prepared(root / "prepared")
    assert str(odd.resolve()) not in {r["path"] for r in rows} and meta["skipped"] == [str(odd.resolve())]


def test_folder_without_an_infrared_folder_names_what_it_found(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine", cameras=False, spectra=("visible", "infared"))
    line = one_error_line(invoke("prepare", "folder", root))
    assert "no infrared folder" in line and "infared/" in line and "thermal" in line


# --------------------------------------------------------------------------- the CSV manifest


def good_rows(folder: Path) -> list[str]:
    """Manifest lines (no header) of 4 string pids x 2 spectra x 2 images; no camera, no split."""
    lines = []
    for s, spectrum in enumerate(("rgb", "ir")):
        for p, pid in enumerate(PIDS):
            for k in range(2):
                image(folder / "img" / f"{pid}_{spectrum}_{k}.png", value=100 * s + 10 * p + k)
                lines.append(f"img/{pid}_{spectrum}_{k}.png,{pid},{spectrum}")
    return lines


def write_manifest(folder: Path, header: str, lines: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.csv"
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


def test_csv_with_string_pids_and_no_cameras(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "set", "path,pid,modality", good_rows(tmp_path / "set"))
    result = invoke("prepare", "csv", manifest, "--json")
    assert result.exit_code == 0, result.output
    rows, meta, pids, cameras = read_prepared(tmp_path / "set" / "prepared")
    assert pids == {"alice": 1, "bob": 2, "p2": 3, "p10": 4} and cameras == {}
    assert {r["cam"] for r in rows} == {-1} and meta["dataset"] == "csv"
    assert rows[0]["path"] == str((tmp_path / "set" / "img" / "alice_rgb_0.png").resolve())  # relative to the manifest
    assert meta["split"] == {"drawn": True, "seed": 0, "test_fraction": 0.5, "ids": {"train": 2, "test": 2}}
    for split in ("train", "test"):  # split by identity: each person wholly on one side, in both spectra
        ids = {r["pid"] for r in rows if r["split"] == split}
        assert all({r["modality"] for r in rows if r["pid"] == pid} == {"visible", "infrared"} for pid in ids)
    assert not {r["pid"] for r in rows if r["split"] == "train"} & {r["pid"] for r in rows if r["split"] == "test"}


def test_csv_cameras_and_given_split_are_kept(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    lines = [f"{line},{'cam A' if i % 2 else ''},{'test' if 'alice' in line else 'train'}" for i, line in enumerate(good_rows(folder))]
    manifest = write_manifest(folder, "Path, PID, Modality, Camera, Split", lines)  # any case, spaces around names
    result = invoke("prepare", "csv", manifest, "--out", tmp_path / "p", "--json")
    assert result.exit_code == 0, result.output
    rows, meta, pids, cameras = read_prepared(tmp_path / "p")
    assert cameras == {"cam A": 1} and sorted({r["cam"] for r in rows}) == [-1, 1]
    assert {r["pid"] for r in rows if r["split"] == "test"} == {pids["alice"]} and meta["split"]["drawn"] is False
    refused = one_error_line(invoke("prepare", "csv", manifest, "--out", tmp_path / "p", "--seed", "3"))
    assert "gives a split" in refused and "--seed" in refused


def test_the_split_is_seeded_and_recorded(tmp_path: Path) -> None:
    from mclnet_cli.data.own import prepare_own

    pids = tuple(f"id{i}" for i in range(8))
    root = make_folder(tmp_path / "mine", cameras=False, pids=pids)

    def test_ids(seed: int, fraction: float = 0.5) -> set[int]:
        out = tmp_path / f"p{seed}-{fraction}"
        report = prepare_own("folder", root, out, seed=seed, test_fraction=fraction, workers=1)
        rows, meta, _, _ = read_prepared(out)
        assert meta["split"]["seed"] == seed and meta["split"]["test_fraction"] == fraction
        assert report.split == meta["split"]
        return {r["pid"] for r in rows if r["split"] == "test"}

    first = test_ids(0)
    assert len(first) == 4 and test_ids(0) == first  # the same seed, the same split
    assert any(test_ids(seed) != first for seed in (1, 2, 3))
    assert len(test_ids(0, 0.25)) == 2 and test_ids(0, 0.0) == set() and len(test_ids(0, 1.0)) == 8
    assert len(test_ids(0, 0.01)) == 1  # a fraction between 0 and 1 leaves at least one id on each side


def _replace(index: int, text: str) -> Callable[[list[str], Path], list[str]]:
    def edit(lines: list[str], folder: Path) -> list[str]:
        lines[index] = text
        return lines

    return edit


def _edit_pid_split(lines: list[str], folder: Path) -> list[str]:
    return [f"{line},{'test' if i == 1 else 'train'}" for i, line in enumerate(lines)]  # alice's 2nd row


def _corrupt(lines: list[str], folder: Path) -> list[str]:
    (folder / "img" / "bob_ir_1.png").write_bytes(b"not a png")
    return lines


def _folder_row(lines: list[str], folder: Path) -> list[str]:
    (folder / "img" / "dir.png").mkdir()
    return [*lines, "img/dir.png,alice,rgb"]


def _one_spectrum(lines: list[str], folder: Path) -> list[str]:
    return [line for line in lines if not line.startswith("img/p2_ir_")]


# (what, edit of the 16 good rows, manifest line named, words of the message); line 1 is the header
BAD_ROWS = [
    ("missing file", _replace(2, "img/nobody.png,alice,rgb"), 4, "image 'img/nobody.png' not found"),
    ("unknown modality", _replace(6, "img/p10_rgb_0.png,p10,xray"), 8, "modality 'xray' is not one of visible, rgb"),
    ("empty modality", _replace(6, "img/p10_rgb_0.png,p10,"), 8, "empty modality"),
    ("empty pid", _replace(3, "img/bob_rgb_1.png,,rgb"), 5, "empty pid"),
    ("empty path", _replace(3, ",bob,rgb"), 5, "empty path"),
    ("duplicate row", lambda lines, folder: [*lines[:5], lines[0], *lines[5:]], 7, "listed again (first on line 2)"),
    ("field count", _replace(4, "img/p2_rgb_0.png,p2,rgb,extra"), 6, "4 field(s), the header row has 3"),
    ("not an image", _replace(4, "img/notes.txt,p2,rgb"), 6, "'img/notes.txt' is not an image file"),
    ("a folder", _folder_row, 18, "'img/dir.png' is a folder"),
    ("does not decode", _corrupt, 13, "image does not decode"),
    ("one spectrum", _one_spectrum, 6, "pid 'p2' has visible images only"),
    ("pid in two splits", _edit_pid_split, 3, "pid 'alice' is in split 'test' here but 'train' at"),
]


@pytest.mark.parametrize("what, edit, line, words", BAD_ROWS, ids=[case[0] for case in BAD_ROWS])
def test_each_bad_row_is_one_line_naming_it(tmp_path: Path, what: str, edit, line: int, words: str) -> None:
    folder = tmp_path / "set"
    lines = edit(good_rows(folder), folder)
    header = "path,pid,modality,split" if what == "pid in two splits" else "path,pid,modality"
    manifest = write_manifest(folder, header, lines)
    error = one_error_line(invoke("prepare", "csv", manifest))
    assert error.startswith(f"error: {manifest} line {line}: "), error
    assert words in error and "--skip-bad" in error
    assert not (folder / "prepared").exists()


BAD_SPLITS = [
    ("training", 3, "split 'training' is not one of train, val, test (or empty)"),
    ("", 3, "empty split, but line 2 gives one"),
]


@pytest.mark.parametrize("value, line, words", BAD_SPLITS, ids=["bad value", "on some rows only"])
def test_bad_split_values_name_the_line(tmp_path: Path, value: str, line: int, words: str) -> None:
    folder = tmp_path / "set"
    lines = [f"{row},{value if i == 1 else 'train'}" for i, row in enumerate(good_rows(folder))]
    error = one_error_line(invoke("prepare", "csv", write_manifest(folder, "path,pid,modality,split", lines)))
    assert f"line {line}: {words}" in error


BAD_HEADERS = [
    ("path,pid", "missing column 'modality'"),
    ("path,pid,modality,camara", "unknown column 'camara' (did you mean 'camera'?)"),
    ("path,pid,pid,modality", "column 'pid' appears twice"),
    ("img/alice_rgb_0.png,alice,rgb", "the first row is not a header row"),
]


@pytest.mark.parametrize("header, words", BAD_HEADERS, ids=["missing", "unknown", "twice", "no header"])
def test_a_bad_header_names_line_1(tmp_path: Path, header: str, words: str) -> None:
    folder = tmp_path / "set"
    manifest = write_manifest(folder, header, good_rows(folder)[:2])
    assert f"line 1: {words}" in one_error_line(invoke("prepare", "csv", manifest))


def test_every_problem_is_counted_and_skip_bad_drops_them(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    lines = good_rows(folder)  # line n + 2 is lines[n]: rgb alice 2-3, bob 4-5, ...; ir alice 10-11, bob 12-13, ...
    lines[1] = "img/gone.png,alice,rgb"  # line 3: no such file
    lines[10] = "img/bob_ir_0.png,bob,xray"  # line 12: no such spectrum
    lines[11] = ""  # line 13: blank, skipped (bob is left without infrared images: a problem at his line 4)
    lines.append("img/zed.png,zed,rgb")  # line 18: zed has visible images only
    image(folder / "img" / "zed.png", value=5)
    manifest = write_manifest(folder, "path,pid,modality", lines)
    error = one_error_line(invoke("prepare", "csv", manifest))
    assert f"{manifest} line 3: image 'img/gone.png' not found" in error
    assert f"3 more problem(s): {manifest} line 4, {manifest} line 12, {manifest} line 18" in error
    result = invoke("prepare", "csv", manifest, "--skip-bad", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [d["where"] for d in report["dropped"]] == [f"{manifest} line {n}" for n in (3, 4, 12, 18)]
    assert "pid 'bob' has visible images only (2)" in report["dropped"][1]["reason"]
    rows, meta, pids, _ = read_prepared(folder / "prepared")
    assert set(pids) == {"alice", "p2", "p10"} and len(rows) == 11
    assert str((folder / "img" / "zed.png").resolve()) in meta["skipped"]
    assert len(meta["dropped"]) == 4


def test_own_prepared_folder_serves_split_evaluate_and_index(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """Downstream commands read it as any prepared dataset; the evaluation protocol follows the dataset (own)."""
    root = make_folder(tmp_path / "mine", cameras=True)
    assert invoke("prepare", "folder", root, "--cameras").exit_code == 0
    prepared = root / "prepared"
    shown = invoke("split", prepared, "--json")
    assert shown.exit_code == 0, shown.output
    view = json.loads(shown.stdout)
    assert view["protocol"]["protocol"] == "own" and view["queries"] and view["gallery"]
    scored = runner.invoke(app, ["evaluate", str(tiny_checkpoint), "--data", str(prepared), "--protocol", "own",
                                 "--device", "cpu", "--threads", "1", "--quiet", "--json"])
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["protocol"]["dataset"] == "folder"
    indexed = runner.invoke(app, ["index", str(root / "visible"), "-c", str(tiny_checkpoint), "-m", "visible",
                                  "-o", str(tmp_path / "idx"), "--device", "cpu", "--threads", "1", "--quiet", "--json"])
    assert indexed.exit_code == 0, indexed.output


def test_folder_cache_is_written_at_the_given_size(tmp_path: Path) -> None:
    """``prepare folder --cache --cache-size`` reaches the shared cache writer (as ``prepare sysu`` does)."""
    root = make_folder(tmp_path / "mine", cameras=True)
    result = invoke("prepare", "folder", root, "--cameras", "--cache", "--cache-size", "12x6", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    _, meta, _, _ = read_prepared(root / "prepared")
    assert report["cache"]["height"] == 12 and meta["cache"]["height"] == 12 and meta["cache"]["width"] == 6
    assert meta["cache"]["images"] > 0
