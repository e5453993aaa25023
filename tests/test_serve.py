"""``mclnet serve``: the HTTP API through a real HTTP client, a real uvicorn, and the page in headless Chromium.

The index is built from the two-stream checkpoint (its infrared stream differs
from the visible one), so a probe embedded with the wrong stream would not give
``mclnet query``'s scores. Every bad input must come back as one line of JSON
with the right status, never a traceback.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="needs the serve extra")
pytest.importorskip("httpx", reason="needs httpx (test extra)")

from fastapi.testclient import TestClient  # noqa: E402

from mclnet_cli.cli.app import app as cli_app  # noqa: E402
from mclnet_cli.index.store import GalleryIndex  # noqa: E402
from mclnet_cli.engine.indexing import build_gallery_index  # noqa: E402
from mclnet_cli.engine.search import SearchEngine  # noqa: E402
from mclnet_cli.serve import ServeSettings, create_app  # noqa: E402

TOKEN = "s3cret-token"
QUERY_KEYS = ("rank", "path", "score", "pid", "cam")


def _person(pid: int, seed: int, gray: bool) -> Image.Image:
    rng = np.random.default_rng(pid)
    base = rng.integers(0, 255, size=(8, 4, 3)).astype(np.float64)
    noise = np.random.default_rng(1000 * pid + seed).normal(0, 12, size=(8, 4, 3))
    pixels = np.clip(base + noise, 0, 255)
    if gray:
        pixels[:] = pixels.mean(axis=2, keepdims=True)
    small = Image.fromarray(pixels.astype(np.uint8))
    return small.resize((32, 64), Image.Resampling.NEAREST)


def _tree(root: Path, cam: int, pids: tuple[int, ...], per_person: int, gray: bool, start: int = 1) -> list[Path]:
    """SYSU-MM01 layout (camN/<pid>/<k>.jpg) so that pid and cam are known to the index."""
    paths = []
    for pid in pids:
        for k in range(start, start + per_person):
            path = root / f"cam{cam}" / f"{pid:04d}" / f"{k:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            _person(pid, k, gray).save(path)
            paths.append(path)
    return paths


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, two_stream_checkpoint: Path) -> dict:
    """A visible gallery index (3 people x 2 images, cam1) and infrared probes (cam3)."""
    root = tmp_path_factory.mktemp("serve")
    _tree(root / "gallery", cam=1, pids=(1, 2, 3), per_person=2, gray=False)
    probes = _tree(root / "probes", cam=3, pids=(1, 2), per_person=1, gray=True)
    index_dir = root / "index"
    build_gallery_index(two_stream_checkpoint, root / "gallery", "visible", index_dir, device="cpu")
    engine = SearchEngine.open(index_dir, device="cpu")
    return {"root": root, "index": index_dir, "probes": probes, "engine": engine}


def _fresh_index(served: dict, tmp_path: Path) -> Path:
    """A copy of the module's index that a test may change."""
    target = tmp_path / "index"
    shutil.copytree(served["index"], target, ignore=shutil.ignore_patterns(".*"))
    return target


def _client(served: dict, index_dir: Path | None = None, **settings) -> TestClient:
    index_dir = index_dir or served["index"]
    engine = served["engine"] if index_dir == served["index"] else None
    return TestClient(create_app(ServeSettings(index_dir=index_dir, device="cpu", **settings), engine=engine))


def _search(client: TestClient, paths: list[Path], modality: str = "infrared", top_k: int = 10, **kw):
    files = [("probes", (p.name, p.read_bytes(), "image/png")) for p in paths]
    return client.post("/search", files=files, data={"modality": modality, "top_k": str(top_k)}, **kw)


def _assert_one_line_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"], body
    assert "\n" not in body["error"] and "Traceback" not in response.text
    for word in words:
        assert word.lower() in body["error"].lower(), body


# --------------------------------------------------------------------------- search


