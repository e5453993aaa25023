"""The FastAPI application behind ``mclnet serve``.

Routes: ``POST /search``, ``GET``/``POST``/``DELETE /gallery``, ``GET /images/{record}``,
``GET /healthz``, ``GET /`` (the page), ``/docs``, ``/redoc`` and ``/openapi.json``.
With a token, every route that reads or changes data needs it; ``/healthz``, the
page and the API docs hold no data and load without it (a browser cannot send
the header; ``/docs`` has an Authorize button that sends it with "Try it out").
Every error is one line of JSON, ``{"error": "..."}``, with status 400 (bad
input), 401 (token), 404, 413 (too large), 422 (a bad field), 507 (the server's disk is full
or failing) or 500 (never with a traceback). Search goes through
:class:`mclnet_cli.engine.search.SearchEngine`, the code behind ``mclnet query``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import io
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from mclnet_cli.atomic import atomic_write
from mclnet_cli.types import Modality
from mclnet_cli.errors import DataError, MclnetError, StorageError
from mclnet_cli.engine.search import SearchEngine
from mclnet_cli.data.sources.layout import identify
from mclnet_cli.serve.state import ServedIndex

try:
    from fastapi import Body, FastAPI, File, Form, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError("mclnet serve needs the 'serve' extra: pip install 'mclnet[serve]'") from exc

PAGE = Path(__file__).with_name("page.html")
OPEN_PATHS = frozenset({"/healthz", "/"})  # no data behind them: the page asks for the token itself
BEARER = "bearer"  # the OpenAPI security scheme that stands for --token
FORMATS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}
THUMBNAIL = (128, 256)  # width, height at most


@dataclass
class ServeSettings:
    """Everything :func:`create_app` needs; the limits guard against oversized and hostile uploads."""

    index_dir: Path
    checkpoint: Optional[Path] = None
    device: str = "auto"
    token: Optional[str] = None
    max_upload_bytes: int = 10 * 1024 * 1024  # per image
    max_pixels: int = 25_000_000  # per image, checked from the header before decoding
    max_files: int = 16  # per request
    max_top_k: int = 100
    batch_size: Optional[int] = None
    uploads_dir: Optional[Path] = None  # where POST /gallery keeps images; default: <index>-uploads beside it
    # FAISS's OpenMP threads on the model threads. One probe per request gains little from more, and on a
    # small machine FAISS's spinning pool starves torch's (2 cores: a 10^4 flat search of one probe took
    # 19 ms with 2 threads, 0.4 ms with 1, and slowed the forward pass). Concurrent requests give the
    # parallelism. None leaves FAISS's default.
    faiss_threads: Optional[int] = 1
    # Threads that run the model (embedding and adds). Each thread that calls torch gets its own OpenMP
    # pool; one thread keeps one pool, and requests queue for it in order. On a CPU, torch already uses
    # every core for one forward pass, so more only oversubscribe; raise it for a GPU.
    model_threads: int = 1

    def resolved_uploads(self) -> Path:
        if self.uploads_dir is not None:
            return Path(self.uploads_dir)
        index_dir = Path(self.index_dir).absolute()
        return index_dir.parent / f"{index_dir.name}-uploads"


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:500]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": _one_line(message)}, status_code=status, headers=headers)


def check_image(data: bytes, name: str, settings: ServeSettings) -> str:
    """Validate one uploaded image (size, format, pixel count, full decode); return its file suffix."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ApiError(400, f"{name}: empty upload")
    if len(data) > settings.max_upload_bytes:
        raise ApiError(413, f"{name}: {len(data)} bytes is over the limit of {settings.max_upload_bytes} bytes per image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > settings.max_pixels:
                raise ApiError(
                    413, f"{name}: {width}x{height} = {width * height} pixels is over the limit of {settings.max_pixels}"
                )
            kind = image.format or ""
            if kind not in FORMATS:
                raise ApiError(400, f"{name}: {kind or 'unknown'} images are not accepted (use {', '.join(FORMATS)})")
            image.load()
    except ApiError:
        raise
    except Image.DecompressionBombError as exc:
        raise ApiError(413, f"{name}: too many pixels ({exc})") from None
    except UnidentifiedImageError:
        raise ApiError(400, f"{name}: not an image ({', '.join(FORMATS)} accepted)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ApiError(400, f"{name}: corrupt or truncated image ({exc})") from None
    return FORMATS[kind]


class BodyLimit:
    """Count the body bytes as they arrive: a request without Content-Length (chunked) is cut off
    with 413 once it passes ``limit``, before the multipart parser spools it all to disk."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:  # FastAPI passes an HTTPException from body parsing through
                    raise StarletteHTTPException(413, f"request body is over the limit of {self.limit} bytes")
            return message

        await self.app(scope, counted, send)


def create_app(settings: ServeSettings, engine: SearchEngine | None = None) -> FastAPI:
    """The application for ``settings`` (``engine``: an already opened one, else it is opened here)."""
    if engine is None:
        engine = SearchEngine.open(
            settings.index_dir, checkpoint=settings.checkpoint, batch_size=settings.batch_size, device=settings.device
        )
    served = ServedIndex(engine)
    model_runner = ThreadPoolExecutor(
        max_workers=max(1, settings.model_threads),
        thread_name_prefix="mclnet-model",
        initializer=_limit_faiss_threads,  # OpenMP's thread count is per calling thread: set it where searches run
        initargs=(settings.faiss_threads,),
    )
    uploads = settings.resolved_uploads()
    # Whole-request ceiling, checked from Content-Length before the body is parsed.
    max_request = settings.max_upload_bytes * settings.max_files + 1024 * 1024

    app = FastAPI(
        title="mclnet",
        summary="Cross-spectrum person search: infrared probes against a visible gallery, or back.",
        version=_version(),
    )
    app.state.served = served
    app.state.settings = settings

    # The API docs describe the routes and hold no data: a browser opens them without the token.
    docs = {path for path in (app.docs_url, app.redoc_url, app.openapi_url, app.swagger_ui_oauth2_redirect_url) if path}
    open_paths = OPEN_PATHS | docs
    app.add_middleware(BodyLimit, limit=max_request)
    _add_guard(app, settings, max_request, open_paths)
    _add_error_handlers(app)
    _add_index_routes(app, settings, served, engine, model_runner, uploads)
    _add_search_route(app, settings, served, engine, model_runner)
    if settings.token is not None:
        _document_token(app, open_paths)
    return app


def _document_token(app: FastAPI, open_paths: frozenset[str] | set[str]) -> None:
    """Declare the bearer token in the OpenAPI description: /docs then shows Authorize, and "Try it out" sends it."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()  # FastAPI's own, cached on the app; completed here once
            schema.setdefault("components", {}).setdefault("securitySchemes", {})[BEARER] = {
                "type": "http", "scheme": "bearer", "description": "The token given to 'mclnet serve --token'.",
            }
            for path, operations in schema.get("paths", {}).items():
                if path not in open_paths:
                    for operation in operations.values():
                        operation["security"] = [{BEARER: []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_guard(app: FastAPI, settings: ServeSettings, max_request: int, open_paths: frozenset[str] | set[str]) -> None:
    """The token check (every path but ``open_paths``), then the request size from Content-Length (before the body is parsed)."""

    @app.middleware("http")
    async def guard(request: Request, call_next):  # token, then body size
        if settings.token is not None and request.url.path not in open_paths:
            given = request.headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), settings.token.encode()):
                return _error(401, "missing or wrong token: send 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"})
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return _error(400, "bad Content-Length header")
            if int(length) > max_request:
                return _error(413, f"request body of {length} bytes is over the limit of {max_request} bytes")
        return await call_next(request)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as one line of JSON with its status (never a traceback)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(MclnetError)
    async def _mclnet_error(request: Request, exc: MclnetError) -> JSONResponse:
        return _error(507 if isinstance(exc, StorageError) else 400, str(exc))  # a full disk is the server's, not the request's

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err.get("loc", ()) if part not in ("body", "query", "path", "form"))
            problems.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
        return _error(422, "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")


