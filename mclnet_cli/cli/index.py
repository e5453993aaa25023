"""``mclnet index``: not implemented yet (issue #6)."""

from __future__ import annotations

from mclnet_cli.cli.output import fail


def index() -> None:
    """Embed a folder of gallery images into a FAISS index. (not implemented yet)"""
    raise fail("'mclnet index' is not implemented yet (issue #6)")
