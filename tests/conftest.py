"""Shared test setup and fixtures.

One thread per process keeps the suite fast on 2 cores and its numbers the same
on every machine. Fixtures shared by several files live here: a CLI runner,
checkpoint factories (an untrained tiny model, and one whose visible and
infrared streams differ so that stream routing shows in the numbers), a fake
SYSU-MM01 test tree and a small prepared dataset with train/val/test ids.
Checkpoints are built through the public builders only (``build_model``,
``checkpoint_payload``, ``save_checkpoint``), never from hard-coded shapes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the --help test runs without torch in a subprocess
    pass

if TYPE_CHECKING:
    from typer.testing import CliRunner

    from mclnet_cli.data.records import Sample


# What the tests' references assume of a checkpoint, pinned so that preset changes do not move it.
PINNED = ("data.height=64", "data.width=32", "data.resize=bilinear")
#: the checkpoint factory's network: random weights, 64 wide (tiny's own start: tests/test_pretrained.py)
RANDOM_START = ("model.pretrained=none", "model.base_channels=64")


class CheckpointFactory(Protocol):
    """Signature of the :func:`make_checkpoint` fixture's factory."""

    def __call__(
        self,
        path: Path,
        *,
        seed: int = 0,
        overrides: tuple[str, ...] = (),
        pids: tuple[int, ...] = (1, 2, 3, 4),
        distinct_streams: bool = False,
    ) -> Path: ...


def perturb_stream(model: "torch.nn.Module", modality: str, seed: int, scale: float = 0.5) -> None:
    """Add seeded noise (``scale`` x each tensor's std) to every weight of one modality's own stages and heads.

    After this the two streams of an untrained MCLNet are no longer copies, so
    embedding an image with the wrong stream gives a different feature.
    """
    generator = torch.Generator().manual_seed(seed)
    modules = [model.backbone.specific[modality], model.specific_heads[modality]]
    with torch.no_grad():
        for module in modules:
            for param in module.parameters():
                if param.dim() > 1:
                    noise = torch.randn(param.shape, generator=generator)
                    param.add_(scale * param.std() * noise)


@pytest.fixture(scope="session")
def cli_runner() -> "CliRunner":
    """A Typer CLI runner (stdout and stderr kept apart, as a terminal shows them)."""
    from typer.testing import CliRunner

    return CliRunner()


@pytest.fixture(scope="session")
def make_checkpoint() -> CheckpointFactory:
    """Factory: an untrained tiny-preset checkpoint at ``path`` (64x32, ``PINNED``; optionally differing streams).

    Random weights at torchvision's width (:data:`RANDOM_START`), not tiny's shipped narrow start, so that
    ``seed`` decides every weight and the two streams start as identical copies; ``overrides`` come after.
    """
    from mclnet_cli.config import load_config
    from mclnet_cli.engine.checkpoint import checkpoint_payload, save_checkpoint
    from mclnet_cli.model import build_model

    def make(
        path: Path,
        *,
        seed: int = 0,
        overrides: tuple[str, ...] = (),
        pids: tuple[int, ...] = (1, 2, 3, 4),
        distinct_streams: bool = False,
    ) -> Path:
        torch.manual_seed(seed)
        config = load_config("tiny", [*PINNED, *RANDOM_START, *overrides])
        model = build_model(config.model, num_classes=len(pids))
        if distinct_streams:
            perturb_stream(model, "infrared", seed=seed + 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        return save_checkpoint(path, checkpoint_payload(model, config, {pid: i for i, pid in enumerate(pids)}))

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, make_checkpoint: CheckpointFactory) -> Path:
    """Untrained tiny model (resnet18, 64x32, bilinear resize), ``eval.trials=2``; its two streams are identical copies."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", overrides=("eval.trials=2",))


@pytest.fixture(scope="session")
def two_stream_checkpoint(tmp_path_factory: pytest.TempPathFactory, make_checkpoint: CheckpointFactory) -> Path:
    """Like :func:`tiny_checkpoint` but the infrared stream's weights are perturbed: the streams differ.

    Stem, layer1 and layer2 are per modality here whatever the tiny preset says
    (``model.specific_stages=3``), so that a wrong stream moves the features well
    beyond float noise.
    """
    return make_checkpoint(
        tmp_path_factory.mktemp("ckpt2") / "two_stream.pt",
        overrides=("eval.trials=2", "model.specific_stages=3"),
        distinct_streams=True,
    )


def write_fake_sysu(root: Path, images: bool = True) -> list["Sample"]:
    """Test ids 1..3 in SYSU layout (24x12 random images); pid 3 is seen visibly only by camera 2.

    Plus one training sample (pid 9, no file) so that split filtering shows.
    """
    import numpy as np
    from PIL import Image

    from mclnet_cli.data.records import Modality, Sample

    samples = []
    rng = np.random.default_rng(0)
    layout = {1: (1, 2, 4, 3, 6), 2: (1, 5, 3, 6), 3: (2, 3)}
    for pid, cams in layout.items():
        for cam in cams:
            for k in range(1, 3):
                path = root / f"cam{cam}" / f"{pid:04d}" / f"{k:04d}.jpg"
                if images:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(rng.integers(0, 255, (24, 12, 3), dtype=np.uint8)).save(path)
                modality = Modality.INFRARED if cam in (3, 6) else Modality.VISIBLE
                samples.append(Sample(str(path), pid, cam, modality, "test"))
    samples.append(Sample(str(root / "cam1/0009/0001.jpg"), 9, 1, Modality.VISIBLE, "train"))
    return samples


@pytest.fixture(scope="session")
def fake_sysu(tmp_path_factory: pytest.TempPathFactory) -> tuple[list["Sample"], Path]:
    """A fake SYSU-MM01 test tree (see :func:`write_fake_sysu`) and its prepared folder: (samples, prepared)."""
    from mclnet_cli.data.records import write_prepared

    root = tmp_path_factory.mktemp("fake_sysu")
    samples = write_fake_sysu(root / "SYSU", images=True)
    prepared = write_prepared(root / "prep", samples, {"dataset": "sysu", "reader": "sysu"})
    return samples, prepared


def write_train_val_test(root: Path) -> Path:
    """Prepared dataset of small random images: 6 train ids, 3 val ids, 2 test ids.

    Each id has 2 visible (cams 1, 2) and 2 grey infrared (cam 3) 32x16 images.
    """
    import numpy as np
    from PIL import Image

    from mclnet_cli.data.records import Modality, Sample, write_prepared

    rng = np.random.default_rng(0)
    samples = []
    splits = ["train"] * 6 + ["val"] * 3 + ["test"] * 2
    for pid, split in enumerate(splits, start=1):
        base = rng.integers(0, 255, size=3)
        for cam, modality in ((1, Modality.VISIBLE), (2, Modality.VISIBLE), (3, Modality.INFRARED), (3, Modality.INFRARED)):
            pixels = np.clip(base + rng.normal(0, 30, size=(32, 16, 3)), 0, 255).astype(np.uint8)
            if modality is Modality.INFRARED:
                pixels[:] = pixels.mean(axis=2, keepdims=True).astype(np.uint8)
            path = root / "img" / f"{pid:03d}_{cam}_{len(samples)}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
            samples.append(Sample(str(path), pid, cam, modality, split))
    return write_prepared(root / "prepared", samples, {"dataset": "sysu", "root": str(root)})


@pytest.fixture(scope="session")
def prepared_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The prepared folder of :func:`write_train_val_test` (train, held-out val and test ids)."""
    return write_train_val_test(tmp_path_factory.mktemp("fake_train"))



