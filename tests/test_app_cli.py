"""The root app: help without torch, version, presets commands, error rendering."""

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from mclnet_cli import __version__
from mclnet_cli.cli.app import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def test_help_does_not_import_torch_or_faiss():
    code = (
        "import sys\n"
        "from mclnet_cli.cli.app import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('torch', 'faiss', 'torchvision', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    for name in ("prepare", "train", "evaluate", "index", "query", "demo", "presets"):
        assert name in out


def test_version_and_short_help():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"mclnet {__version__}"
    assert runner.invoke(app, ["-h"]).exit_code == 0


def test_no_args_shows_help():
    result = runner.invoke(app, [])
    assert "Usage" in result.output


def test_presets_show_json_is_resolved_config():
    result = runner.invoke(app, ["presets", "show", "tiny", "--set", "optim.lr=0.5", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["optim"]["lr"] == 0.5 and data["model"]["arch"] == "resnet18"
    assert data["optim"]["head_lr"] == 0.1  # inherited from base


def test_presets_list_json():
    result = runner.invoke(app, ["presets", "list", "--json"])
    assert result.exit_code == 0
    assert {"tiny", "sysu"} <= set(json.loads(result.output)["presets"])


def test_core_error_is_one_line_exit_1_without_traceback():
    result = runner.invoke(app, ["presets", "show", "tny"])
    assert result.exit_code == 1
    assert "unknown preset 'tny'" in result.output and "did you mean 'tiny'" in result.output
    assert "Traceback" not in result.output


def test_debug_shows_the_exception():
    result = runner.invoke(app, ["--debug", "presets", "show", "tny"])
    assert result.exit_code != 0
    assert result.exception is not None and "unknown preset" in str(result.exception)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0].strip() for b in readme.split("```bash\n")[1:]]
    test_command = blocks[1]
    assert "pytest" in test_command and "mclnet demo" in blocks[0]
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_info_json_reports_real_versions():
    import torch

    result = runner.invoke(app, ["info", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["mclnet"] == __version__
    assert data["torch"] == torch.__version__
    assert data["faiss"] and data["torchvision"]
    assert Path(data["presets_dir"], "tiny.yaml").is_file()


def test_debug_is_not_sticky_across_invocations(monkeypatch):
    monkeypatch.delenv("MCLNET_DEBUG", raising=False)
    assert runner.invoke(app, ["--debug", "presets", "show", "tny"]).exception is not None
    result = runner.invoke(app, ["presets", "show", "tny"])
    assert result.exit_code == 1 and "unknown preset 'tny'" in result.output


def test_mclnet_debug_env_values(monkeypatch):
    from mclnet_cli.cli.output import env_debug

    for value, expected in (("", False), ("0", False), ("false", False), ("1", True), ("yes", True)):
        monkeypatch.setenv("MCLNET_DEBUG", value)
        assert env_debug() is expected


def test_os_errors_are_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    # --out below a regular file: mkdir fails with an OSError inside the core
    result = runner.invoke(app, ["prepare", "synthetic", str(blocker / "synth"), "--ids", "10", "--json"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "error:" in result.output
    assert "Not a directory" in result.output or "File exists" in result.output


# --------------------------------------------------------------------------- issue 25: a new user's first run


def _narrow_stderr(monkeypatch, columns: int = 40) -> None:
    """rich wraps at the console's width: make stderr a 40-column terminal for one test."""
    from mclnet_cli.cli import output

    monkeypatch.setattr(output.err_console, "_width", columns)
    assert output.err_console.width == columns


def test_train_ctrl_c_prints_the_resume_command_unbroken_at_40_columns(tmp_path, monkeypatch):
    import shlex
    from types import SimpleNamespace

    import mclnet_cli.engine.train as engine_train

    data, out = tmp_path / "prepared data", tmp_path / "runs" / "my first run"
    out.mkdir(parents=True)
    (out / "last.pt").write_bytes(b"")  # the hint offers --resume only when a checkpoint exists

    def interrupted_fit(config, data_dir, out_dir, **kwargs):
        return SimpleNamespace(
            rank=0, status="interrupted", epochs=3, epochs_completed=1, out_dir=Path(out_dir), summary={},
            time_s=1.0, images_per_s=1.0, last_checkpoint=Path(out_dir) / "last.pt", best_checkpoint=None,
        )

    monkeypatch.setattr(engine_train, "fit", interrupted_fit)
    _narrow_stderr(monkeypatch)
    result = runner.invoke(app, ["train", "--preset", "tiny", "--data", str(data), "--out", str(out), "-q", "--threads", "1"])
    assert result.exit_code == 130, result.output
    command = f"mclnet train --data {shlex.quote(str(data))} --out {shlex.quote(str(out))} --resume"
    assert len(command) > 40
    lines = result.stderr.splitlines()
    assert any(line.startswith("interrupted:") and line.endswith(f"continue with: {command}") for line in lines), lines
    assert "error:" not in result.stderr and "Traceback" not in result.output


def test_demo_ctrl_c_prints_the_restart_command_unbroken_at_40_columns(tmp_path, monkeypatch):
    import mclnet_cli.engine.demo as engine_demo

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine_demo, "run_demo", interrupted)
    _narrow_stderr(monkeypatch)
    out = tmp_path / "a demo folder with a long name"
    result = runner.invoke(app, ["demo", "--out", str(out), "--quick", "--threads", "1"])
    assert result.exit_code == 130, result.output
    command = engine_demo.restart_command(out, True)
    assert any(line.startswith("interrupted:") and line.endswith(command) for line in result.stderr.splitlines()), result.stderr


def _every_command(group=None, path=()):
    """Each command path of the app (``("prepare", "sysu")``, ...), groups included."""
    import typer

    group = group if group is not None else typer.main.get_command(app)
    yield path
    for name, command in getattr(group, "commands", {}).items():
        yield from _every_command(command, (*path, name))


def test_flags_show_no_bool_type_in_help(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one row per option: a "<bool>" cannot hide in a wrapped cell
    for args in (["train"], ["index"]):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, result.output
        assert "--quiet" in result.output and "--help" in result.output
        assert "<bool>" not in result.output, result.output
    paths = list(_every_command())
    assert ("train",) in paths and ("prepare", "synthetic") in paths and ("presets", "show") in paths
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0 and "<bool>" not in result.output, (path, result.output)


def test_flags_still_parse_after_their_help_row_lost_its_type():
    result = runner.invoke(app, ["presets", "list", "--json", "--quiet"])
    assert result.exit_code == 0 and "tiny" in json.loads(result.output)["presets"]


def test_train_on_the_raw_synthetic_folder_points_at_its_prepared_child(tmp_path, monkeypatch):
    from mclnet_cli.data.records import write_prepared
    from mclnet_cli.types import Modality, Sample

    raw = tmp_path / "synth"
    samples = [Sample(str(raw / "cam1" / "0001" / "0001.png"), 1, 1, Modality.VISIBLE, "train")]
    write_prepared(raw / "prepared", samples, {"dataset": "synthetic"})
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--data", "synth", "--out", "run", "--preset", "tiny", "--threads", "1"])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output
    assert "did you mean synth/prepared?" in lines[0], lines
    # a folder with no prepared child keeps the plain message
    (tmp_path / "empty").mkdir()
    plain = runner.invoke(app, ["train", "--data", "empty", "--out", "run", "--preset", "tiny", "--threads", "1"])
    assert plain.exit_code == 1 and "did you mean" not in plain.output and "is not a prepared dataset" in plain.output
