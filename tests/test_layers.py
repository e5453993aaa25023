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
