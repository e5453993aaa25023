"""The public Python API (`mclnet_cli.api`): the same numbers as the commands, typed and documented."""

from __future__ import annotations

import inspect
from typing import Any
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mclnet_cli import api
from mclnet_cli.engine.extract import extract_features


def _images(prepared: Path, cam: str) -> list[str]:
    return sorted(str(p) for p in (prepared.parent / "img").iterdir() if p.name.split("_")[1] == cam)


def test_embed_equals_the_extraction_the_commands_use_for_each_stream(two_stream_checkpoint, prepared_dataset) -> None:
    model = api.load(two_stream_checkpoint, device="cpu")
    paths = _images(prepared_dataset, "3")[:5]
    for modality in ("visible", "infrared"):
        ours = api.embed(model, paths, modality, batch_size=2)
        reference = extract_features(model.model, paths, modality, height=64, width=32, batch_size=4).features
        assert ours.shape == (5, model.model.feature_dim) and ours.dtype == np.float32
        assert np.allclose(ours, reference, atol=1e-5), modality
        assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # the streams differ in this checkpoint, so passing the modality through is visible
    assert not np.allclose(api.embed(model, paths, "visible"), api.embed(model, paths, "ir"), atol=1e-3)


def test_embed_accepts_pil_images_and_the_pool_feature_and_flip(tiny_checkpoint, prepared_dataset) -> None:
    model = api.load(tiny_checkpoint, device="cpu")
    paths = _images(prepared_dataset, "1")[:3]
    pil = [Image.open(p).convert("L") for p in paths]  # grey images become RGB like files do
    from_files = api.embed(model, [Image.open(p).convert("L").convert("RGB") for p in paths], "visible", feature="pool")
    assert np.allclose(api.embed(model, pil, "visible", feature="pool"), from_files, atol=1e-6)
    flipped = api.embed(model, paths, "visible", flip=True)
    mirrored = api.embed(model, [Image.open(p).transpose(Image.Transpose.FLIP_LEFT_RIGHT) for p in paths], "visible")
    plain = api.embed(model, paths, "visible")
    expected = plain + mirrored
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(flipped, expected, atol=1e-5)


def test_search_scores_are_dot_products_of_embed(tiny_checkpoint, prepared_dataset, tmp_path: Path) -> None:
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for path in _images(prepared_dataset, "1"):
        (gallery / Path(path).name).write_bytes(Path(path).read_bytes())
    built = api.build_index(tiny_checkpoint, gallery, "visible", tmp_path / "idx", device="cpu")
    assert built.count == len(list(gallery.iterdir()))
    probe = _images(prepared_dataset, "3")[0]
    report = api.search(tmp_path / "idx", [probe], "infrared", top_k=4, device="cpu")
    model = api.load(tiny_checkpoint, device="cpu")
    q = api.embed(model, [probe], "infrared")[0]
    hits = report.results[0].hits
    g = api.embed(model, [h.path for h in hits], "visible")
    assert [h.score for h in hits] == pytest.approx((g @ q).tolist(), abs=1e-4)
    assert [h.rank for h in hits] == [1, 2, 3, 4]

    # the API refuses to replace an index silently, like `mclnet index` does
    from mclnet_cli.errors import IndexStoreError

    before = (tmp_path / "idx" / "meta.json").read_bytes()
    with pytest.raises(IndexStoreError, match=f"already holds an index of {built.count} image"):
        api.build_index(tiny_checkpoint, gallery, "visible", tmp_path / "idx", device="cpu")
    assert (tmp_path / "idx" / "meta.json").read_bytes() == before
    again = api.build_index(tiny_checkpoint, gallery, "visible", tmp_path / "idx", device="cpu", force=True)
    assert again.replaced == built.count and again.count == built.count and not again.appended
    appended = api.build_index(tiny_checkpoint, gallery, "visible", tmp_path / "idx", device="cpu", add=True)
    assert appended.replaced is None and appended.count == built.count