@pytest.fixture
def index_lock_waits(monkeypatch: pytest.MonkeyPatch):
    """A ``threading.Event`` set when any index writer starts waiting for a folder's writer lock.

    Every writer lock of an index folder goes through ``folder_lock`` of
    :mod:`mclnet_cli.index.store`; this wraps it so that its ``on_wait`` also sets
    the event. A writer that skips the lock never sets it.
    """
    import threading

    from mclnet_cli.index import store as store_module

    waiting = threading.Event()
    real = store_module.folder_lock

    def spying(folder, **kwargs):  # noqa: ANN001, ANN202 - folder_lock's signature
        given = kwargs.get("on_wait")

        def on_wait(message: str) -> None:
            waiting.set()
            if given is not None:
                given(message)

        return real(folder, **{**kwargs, "on_wait": on_wait})

    monkeypatch.setattr(store_module, "folder_lock", spying)
    return waiting


def wait_for_lock_wait(waiting, worker) -> bool:  # noqa: ANN001 - an Event and a Thread
    """True once ``worker`` waits for a lock (``waiting`` set) while still running; False when it finished first."""
    while not waiting.is_set() and worker.is_alive():
        waiting.wait(0.02)
    return waiting.is_set() and worker.is_alive()


def _check_generated_sysu_set(generate, tmp_path: Path, every_visible_in_colour: bool = False):
    """Draw 12 ids with a benchmark generator, prepare them with the SYSU reader and check what every
    generator promises: no bad files, a 7/1/4 disjoint split, both spectra per id, 128x64 images,
    grey infrared, colour visible. Returns (generator summary, prepared samples)."""
    import numpy as np
    from PIL import Image

    from mclnet_cli.data.prepare import prepare_dataset
    from mclnet_cli.data.records import Modality, load_prepared

    summary = generate(tmp_path / "raw", ids=12, seed=3, images_per_camera=1)
    report = prepare_dataset("sysu", tmp_path / "raw", tmp_path / "prepared", workers=1)
    assert not report.bad and not report.single_modality_ids
    samples = load_prepared(tmp_path / "prepared").samples
    assert len(samples) == summary["images"]
    splits = {split: {s.pid for s in samples if s.split == split} for split in ("train", "val", "test")}
    assert [len(splits[k]) for k in ("train", "val", "test")] == [7, 1, 4]
    assert not (splits["train"] & splits["val"]) and not (splits["train"] & splits["test"]) and not (splits["val"] & splits["test"])
    for pid in {s.pid for s in samples}:
        assert {s.modality for s in samples if s.pid == pid} == {Modality.VISIBLE, Modality.INFRARED}
    for sample in samples:
        pixels = np.asarray(Image.open(sample.path).convert("RGB"), dtype=np.int16)
        assert pixels.shape == (128, 64, 3)
        if sample.modality is Modality.INFRARED:
            assert np.abs(pixels[..., 0] - pixels[..., 1]).max() <= 3 and np.abs(pixels[..., 1] - pixels[..., 2]).max() <= 3
    visible = [s for s in samples if s.modality is Modality.VISIBLE]
    checked = visible if every_visible_in_colour else visible[:1]
    for sample in checked:
        colour = np.asarray(Image.open(sample.path).convert("RGB"), dtype=np.int16)
        assert np.abs(colour[..., 0] - colour[..., 2]).max() > 10, sample.path  # visible images are in colour
    return summary, samples


@pytest.fixture
def check_generated_sysu_set():
    """:func:`_check_generated_sysu_set`, for the benchmark generators' tests."""
    return _check_generated_sysu_set
