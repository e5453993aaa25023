"""``mclnet demo``: not implemented yet (issue #7)."""

from __future__ import annotations

from mclnet_cli.cli.output import fail


def demo() -> None:
    """Run the whole journey on synthetic data. (not implemented yet)"""
    raise fail("'mclnet demo' is not implemented yet (issue #7)")
