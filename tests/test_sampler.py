"""The P x K cross-modality sampler and the training loader built on it."""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mclnet_cli.config import load_config
from mclnet_cli.data.records import Modality, Sample, load_prepared, write_prepared
from mclnet_cli.data.sampler import CrossModalityBatchSampler, default_steps
from mclnet_cli.errors import DataError

sys.path.insert(0, str(Path(__file__).parent))

# label -> number of visible / infrared images; label 5 is visible only, label 6 infrared only.
VISIBLE = [0] * 6 + [1] * 2 + [2] * 5 + [3] * 1 + [4] * 4 + [5] * 3
INFRARED = [0] * 3 + [1] * 4 + [2] * 2 + [3] * 6 + [4] * 1 + [6] * 2


def make(seed: int = 0, **kwargs) -> CrossModalityBatchSampler:
    options = {"num_ids": 3, "num_instances": 2, "seed": seed, **kwargs}
    return CrossModalityBatchSampler(VISIBLE, INFRARED, **options)


def test_batch_composition() -> None:
    sampler = make()
    batches = list(sampler)
    assert len(batches) == len(sampler) == max(len(VISIBLE), len(INFRARED)) // 6
    for batch in batches:
        assert len(batch) == 6
        labels = [label for _, _, label, _ in batch]
        assert Counter(labels) == Counter({label: 2 for label in set(labels)}) and len(set(labels)) == 3
        assert labels == sorted(labels, key=labels.index)  # identity-major: the K rows of an id are adjacent
        for v, i, label, _ in batch:
            assert VISIBLE[v] == label and INFRARED[i] == label
            assert label not in (5, 6)  # only ids with both modalities


def test_replacement_only_when_needed() -> None:
    sampler = make(num_instances=3, steps_per_epoch=40)
    for batch in sampler.plan(0):
        for label in {b[2] for b in batch}:
            vis = [b[0] for b in batch if b[2] == label]
            if VISIBLE.count(label) >= 3:
                assert len(set(vis)) == 3  # enough images: all distinct
    # label 3 has one visible image: it is repeated
    rows = [b for batch in sampler.plan(0) for b in batch if b[2] == 3]
    assert rows and len({b[0] for b in rows}) == 1


def test_every_identity_visited_before_repeats() -> None:
    sampler = make(steps_per_epoch=4)  # 4 steps x 3 ids = 12 >= 2 rounds of the 5 eligible ids
    seen = [b[2] for batch in sampler.plan(0)[:1] for b in batch[::2]]
    seen += [b[2] for batch in sampler.plan(0)[1:2] for b in batch[::2]][:2]
    assert len(set(seen)) == 5


def test_determinism_and_epochs() -> None:
    a, b = make(seed=1), make(seed=1)
    assert a.plan(3) == b.plan(3)
    a.set_epoch(3)
    assert list(a) == b.plan(3)
    assert a.plan(3) != a.plan(4)
    assert make(seed=2).plan(3) != a.plan(3)


def test_steps_override_and_default() -> None:
    assert default_steps(100, 40, 4, 4) == 6
    assert default_steps(3, 2, 4, 4) == 1
    assert len(make(steps_per_epoch=7)) == 7
    # train.steps_rule=official: int(N / (P*K)) + 1, one more also when P*K divides N
    assert default_steps(100, 40, 4, 4, "official") == 7 and default_steps(96, 40, 4, 4, "official") == 7
    assert default_steps(3, 2, 4, 4, "official") == 1
    assert len(make(steps_rule="official")) == max(len(VISIBLE), len(INFRARED)) // 6 + 1
    assert len(make(steps_per_epoch=7, steps_rule="official")) == 7


def test_ddp_shards_are_disjoint_and_equal() -> None:
    single = make(seed=5, steps_per_epoch=6).plan(2)
    shards = []
    for rank in range(2):
        sampler = make(seed=5, steps_per_epoch=6, rank=rank, world_size=2)
        sampler.set_epoch(2)
        shards.append(list(sampler))
        assert len(sampler) == 3
    assert shards[0] == single[0::2] and shards[1] == single[1::2]
    uneven = [make(steps_per_epoch=5, rank=r, world_size=2) for r in range(2)]
    assert len(uneven[0]) == len(uneven[1]) == 3 == len(list(uneven[1]))


def test_too_few_identities() -> None:
    with pytest.raises(DataError, match="at least 6 identities"):
        make(num_ids=6)
    with pytest.raises(DataError, match="rank"):
        make(rank=2, world_size=2)


# ---------------------------------------------------------------------------- loader


def tiny_prepared(tmp_path: Path):
    from test_sources import write_image

    samples = []
    for pid in (3, 7, 8, 12, 20):
        for k in range(3):
            for modality, cam, mode in ((Modality.VISIBLE, 1, "RGB"), (Modality.INFRARED, 3, "L")):
                path = write_image(tmp_path / "raw" / f"{pid}_{cam}_{k}.png", mode=mode, size=(20, 40), value=pid * 10 + k + cam)
                samples.append(Sample(str(path), pid, cam, modality, "val" if pid == 20 else "train"))
    samples.append(Sample(samples[0].path, 30, 1, Modality.VISIBLE, "test"))
    write_prepared(tmp_path / "prepared", samples, {"dataset": "sysu"})
    return load_prepared(tmp_path / "prepared")