def test_search_equals_query_json(served: dict, cli_runner) -> None:
    probes = served["probes"]
    client = _client(served)
    response = _search(client, probes, top_k=4)
    assert response.status_code == 200, response.text
    answer = response.json()
    args = ["query", *map(str, probes), "--index", str(served["index"]), "-m", "infrared", "-k", "4", "--json", "--device", "cpu"]
    result = cli_runner.invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    expected = json.loads(result.stdout)
    assert [row["probe"] for row in answer["results"]] == [p.name for p in probes]
    assert len(answer["results"]) == len(expected) == 2
    for got, want in zip(answer["results"], expected):
        assert len(got["results"]) == len(want["results"]) == 4
        for hit, ref in zip(got["results"], want["results"]):
            assert {k: hit[k] for k in QUERY_KEYS if k != "score"} == {k: ref[k] for k in QUERY_KEYS if k != "score"}
            assert hit["score"] == pytest.approx(ref["score"], abs=1e-6)
    assert answer["modality"] == "infrared" and answer["notices"] == []
    assert answer["embed_ms"] > 0 and answer["search_ms"] >= 0


def test_search_uses_the_probe_spectrum_stream(served: dict) -> None:
    client = _client(served)
    as_infrared = _search(client, served["probes"][:1], "infrared").json()
    as_visible = _search(client, served["probes"][:1], "visible").json()
    scores_ir = [h["score"] for h in as_infrared["results"][0]["results"]]
    scores_vis = [h["score"] for h in as_visible["results"][0]["results"]]
    assert max(abs(a - b) for a, b in zip(sorted(scores_ir), sorted(scores_vis))) > 1e-3
    assert as_visible["notices"] and "same-spectrum" in as_visible["notices"][0]


def test_records_point_at_thumbnails_of_indexed_images(served: dict) -> None:
    client = _client(served)
    answer = _search(client, served["probes"][:1], top_k=6).json()
    gallery = GalleryIndex.load(served["index"])
    for hit in answer["results"][0]["results"]:
        assert gallery.records[hit["record"]].path == hit["path"]
        thumb = client.get(f"/images/{hit['record']}")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(thumb.content)) as picture:
            original = Image.open(hit["path"])
            assert picture.size == original.size  # small images are not enlarged
            assert np.array_equal(np.asarray(picture.convert("RGB")), np.asarray(original.convert("RGB")))


def test_gallery_info_and_openapi(served: dict) -> None:
    client = _client(served)
    info = client.get("/gallery").json()
    assert info["count"] == 6 and info["modality"] == "visible" and info["kind"] == "flat"
    assert info["fingerprint"] == served["engine"].fingerprint and info["reload_error"] is None
    assert client.get("/healthz").json() == {"status": "ok"}
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/gallery", "/images/{record}", "/healthz"} <= set(paths)
    assert "<title>mclnet search</title>" in client.get("/").text


# --------------------------------------------------------------------------- changing the gallery


def test_add_then_search_finds_the_new_image(served: dict, tmp_path: Path) -> None:
    index_dir = _fresh_index(served, tmp_path)
    client = _client(served, index_dir, uploads_dir=tmp_path / "uploads")
    newcomer = _person(7, 1, gray=False)
    response = client.post("/gallery", files=[("images", ("seven.png", _png(newcomer), "image/png"))])
    assert response.status_code == 200, response.text
    added = response.json()
    assert added["added"] == 1 and added["count"] == 7
    record = added["records"][0]
    assert record["upload"] == "seven.png" and Path(record["path"]).parent == (tmp_path / "uploads").resolve()
    assert len(GalleryIndex.load(index_dir)) == 7  # on disk, not only in memory
    probe = tmp_path / "seven.png"
    newcomer.save(probe)
    answer = _search(client, [probe], modality="visible", top_k=1).json()
    best = answer["results"][0]["results"][0]
    assert best["path"] == record["path"] and best["record"] == 6 and best["score"] == pytest.approx(1.0, abs=1e-5)
    again = client.post("/gallery", files=[("images", ("copy.png", _png(newcomer), "image/png"))]).json()
    assert again["added"] == 0 and again["count"] == 7  # same bytes, same file: not indexed twice


def test_a_failed_add_leaves_the_index_as_it_was(served: dict, tmp_path: Path) -> None:
    index_dir = _fresh_index(served, tmp_path)
    before = {p.name: p.read_bytes() for p in index_dir.iterdir() if not p.name.startswith(".")}
    client = _client(served, index_dir, uploads_dir=tmp_path / "uploads")
    files = [
        ("images", ("good.png", _png(_person(8, 1, False)), "image/png")),
        ("images", ("bad.png", b"\x89PNG\r\n\x1a\n not really", "image/png")),
    ]
    _assert_one_line_error(client.post("/gallery", files=files), 400, "bad.png")
    after = {p.name: p.read_bytes() for p in index_dir.iterdir() if not p.name.startswith(".")}
    assert after == before
    assert client.get("/gallery").json()["count"] == 6
    assert not (tmp_path / "uploads").exists() or not any((tmp_path / "uploads").iterdir())


