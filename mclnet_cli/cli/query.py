"""``mclnet query``: not implemented yet (issue #6)."""

from __future__ import annotations

from mclnet_cli.cli.output import fail


def query() -> None:
    """Search a gallery index with probe images from the other spectrum. (not implemented yet)"""
    raise fail("'mclnet query' is not implemented yet (issue #6)")
