"""``mclnet train``: not implemented yet (issue #5)."""

from __future__ import annotations

from mclnet_cli.cli.output import fail


def train() -> None:
    """Train MCLNet from a preset. (not implemented yet)"""
    raise fail("'mclnet train' is not implemented yet (issue #5)")
