"""``mclnet info``: not implemented yet (issue #7)."""

from __future__ import annotations

from mclnet_cli.cli.output import fail


def info() -> None:
    """Versions, device and paths, for bug reports. (not implemented yet)"""
    raise fail("'mclnet info' is not implemented yet (issue #7)")