def read_uploads(files: list[UploadFile], what: str, settings: ServeSettings) -> list[tuple[str, bytes, str]]:
    """Read and check the uploaded images of one field: (name, bytes, suffix) each."""
    if not files:
        raise ApiError(422, f"{what}: no image given")
    if len(files) > settings.max_files:
        raise ApiError(413, f"{what}: {len(files)} images is over the limit of {settings.max_files} per request")
    out = []
    for i, upload in enumerate(files):
        name = _one_line(upload.filename or f"{what}[{i}]")[:120]
        data = upload.file.read(settings.max_upload_bytes + 1)
        suffix = check_image(data, name, settings)
        out.append((name, data, suffix))
    return out

def parse_modality(value: str) -> Modality:
    """A form's spectrum name, or a 422."""
    try:
        return Modality.parse(value)
    except (MclnetError, ValueError):
        raise ApiError(422, f"modality: {value!r} is not a spectrum; use infrared or visible") from None


def _add_index_routes(
    app: FastAPI, settings: ServeSettings, served: ServedIndex, engine: SearchEngine, model_runner: ThreadPoolExecutor,
    uploads: Path,
) -> None:
    """``/healthz``, the page, ``GET``/``POST``/``DELETE /gallery`` and ``/images/{record}``."""
    _add_status_routes(app, served, engine)
    _add_gallery_edit_routes(app, settings, served, model_runner, uploads)
    _add_image_route(app, served)