def test_reload_after_an_external_add(served: dict, tmp_path: Path, two_stream_checkpoint: Path, cli_runner) -> None:
    index_dir = _fresh_index(served, tmp_path)
    client = _client(served, index_dir)
    assert client.get("/gallery").json()["count"] == 6
    extra = _tree(tmp_path / "more", cam=2, pids=(5,), per_person=1, gray=False)
    args = ["index", str(tmp_path / "more"), "-c", str(two_stream_checkpoint), "-m", "visible", "-o", str(index_dir),
            "--add", "--device", "cpu"]  # fmt: skip
    result = cli_runner.invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    info = client.get("/gallery").json()
    assert info["count"] == 7 and info["reloads"] == 1
    probe = tmp_path / "probe5.png"
    Image.open(extra[0]).save(probe)
    best = _search(client, [probe], modality="visible", top_k=1).json()["results"][0]["results"][0]
    assert best["path"] == str(extra[0].resolve()) and best["pid"] == 5 and best["cam"] == 2


def test_a_broken_index_on_disk_keeps_the_served_one(served: dict, tmp_path: Path) -> None:
    index_dir = _fresh_index(served, tmp_path)
    client = _client(served, index_dir)
    (index_dir / "records.jsonl").write_text('{"path": "/x.png"}\n', encoding="utf-8")  # 1 row, index holds 6
    meta = index_dir / "meta.json"
    meta.write_text(meta.read_text(encoding="utf-8") + " ", encoding="utf-8")  # the signature changes
    info = client.get("/gallery").json()
    assert info["count"] == 6 and info["reload_error"] and "records.jsonl" in info["reload_error"]
    assert _search(client, served["probes"][:1]).status_code == 200


def _live_files(index_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in index_dir.iterdir() if not p.name.startswith(".")}


def _upload(name: str, data: bytes) -> list:
    return [("images", (name, data, "image/png"))]


def test_an_upload_of_the_other_spectrum_is_refused_with_the_clis_line(
    served: dict, tmp_path: Path, two_stream_checkpoint: Path, cli_runner
) -> None:
    index_dir = _fresh_index(served, tmp_path)
    before = _live_files(index_dir)
    client = _client(served, index_dir, uploads_dir=tmp_path / "uploads")
    infrared = _tree(tmp_path / "ir", cam=3, pids=(4,), per_person=1, gray=True)[0]  # cam3: SYSU's infrared
    refused = client.post("/gallery", files=_upload("cam3/0004/0001.png", infrared.read_bytes()), data={"modality": "ir"})
    _assert_one_line_error(refused, 400, "indexes visible images; cannot add infrared ones")
    args = ["index", str(tmp_path / "ir"), "-c", str(two_stream_checkpoint), "-m", "infrared", "-o", str(index_dir),
            "--add", "--device", "cpu"]  # fmt: skip
    result = cli_runner.invoke(cli_app, args)
    assert result.exit_code == 1, result.output
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [f"error: {refused.json()['error']}"]
    assert _live_files(index_dir) == before  # rows and records as they were
    assert client.get("/gallery").json()["count"] == 6
    assert not (tmp_path / "uploads").exists() or not any((tmp_path / "uploads").iterdir())


def test_an_upload_named_in_the_other_spectrums_layout_is_added_with_the_clis_notice(served: dict, tmp_path: Path) -> None:
    index_dir = _fresh_index(served, tmp_path)
    client = _client(served, index_dir, uploads_dir=tmp_path / "uploads")
    response = client.post("/gallery", files=_upload("cam3/0009/0001.png", _png(_person(9, 1, False))))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["added"] == 1 and answer["count"] == 7
    assert answer["notices"] == [
        "1 image(s) look infrared by their dataset layout (e.g. cam3/0009/0001.png) but were embedded as visible"
    ]
    plain = client.post("/gallery", files=_upload("ten.png", _png(_person(10, 1, False)))).json()
    assert plain["added"] == 1 and plain["notices"] == []


