"""``mclnet serve``: answer searches over HTTP (and a browser page) with the model and index loaded once.

Thin layer: parse options, bind the listening socket first (a taken port is one
error line, exit 1, before anything loads), build the app with
:func:`mclnet_cli.serve.create_app` and hand both to uvicorn's ``Server``, which
raises Ctrl-C again once it has shut down (exit 130). Needs the ``serve`` extra.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Optional

import typer

from mclnet_cli.cli.options import DebugOpt, DeviceOpt, QuietOpt, ThreadsOpt, common
from mclnet_cli.cli.output import err_console, fail, guard, interrupted, print_json, state, warn

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(
    index_dir: Annotated[Path, typer.Option("--index", "-i", help="Index folder made by 'mclnet index'.", show_default=False)],
    checkpoint: Annotated[
        Optional[Path],
        typer.Option("--checkpoint", "-c", help="Checkpoint path if it moved (must be the file that built the index).", show_default=False),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; anything but loopback is reachable from other machines.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: a free one, printed on start).")] = 8000,
    token: Annotated[
        Optional[str],
        typer.Option(
            "--token", envvar="MCLNET_TOKEN",
            help="Require 'Authorization: Bearer TOKEN' on every data route. Open without it: /healthz, the page (it asks "
            "for the token) and the API docs /docs, /redoc, /openapi.json (no data; in /docs press Authorize to send it).",
            show_default=False,
        ),
    ] = None,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.001, help="Largest image accepted, in MiB.")] = 10.0,
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=1, help="Most pixels per image (decompression bombs).")] = 25_000_000,
    uploads: Annotated[
        Optional[Path],
        typer.Option("--uploads", help="Folder for images added through POST /gallery (default: INDEX-uploads beside the index).", show_default=False),
    ] = None,
    model_threads: Annotated[
        int, typer.Option("--model-threads", min=1, help="Threads running the model (1 suits a CPU; more for a GPU).")
    ] = 1,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print where it listens as one JSON object on stdout (url, index, images) on start.")
    ] = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Serve search over HTTP: POST /search, GET/POST /gallery, GET /images/N, a page at /, API docs at /docs.

    The model and index are loaded once; the index is read again when it changes on disk
    (mclnet index --add), between requests. A port that is taken is refused (exit 1) before
    anything is loaded. Stop with Ctrl-C (exit 130).
    """
    common(quiet=quiet, debug=debug, threads=threads, compute=True)
    _run(index_dir, checkpoint, host, port, token, max_upload_mb, max_pixels, uploads, model_threads, device, as_json)


@guard
def _run(
    index_dir: Path,
    checkpoint: Path | None,
    host: str,
    port: int,
    token: str | None,
    max_upload_mb: float,
    max_pixels: int,
    uploads: Path | None,
    model_threads: int,
    device: str,
    as_json: bool = False,
) -> None:
    try:
        import uvicorn  # noqa: F401 - the serve extra, checked before anything is bound or loaded

        import mclnet_cli.serve  # noqa: F401
    except ImportError:
        raise fail("mclnet serve needs the 'serve' extra: pip install 'mclnet[serve]'") from None
    if token is not None and not token.strip():
        raise fail("--token is empty")
    from mclnet_cli.serve.listen import open_listener

    # Bound and listening before the model loads and before "serving" is printed: a taken port is one
    # error line and exit 1 (uvicorn would bind only after, and exit 3 with its own log line).
    listener = open_listener(host, port)
    try:
        _serve(listener, index_dir, checkpoint, host, token, max_upload_mb, max_pixels, uploads, model_threads, device, as_json)
    finally:
        listener.close()


def _serve(
    listener: socket.socket,
    index_dir: Path,
    checkpoint: Path | None,
    host: str,
    token: str | None,
    max_upload_mb: float,
    max_pixels: int,
    uploads: Path | None,
    model_threads: int,
    device: str,
    as_json: bool,
) -> None:
    import uvicorn

    from mclnet_cli.serve import ServeSettings, create_app
    from mclnet_cli.serve.listen import address

    port = int(listener.getsockname()[1])  # the one the system chose for --port 0
    settings = ServeSettings(
        index_dir=index_dir,
        checkpoint=checkpoint,
        device=device,
        token=token,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_pixels=max_pixels,
        uploads_dir=uploads,
        model_threads=model_threads,
    )
    app = create_app(settings)
    gallery = app.state.served.engine.gallery
    for message in app.state.served.engine.health_warnings():
        warn(message)
    if host not in LOOPBACK and token is None:
        err_console.print(
            f"[yellow]warning:[/] listening on {host} without --token: anyone who can reach this machine can search and add",
            highlight=False,
        )
    url = f"http://{address(host, port)}"
    if as_json:
        print_json({
            "url": f"{url}/", "index": str(index_dir), "images": len(gallery),
            "modality": gallery.extra.get("modality"), "token_required": token is not None,
        })
    if not state.quiet:
        err_console.print(
            f"serving {len(gallery)} {gallery.extra.get('modality', '')} images from {index_dir} on {url} "
            f"(page at /, API docs at /docs{', token required' if token else ''}); Ctrl-C stops",
            highlight=False,
            soft_wrap=True,
        )
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    try:
        # uvicorn.run() would swallow Ctrl-C (exit 0); Server.run() raises it again once it has shut down.
        server.run(sockets=[listener])
    except KeyboardInterrupt:
        # Ctrl-C is how a server is stopped: the documented 130, never a traceback (not even with --debug).
        raise interrupted("stopped serving; every POST /gallery that was answered is saved in the index") from None
    if not server.started:
        raise fail(f"the server on {address(host, port)} did not start (see the lines above)")
