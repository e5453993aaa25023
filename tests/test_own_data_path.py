"""Your own cameras, the whole path through the CLI: prepare -> train -> train --init -> evaluate -> index -> query.

README.md's "Search your own images" in miniature: a folder tree with cameras and a CSV
manifest with string pids and no cameras, each drawn with PIL (every person a colour pair
and a stripe count of their own; the infrared images keep the stripes and lose the colour).
Training is a few steps of the tiny preset: this test checks what each step writes and
reports, not how well the model ranks (tests/test_finetune_transfer.py measures that).
"""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from mclnet_cli.cli.app import app
from mclnet_cli.engine.checkpoint import file_fingerprint

runner = CliRunner()
FEW_STEPS = [  # a tiny run of 2 steps on a tiny batch (2 ids x 2 images per spectrum)
    "train.epochs=1", "train.steps_per_epoch=2", "data.num_ids=2", "data.num_instances=2", "data.workers=0",
    "train.recalibrate_neck=false", "train.stop_on_collapse=false",
    "optim.head_only_epochs=0",  # tiny holds the backbone for 2 epochs; these 2 steps must move it
]


def cli(*args: object) -> dict | list:
    """Run ``mclnet --quiet ARGS --json`` and return its JSON; any exit but 0 fails with the output."""
    result = runner.invoke(app, ["--quiet", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def person(path: Path, index: int, shot: int, infrared: bool) -> Path:
    """A 48x24 figure: a top and trousers in the person's two colours, with ``index % 3 + 2`` stripes on the top."""
    rng = np.random.default_rng(1000 * index + 10 * shot + infrared)
    top = tuple(int(255 * c) for c in colorsys.hsv_to_rgb((index * 0.17) % 1, 0.8, 0.9))
    legs = tuple(int(255 * c) for c in colorsys.hsv_to_rgb((index * 0.31 + 0.5) % 1, 0.6, 0.4 + 0.1 * (index % 4)))
    picture = Image.new("RGB", (24, 48), tuple(int(v) for v in rng.integers(60, 120, 3)))
    pen = ImageDraw.Draw(picture)
    dx = int(rng.integers(-2, 3))
    pen.ellipse((8 + dx, 2, 15 + dx, 10), fill=(230, 190, 160))
    pen.rectangle((5 + dx, 11, 18 + dx, 27), fill=top)
    for k in range(index % 3 + 2):
        y = 12 + k * 15 // (index % 3 + 2)
        pen.line((5 + dx, y, 18 + dx, y), fill=(20, 20, 20), width=1)
    pen.rectangle((7 + dx, 28, 16 + dx, 46), fill=legs)
    if infrared:  # no colour, another exposure
        grey = np.asarray(picture.convert("L"), dtype=np.float32) * (0.8 + 0.1 * shot)
        picture = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


def folder_tree(root: Path, names: list[str]) -> Path:
    """ROOT/visible|infrared/<name>/<camera>_<n>.jpg: visible cameras door and gate, infrared gate and yard."""
    for i, name in enumerate(names):
        for spectrum, cameras in (("visible", ("door", "gate")), ("infrared", ("gate", "yard"))):
            for c, camera in enumerate(cameras):
                for n in range(2):
                    person(root / spectrum / name / f"{camera}_{n}.jpg", i, 2 * c + n, spectrum == "infrared")
    return root


def csv_set(folder: Path, names: list[str]) -> Path:
    """folder/shots/{rgb,thermal}/<pid>_<n>.png and folder/manifest.csv (path,pid,modality): string pids, no cameras."""
    lines = ["path,pid,modality"]
    for i, name in enumerate(names):
        for spectrum in ("rgb", "thermal"):
            for n in range(3):
                image = person(folder / "shots" / spectrum / f"{name}_{n}.png", 50 + i, n, spectrum == "thermal")
                lines.append(f"{image.relative_to(folder).as_posix()},{name},{spectrum}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "manifest.csv"


def manifest_rows(prepared: Path) -> list[dict]:
    return [json.loads(line) for line in (prepared / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCLNET_THREADS", "1")


def test_own_cameras_from_prepare_to_query(tmp_path: Path) -> None:
    # 1. prepare: a folder tree with cameras (6 people), a CSV with string pids and no cameras (8 people)
    root = folder_tree(tmp_path / "cameras", ["anna", "ben", "chloe", "dev", "ema", "finn"])
    folder = cli("prepare", "folder", root, "--cameras", "--seed", "3")
    mine = root / "prepared"
    assert folder["dataset"] == "folder" and folder["out"] == str(mine.resolve()) and folder["ids"] == 6
    assert folder["cameras"] == {"door": 1, "gate": 2, "yard": 3}
    assert json.loads((mine / "pids.json").read_text()) == {n: i for i, n in enumerate(["anna", "ben", "chloe", "dev", "ema", "finn"], 1)}
    assert folder["split"]["ids"] == {"train": 3, "test": 3}
    assert {r["cam"] for r in manifest_rows(mine)} == {1, 2, 3}

    names = [f"guest-{k:02d}" for k in (3, 11, 7, 20, 1, 9, 14, 5)]
    manifest = csv_set(tmp_path / "archive", names)
    csv = cli("prepare", "csv", manifest, "--out", tmp_path / "own")
    own = tmp_path / "own"
    assert csv["dataset"] == "csv" and csv["ids"] == 8 and csv["cameras"] == {}
    assert json.loads((own / "meta.json").read_text())["dataset"] == "csv"
    pids = json.loads((own / "pids.json").read_text())
    assert list(pids) == sorted(names, key=lambda n: int(n.split("-")[1]))  # natural order: guest-03 before guest-11
    rows = manifest_rows(own)
    assert len(rows) == 8 * 2 * 3 and {r["cam"] for r in rows} == {-1}
    train_ids = {r["pid"] for r in rows if r["split"] == "train"}
    assert len(train_ids) == 4 and not train_ids & {r["pid"] for r in rows if r["split"] == "test"}

    # 2. train a (tiny, 2-step) model on the folder set: the "trained checkpoint" to start from
    sets = [arg for item in FEW_STEPS for arg in ("--set", item)]
    base = cli("train", "--preset", "tiny", "--data", mine, "--out", tmp_path / "runs" / "base", "--threads", 1, *sets)
    start = tmp_path / "runs" / "base" / "last.pt"
    assert base["status"] == "complete" and start.is_file() and base.get("init") is None

    # 3. fine-tune it on the CSV set with --init; eval.protocol=own as the finetune preset sets it
    tuned = cli("train", "--preset", "tiny", "--init", start, "--data", own, "--out", tmp_path / "runs" / "mine",
                "--threads", 1, *sets, "--set", "eval.protocol=own")
    record = {"path": str(start.resolve()), "fingerprint": file_fingerprint(start), "classifier": "re-made",
              "init_classes": 3, "classes": 4}
    assert tuned["status"] == "complete" and tuned["init"] == record
    assert json.loads((tmp_path / "runs" / "mine" / "summary.json").read_text())["init"] == record
    after = tmp_path / "runs" / "mine" / "last.pt"

    # 4. evaluate before (the start checkpoint's preset says sysu: --protocol own) and after (its config says own)
    refused = runner.invoke(app, ["--quiet", "evaluate", str(start), "--data", str(own), "--threads", "1"])
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "eval.protocol is 'sysu'" in refused.output and "pass --protocol own" in refused.output
    before = cli("evaluate", start, "--data", own, "--protocol", "own", "--trials", 2, "--threads", 1)
    tuned_eval = cli("evaluate", after, "--data", own, "--trials", 2, "--threads", 1)
    keys = [f"{d}/{f}" for d in ("visible_to_infrared", "infrared_to_visible") for f in ("bn", "pool")]
    test_images = {d: 4 * 3 for d in ("visible_to_infrared", "infrared_to_visible")}  # 4 test people x 3 images
    for report, ckpt in ((before, start), (tuned_eval, after)):
        protocol = report["protocol"]
        assert protocol["name"] == "own" and protocol["cmc"] == "standard" and protocol["trials"] == [0, 1]
        assert protocol["fingerprint"] == file_fingerprint(ckpt)
        assert sorted(report["results"]) == sorted(keys)
        for key in keys:
            result = report["results"][key]
            assert 0.0 < result["mean"]["mAP"] <= 100.0 and set(result["mean"]) >= {"rank1", "mAP", "mINP"}
            assert [row["queries"] for row in result["trials"]] == [test_images[key.split("/")[0]]] * 2
            assert all(row["gallery"] == 4 for row in result["trials"])  # one image per test person: camera unknown
    assert before["results"]["visible_to_infrared/bn"] != tuned_eval["results"]["visible_to_infrared/bn"]

    # 5. index the visible shots with the fine-tuned model, 6. query them with an infrared shot
    gallery = tmp_path / "archive" / "shots" / "rgb"
    index = cli("index", gallery, "--checkpoint", after, "--modality", "visible", "--out", tmp_path / "index",
                "--threads", 1)
    assert index["count"] == index["added"] == 8 * 3 and index["fingerprint"] == file_fingerprint(after)
    assert (tmp_path / "index" / "index.faiss").is_file()
    indexed = {json.loads(line)["path"] for line in (tmp_path / "index" / "records.jsonl").read_text().splitlines()}
    probe = tmp_path / "archive" / "shots" / "thermal" / "guest-07_1.png"
    (hits,) = cli("query", probe, "--index", tmp_path / "index", "--modality", "infrared", "--top-k", 5, "--threads", 1)
    assert hits["probe"] == str(probe.resolve()) and hits["gallery_modality"] == "visible"
    assert [r["rank"] for r in hits["results"]] == [1, 2, 3, 4, 5]
    assert {r["path"] for r in hits["results"]} <= indexed and len({r["path"] for r in hits["results"]}) == 5
    scores = [r["score"] for r in hits["results"]]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 + 1e-6 for s in scores)