def _add_status_routes(app: FastAPI, served: ServedIndex, engine: SearchEngine) -> None:
    """``/healthz``, the page and ``GET /gallery`` (what is being served)."""

    @app.get("/healthz", summary="Liveness: no token needed")
    def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/gallery", summary="The index being served: size, kind, spectrum, checkpoint fingerprint")
    def gallery_info() -> dict[str, Any]:
        gallery = served.current()
        return {
            "index": str(served.index_dir),
            "count": len(gallery),
            "kind": gallery.kind,
            "factory": gallery.factory,
            "dimension": gallery.dimension,
            "modality": gallery.extra.get("modality"),
            "fingerprint": engine.fingerprint,
            "checkpoint": engine.checkpoint_path,
            "reloads": served.reloads,
            "reload_error": served.reload_error,
        }


def _add_gallery_edit_routes(
    app: FastAPI, settings: ServeSettings, served: ServedIndex, model_runner: ThreadPoolExecutor, uploads: Path
) -> None:
    """``POST /gallery`` (add uploaded images, kept under ``uploads``) and ``DELETE /gallery`` (take records out)."""

    @app.post("/gallery", summary="Add images to the index (atomic; visible to the next search)")
    def gallery_add(
        images: list[UploadFile] = File(..., description="Gallery images, in the index's spectrum"),
        modality: Optional[str] = Form(None, description="Their spectrum, if you want it checked (default: the index's)"),
    ) -> dict[str, Any]:
        checked = read_uploads(images, "images", settings)
        spectrum = served.add_spectrum(parse_modality(modality) if modality is not None else None)  # before any write
        paths, written = _keep_uploads(checked, uploads)
        try:
            result = served.add(
                paths, run=lambda f, *a, **k: model_runner.submit(f, *a, **k).result(), modality=spectrum,
                origins=[name for name, _, _ in checked],
            )  # fmt: skip
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        names = {path: name for (name, _, _), path in zip(checked, paths)}
        for record in result.records:
            record["upload"] = names.get(record["path"])
        return {"added": result.added, "count": result.count, "records": result.records, "notices": result.notices}

    @app.delete("/gallery", summary="Take images out of the index (as 'mclnet index --remove'; atomic)")
    def gallery_remove(
        paths: list[str] = Body(..., embed=True, description="Paths as recorded in the index, or folders (every record under them)"),
    ) -> dict[str, Any]:
        if not paths:
            raise ApiError(422, "paths: no path given")
        return served.remove(paths).to_json()


def _keep_uploads(checked: list[tuple[str, bytes, str]], uploads: Path) -> tuple[list[str], list[Path]]:
    """Write each uploaded image to ``uploads`` under its content hash: (every path, the files written now)."""
    uploads.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    paths: list[str] = []
    for _, data, suffix in checked:
        target = (uploads / (hashlib.sha256(data).hexdigest()[:24] + suffix)).resolve()
        if not target.exists():
            atomic_write(target, lambda handle, data=data: handle.write(data))
            written.append(target)
        paths.append(str(target))
    return paths, written


