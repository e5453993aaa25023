"""``mclnet split``: not implemented yet (issue #4)."""

from __future__ import annotations

from mclnet_cli.cli.output import fail


def split() -> None:
    """Show the query and gallery images of one protocol trial. (not implemented yet)"""
    raise fail("'mclnet split' is not implemented yet (issue #4)")