def test_an_upload_waits_for_the_index_writer_lock_before_writing(
    served: dict, tmp_path: Path, index_lock_waits: threading.Event
) -> None:
    from mclnet_cli.index.store import writer_lock

    from conftest import wait_for_lock_wait

    index_dir = _fresh_index(served, tmp_path)
    before = _live_files(index_dir)
    client = _client(served, index_dir, uploads_dir=tmp_path / "uploads")
    answers: list = []
    upload = threading.Thread(
        target=lambda: answers.append(client.post("/gallery", files=_upload("nine.png", _png(_person(9, 1, False)))))
    )
    with writer_lock(index_dir):  # another writer (say, mclnet index --add) is saving
        upload.start()
        assert wait_for_lock_wait(index_lock_waits, upload), answers and answers[0].text
        assert _live_files(index_dir) == before
    upload.join(timeout=300)
    assert answers and answers[0].status_code == 200, answers and answers[0].text
    assert answers[0].json()["count"] == 7 and len(GalleryIndex.load(index_dir)) == 7


def test_an_upload_after_the_index_folder_was_removed_fails_naming_it_and_leaves_nothing(
    served: dict, tmp_path: Path
) -> None:
    index_dir = _fresh_index(served, tmp_path)
    client = _client(served, index_dir)  # uploads beside the index: <index>-uploads
    shutil.rmtree(index_dir)
    response = client.post("/gallery", files=_upload("eleven.png", _png(_person(11, 1, False))))
    _assert_one_line_error(response, 400, "index not found", str(index_dir))
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no folder holding only a lock file, no uploads folder


def test_an_upload_on_a_full_disk_is_507_naming_the_image_and_leaves_the_index(
    served: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    import mclnet_cli.atomic as atomic

    index_dir = _fresh_index(served, tmp_path)
    before = _live_files(index_dir)
    client = _client(served, index_dir, uploads_dir=tmp_path / "uploads")
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.handle, name)

    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, *a, **k: Full(real_fdopen(fd, *a, **k)))
    response = client.post("/gallery", files=_upload("seven.png", _png(_person(7, 1, gray=False))))
    _assert_one_line_error(response, 507, "no space left", str((tmp_path / "uploads").resolve()))
    assert ".tmp" not in response.json()["error"]
    monkeypatch.undo()
    assert _live_files(index_dir) == before and client.get("/gallery").json()["count"] == 6
    assert not [p for p in (tmp_path / "uploads").iterdir()]  # no image, no temp


def test_delete_takes_images_out_like_index_remove(served: dict, tmp_path: Path) -> None:
    index_dir = _fresh_index(served, tmp_path)
    client = _client(served, index_dir)
    probe = served["probes"][:1]
    before = {h["path"]: h["score"] for h in _search(client, probe).json()["results"][0]["results"]}
    records = [r.path for r in GalleryIndex.load(index_dir).records]
    person_two = str(Path(records[2]).parent)  # cam1/0002: a folder, both its images
    response = client.request("DELETE", "/gallery", json={"paths": [records[0], person_two]})
    assert response.status_code == 200, response.text
    assert response.json() == {"index": str(index_dir), "kind": "flat", "removed": 3, "count": 3}
    gone = {records[0], records[2], records[3]}
    after = {h["path"]: h["score"] for h in _search(client, probe).json()["results"][0]["results"]}
    assert set(after) == set(records) - gone
    assert all(after[p] == pytest.approx(before[p], abs=1e-6) for p in after)
    assert [r.path for r in GalleryIndex.load(index_dir).records] == [p for p in records if p not in gone]
    kept = _live_files(index_dir)
    unknown = client.request("DELETE", "/gallery", json={"paths": [records[1], "/nowhere/x.png"]})
    _assert_one_line_error(unknown, 400, "/nowhere/x.png", "not in the index")
    assert _live_files(index_dir) == kept and client.get("/gallery").json()["count"] == 3


# --------------------------------------------------------------------------- bad input