@pytest.fixture()
def data_cfg():
    return dataclasses.replace(load_config("tiny").data, height=16, width=8, pad=2, num_ids=2, num_instances=2, workers=0)


def test_loader_batches_labels_and_determinism(tmp_path: Path, data_cfg) -> None:
    from mclnet_cli.data.loader import build_train_loader, training_samples

    prepared = tiny_prepared(tmp_path)
    assert {s.pid for s in training_samples(prepared, data_cfg)} == {3, 7, 8, 12, 20}
    only_train = dataclasses.replace(data_cfg, train_on_val=False)
    assert 20 not in {s.pid for s in training_samples(prepared, only_train)}
    loader = build_train_loader(prepared, data_cfg, seed=0, steps_per_epoch=3)
    assert loader.label_map == {3: 0, 7: 1, 8: 2, 12: 3, 20: 4} and loader.num_classes == 5 and len(loader) == 3
    first = list(loader)
    assert len(first) == 3
    for batch in first:
        assert batch.visible.shape == batch.infrared.shape == (4, 3, 16, 8)
        assert batch.labels.dtype == torch.long and batch.labels.shape == (4,)
        assert batch.labels[0] == batch.labels[1] and batch.labels[2] == batch.labels[3] and batch.labels[0] != batch.labels[2]
    again = list(build_train_loader(prepared, data_cfg, seed=0, steps_per_epoch=3))
    for x, y in zip(first, again):
        assert torch.equal(x.visible, y.visible) and torch.equal(x.infrared, y.infrared) and torch.equal(x.labels, y.labels)
    loader.set_epoch(1)
    second = list(loader)
    assert any(not torch.equal(x.visible, y.visible) for x, y in zip(first, second))


def test_loader_regdb_trial_mismatch(tmp_path: Path, data_cfg) -> None:
    from mclnet_cli.data.loader import build_train_loader

    prepared = tiny_prepared(tmp_path)
    prepared.meta["trial"] = 4
    with pytest.raises(DataError, match=r"trial 4 .*but data.regdb_split is 1; pass --set data.regdb_split=4"):
        build_train_loader(prepared, data_cfg, seed=0, steps_per_epoch=1)


def test_loader_uses_matching_cache(tmp_path: Path, data_cfg) -> None:
    from mclnet_cli.data.cache import build_cache
    from mclnet_cli.data.loader import build_train_loader, training_samples

    prepared = tiny_prepared(tmp_path)
    assert not build_train_loader(prepared, data_cfg, seed=0, steps_per_epoch=1).cached
    info = build_cache(prepared.root, training_samples(prepared, data_cfg), 16, 8, workers=1)
    assert not build_train_loader(prepared, data_cfg, seed=0, steps_per_epoch=1).cached  # meta.json does not name it
    prepared.meta["cache"] = {"height": 16, "width": 8, "images": info["images"], "token": info["token"]}
    cached = build_train_loader(prepared, data_cfg, seed=0, steps_per_epoch=2)
    assert cached.cached
    assert not build_train_loader(prepared, dataclasses.replace(data_cfg, use_cache=False), seed=0, steps_per_epoch=1).cached
    assert not build_train_loader(prepared, dataclasses.replace(data_cfg, height=32, width=16), seed=0, steps_per_epoch=1).cached
    for path in cached.dataset.visible:  # a cached row is the image as decoded and resized
        Path(path).unlink()
    batches = list(cached)
    assert len(batches) == 2 and batches[0].visible.shape == (4, 3, 16, 8)


def test_loader_ignores_a_cache_of_another_build_or_with_wrong_counts(tmp_path: Path, data_cfg) -> None:
    import json

    from mclnet_cli.data.cache import build_cache, cache_paths
    from mclnet_cli.data.loader import build_train_loader, training_samples

    prepared = tiny_prepared(tmp_path)
    samples = training_samples(prepared, data_cfg)
    info = build_cache(prepared.root, samples, 16, 8, workers=1)
    named = {"height": 16, "width": 8, "images": info["images"], "token": info["token"]}
    prepared.meta["cache"] = {**named, "token": "0" * 32}  # meta.json of a later prepare, the cache of an older one
    assert not build_train_loader(prepared, data_cfg, seed=0, steps_per_epoch=1).cached
    prepared.meta["cache"] = {**named, "height": 32}  # meta names another size
    assert not build_train_loader(prepared, data_cfg, seed=0, steps_per_epoch=1).cached
    prepared.meta["cache"] = named
    assert build_train_loader(prepared, data_cfg, seed=0, steps_per_epoch=1).cached
    _, index_path = cache_paths(prepared.root, 16, 8)
    index = json.loads(index_path.read_text())
    index["paths"].append(str(tmp_path / "extra.png"))  # index longer than the array (interrupted rewrite)
    index["count"] += 1
    index_path.write_text(json.dumps(index))
    assert not build_train_loader(prepared, data_cfg, seed=0, steps_per_epoch=1).cached
    index["paths"].pop()  # count disagreeing with the paths
    index_path.write_text(json.dumps(index))
    assert not build_train_loader(prepared, data_cfg, seed=0, steps_per_epoch=1).cached
    index["count"] -= 1
    index_path.write_text(json.dumps(index))
    assert build_train_loader(prepared, data_cfg, seed=0, steps_per_epoch=1).cached