def _add_image_route(app: FastAPI, served: ServedIndex) -> None:
    """``GET /images/{record}``: a thumbnail of one indexed image, named by its row."""

    @app.get("/images/{record}", summary="A thumbnail of one indexed image (by its row in the index)")
    def image(record: str) -> Response:
        from PIL import Image

        from mclnet_cli.data.images import load_rgb

        gallery = served.current()
        # Only a row number of the index names an image: never a path, never "1.0" or "-1".
        if not (record.isascii() and record.isdigit() and len(record) <= 12 and int(record) < len(gallery.records)):
            raise ApiError(404, f"no record {_one_line(record)[:40]!r} in the index (rows 0..{len(gallery.records) - 1})")
        row = int(record)
        try:
            picture = load_rgb(gallery.records[row].path)
        except DataError:
            raise ApiError(404, f"the image of record {row} is no longer readable") from None
        picture.thumbnail(THUMBNAIL, Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png", headers={"Cache-Control": "private, max-age=60"})


def _add_search_route(
    app: FastAPI, settings: ServeSettings, served: ServedIndex, engine: SearchEngine, model_runner: ThreadPoolExecutor
) -> None:
    """``POST /search``: uploads read on the event loop, everything else on the model thread."""

    @app.post("/search", summary="Rank the gallery for one or more probe images (same JSON as 'mclnet query --json')")
    async def search(
        probes: list[UploadFile] = File(..., description="Probe images"),
        modality: str = Form(..., description="Spectrum of the probes: infrared or visible"),
        top_k: int = Form(10, description="Results per probe"),
    ) -> dict[str, Any]:
        spectrum = parse_modality(modality)
        _check_search(settings, probes, top_k)
        received = time.perf_counter()
        uploads = [
            (_one_line(upload.filename or f"probes[{i}]")[:120], await upload.read(settings.max_upload_bytes + 1))
            for i, upload in enumerate(probes)
        ]
        # Everything else on the model thread: one hand-off per request, not two.
        loop = asyncio.get_running_loop()
        run = functools.partial(_run_search, settings, served, engine, uploads, spectrum, top_k, received)
        return await loop.run_in_executor(model_runner, run)


def _check_search(settings: ServeSettings, probes: list[UploadFile], top_k: int) -> None:
    """A 422 or 413 for a ``top_k`` out of range, no probe, or more probes than one request may send."""
    if not 1 <= top_k <= settings.max_top_k:
        raise ApiError(422, f"top_k: {top_k} is out of range 1..{settings.max_top_k}")
    if not probes:
        raise ApiError(422, "probes: no image given")
    if len(probes) > settings.max_files:
        raise ApiError(413, f"probes: {len(probes)} images is over the limit of {settings.max_files} per request")


def _run_search(
    settings: ServeSettings, served: ServedIndex, engine: SearchEngine, uploads: list[tuple[str, bytes]],
    spectrum: Modality, top_k: int, received: float,
) -> dict[str, Any]:
    """On the model thread: check the uploaded probes, rank the served gallery, answer with the time each step took."""
    started = time.perf_counter()
    checked = [(name, data, check_image(data, name, settings)) for name, data in uploads]
    gallery = served.current()
    rows = served.rows(gallery)
    folder = Path(tempfile.mkdtemp(prefix="mclnet-probes-"))
    try:
        paths = []
        for i, (_, data, suffix) in enumerate(checked):
            path = folder / f"{i:03d}{suffix}"
            path.write_bytes(data)
            paths.append(str(path))
        decoded = time.perf_counter()
        results, embed_s, search_s = engine.rank(paths, spectrum, top_k, gallery=gallery)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "results": _result_rows(checked, results, rows),
        "modality": spectrum.value,
        "gallery": {"count": len(gallery), "modality": gallery.extra.get("modality")},
        "notices": engine.notices_for(spectrum, gallery),
        "queue_ms": round(1000 * (started - received), 3),  # reading the upload, waiting for the model thread
        "decode_ms": round(1000 * (decoded - started), 3),
        "embed_ms": round(1000 * embed_s, 3),
        "search_ms": round(1000 * search_s, 3),
    }


def _result_rows(checked: list[tuple[str, bytes, str]], results: list[Any], rows: dict[str, int]) -> list[dict[str, Any]]:
    """``mclnet query --json``'s rows, each probe named as uploaded and each hit with its ``record`` row."""
    out = []
    for (name, _, _), result in zip(checked, results):
        row = result.to_json()
        row["probe"] = name
        # The probe was embedded from a temporary file: its pid and camera can only come from the name it was
        # uploaded with (a client that sends "cam3/0007/0001.jpg"); None when that follows no dataset layout.
        found = identify(name)
        row["pid"], row["cam"] = (found.pid, found.cam) if found else (None, None)
        for hit in row["results"]:
            hit["record"] = rows.get(hit["path"])
        out.append(row)
    return out


def _limit_faiss_threads(threads: int | None) -> None:
    if threads is not None:
        import faiss

        faiss.omp_set_num_threads(int(threads))


def _version() -> str:
    from mclnet_cli import __version__

    return __version__
