"""docs/usage.md cannot drift from the CLI.

- Every ```` ```bash runnable ```` block runs, in order, in one fresh working
  folder, with the ``mclnet`` installed next to this Python; each command must
  exit 0, and a lone ``mclnet ... --json`` must print exactly one JSON document.
- Every ``mclnet <command>`` written in any block of usage.md, protocols.md and
  troubleshooting.md is a real command, and every option used in their bash
  blocks appears in that command's ``--help``.
- A bash block that is not runnable says why on the line above it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
USAGE = ROOT / "docs" / "usage.md"
README = ROOT / "README.md"
CHECKED_DOCS = ("usage.md", "protocols.md", "troubleshooting.md", "../README.md")  # commands and options checked
BIN = Path(sys.executable).parent
MCLNET = BIN / "mclnet"
FENCE = re.compile(r"^```(.*)$")
HEREDOC = re.compile(r"<<-?\s*(['\"]?)(\w+)\1")
INVOCATION = re.compile(r"(^|[\s|;&(])mclnet\s")
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "<<", "(", ")", "2>", "2>&1"}
NOT_RUNNABLE_REASON = re.compile(r"needs (the real dataset|a gpu|gpus)|not runnable|coming", re.IGNORECASE)
COMMAND_TIMEOUT_S = 1800  # a hang guard, not a duration check: far above any machine's run


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    info: str  # the text after the opening fence, e.g. "bash runnable"
    lines: tuple[str, ...]
    line: int  # 1-based line of the opening fence
    before: str  # the last non-blank line above the fence

    @property
    def words(self) -> list[str]:
        return self.info.split()

    @property
    def is_bash(self) -> bool:
        return bool(self.words) and self.words[0] in ("bash", "sh", "shell")

    @property
    def runnable(self) -> bool:
        return self.is_bash and "runnable" in self.words[1:]

    @property
    def coming(self) -> bool:
        return "coming" in self.words[1:]


def code_blocks(text: str) -> list[Block]:
    """Fenced blocks in document order (fences of three backticks, not nested)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        start, info, body = i, match.group(1).strip(), []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{USAGE}:{start + 1}: code block is never closed")
        before = next((line for line in reversed(lines[:start]) if line.strip()), "")
        blocks.append(Block(info, tuple(body), start + 1, before))
        i += 1
    return blocks


def split_commands(lines: tuple[str, ...] | list[str]) -> list[str]:
    """Shell commands of a block: blank lines and comments dropped, ``\\`` continuations joined,
    a here-document kept whole with its command."""
    commands: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1].rstrip() + " " + lines[i].strip()
            i += 1
        heredoc = HEREDOC.search(line)
        if heredoc:
            end = heredoc.group(2)
            body = []
            while i < len(lines) and lines[i].strip() != end:
                body.append(lines[i])
                i += 1
            if i == len(lines):
                raise AssertionError(f"here-document {end!r} is never closed in: {line}")
            i += 1
            line = "\n".join([line, *body, end])
        commands.append(line)
    return commands