def _truncated_jpeg() -> bytes:
    data = _jpeg(_person(1, 1, False).resize((128, 256)))
    return data[: len(data) // 2]


BAD_PROBES = {
    "text": (b"hello, I am not an image\n", "notes.txt", 400, "not an image"),
    "corrupt": (bytes(range(256)) * 4, "photo.jpg", 400, "photo.jpg"),
    "truncated": (None, "cut.jpg", 400, "truncated"),
    "empty": (b"", "empty.png", 400, "empty"),
    "gif": (None, "anim.gif", 400, "GIF"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROBES))
def test_bad_probe_files_are_400(served: dict, case: str) -> None:
    data, name, status, word = BAD_PROBES[case]
    if case == "truncated":
        data = _truncated_jpeg()
    if case == "gif":
        buffer = io.BytesIO()
        _person(1, 1, False).save(buffer, format="GIF")
        data = buffer.getvalue()
    client = _client(served)
    response = client.post("/search", files=[("probes", (name, data, "application/octet-stream"))], data={"modality": "ir"})
    _assert_one_line_error(response, status, word)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"modality": "ultraviolet"}, ("modality", "ultraviolet")),
        ({"modality": "infrared", "top_k": "0"}, ("top_k", "1..100")),
        ({"modality": "infrared", "top_k": "101"}, ("top_k",)),
        ({"modality": "infrared", "top_k": "ten"}, ("top_k", "integer")),
        ({}, ("modality", "required")),
    ],
)
def test_bad_fields_are_422(served: dict, fields: dict, words: tuple[str, ...]) -> None:
    client = _client(served)
    probe = served["probes"][0]
    response = client.post("/search", files=[("probes", (probe.name, probe.read_bytes(), "image/png"))], data=fields)
    _assert_one_line_error(response, 422, *words)


def test_no_probe_is_422(served: dict) -> None:
    response = _client(served).post("/search", data={"modality": "infrared"})
    _assert_one_line_error(response, 422, "probes")


def test_size_pixel_and_count_limits_are_413(served: dict) -> None:
    big = _png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8)))
    client = _client(served, max_upload_bytes=len(big) - 1, max_pixels=50_000, max_files=2)
    response = client.post("/search", files=[("probes", ("big.png", big, "image/png"))], data={"modality": "infrared"})
    _assert_one_line_error(response, 413, "big.png", "bytes")
    wide = _png(Image.new("RGB", (400, 200)))  # 80,000 pixels, a few hundred bytes: a decompression-bomb shape
    response = client.post("/search", files=[("probes", ("wide.png", wide, "image/png"))], data={"modality": "infrared"})
    _assert_one_line_error(response, 413, "wide.png", "pixels")
    small = served["probes"][0].read_bytes()
    files = [("probes", (f"p{i}.png", small, "image/png")) for i in range(3)]
    _assert_one_line_error(client.post("/search", files=files, data={"modality": "infrared"}), 413, "3 images")
    huge = client.post("/search", content=b"x" * 10, headers={"content-length": str(10**10), "content-type": "multipart/form-data; boundary=b"})
    _assert_one_line_error(huge, 413, "request body")