def test_missing_training_image_in_a_worker_is_one_clean_line(tmp_path: Path, data_cfg) -> None:
    from mclnet_cli.data.loader import build_train_loader

    prepared = tiny_prepared(tmp_path)
    missing = {s.path for s in prepared.samples if s.modality is Modality.VISIBLE}
    for path in missing:
        Path(path).unlink()
    loader = build_train_loader(prepared, dataclasses.replace(data_cfg, workers=1), seed=0, steps_per_epoch=1)
    with pytest.raises(DataError) as caught:
        list(loader)
    message = str(caught.value)
    assert "\n" not in message and "DataLoader worker" not in message and "Traceback" not in message, message
    assert message.startswith("image not found: ") and message.removeprefix("image not found: ") in missing, message


def _pairs_of(tmp_path: Path, pids: tuple[int, ...], visible: np.ndarray, infrared: np.ndarray):
    """A prepared training set: two copies of ``visible`` (cam 1) and of ``infrared`` (cam 3) per pid."""
    samples = []
    for pid in pids:
        for k in range(2):
            for cam, array, modality in ((1, visible, Modality.VISIBLE), (3, infrared, Modality.INFRARED)):
                path = tmp_path / "raw" / f"{pid}_{cam}_{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)
                samples.append(Sample(str(path), pid, cam, modality, "train"))
    write_prepared(tmp_path / "prepared", samples, {"dataset": "sysu"})
    return load_prepared(tmp_path / "prepared")


def test_pseudo_infrared_pairs_take_the_visible_layout(tmp_path: Path, data_cfg) -> None:
    """With data.pseudo_infrared_p=1 every infrared image of a batch is its pair's visible image, spectrally mixed."""
    from mclnet_cli.data.loader import build_train_loader

    visible = np.zeros((16, 8, 3), dtype=np.uint8)
    visible[:, :4] = (200, 30, 30)  # left / right split
    visible[:, 4:] = (20, 40, 220)
    infrared = np.zeros((16, 8), dtype=np.uint8)
    infrared[:8] = 230  # top / bottom split
    infrared[8:] = 25
    prepared = _pairs_of(tmp_path, (1, 2, 3), visible, infrared)
    plain = dataclasses.replace(data_cfg, pad=0, flip_p=0.0, erasing_p=0.0, spectrum_p=0.0, grayscale_p=0.0, use_cache=False)

    def layouts(p: float) -> set[str]:
        cfg = dataclasses.replace(plain, pseudo_infrared_p=p)
        seen = set()
        for batch in build_train_loader(prepared, cfg, seed=0, steps_per_epoch=3):
            for image in batch.infrared:
                rows, cols = image[0].std(dim=1).max(), image[0].std(dim=0).max()  # spread along a row / a column
                seen.add("left-right" if rows > 0.5 and cols < 1e-4 else "top-bottom" if cols > 0.5 and rows < 1e-4 else "?")
        return seen

    assert layouts(1.0) == {"left-right"}
    assert layouts(0.0) == {"top-bottom"}
    assert layouts(0.5) == {"left-right", "top-bottom"}


def test_spectrum_knots_reach_the_pseudo_infrared_pairs_of_the_loader(tmp_path: Path, data_cfg) -> None:
    """data.spectrum_knots bends the pseudo-infrared mixes the loader draws (not only the transform's)."""
    from mclnet_cli.data.loader import build_train_loader

    ramp = np.linspace(0, 255, 8, dtype=np.float32)
    visible = np.stack([np.tile(ramp, (16, 1)), np.tile(ramp[::-1], (16, 1)), np.full((16, 8), 90.0)], -1)
    prepared = _pairs_of(tmp_path, (1, 2), visible.astype(np.uint8), np.full((16, 8), 128, np.uint8))
    plain = dataclasses.replace(data_cfg, pad=0, flip_p=0.0, erasing_p=0.0, spectrum_p=0.0, grayscale_p=0.0,
                                use_cache=False, pseudo_infrared_p=1.0)

    def infrared(knots: int) -> torch.Tensor:
        cfg = dataclasses.replace(plain, spectrum_knots=knots)
        return torch.cat([batch.infrared for batch in build_train_loader(prepared, cfg, seed=0, steps_per_epoch=2)])

    linear, curved = infrared(0), infrared(5)
    assert torch.equal(linear, infrared(0))  # the same seed draws the same mixes
    # a linear mix of a ramp is a ramp (monotone along the row); a random curve bends it
    monotone = lambda x: bool(((x[:, 0, 0, 1:] - x[:, 0, 0, :-1]).sign().abs().sum(-1) == (x[:, 0, 0, 1:] - x[:, 0, 0, :-1]).sign().sum(-1).abs()).all())  # noqa: E731
    assert monotone(linear) and not monotone(curved)
