"""The package's layers: nothing imports from a layer above it (checked on every `from mclnet_cli... import`)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mclnet_cli"
#: lower numbers are lower layers; a module may import only from strictly lower ones (or its own package)
LAYER = {
    "__init__": 0, "errors": 0,
    "types": 1,
    "config": 2, "atomic": 2, "locks": 2, "progress": 2,
    "info": 3, "data": 3,
    "model": 4, "metrics": 4, "index": 4,
    "losses": 5,  # combines the model's typed output
    "engine": 6,
    "serve": 7, "api": 7,
    "cli": 8, "__main__": 9,
}


def _imports() -> list[tuple[str, str, str]]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        owner = parts[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mclnet_cli"):
                target = node.module.split(".")[1] if "." in node.module else "__init__"
                found.append((owner, target, f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"))
    return found


def test_every_top_level_module_has_a_layer() -> None:
    names = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert names <= set(LAYER), sorted(names - set(LAYER))


def test_nothing_imports_upward() -> None:
    upward = [
        f"{where}: {owner} (layer {LAYER[owner]}) imports {target} (layer {LAYER[target]})"
        for owner, target, where in _imports()
        if owner != target and LAYER[target] >= LAYER[owner]
    ]
    assert not upward, "\n".join(upward)


ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def _documented_layers() -> list[set[str]]:
    """The groups of docs/architecture.md's "Layers, lowest first: a -> b, c -> ..." sentence."""
    import re

    text = " ".join(ARCHITECTURE.read_text(encoding="utf-8").split())
    sentence = re.search(r"Layers, lowest first: (.*?)\. A module", text)
    assert sentence, "docs/architecture.md lost its 'Layers, lowest first:' sentence"
    return [set(re.findall(r"`(\w+)`", group)) for group in sentence.group(1).split("->")]


def test_the_documented_layer_order_is_the_checked_one() -> None:
    groups = _documented_layers()
    checked = {name: level for name, level in LAYER.items() if name not in ("__init__", "__main__")}
    assert set().union(*groups) == set(checked), "every layer named once in the docs, none missing"
    for lower, higher in zip(groups, groups[1:]):
        for a in lower:
            for b in higher:
                assert checked[a] < checked[b], f"docs put {a} below {b}; tests/test_layers.py does not"
    for group in groups:
        assert len({checked[name] for name in group}) == 1, f"docs put {sorted(group)} on one layer; the test does not"


def test_the_layout_names_every_module() -> None:
    """docs/architecture.md's layout block names every module of the sub-packages."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    layout = text.split("## Layout", 1)[1].split("```", 2)[1]
    missing = []
    for package in ("data", "engine", "index", "metrics", "serve", "model", "losses"):
        for path in (PACKAGE / package).glob("*.py"):
            if path.stem != "__init__" and path.stem not in layout:
                missing.append(f"{package}/{path.name}")
    assert not missing, f"not in docs/architecture.md's layout: {missing}"