def test_a_chunked_body_over_the_limit_is_cut_off_with_413(served: dict) -> None:
    client = _client(served, max_upload_bytes=20_000, max_files=1)  # request limit: 20 kB + 1 MiB
    boundary = "xyz"

    def body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"modality\"\r\n\r\ninfrared\r\n"
               f"--{boundary}\r\nContent-Disposition: form-data; name=\"probes\"; filename=\"big.png\"\r\n"
               "Content-Type: image/png\r\n\r\n").encode()
        for _ in range(400):  # 400 x 64 KiB = 25 MiB, with no Content-Length
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post("/search", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    _assert_one_line_error(response, 413, "request body")
    assert "content-length" not in {k.lower() for k in response.request.headers}  # the counted body, not the header


def test_a_crash_inside_is_a_500_without_traceback(served: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("secret internals\nline two")

    monkeypatch.setattr(SearchEngine, "rank", boom)
    client = TestClient(create_app(ServeSettings(index_dir=served["index"]), engine=served["engine"]), raise_server_exceptions=False)
    response = _search(client, served["probes"][:1])
    _assert_one_line_error(response, 500, "internal error")
    assert "secret" not in response.text


# --------------------------------------------------------------------------- token and traversal


def test_token_on_every_data_route_but_not_healthz_the_page_or_the_docs(served: dict) -> None:
    client = _client(served, token=TOKEN)
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/healthz").status_code == 200
    assert client.get("/").status_code == 200  # static HTML; it sends the token itself
    for method, path in (
        ("get", "/gallery"), ("get", "/images/0"), ("post", "/gallery"), ("delete", "/gallery"), ("post", "/search"),
    ):  # fmt: skip
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
            response = getattr(client, method)(path, headers=headers)
            _assert_one_line_error(response, 401, "token")
            assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/gallery", headers=good).status_code == 200
    assert client.get("/images/0", headers=good).status_code == 200
    assert _search(client, served["probes"][:1], headers=good).status_code == 200


def test_api_docs_open_in_a_browser_without_the_token_and_offer_it(served: dict) -> None:
    """A browser cannot send the header: /docs, /redoc and /openapi.json hold no data and load without it."""
    client = _client(served, token=TOKEN)
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower() and "/openapi.json" in docs.text
    assert client.get("/redoc").status_code == 200
    schema = client.get("/openapi.json")
    assert schema.status_code == 200
    described = schema.json()
    # the token is declared, so /docs has an Authorize button and "Try it out" sends it
    assert described["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "The token given to 'mclnet serve --token'.",
    }
    assert described["paths"]["/search"]["post"]["security"] == [{"bearer": []}]
    assert described["paths"]["/gallery"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in described["paths"]["/healthz"]["get"]
    # ... while every data route still needs it
    _assert_one_line_error(_search(client, served["probes"][:1]), 401, "token")
    _assert_one_line_error(client.get("/gallery"), 401, "token")
    _assert_one_line_error(client.get("/images/0"), 401, "token")
    for near in ("/docs/../gallery", "/openapi.json/../gallery", "/docsx", "/openapi.jsonx"):
        assert client.get(near).status_code in (401, 404), near
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert _search(client, served["probes"][:1], headers=good).status_code == 200


def test_without_a_token_the_api_docs_declare_none(served: dict) -> None:
    described = _client(served).get("/openapi.json").json()
    assert "securitySchemes" not in described.get("components", {})
    assert "security" not in described["paths"]["/search"]["post"]


def test_no_token_means_open(served: dict) -> None:
    client = _client(served)
    assert client.get("/gallery").status_code == 200
    assert client.get("/gallery", headers={"Authorization": "Bearer anything"}).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/images/..%2F..%2F..%2Fetc%2Fpasswd",
        "/images/%2e%2e/%2e%2e/etc/passwd",
        "/images/../../etc/passwd",
        "/images//etc/passwd",
        "/images/-1",
        "/images/6",
        "/images/99999999999999999999999",
        "/images/0x1",
        "/images/1.0",
        "/images/%00",
        "/images/",
    ],
)
def test_images_serves_only_indexed_records(served: dict, path: str) -> None:
    client = _client(served)
    response = client.get(path)
    assert response.status_code in (404, 422), (path, response.status_code)
    assert "root:" not in response.text and response.headers["content-type"] == "application/json"
    assert list(response.json()) == ["error"]


def test_images_of_a_vanished_file_is_404(served: dict, tmp_path: Path, two_stream_checkpoint: Path) -> None:
    _tree(tmp_path / "g", cam=1, pids=(1,), per_person=2, gray=False)
    build_gallery_index(two_stream_checkpoint, tmp_path / "g", "visible", tmp_path / "idx", device="cpu")
    client = TestClient(create_app(ServeSettings(index_dir=tmp_path / "idx", device="cpu")))
    gone = Path(GalleryIndex.load(tmp_path / "idx").records[0].path)
    gone.unlink()
    _assert_one_line_error(client.get("/images/0"), 404, "record 0")
    assert client.get("/images/1").status_code == 200


# --------------------------------------------------------------------------- a real server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def live_server(served: dict) -> Iterator[str]:
    """uvicorn on 127.0.0.1 in a thread, serving the module's index."""
    import uvicorn

    app = create_app(ServeSettings(index_dir=served["index"], device="cpu"), engine=served["engine"])
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_real_uvicorn_answers_search_over_tcp(served: dict, live_server: str) -> None:
    import httpx

    assert httpx.get(f"{live_server}/healthz").json() == {"status": "ok"}
    probe = served["probes"][0]
    files = [("probes", (probe.name, probe.read_bytes(), "image/png"))]
    response = httpx.post(f"{live_server}/search", files=files, data={"modality": "infrared", "top_k": "3"}, timeout=60)
    assert response.status_code == 200
    hits = response.json()["results"][0]["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3]


def test_a_taken_port_is_one_error_line_before_anything_says_serving(served: dict, cli_runner) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        args = ["serve", "--index", str(served["index"]), "--port", str(port), "--device", "cpu", "--threads", "1"]
        result = cli_runner.invoke(cli_app, args)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: cannot listen on 127.0.0.1:{port}: port {port} is already in use"), lines
    assert "serving" not in result.output and "Errno" not in result.output and "Traceback" not in result.output
    assert result.stdout == ""


@pytest.mark.parametrize(
    "host, words",
    [
        ("192.0.2.1", "is not an address of this machine"),  # TEST-NET-1: never a local address
        ("::ffff:192.0.2.1", "is not an address of this machine"),
    ],
)
def test_an_address_that_cannot_be_bound_is_one_error_line(served: dict, cli_runner, host: str, words: str) -> None:
    port = _free_port()
    args = ["serve", "--index", str(served["index"]), "--host", host, "--port", str(port), "--token", TOKEN, "--device", "cpu"]
    result = cli_runner.invoke(cli_app, args)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot listen on {where}: ") and words in lines[0], lines
    assert "serving" not in result.output


def test_serve_listens_on_the_printed_port_and_ctrl_c_exits_130(served: dict, tmp_path: Path) -> None:
    """The real command in its own process: --port 0 prints the port it got, and Ctrl-C ends it with 130."""
    import re
    import signal
    import subprocess
    import sys

    import httpx

    env = {**os.environ, "MCLNET_THREADS": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mclnet_cli", "serve", "--index", str(served["index"]), "--port", "0", "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        seen = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            seen.append(line)
            if line.startswith("serving"):
                break
        assert seen and seen[-1].startswith("serving"), seen
        found = re.search(r"on http://127\.0\.0\.1:(\d+) ", seen[-1])
        assert found and int(found.group(1)) > 0, seen[-1]
        url = f"http://127.0.0.1:{found.group(1)}"
        for _ in range(100):  # the socket listens already; uvicorn answers once its loop runs
            try:
                assert httpx.get(f"{url}/healthz", timeout=5).json() == {"status": "ok"}
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("the server never answered /healthz")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, (process.returncode, err)
    assert "interrupted:" in err and "stopped serving" in err and "Traceback" not in err and "error:" not in err, err


def test_serve_command_defaults_to_loopback() -> None:
    import inspect

    from mclnet_cli.cli.serve import serve

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"


# --------------------------------------------------------------------------- the page in a browser


def test_search_reports_the_probes_pid_from_a_name_in_a_dataset_layout(served: dict) -> None:
    """The page marks hits from the probe's pid: known when the uploaded name follows a layout, else null."""
    client = _client(served)
    probe = served["probes"][0]  # .../probes/cam3/0001/0001.png
    laid_out = "/".join(probe.parts[-3:])
    files = [("probes", (laid_out, probe.read_bytes(), "image/png")), ("probes", (probe.name, probe.read_bytes(), "image/png"))]
    answer = client.post("/search", files=files, data={"modality": "infrared", "top_k": "3"}).json()
    named, bare = answer["results"]
    assert named["probe"] == laid_out and (named["pid"], named["cam"]) == (1, 3)
    assert bare["probe"] == probe.name and (bare["pid"], bare["cam"]) == (None, None)
    assert all(hit["pid"] is not None for hit in named["results"])  # both known: the page can mark every hit


def test_the_page_marks_matches_and_says_the_score_is_a_cosine(served: dict) -> None:
    page = _client(served).get("/").text
    assert "cosine" in page and "function verdict(" in page and "function probePid(" in page
    assert "figure.same img" in page and "figure.other img" in page  # coloured borders ...
    assert "\\u2713 match" in page and "\\u2717 not a match" in page  # ... and a text label for each
    assert 'id="pid"' in page and 'label for="pid"' in page


def _page_script() -> str:
    from mclnet_cli.serve.app import PAGE

    text = PAGE.read_text(encoding="utf-8")
    return text[text.index("<script>") + len("<script>"): text.index("</script>")]


def test_the_pages_marking_rule_in_node(tmp_path: Path) -> None:
    """The page's own functions, run by node: a hit is marked only when both pids are known."""
    import re
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("node not found")
    script = _page_script()
    functions = "\n".join(
        re.search(rf"^function {name}\(.*?^}}", script, re.S | re.M).group(0) for name in ("verdict", "probePid")
    )
    text = re.search(r"^const VERDICT_TEXT = .*?;$", script, re.M).group(0)
    check = (
        "let typed = '';\nconst $ = () => ({ value: typed });\n" + functions + "\n" + text + "\n"
        "const out = [verdict(7, 7), verdict(7, 8), verdict(null, 7), verdict(7, null), verdict(undefined, 3),\n"
        "  probePid({ pid: 4 }), probePid({ pid: null }), probePid({})];\n"
        "typed = ' 9 '; out.push(probePid({ pid: 4 }));\n"
        "typed = 'x'; out.push(probePid({ pid: 4 }));\n"
        "out.push(VERDICT_TEXT.same, VERDICT_TEXT.other);\n"
        "console.log(JSON.stringify(out));\n"
    )
    path = tmp_path / "check.js"
    path.write_text(check, encoding="utf-8")
    result = subprocess.run([node, str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        "same", "other", None, None, None, 4, None, None, 9, 4, "\u2713 match", "\u2717 not a match",
    ]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def test_page_in_headless_chromium(served: dict, live_server: str, tmp_path: Path) -> None:
    """Upload a probe on the page, see the ranked thumbnails, take a screenshot.

    Locally the test is skipped without Chromium; under CI (``CI`` or
    ``MCLNET_REQUIRE_BROWSER`` set, as .ci/run does) a missing browser fails it.
    """
    executable = _chromium()
    required = bool(os.environ.get("CI") or os.environ.get("MCLNET_REQUIRE_BROWSER"))
    if executable is None:
        message = "Chromium not found (apt-get install chromium)"
        if required:
            pytest.fail(message)
        pytest.skip(message)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            pytest.fail("playwright is not installed (test extra)")
        pytest.skip("playwright is not installed")

    top_k = 5
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 520})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(live_server + "/")
            page.wait_for_function("document.getElementById('gallery').textContent.includes('6 visible images')")
            assert page.input_value("#modality") == "infrared"  # the other spectrum than the gallery's
            page.set_input_files("#file", str(served["probes"][0]))
            page.fill("#topk", str(top_k))
            page.click("#search")
            page.wait_for_function(
                f"document.querySelectorAll('.result-row figure.hit img[src^=\"blob:\"]').length === {top_k}",
                timeout=60_000,
            )
            captions = page.locator(".result-row figure.hit figcaption").all_inner_texts()
            assert len(captions) == top_k and captions[0].startswith("#1")
            assert all("pid" in c and "cam" in c for c in captions)
            loaded = page.evaluate(
                "Array.from(document.querySelectorAll('.result-row img')).every(i => i.complete && i.naturalWidth > 0)"
            )
            assert loaded, "a thumbnail did not load"
            assert "searched" in page.inner_text("#status") and "cosine" in page.inner_text("#status")
            assert "cosine" in captions[0] and "cosine" in page.inner_text("#legend")
            # a browser sends only the file's name, so the probe's pid is unknown until it is typed
            assert page.locator(".result-row figure.hit .verdict").count() == 0
            page.fill("#pid", "1")  # the probe is person 1
            page.click("#search")
            page.wait_for_function(
                f"document.querySelectorAll('.result-row figure.hit .verdict').length === {top_k}", timeout=60_000
            )
            marks = page.locator(".result-row figure.hit .verdict").all_inner_texts()
            assert set(marks) <= {"\u2713 match", "\u2717 not a match"}, marks
            same, other = page.locator("figure.hit.same").count(), page.locator("figure.hit.other").count()
            assert same >= 1 and same + other == top_k  # person 1 has 2 of the 6 gallery images
            # "Add to gallery" sends the chosen spectrum: an infrared image is refused by the visible
            # gallery with the CLI's line, and nothing is added (issue 25, item 3)
            page.click("#add")
            page.wait_for_function("document.getElementById('status').textContent.includes('cannot add infrared')")
            assert "indexes visible images" in page.inner_text("#status")
            page.wait_for_function("document.getElementById('gallery').textContent.includes('6 visible images')")
            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot), full_page=True)
            keep = os.environ.get("MCLNET_SCREENSHOT_DIR")
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, Path(keep) / "serve-page.png")
            with Image.open(shot) as picture:
                assert picture.width >= 1000 and picture.height > 200
            assert errors == []
        finally:
            browser.close()