def invocations(command: str) -> list[list[str]]:
    """The argument lists following each ``mclnet`` word of a shell command (first line only)."""
    first = command.splitlines()[0]
    lexer = shlex.shlex(first, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    found: list[list[str]] = []
    for i, token in enumerate(tokens):
        if token == "mclnet" or token.endswith("/mclnet"):
            args = []
            for arg in tokens[i + 1 :]:
                if arg in SHELL_OPERATORS:
                    break
                args.append(arg)
            found.append(args)
    return found


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # `mclnet` and `python` are this venv's
    env["COLUMNS"] = "200"  # help panels unwrapped
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("MCLNET_DEBUG", None)
    return env


@functools.lru_cache(maxsize=None)
def help_text(path: tuple[str, ...]) -> str:
    """``mclnet <path> --help`` (the root help for an empty path)."""
    result = subprocess.run(
        [str(MCLNET), *path, "--help"], capture_output=True, text=True, env=subprocess_env(), timeout=600
    )
    assert result.returncode == 0, f"mclnet {' '.join(path)} --help failed: {result.stderr[-2000:]}"
    return result.stdout


def listed_commands(help_output: str) -> set[str]:
    """Command names in the "Commands" section of a help page (rich panel or plain click)."""
    names: set[str] = set()
    inside = False
    for line in help_output.splitlines():
        if re.search(r"\bCommands\b", line):
            inside = True
            continue
        if not inside:
            continue
        if line.strip().startswith("╰") or not line.strip():
            inside = False
            continue
        match = re.match(r"^[\s│|]*([a-z][a-z0-9_-]*)(\s{2,}|\s*│?\s*$)", line)
        if match:
            names.add(match.group(1))
    return names


def is_group(path: tuple[str, ...]) -> bool:
    return bool(listed_commands(help_text(path)))


@dataclass(frozen=True)
class Parsed:
    """An ``mclnet`` invocation split into root options, command path and command options."""

    root_options: tuple[str, ...]
    path: tuple[str, ...]
    options: tuple[str, ...]


def option_name(token: str) -> str | None:
    """``--set`` from ``--set`` or ``--out=DIR``; ``-k`` from ``-k``; None for values and ``-``."""
    if re.fullmatch(r"--[A-Za-z][\w-]*(=.*)?", token):
        return token.split("=", 1)[0]
    if re.fullmatch(r"-[A-Za-z]", token):
        return token
    return None


def parse(args: list[str]) -> Parsed:
    """Walk the command tree: options before the first command word are the root's."""
    root: list[str] = []
    path: list[str] = []
    options: list[str] = []
    for arg in args:
        name = option_name(arg)
        if name is not None:
            (options if path else root).append(name)
            continue
        if path and not (is_group(tuple(path)) and not options):
            continue  # a positional argument or an option's value
        commands = listed_commands(help_text(tuple(path)))
        assert arg in commands, (
            f"'mclnet {' '.join([*path, arg])}' is not a command; "
            f"'{' '.join(['mclnet', *path, '--help'])}' lists: {', '.join(sorted(commands))}"
        )
        path.append(arg)
    return Parsed(tuple(root), tuple(path), tuple(options))


def has_option(help_output: str, name: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", help_output) is not None


# --------------------------------------------------------------------------- the parser itself


def test_split_commands_handles_comments_continuations_and_heredocs() -> None:
    lines = [
        "# a comment",
        "",
        "mclnet train --data d \\",
        "    --out run",
        "python - <<'EOF'",
        "# kept: inside the here-document",
        "print(1)",
        "EOF",
        "mclnet info",
    ]
    assert split_commands(lines) == [
        "mclnet train --data d --out run",
        "python - <<'EOF'\n# kept: inside the here-document\nprint(1)\nEOF",
        "mclnet info",
    ]


def test_invocations_stop_at_shell_operators() -> None:
    assert invocations("mclnet --quiet split data --json | jq .protocol") == [["--quiet", "split", "data", "--json"]]
    assert invocations("echo hi && mclnet info --json > info.json") == [["info", "--json"]]
    assert invocations("python -m mclnet_cli train") == []


def test_code_blocks_read_info_strings_and_context() -> None:
    text = "Needs the real dataset:\n\n```bash\nmclnet prepare sysu x --out y\n```\n\n```bash runnable\nmclnet info\n```\n"
    first, second = code_blocks(text)
    assert not first.runnable and first.is_bash and first.before == "Needs the real dataset:"
    assert second.runnable and second.lines == ("mclnet info",)


# --------------------------------------------------------------------------- the guide


@pytest.fixture(scope="module")
def blocks() -> list[Block]:
    assert MCLNET.is_file(), f"{MCLNET} not found: install the package into this environment (pip install -e .)"
    return code_blocks(USAGE.read_text(encoding="utf-8"))


def test_usage_has_runnable_blocks_for_the_journey(blocks: list[Block]) -> None:
    runnable = [c for b in blocks if b.runnable for c in split_commands(b.lines)]
    used = {parse(args).path[:1] for c in runnable for args in invocations(c)}
    for command in ("prepare", "train", "evaluate", "split", "index", "query", "presets", "info"):
        assert (command,) in used, f"docs/usage.md has no runnable example of 'mclnet {command}'"


@pytest.fixture(scope="module")
def doc_blocks() -> list[tuple[str, Block]]:
    """(file name, block) for every checked page."""
    pairs = []
    for name in CHECKED_DOCS:
        pairs.extend((name, block) for block in code_blocks((ROOT / "docs" / name).read_text(encoding="utf-8")))
    return pairs


def test_every_mentioned_command_exists(doc_blocks: list[tuple[str, Block]]) -> None:
    for _, block in doc_blocks:
        for command in split_commands(block.lines):
            if not INVOCATION.search(command.splitlines()[0]):
                continue
            for args in invocations(command):
                parse(args)  # asserts each command word is listed by its parent's --help


def test_every_option_appears_in_help(doc_blocks: list[tuple[str, Block]]) -> None:
    missing = []
    for doc, block in doc_blocks:
        if not block.is_bash or block.coming:
            continue
        for command in split_commands(block.lines):
            for args in invocations(command):
                parsed = parse(args)
                for name in parsed.root_options:
                    if not has_option(help_text(()), name):
                        missing.append(f"{doc}:{block.line}: mclnet {name}")
                for name in parsed.options:
                    if not has_option(help_text(parsed.path), name):
                        missing.append(f"{doc}:{block.line}: mclnet {' '.join(parsed.path)} {name}")
    assert not missing, "options not in --help:\n" + "\n".join(missing)


def test_non_runnable_bash_blocks_say_why(blocks: list[Block]) -> None:
    unexplained = [
        f"line {b.line}: {b.before!r}"
        for b in blocks
        if b.is_bash and not b.runnable and not NOT_RUNNABLE_REASON.search(b.before)
    ]
    assert not unexplained, "plain bash blocks must follow a line saying why they do not run here:\n" + "\n".join(unexplained)


def run_in_order(doc: str, commands: list[str], cwd: Path) -> None:
    """Run ``commands`` one after another in ``cwd``; each must exit 0, and a lone ``--json`` one print one JSON document."""
    env = subprocess_env()
    for command in commands:
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
        )
        assert result.returncode == 0, (
            f"{doc} command failed (exit {result.returncode}): {command}\n"
            f"stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-3000:]}"
        )
        calls = invocations(command)
        lone = len(calls) == 1 and not any(op in command.splitlines()[0] for op in ("|", ">", "&&", ";"))
        if lone and "--json" in calls[0]:
            try:
                json.loads(result.stdout)
            except json.JSONDecodeError as exc:
                raise AssertionError(f"{command}: stdout is not one JSON document ({exc}): {result.stdout[:500]}")


@pytest.mark.slow
def test_runnable_blocks_run_in_order(blocks: list[Block], tmp_path: Path) -> None:
    commands = [c for b in blocks if b.runnable for c in split_commands(b.lines)]
    assert commands, "docs/usage.md has no runnable block"
    run_in_order("docs/usage.md", commands, tmp_path)


def readme_commands() -> list[str]:
    return [c for b in code_blocks(README.read_text(encoding="utf-8")) if b.runnable for c in split_commands(b.lines)]


def test_readme_runs_its_step_by_step_path_and_exports_its_own_model() -> None:
    """The README's runnable blocks are its synthetic journey: train, evaluate, index, query, then
    export of the checkpoint those steps wrote (the export a new user tries next)."""
    commands = readme_commands()
    words = [parse(args).path for c in commands for args in invocations(c)]
    for command in ("prepare", "train", "evaluate", "index", "query", "export"):
        assert any(path[:1] == (command,) for path in words), f"README.md has no runnable 'mclnet {command}'"
    train = next(c for c in commands if " train " in f" {c} ")
    out = shlex.split(train)[shlex.split(train).index("--out") + 1]
    exports = [c for c in commands if " export " in f" {c} "]
    assert exports and all(shlex.split(c)[2] == f"{out}/last.pt" for c in exports), (
        f"README's export must use the model its own steps train ({out}/last.pt): {exports}"
    )


@pytest.mark.slow
def test_readme_step_by_step_runs_in_order(tmp_path: Path) -> None:
    """Every runnable README command, the full `tiny` training included, succeeds in a fresh folder."""
    run_in_order("README.md", readme_commands(), tmp_path)


def test_checks_reject_made_up_commands_and_options() -> None:
    with pytest.raises(AssertionError, match="not a command"):
        parse(["trian", "--data", "d"])
    with pytest.raises(AssertionError, match="not a command"):
        parse(["prepare", "market1501", "root"])
    parsed = parse(["--quiet", "prepare", "synthetic", "raw", "--ids", "12", "--colour"])
    assert parsed.path == ("prepare", "synthetic") and parsed.root_options == ("--quiet",)
    assert has_option(help_text(parsed.path), "--ids")
    assert not has_option(help_text(parsed.path), "--colour")
    assert not has_option(help_text(("train",)), "--epochs")  # only via --set train.epochs=N
