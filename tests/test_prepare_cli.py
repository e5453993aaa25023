"""``mclnet prepare`` through the CLI: JSON shape, written files, clear errors, --skip-bad, --cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mclnet_cli.cli.app import app

sys.path.insert(0, str(Path(__file__).parent))
from test_sources import SIXTEEN_BIT, make_llcm, make_regdb, make_sysu  # noqa: E402

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["--quiet", *map(str, args)])


def assert_clean_failure(result, *needles: str) -> str:
    """Exit code 1, one error line naming what is wrong, no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert result.stdout == ""
    return lines[0]


def test_sysu_json_and_files(tmp_path: Path) -> None:
    root = make_sysu(tmp_path / "SYSU-MM01")
    out = tmp_path / "prepared"
    result = invoke("prepare", "sysu", root, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["dataset"] == "sysu" and payload["out"] == str(out.resolve()) and payload["skipped"] == []
    assert payload["counts"]["train"]["visible"] == {"ids": 3, "images": 8}  # pid 1: 2+1+1+1, pid 2: 1, pid 3: 2
    assert payload["counts"]["train"]["infrared"] == {"ids": 3, "images": 5}
    assert payload["counts"]["val"] == {"visible": {"ids": 1, "images": 1}, "infrared": {"ids": 1, "images": 1}}
    assert payload["counts"]["test"] == {"visible": {"ids": 2, "images": 5}, "infrared": {"ids": 2, "images": 4}}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dataset"] == "sysu" and meta["root"] == str(root.resolve()) and "mclnet_version" in meta
    assert meta["counts"] == payload["counts"]
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 8 + 5 + 2 + 9 and {r["pid"] for r in rows} == {1, 2, 3, 4, 5, 6}


def test_sysu_table_output(tmp_path: Path) -> None:
    root = make_sysu(tmp_path / "SYSU-MM01")
    result = invoke("prepare", "sysu", root, "--out", tmp_path / "p")
    assert result.exit_code == 0, result.output
    assert "train" in result.stdout and "infrared" in result.stdout and "wrote" in result.stdout
    assert not result.stdout.lstrip().startswith("{")


def test_training_id_in_one_modality_is_a_warning(tmp_path: Path) -> None:
    tree = {1: {1: 1, 3: 1}, 2: {1: 2}, 3: {1: 1, 6: 1}, 5: {1: 1, 3: 1}}
    root = make_sysu(tmp_path / "SYSU", tree=tree, splits={"train": [1, 2], "val": [3], "test": [5]})
    result = invoke("prepare", "sysu", root, "--out", tmp_path / "p", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["single_modality_ids"] == [2]
    human = invoke("prepare", "sysu", root, "--out", tmp_path / "p")
    assert "1 training id(s) have images in only one modality" in human.stderr


def test_corrupt_image_fails_then_skip_bad(tmp_path: Path) -> None:
    root = make_sysu(tmp_path / "SYSU")
    bad = root / "cam1" / "0005" / "0001.jpg"
    bad.write_bytes(b"this is not a jpeg at all")
    out = tmp_path / "p"
    line = assert_clean_failure(invoke("prepare", "sysu", root, "--out", out), str(bad), "--skip-bad", "1 image(s) do not decode")
    assert not (out / "manifest.jsonl").exists(), line
    result = invoke("prepare", "sysu", root, "--out", out, "--skip-bad", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["skipped"] == [str(bad)]
    assert payload["counts"]["test"]["visible"]["images"] == 4
    assert str(bad) not in (out / "manifest.jsonl").read_text()
    assert json.loads((out / "meta.json").read_text())["skipped"] == [str(bad)]


def test_truncated_jpeg_is_caught(tmp_path: Path) -> None:
    """A JPEG cut short has a valid header (PIL ``verify`` passes it) but does not decode."""
    from mclnet_cli.data.images import load_rgb
    from mclnet_cli.data.prepare import check_image
    from mclnet_cli.errors import DataError

    root = make_sysu(tmp_path / "SYSU")
    bad = root / "cam1" / "0001" / "0001.jpg"  # a training image
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, size=(64, 32, 3), dtype=np.uint8), mode="RGB").save(bad, quality=90)
    data = bad.read_bytes()
    bad.write_bytes(data[: int(len(data) * 0.6)])
    with Image.open(bad) as image:
        image.verify()  # the header check alone would let it through
    with pytest.raises(DataError, match="cannot decode"):
        load_rgb(bad)
    assert check_image(str(bad)) is not None
    out = tmp_path / "p"
    assert_clean_failure(invoke("prepare", "sysu", root, "--out", out), str(bad), "1 image(s) do not decode")
    assert not (out / "manifest.jsonl").exists()
    result = invoke("prepare", "sysu", root, "--out", out, "--skip-bad", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["skipped"] == [str(bad)]


def test_many_corrupt_images_listed_briefly(tmp_path: Path) -> None:
    root = make_sysu(tmp_path / "SYSU")
    for path in sorted((root / "cam1").rglob("*.jpg")):
        path.write_bytes(b"")
    assert_clean_failure(invoke("prepare", "sysu", root, "--out", tmp_path / "p"), "do not decode", "more")


def test_missing_split_file(tmp_path: Path) -> None:
    root = make_sysu(tmp_path / "SYSU")
    (root / "exp" / "test_id.txt").unlink()
    assert_clean_failure(invoke("prepare", "sysu", root, "--out", tmp_path / "p"), "missing file", "test_id.txt")


def test_missing_root_and_folder(tmp_path: Path) -> None:
    assert_clean_failure(invoke("prepare", "sysu", tmp_path / "nope", "--out", tmp_path / "p"), "not found", "nope")
    root = make_llcm(tmp_path / "LLCM")
    for child in (root / "test_vis").rglob("*"):
        if child.is_file():
            child.unlink()
    (root / "test_vis" / "cam1" / "0010").rmdir()
    (root / "test_vis" / "cam2" / "0010").rmdir()
    (root / "test_vis" / "cam9" / "0011").rmdir()
    for cam in ("cam1", "cam2", "cam9"):
        (root / "test_vis" / cam).rmdir()
    (root / "test_vis").rmdir()
    assert_clean_failure(invoke("prepare", "llcm", root, "--out", tmp_path / "p"), "missing folder", "test_vis")


def test_malformed_split_line(tmp_path: Path) -> None:
    root = make_sysu(tmp_path / "SYSU")
    (root / "exp" / "val_id.txt").write_text("4,\n")
    assert_clean_failure(invoke("prepare", "sysu", root, "--out", tmp_path / "p"), "val_id.txt", "trailing")


def test_root_path_containing_cam(tmp_path: Path) -> None:
    root = make_sysu(tmp_path / "my_cam3_backup" / "cam1")
    result = invoke("prepare", "sysu", root, "--out", tmp_path / "cam2_out", "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "cam2_out" / "manifest.jsonl").read_text().splitlines()]
    assert {(r["pid"], r["cam"]) for r in rows if r["pid"] == 6} == {(6, 4), (6, 5), (6, 6)}
    llcm = make_llcm(tmp_path / "cam7" / "LLCM")
    result = invoke("prepare", "llcm", llcm, "--out", tmp_path / "llcm_out", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"]["test"]["infrared"] == {"ids": 2, "images": 3}


def test_regdb_trial_recorded(tmp_path: Path) -> None:
    root = make_regdb(tmp_path / "RegDB")
    result = invoke("prepare", "regdb", root, "--out", tmp_path / "p", "--trial", "3", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["trial"] == 3 and payload["dataset"] == "regdb"
    assert json.loads((tmp_path / "p" / "meta.json").read_text())["trial"] == 3
    assert payload["counts"]["train"]["infrared"] == {"ids": 3, "images": 6}
    bad = invoke("prepare", "regdb", root, "--out", tmp_path / "p", "--trial", "12")
    assert bad.exit_code != 0 and "Traceback" not in bad.output


def test_cache_rows_match_resized_images(tmp_path: Path) -> None:
    from mclnet_cli.data.cache import open_cache, resized_array
    from mclnet_cli.data.records import load_prepared

    root = make_sysu(tmp_path / "SYSU")
    out = tmp_path / "p"
    result = invoke("prepare", "sysu", root, "--out", out, "--cache", "--cache-size", "12x6", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["cache"]["images"] == 15 and payload["cache"]["height"] == 12  # train + val images
    prepared = load_prepared(out)
    train = [s for s in prepared.samples if s.split in ("train", "val")]
    token = prepared.meta["cache"]["token"]
    assert prepared.meta["cache"] == {"height": 12, "width": 6, "images": 15, "token": token} and token == payload["cache"]["token"]
    cache = open_cache(out, 12, 6, train, token=token)
    assert cache is not None and open_cache(out, 24, 12, train, token=token) is None
    assert open_cache(out, 12, 6, train, token="another build") is None and open_cache(out, 12, 6, train, token=None) is None
    array = np.load(out / "cache" / "train_uint8_12x6.npy", mmap_mode="r")
    assert array.shape == (15, 12, 6, 3) and array.dtype == np.uint8
    pid, cam, index = SIXTEEN_BIT
    sixteen = str(root / f"cam{cam}" / f"{pid:04d}" / f"{index:04d}.png")
    for sample in train:
        assert np.array_equal(cache.array(sample.path), resized_array(sample.path, 12, 6))
    reference = np.asarray(Image.open(sixteen), dtype=np.float64)
    assert cache.array(sixteen).std() > 0 and reference.max() > 255  # 16-bit content scaled into uint8
    assert_clean_failure(invoke("prepare", "sysu", root, "--out", out, "--cache", "--cache-size", "12by6"), "12by6", "HEIGHTxWIDTH")


def test_re_prepare_replaces_or_removes_the_cache(tmp_path: Path) -> None:
    import dataclasses

    from mclnet_cli.config import load_config
    from mclnet_cli.data.loader import build_train_loader
    from mclnet_cli.data.records import load_prepared

    root = make_sysu(tmp_path / "SYSU")
    out = tmp_path / "p"
    data_cfg = dataclasses.replace(load_config("tiny").data, height=12, width=6, num_ids=2, num_instances=1, workers=0)
    assert invoke("prepare", "sysu", root, "--out", out, "--cache", "--cache-size", "12x6").exit_code == 0
    first = load_prepared(out).meta["cache"]["token"]
    assert build_train_loader(load_prepared(out), data_cfg, seed=0, steps_per_epoch=1).cached
    (out / "cache" / "notes.txt").write_text("not ours")  # a stranger's file in the folder is left alone
    assert invoke("prepare", "sysu", root, "--out", out, "--cache", "--cache-size", "12x6").exit_code == 0
    assert load_prepared(out).meta["cache"]["token"] != first
    result = invoke("prepare", "sysu", root, "--out", out)  # no --cache: the old cache must not be used
    assert result.exit_code == 0, result.output
    prepared = load_prepared(out)
    assert "cache" not in prepared.meta
    assert sorted(p.name for p in (out / "cache").iterdir()) == ["notes.txt"]
    assert not build_train_loader(prepared, data_cfg, seed=0, steps_per_epoch=1).cached
    (out / "cache" / "notes.txt").unlink()
    assert invoke("prepare", "sysu", root, "--out", out).exit_code == 0
    assert not (out / "cache").exists()


def test_one_sub_command_per_entry_of_the_dataset_table() -> None:
    from mclnet_cli.config import Dataset, names
    from mclnet_cli.data.sources import SOURCES

    assert (*SOURCES, "synthetic") == names(Dataset)
    import typer

    from mclnet_cli.data.own import FORMATS

    commands = typer.main.get_command(app).commands["prepare"].commands
    assert list(commands) == [*SOURCES, "synthetic", *FORMATS]  # own data (folder, csv): test_own_data.py
    for source in SOURCES.values():
        assert commands[source.name].help == source.layout


@pytest.mark.parametrize("dataset", ["sysu", "llcm"])
def test_an_option_of_another_dataset_is_refused(tmp_path: Path, dataset: str) -> None:
    from mclnet_cli.data.prepare import prepare_dataset
    from mclnet_cli.errors import DataError

    result = invoke("prepare", dataset, tmp_path, "--out", tmp_path / "p", "--trial", "2")
    assert result.exit_code == 2 and "No such option: --trial" in result.output
    with pytest.raises(DataError, match=f"--trial does not apply to {dataset}"):
        prepare_dataset(dataset, tmp_path, tmp_path / "p", options={"trial": 2})
    assert not (tmp_path / "p").exists()


def test_regdb_without_trial_records_the_table_default(tmp_path: Path) -> None:
    from mclnet_cli.data.prepare import prepare_dataset

    report = prepare_dataset("regdb", make_regdb(tmp_path / "RegDB"), tmp_path / "p", workers=1)
    assert report.options == {"trial": 1} and report.to_json()["trial"] == 1
    assert json.loads((tmp_path / "p" / "meta.json").read_text())["trial"] == 1


def test_a_new_table_entry_becomes_a_command_with_its_own_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the table says is all a new dataset needs on the CLI side: its command, layout line and option."""
    import typer

    from mclnet_cli.cli import prepare as cli_prepare
    from mclnet_cli.data.sources import SOURCES, Source, SourceOption

    seen: dict[str, object] = {}

    def fake_prepare(dataset: str, root: Path, out: Path, **kwargs: object) -> None:
        seen.update(dataset=dataset, root=root, out=out, **kwargs)
        raise KeyboardInterrupt  # stop before rendering: the call is what is checked

    monkeypatch.setattr("mclnet_cli.data.prepare.prepare_dataset", fake_prepare)
    source = Source("newset", "NewSet: a/<pid>/*.png.", (SourceOption("fold", 2, 1, 5, "Fold 1..5."),))
    monkeypatch.setitem(SOURCES, "newset", source)
    group = typer.Typer()
    group.command("newset")(cli_prepare.source_command(source))
    group.command("other")(cli_prepare.source_command(SOURCES["sysu"]))  # two commands: keep the group shape
    shown = runner.invoke(group, ["newset", "--help"], terminal_width=200)
    assert "NewSet: a/<pid>/*.png." in shown.stdout and "--fold" in shown.stdout and "--skip-bad" in shown.stdout
    result = runner.invoke(group, ["newset", str(tmp_path), "-o", str(tmp_path / "p"), "--fold", "4", "--quiet"])
    assert result.exit_code == 130, result.output
    assert seen["dataset"] == "newset" and seen["options"] == {"fold": 4} and seen["skip_bad"] is False
    assert runner.invoke(group, ["newset", str(tmp_path), "-o", "p", "--fold", "9"]).exit_code == 2
