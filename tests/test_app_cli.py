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
