"""Issue 16: the shared options, threads, progress for logs and narrow terminals, Ctrl-C, --force, --save formats,
refusal of options a protocol does not use, shell completion, the picture, re-ranking across identical galleries."""

from __future__ import annotations

import io
import json
import sys
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from mclnet_cli.cli import options
from mclnet_cli.cli.app import app
from mclnet_cli.cli.output import state
from mclnet_cli.errors import ConfigError

COMMANDS = (
    ["train"], ["evaluate"], ["split"], ["index"], ["query"], ["export"], ["serve"], ["convert"], ["info"],
    ["presets", "list"], ["presets", "show"], ["prepare", "sysu"], ["prepare", "regdb"], ["prepare", "llcm"],
    ["prepare", "synthetic"], ["prepare", "folder"], ["prepare", "csv"], ["demo"],
)
COMPUTE = {"train", "evaluate", "index", "query", "export", "serve", "demo"}


@pytest.fixture
def torch_threads(monkeypatch: pytest.MonkeyPatch):
    """Two torch threads before the test (so that --threads 1 is visible), the original count after.

    The machine reads as idle, so that the load-aware default would leave the two threads alone.
    """
    import torch

    monkeypatch.setattr(options.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
    state.threads = None


@pytest.fixture(autouse=True)
def _restore_threads():
    """Commands here set torch's thread count for the whole process: put it back after each test."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
    state.threads = None


def _images(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray((rng.random((64, 32, 3)) * 255).astype("uint8")).save(folder / f"{i:03d}.jpg")
    return folder


# --------------------------------------------------------------------------- the shared options


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_takes_quiet_json_debug_after_its_name(cli_runner: Any, command: list[str]) -> None:
    result = cli_runner.invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for option in ("--quiet", "--json", "--debug"):
        assert option in result.output, (command, option)
    assert ("--threads" in result.output) == (command[0] in COMPUTE), command


def test_debug_after_the_command_is_applied(cli_runner: Any) -> None:
    quiet = cli_runner.invoke(app, ["presets", "show", "tny"])
    assert quiet.exit_code == 1 and "Traceback" not in quiet.output and isinstance(quiet.exception, SystemExit)
    loud = cli_runner.invoke(app, ["presets", "show", "tny", "--debug"])
    assert isinstance(loud.exception, ConfigError)  # raised, not turned into one line


def test_quiet_after_the_command_silences_the_progress_lines(
    cli_runner: Any, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gallery = _images(tmp_path / "g", 3)
    monkeypatch.setenv("MCLNET_PROGRESS_EVERY", "0")  # a plain line at every update
    base = ["index", str(gallery), "-c", str(tiny_checkpoint), "-m", "visible", "--device", "cpu", "--batch-size", "1"]
    loud = cli_runner.invoke(app, [*base, "-o", str(tmp_path / "a")])
    assert loud.exit_code == 0, loud.output
    assert "embedding gallery: 1/3 img" in loud.stderr and "embedding gallery: 3/3 img" in loud.stderr
    quiet = cli_runner.invoke(app, [*base, "-o", str(tmp_path / "b"), "--quiet"])
    assert quiet.exit_code == 0 and "embedding gallery" not in quiet.stderr
    root = cli_runner.invoke(app, ["--quiet", *base, "-o", str(tmp_path / "c")])  # the root form keeps working
    assert root.exit_code == 0 and "embedding gallery" not in root.stderr


def test_progress_lines_in_a_log_wait_for_the_interval(
    cli_runner: Any, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gallery = _images(tmp_path / "g", 2)
    monkeypatch.setenv("MCLNET_PROGRESS_EVERY", "3600")
    args = ["index", str(gallery), "-c", str(tiny_checkpoint), "-m", "visible", "-o", str(tmp_path / "i"), "--device", "cpu"]
    result = cli_runner.invoke(app, args)
    assert result.exit_code == 0 and "embedding gallery" not in result.stderr  # nothing due within an hour


# --------------------------------------------------------------------------- threads


def _capture_threads(monkeypatch: pytest.MonkeyPatch, module: str, name: str) -> list[int]:
    import importlib

    import torch

    seen: list[int] = []

    def fake(*args: Any, **kwargs: Any) -> Any:
        seen.append(torch.get_num_threads())
        raise ConfigError("stopped by the test")

    monkeypatch.setattr(importlib.import_module(module), name, fake)
    return seen


@pytest.mark.usefixtures("torch_threads")
@pytest.mark.parametrize(
    "target, args",
    [
        (("mclnet_cli.engine.train", "fit"), ["train", "--data", "d", "--out", "o", "--preset", "tiny"]),
        (("mclnet_cli.engine.evaluate", "evaluate_checkpoint"), ["evaluate", "x.pt", "--data", "d"]),
        (("mclnet_cli.engine.indexing", "build_gallery_index"), ["index", "g", "-c", "x.pt", "-m", "visible", "-o", "i"]),
        (("mclnet_cli.engine.search", "search_gallery"), ["query", "p.jpg", "-i", "i", "-m", "infrared"]),
        (("mclnet_cli.engine.export", "export_model"), ["export", "x.pt", "-f", "torchscript", "-m", "visible", "-o", "e.pt"]),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else v[1],
)
@pytest.mark.parametrize("how", ["option", "env"])
def test_threads_reach_torch_before_the_work(
    cli_runner: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, target: tuple[str, str], args: list[str], how: str
) -> None:
    monkeypatch.chdir(tmp_path)
    seen = _capture_threads(monkeypatch, *target)
    if how == "option":
        result = cli_runner.invoke(app, [*args, "--threads", "1"])
    else:
        result = cli_runner.invoke(app, args, env={"MCLNET_THREADS": "1"})
    assert "stopped by the test" in result.output, result.output
    assert seen == [1]


@pytest.mark.usefixtures("torch_threads")
def test_without_threads_an_idle_machine_keeps_torchs_default(cli_runner: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _capture_threads(monkeypatch, "mclnet_cli.engine.evaluate", "evaluate_checkpoint")
    result = cli_runner.invoke(app, ["evaluate", "x.pt", "--data", "d"], env={"MCLNET_THREADS": ""})
    assert "stopped by the test" in result.output and seen == [2]


@pytest.mark.usefixtures("torch_threads")
def test_serve_threads(cli_runner: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvicorn")
    seen = _capture_threads(monkeypatch, "mclnet_cli.serve", "create_app")
    result = cli_runner.invoke(app, ["serve", "-i", "idx", "--port", "0", "--threads", "1"])  # it binds before loading
    assert "stopped by the test" in result.output and seen == [1]


@pytest.fixture
def no_thread_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No thread count chosen by the environment (conftest sets OMP_NUM_THREADS=1 for the suite)."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_thread_env")
def test_default_threads_take_the_cores_nobody_else_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options, "usable_cores", lambda: 2)
    monkeypatch.setattr(options, "running_processes", lambda: 0)
    assert options.default_threads() is None  # torch's own default: one thread per core
    for others in (1, 2, 7):  # one busy process on 2 cores already halves two threads (docs/benchmarks.md)
        monkeypatch.setattr(options, "running_processes", lambda: others)
        assert options.default_threads() == 1, others
    monkeypatch.setattr(options, "usable_cores", lambda: 16)
    for others, expected in ((1, 15), (8, 8), (15, 1), (40, 1)):
        monkeypatch.setattr(options, "running_processes", lambda: others)
        assert options.default_threads() == expected, others
    # a thread count the environment chose stands (torchrun sets OMP_NUM_THREADS for every rank)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert options.default_threads() is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert options.default_threads() is None


@pytest.mark.usefixtures("no_thread_env", "torch_threads")
def test_the_default_never_exceeds_what_torch_uses_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """64 usable cores and one busy neighbour would say 63; torch's own default here (2) is the cap."""
    monkeypatch.setattr(options, "usable_cores", lambda: 64)
    monkeypatch.setattr(options, "running_processes", lambda: 1)
    assert options.default_threads() == 63
    assert options.apply_threads(None) == 2
    assert options.apply_threads(3) == 3  # an explicit --threads is not capped


@pytest.mark.usefixtures("no_thread_env")
def test_a_job_that_just_ended_does_not_make_the_machine_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 1-minute average still counts the previous command; nothing runs now: use every core."""
    monkeypatch.setattr(options, "usable_cores", lambda: 2)
    monkeypatch.setattr(options.os, "getloadavg", lambda: (1.8, 1.7, 1.6))
    monkeypatch.setattr(options, "running_processes", lambda: 0)
    assert options.default_threads() is None
    monkeypatch.setattr(options, "running_processes", lambda: None)  # not measurable: the average decides
    assert options.default_threads() == 1
    monkeypatch.setattr(options.os, "getloadavg", lambda: (0.3, 0.3, 0.3))
    assert options.default_threads() is None


def test_running_processes_reads_procs_running_without_itself(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3\nprocs_running 5\nprocs_blocked 0\n")
    assert options.running_processes(stat, samples=3, interval_s=0) == 4
    stat.write_text("cpu  1 2 3\n")
    assert options.running_processes(stat, samples=1) is None
    assert options.running_processes(tmp_path / "missing", samples=1) is None


@pytest.mark.usefixtures("torch_threads", "no_thread_env")
def test_a_busy_machine_gets_one_thread_by_default(cli_runner: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(options.os, "getloadavg", lambda: (float(options.os.cpu_count() or 1) + 5, 0.0, 0.0))
    monkeypatch.setattr(options, "running_processes", lambda: (options.os.cpu_count() or 1) + 5)
    seen = _capture_threads(monkeypatch, "mclnet_cli.engine.evaluate", "evaluate_checkpoint")
    result = cli_runner.invoke(app, ["evaluate", "x.pt", "--data", "d"], env={"MCLNET_THREADS": ""})
    assert "stopped by the test" in result.output and seen == [1]


def test_threads_must_be_positive(cli_runner: Any) -> None:
    result = cli_runner.invoke(app, ["evaluate", "x.pt", "--data", "d", "--threads", "0"])
    assert result.exit_code == 2 and "--threads" in result.output


# --------------------------------------------------------------------------- training progress


def _reporter(console: Console, threads: int = 2) -> Any:
    from mclnet_cli.cli.train import RichReporter

    state.quiet, state.threads = False, threads
    reporter = RichReporter(show_progress=True, console=console)
    reporter.start({
        "epochs": 16, "steps_per_epoch": 25, "start_epoch": 0, "dataset": "synthetic", "num_classes": 60,
        "device": "cpu", "out_dir": "run",
    })
    return reporter


STATS = {"loss": 30.667, "parts": {"id": 6.1, "tri": 0.3, "mcl": 24.2}, "lr": {"backbone": 0.1, "head": 0.02}, "images_per_s": 45.0}


def test_the_training_line_keeps_steps_rate_and_eta_at_80_columns() -> None:
    console = Console(width=80, file=io.StringIO(), force_terminal=True)
    reporter = _reporter(console)
    try:
        reporter.epoch_start(0, 25)
        for step in range(7):
            reporter.step(0, step, STATS)
        shown = Console(width=80, file=io.StringIO(), force_terminal=False)
        shown.print(reporter.progress.get_renderable())
        line = shown.file.getvalue().splitlines()[0]
    finally:
        reporter.close()
        state.threads = None
    assert len(line) <= 80
    assert "epoch 1/16" in line and "7/25" in line and "45 img/s" in line and "ETA " in line and "loss 30.667" in line
    assert "lr " not in line  # dropped first: no room at 80 columns


def test_the_training_line_in_a_log_is_plain_and_periodic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCLNET_PROGRESS_EVERY", "0")
    console = Console(width=80, file=io.StringIO(), force_terminal=False)
    reporter = _reporter(console)
    reporter.epoch_start(0, 25)
    reporter.step(0, 0, STATS)
    reporter.step(0, 1, STATS)
    reporter.close()
    state.threads = None
    lines = console.file.getvalue().splitlines()
    assert lines[-1].startswith("epoch 1/16 step 2/25 loss 30.667 45 img/s ETA ")
    assert "\x1b" not in console.file.getvalue()


@pytest.mark.parametrize("threads, hint", [(2, True), (1, False)])
def test_a_collapse_in_throughput_gets_one_notice(threads: int, hint: bool) -> None:
    console = Console(width=200, file=io.StringIO(), force_terminal=False)
    reporter = _reporter(console, threads=threads)
    row = {"loss": 1.0, "parts": {}, "lr": {"a": 0.1}, "epoch_time_s": 1.0}
    for rate in (90.0, 60.0, 25.0, 20.0):
        reporter.epoch_end(0, {**row, "images_per_s": rate})
    state.threads = None
    text = console.file.getvalue()
    assert text.count("under a third of this run's best (90)") == 1
    assert ("--threads 1" in text) is hint


# --------------------------------------------------------------------------- Ctrl-C, --force, --save


@pytest.mark.parametrize(
    "target, args",
    [
        (("mclnet_cli.engine.evaluate", "evaluate_checkpoint"), ["evaluate", "x.pt", "--data", "d"]),
        (("mclnet_cli.engine.search", "search_gallery"), ["query", "p.jpg", "-i", "i", "-m", "infrared"]),
        (("mclnet_cli.data.prepare", "prepare_dataset"), ["prepare", "sysu", "root", "-o", "out"]),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else v[1],
)
def test_ctrl_c_exits_130_without_error(
    cli_runner: Any, monkeypatch: pytest.MonkeyPatch, target: tuple[str, str], args: list[str]
) -> None:
    import importlib

    def interrupted(*a: Any, **k: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(target[0]), target[1], interrupted)
    argv = [*args, "--threads", "1"] if args[0] != "prepare" else args
    monkeypatch.setattr(sys, "argv", ["/venv/bin/mclnet", *argv, "--out dir"])  # as the shell passed them
    result = cli_runner.invoke(app, argv)
    assert result.exit_code == 130, result.output
    assert "interrupted:" in result.output and "error:" not in result.output and "run the same command" in result.output
    # the exact command to continue, quoted for the shell
    assert f"mclnet {' '.join(argv)} '--out dir'" in " ".join(result.output.split())


def test_index_over_an_index_needs_add_or_force(cli_runner: Any, tiny_checkpoint: Path, tmp_path: Path) -> None:
    gallery, out = _images(tmp_path / "g", 3), tmp_path / "idx"
    base = ["index", str(gallery), "-c", str(tiny_checkpoint), "-m", "visible", "-o", str(out), "--device", "cpu", "-q"]
    assert cli_runner.invoke(app, base).exit_code == 0
    before = (out / "meta.json").read_bytes()
    refused = cli_runner.invoke(app, base)
    assert refused.exit_code == 1 and "already holds an index of 3 image(s)" in refused.output
    assert "--add" in refused.output and "--force" in refused.output
    assert (out / "meta.json").read_bytes() == before
    both = cli_runner.invoke(app, [*base, "--add", "--force"])
    assert both.exit_code == 1 and "give one of them" in both.output
    replaced = cli_runner.invoke(app, [*base, "--force", "--json"])
    assert replaced.exit_code == 0, replaced.output
    report = json.loads(replaced.stdout)
    assert report["replaced"] == 3 and report["count"] == 3
    table = cli_runner.invoke(app, [*base, "--force"])
    assert table.exit_code == 0 and "replaced the previous index of 3 image(s)" in table.output


def test_query_save_writes_the_format_of_its_suffix(cli_runner: Any, tiny_checkpoint: Path, tmp_path: Path) -> None:
    gallery, out = _images(tmp_path / "g", 3), tmp_path / "idx"
    args = ["index", str(gallery), "-c", str(tiny_checkpoint), "-m", "visible", "-o", str(out), "--device", "cpu", "-q"]
    assert cli_runner.invoke(app, args).exit_code == 0
    probe = str(gallery / "000.jpg")
    for name, magic, fmt in (("r.jpg", b"\xff\xd8\xff", "JPEG"), ("r.png", b"\x89PNG", "PNG"), ("r.webp", b"RIFF", "WEBP")):
        result = cli_runner.invoke(app, ["query", probe, "-i", str(out), "-m", "ir", "--save", str(tmp_path / name), "-q"])
        assert result.exit_code == 0, result.output
        assert (tmp_path / name).read_bytes()[:4].startswith(magic) and Image.open(tmp_path / name).format == fmt
    bad = cli_runner.invoke(app, ["query", probe, "-i", str(out), "-m", "ir", "--save", str(tmp_path / "r.pict")])
    assert bad.exit_code == 1 and "cannot tell the picture format" in bad.output and not (tmp_path / "r.pict").exists()


# --------------------------------------------------------------------------- options a protocol does not use


@pytest.mark.parametrize(
    "args, message",
    [
        (["--protocol", "sysu", "--direction", "both"], "sysu has one direction"),
        (["--protocol", "sysu", "--direction", "visible_to_infrared"], "sysu has one direction"),
        (["--protocol", "regdb", "--mode", "indoor"], "--mode applies to sysu only"),
        (["--protocol", "llcm", "--mode", "all"], "--mode applies to sysu only"),
        (["--protocol", "regdb", "--shots", "10"], "--shots applies to sysu and llcm"),
        (["--protocol", "regdb", "--trials", "3"], "regdb has one trial per direction"),
        (["--protocol", "regdb", "--draws", "agw"], "regdb draws no gallery"),
        (["--protocol", "regdb", "--draws", "official"], "regdb draws no gallery"),
        (["--perm-file", "x.mat"], "--perm-file is read only with --draws official"),
        (["--batch-size", "8"], "--batch-size apply to embedding images"),
        (["--workers", "2"], "--workers apply to embedding images"),
    ],
)
def test_evaluate_refuses_options_the_protocol_ignores(cli_runner: Any, tmp_path: Path, args: list[str], message: str) -> None:
    features = tmp_path / "f.npz"
    np.savez(features, features=np.eye(2, dtype=np.float32), pids=np.array([1, 1]), cams=np.array([1, 3]),
             modalities=np.array(["visible", "infrared"]), paths=np.array(["/a.jpg", "/b.jpg"]))
    result = cli_runner.invoke(app, ["evaluate", "--features", str(features), *args])
    assert result.exit_code == 1 and message in result.output.replace("\n", " "), result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--direction", "visible_to_infrared"], "sysu has one direction"),
        (["--protocol", "llcm", "--mode", "indoor"], "--mode applies to sysu only"),
        (["--protocol", "regdb", "--shots", "10"], "--shots applies to sysu and llcm"),
        (["--protocol", "regdb", "--draws", "agw"], "regdb draws no gallery"),
        (["--perm-file", "x.mat"], "--perm-file is read only with --draws official"),
    ],
)
def test_split_refuses_options_the_protocol_ignores(cli_runner: Any, prepared_dataset: Path, args: list[str], message: str) -> None:
    result = cli_runner.invoke(app, ["split", str(prepared_dataset), *args])
    assert result.exit_code == 1 and message in result.output.replace("\n", " "), result.output


def test_the_defaults_of_split_still_work(cli_runner: Any, prepared_dataset: Path) -> None:
    result = cli_runner.invoke(app, ["split", str(prepared_dataset), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)["protocol"]
    assert info["direction"] == "infrared_to_visible" and info["shots"] == 1


# --------------------------------------------------------------------------- completion


@pytest.mark.parametrize(
    "words, expected",
    [
        ("mclnet train --preset ", {"tiny", "sysu", "regdb", "llcm", "base"}),
        ("mclnet presets show ti", {"tiny"}),
        ("mclnet index --modality ", {"visible", "infrared"}),
        ("mclnet query -m inf", {"infrared"}),
        ("mclnet export --modality ", {"visible", "infrared"}),
        ("mclnet evaluate --mode ", {"all", "indoor"}),
        ("mclnet evaluate --direction ", {"visible_to_infrared", "infrared_to_visible", "both"}),
        ("mclnet evaluate --protocol ", {"sysu", "regdb", "llcm"}),
        ("mclnet split --draws ", {"agw", "official"}),
        ("mclnet index --kind ", {"flat", "ivf", "hnsw", "ivfpq"}),
        ("mclnet train --device ", {"auto", "cpu", "cuda"}),
        ("mclnet demo --device ", {"auto", "cpu", "cuda"}),
        ("mclnet serve --device c", {"cpu", "cuda"}),
    ],
)
def test_completion_offers_presets_and_closed_choices(cli_runner: Any, words: str, expected: set[str]) -> None:
    env = {"_MCLNET_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": words}
    result = cli_runner.invoke(app, [], prog_name="mclnet", env=env)
    assert result.exit_code == 0, result.output
    offered = set(re.findall(r'"([^"]+)"', result.output))
    assert expected <= offered, offered


# --------------------------------------------------------------------------- picture, re-ranking


def test_the_picture_has_a_legend_and_captions(tmp_path: Path) -> None:
    from mclnet_cli.index import picture
    from mclnet_cli.index.store import Hit

    hits = [Hit(1, 0.9, "/g/a.jpg", 3, 1), Hit(2, 0.8, "/g/unknown_name.jpg", None, None)]
    rows = [("/p/one.jpg", 3, hits, 3), ("/p/two.jpg", 3, hits, 6)]
    image = picture.render_ranked_list(rows, probe_modality="infrared", gallery_modality="visible")
    rows_h = 2 * (128 + 2 * picture.BORDER + picture.CAPTION + picture.GAP)
    legend_band = image.crop((0, 0, image.width, image.height - picture.GAP - rows_h))
    colours = {colour for _, colour in legend_band.getcolors(maxcolors=100_000)}
    for colour in (picture.PROBE, picture.MATCH, picture.MISMATCH, picture.UNKNOWN):
        assert colour in colours, colour
    assert picture._who(3, 1, "/g/a.jpg") == "pid 3 c1" and picture._who(None, None, "/g/x.jpg") == "x.jpg"
    plain = picture.render_ranked_list([(r[0], r[1], r[2]) for r in rows])  # three-field rows still draw
    assert plain.width == image.width


def test_rerank_scores_trials_with_the_same_gallery_the_same() -> None:
    from mclnet_cli.data.records import Modality, Sample
    from mclnet_cli.engine.evaluate import score_trials
    from mclnet_cli.metrics.protocols import Trial

    rng = np.random.default_rng(0)
    nq, ng = 40, 80
    samples = [Sample(f"/q{i}.jpg", i % 20, 3, Modality.INFRARED, "test") for i in range(nq)]
    samples += [Sample(f"/g{i}.jpg", i % 20, 1 + (i // 20) % 2, Modality.VISIBLE, "test") for i in range(ng)]
    feats = rng.normal(size=(20, 8))[[s.pid for s in samples]] + 0.9 * rng.normal(size=(nq + ng, 8))
    feats = np.round(feats, 0)  # coarse features: exact distance ties, as duplicate images give
    feats[nq + 1 :: 7] = feats[nq::7][: len(feats[nq + 1 :: 7])]
    feats = (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32)
    q, g = np.arange(nq), np.arange(nq, nq + ng)
    # 10-shot draws of groups with <= 10 images: the same images, in another order each trial
    trials = [Trial("sysu", t, "infrared_to_visible", q, rng.permutation(g) if t else g, mode="all", shots=10) for t in range(4)]
    results = score_trials(samples, {"bn": feats}, np.arange(nq + ng), trials, rerank=True)
    rows = results["bn"].trials
    assert len({(r["mAP"], r["rank1"], r["mINP"]) for r in rows}) == 1


def test_serve_json_and_quiet(cli_runner: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    uvicorn = pytest.importorskip("uvicorn")
    import mclnet_cli.serve as serve_package

    class Gallery(list):
        extra = {"modality": "visible"}

    engine = SimpleNamespace(gallery=Gallery([1, 2, 3]), health_warnings=lambda: [])
    fake = SimpleNamespace(state=SimpleNamespace(served=SimpleNamespace(engine=engine)))
    monkeypatch.setattr(serve_package, "create_app", lambda settings: fake)
    ran: list[int] = []

    def run(server: Any, sockets: list[Any]) -> None:  # the socket the command bound, listening already
        ran.append(sockets[0].getsockname()[1])
        server.started = True

    monkeypatch.setattr(uvicorn.Server, "run", run)
    loud = cli_runner.invoke(app, ["serve", "-i", "idx", "--port", "0", "--json", "--threads", "1"])  # 0: a free port
    assert loud.exit_code == 0, loud.output
    assert len(ran) == 1 and ran[0] > 0
    assert json.loads(loud.stdout) == {
        "url": f"http://127.0.0.1:{ran[0]}/", "index": "idx", "images": 3, "modality": "visible", "token_required": False,
    }
    assert "serving 3 visible images" in loud.stderr and f"on http://127.0.0.1:{ran[0]} " in loud.stderr
    quiet = cli_runner.invoke(app, ["serve", "-i", "idx", "--port", "0", "--quiet", "--threads", "1"])
    assert quiet.exit_code == 0 and quiet.stdout == "" and "serving" not in quiet.stderr and len(ran) == 2
    state.threads = None


def test_ctrl_c_while_torch_loads_exits_130(cli_runner: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    def interrupted(n: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "set_num_threads", interrupted)
    argv = ["evaluate", "x.pt", "--data", "d", "--threads", "1"]
    monkeypatch.setattr(sys, "argv", ["mclnet", *argv])
    result = cli_runner.invoke(app, argv)
    assert result.exit_code == 130 and "interrupted:" in result.output and "Aborted" not in result.output
    assert "mclnet evaluate x.pt --data d --threads 1" in " ".join(result.output.split())


def test_prepare_writes_progress_lines_to_a_log(cli_runner: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCLNET_PROGRESS_EVERY", "0")
    args = ["prepare", "synthetic", str(tmp_path / "raw"), "--ids", "10", "--images-per-camera", "1", "--json"]
    result = cli_runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "drawing identities: 10/10 id" in result.stderr and "\x1b" not in result.stderr
    assert json.loads(result.stdout)["ids"] == 10  # stdout stays one JSON document
    quiet = cli_runner.invoke(app, [*args[:2], str(tmp_path / "raw2"), *args[3:], "--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == ""


# --------------------------------------------------------------------------- demo


@pytest.mark.usefixtures("torch_threads")
def test_demo_takes_the_shared_options(cli_runner: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen = _capture_threads(monkeypatch, "mclnet_cli.engine.demo", "run_demo")
    result = cli_runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--threads", "1", "--quiet"])
    assert "stopped by the test" in result.output and seen == [1]
    loud = cli_runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--debug"])
    assert isinstance(loud.exception, ConfigError)


def test_demo_ctrl_c_exits_130_and_says_why_it_cannot_resume(
    cli_runner: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import mclnet_cli.engine.demo as engine_demo

    def interrupted(*a: Any, **k: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(engine_demo, "run_demo", interrupted)
    out = tmp_path / "my demo"
    result = cli_runner.invoke(app, ["demo", "--out", str(out), "--quick", "--threads", "1"])
    assert result.exit_code == 130, result.output
    text = result.output.replace("\n", " ")
    assert "interrupted:" in text and "error:" not in text and "cannot resume" in text
    assert f"mclnet demo --out '{out}' --force --quick" in " ".join(text.split())  # quoted for the shell


def test_demo_interrupted_in_training_exits_130_with_the_command(
    cli_runner: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from types import SimpleNamespace

    import mclnet_cli.engine.train as engine_train

    monkeypatch.setattr(
        engine_train, "fit", lambda *a, **k: SimpleNamespace(status="interrupted", epochs_completed=1, epochs=8)
    )
    out = tmp_path / "d"
    result = cli_runner.invoke(app, ["demo", "--out", str(out), "--quick", "--quiet", "--threads", "1"])
    assert result.exit_code == 130, result.output
    text = result.output.replace("\n", " ")
    assert "interrupted:" in text and "error:" not in text and "after 1 of 8 epoch(s)" in text
    assert "cannot resume" in text and f"mclnet demo --out {out} --force --quick" in text


def test_the_command_to_run_again_is_the_one_that_was_started(monkeypatch: pytest.MonkeyPatch) -> None:
    from mclnet_cli.cli.output import invoked_command

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(sys, "argv", ["/usr/bin/mclnet", "index", "my gallery", "-o", "idx"])
    assert invoked_command() == "mclnet index 'my gallery' -o idx"
    monkeypatch.setattr(sys, "argv", ["/repo/mclnet_cli/__main__.py", "evaluate", "x.pt"])
    assert invoked_command() == "python -m mclnet_cli evaluate x.pt"
    monkeypatch.setattr(sys, "argv", ["/usr/bin/pytest", "tests"])  # not started as mclnet: nothing to suggest
    assert invoked_command() is None
    monkeypatch.setattr(sys, "argv", ["/usr/bin/mclnet", "index", "g"])
    monkeypatch.setenv("WORLD_SIZE", "2")  # one rank of torchrun: the launcher's command is the one to repeat
    assert invoked_command() is None
