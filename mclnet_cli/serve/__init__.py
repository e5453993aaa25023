"""``mclnet serve``: search as an HTTP service (FastAPI), with a browser page.

:func:`create_app` builds the application from a :class:`ServeSettings`; it
prints nothing, so tests and other programs mount it as they like. Needs the
``serve`` extra (``pip install 'mclnet[serve]'``).
"""

from mclnet_cli.serve.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