def test_bad_arguments_raise_one_line_errors(tiny_checkpoint) -> None:
    from mclnet_cli.errors import MclnetError

    model = api.load(tiny_checkpoint, device="cpu")
    with pytest.raises(MclnetError, match="feature"):
        api.embed(model, [], "visible", feature="fc")
    with pytest.raises(MclnetError, match="modality"):
        api.embed(model, [], "ultraviolet")
    with pytest.raises(MclnetError, match="not found"):
        api.embed(model, ["/nonexistent.jpg"], "visible")


def test_every_public_function_is_typed_and_documented() -> None:
    for name in ("load", "embed", "build_index", "search", "evaluate"):
        function = getattr(api, name)
        assert function.__doc__ and len(function.__doc__.strip()) > 40, name
        signature = inspect.signature(function)
        assert signature.return_annotation not in (inspect.Signature.empty, "Any", Any), name
        assert all(p.annotation is not inspect.Parameter.empty for p in signature.parameters.values()), name
    assert "embed" in (api.__doc__ or "")
    import typing

    from mclnet_cli.engine.evaluate import EvaluationReport
    from mclnet_cli.engine.indexing import BuildReport
    from mclnet_cli.engine.search import SearchReport

    names = {"BuildReport": BuildReport, "SearchReport": SearchReport, "EvaluationReport": EvaluationReport}
    hints = {name: typing.get_type_hints(getattr(api, name), localns=names)["return"] for name in ("build_index", "search", "evaluate")}
    assert hints == {"build_index": BuildReport, "search": SearchReport, "evaluate": EvaluationReport}


def test_the_api_is_reachable_from_the_package() -> None:
    import mclnet_cli

    assert mclnet_cli.api is api
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mclnet_cli.nope  # noqa: B018


def test_an_index_saved_by_another_writer_meanwhile_is_not_replaced(tiny_checkpoint, prepared_dataset, tmp_path,
                                                                    monkeypatch) -> None:
    """The refusal is checked again under the writer lock, not only before embedding."""
    import shutil

    from mclnet_cli.engine import indexing as engine
    from mclnet_cli.errors import IndexStoreError

    images = tmp_path / "gallery"
    images.mkdir()
    for path in _images(prepared_dataset, "1")[:4]:
        (images / Path(path).name).write_bytes(Path(path).read_bytes())
    other = api.build_index(tiny_checkpoint, images, "visible", tmp_path / "other", device="cpu")
    target = tmp_path / "idx"
    original = engine._embed_shard

    def embed_while_another_writer_saves(*args, **kwargs):
        extracted = original(*args, **kwargs)
        shutil.copytree(other.index_dir, target, dirs_exist_ok=True)  # the other writer's save lands now
        return extracted

    monkeypatch.setattr(engine, "_embed_shard", embed_while_another_writer_saves)
    before = (target.parent / "other" / "meta.json").read_bytes()
    with pytest.raises(IndexStoreError, match="already holds an index of 4 image"):
        api.build_index(tiny_checkpoint, images, "visible", target, device="cpu")
    assert (target / "meta.json").read_bytes() == before
    forced = api.build_index(tiny_checkpoint, images, "visible", target, device="cpu", force=True)
    assert forced.replaced == 4 and any("replaced the previous index of 4" in n for n in forced.notices)


def test_an_existing_index_is_refused_before_any_embedding(tiny_checkpoint, prepared_dataset, tmp_path, monkeypatch) -> None:
    """No minutes of embedding before the refusal: it comes first, after a hidden older index is put back."""
    from mclnet_cli.engine import indexing as engine
    from mclnet_cli.errors import IndexStoreError

    images = tmp_path / "gallery"
    images.mkdir()
    for path in _images(prepared_dataset, "1")[:3]:
        (images / Path(path).name).write_bytes(Path(path).read_bytes())
    api.build_index(tiny_checkpoint, images, "visible", tmp_path / "idx", device="cpu")

    def never(*args, **kwargs):
        raise AssertionError("embedded before refusing")

    monkeypatch.setattr(engine, "_embed_shard", never)
    with pytest.raises(IndexStoreError, match="already holds an index of 3 image"):
        api.build_index(tiny_checkpoint, images, "visible", tmp_path / "idx", device="cpu")
