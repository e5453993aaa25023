"""``mclnet evaluate``: not implemented yet (issue #4)."""

from __future__ import annotations

from mclnet_cli.cli.output import fail


def evaluate() -> None:
    """Evaluate a checkpoint under the SYSU-MM01 / RegDB / LLCM protocols. (not implemented yet)"""
    raise fail("'mclnet evaluate' is not implemented yet (issue #4)")
