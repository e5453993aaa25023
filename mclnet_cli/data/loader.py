"""Training data: samples of the training split, the paired dataset and the DataLoader.

A batch is P identities x K visible + K infrared images; row ``i`` of the
visible and infrared tensors share ``labels[i]``. Augmentation randomness is
seeded per image from the sampler's plan, so a (seed, epoch) gives the same
batches with any number of workers.

An image that does not load is not raised inside a DataLoader worker (PyTorch
would wrap it in a multi-line "Caught DataError in DataLoader worker" report):
the worker returns a :class:`LoadFailure` instead and the main process raises
one clean :class:`DataError` line naming the file.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

from mclnet_cli.config import DataConfig
from mclnet_cli.data.cache import ImageCache, open_prepared_cache
from mclnet_cli.data.images import load_rgb
from mclnet_cli.types import Modality, Sample
from mclnet_cli.data.records import PreparedDataset
from mclnet_cli.data.sampler import CrossModalityBatchSampler, Key
from mclnet_cli.data.transforms import pseudo_infrared, train_transforms
from mclnet_cli.data.workers import usable_workers
from mclnet_cli.errors import DataError


@dataclass
class TrainBatch:
    """visible / infrared: float [P*K, 3, H, W]; labels: long [P*K], the same for both."""

    visible: torch.Tensor
    infrared: torch.Tensor
    labels: torch.Tensor


def training_samples(prepared: PreparedDataset, data_cfg: DataConfig) -> list[Sample]:
    """Split "train", plus "val" when ``data.train_on_val`` (SYSU practice: 395 classes)."""
    trial = prepared.meta.get("trial")
    if trial is not None and int(trial) != data_cfg.regdb_split:
        raise DataError(
            f"{prepared.root} was prepared for RegDB trial {trial} (prepare regdb --trial) but data.regdb_split "
            f"is {data_cfg.regdb_split}; pass --set data.regdb_split={trial} or prepare regdb --trial {data_cfg.regdb_split}"
        )
    splits = {"train", "val"} if data_cfg.train_on_val else {"train"}
    samples = [s for s in prepared.samples if s.split in splits]
    if not samples:
        raise DataError(f"{prepared.root}: no training samples (split 'train'{' or val' if data_cfg.train_on_val else ''})")
    return samples


def make_label_map(samples: Sequence[Sample]) -> dict[int, int]:
    """pid -> contiguous label 0..N-1 in sorted pid order."""
    return {pid: label for label, pid in enumerate(sorted({s.pid for s in samples}))}


@dataclass(frozen=True)
class LoadFailure:
    """Why an item could not be loaded; travels from a worker to the main process in place of a batch."""

    message: str


def one_line(text: str) -> str:
    """``text`` with its lines joined by single spaces."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def collate_pairs(items: list[Any]) -> Any:
    """Default collation, or the first :class:`LoadFailure` of the batch when an item failed."""
    for item in items:
        if isinstance(item, LoadFailure):
            return item
    return default_collate(items)


class PairDataset(Dataset):
    """Maps a sampler :data:`Key` to (visible image, infrared image, label), augmented.

    With ``pseudo_infrared_p`` > 0, that share of pairs has as its infrared image the
    pair's own visible image through a random spectral response
    (:func:`~mclnet_cli.data.transforms.pseudo_infrared`), augmented as infrared.
    """

    def __init__(
        self,
        visible: Sequence[Sample],
        infrared: Sequence[Sample],
        transforms: dict[Modality, Callable[[Image.Image], torch.Tensor]],
        cache: ImageCache | None = None,
        pseudo_infrared_p: float = 0.0,
        spectrum_knots: int = 0,
    ) -> None:
        self.visible = [s.path for s in visible]
        self.infrared = [s.path for s in infrared]
        self.transforms = transforms
        self.cache = cache
        self.pseudo_infrared_p = pseudo_infrared_p
        self.spectrum_knots = spectrum_knots

    def __len__(self) -> int:
        return len(self.visible) + len(self.infrared)

    def load(self, path: str) -> Image.Image:
        if self.cache is not None and path in self.cache:
            return self.cache.image(path)
        return load_rgb(path)

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, torch.Tensor, int] | LoadFailure:
        """The augmented pair, or a :class:`LoadFailure` (never raised: see the module doc)."""
        v_index, i_index, label, seed = key
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                visible_image = self.load(self.visible[v_index])
                visible = self.transforms[Modality.VISIBLE](visible_image)
                if self.pseudo_infrared_p > 0 and torch.rand(1).item() < self.pseudo_infrared_p:
                    infrared_image = pseudo_infrared(visible_image, self.spectrum_knots)
                else:
                    infrared_image = self.load(self.infrared[i_index])
                infrared = self.transforms[Modality.INFRARED](infrared_image)
        except DataError as exc:
            return LoadFailure(one_line(str(exc)))
        return visible, infrared, label


def seed_worker(worker_id: int) -> None:
    """Seed ``random`` and numpy in a worker from torch's per-worker seed (deterministic)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


class TrainLoader:
    """Iterable of :class:`TrainBatch`; ``len()`` is the steps per epoch of this rank."""

    def __init__(self, dataset: PairDataset, sampler: CrossModalityBatchSampler, label_map: dict[int, int], *, workers: int, seed: int, cached: bool) -> None:
        self.dataset = dataset
        self.sampler = sampler
        self.label_map = label_map
        self.num_classes = len(label_map)
        self.cached = cached
        generator = torch.Generator()
        generator.manual_seed(seed)
        self.loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            worker_init_fn=seed_worker,
            generator=generator,
            collate_fn=collate_pairs,
        )

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[TrainBatch]:
        for batch in self.loader:
            if isinstance(batch, LoadFailure):
                raise DataError(batch.message)
            visible, infrared, labels = batch
            yield TrainBatch(visible=visible, infrared=infrared, labels=labels.long())


def build_train_loader(
    prepared: PreparedDataset,
    data_cfg: DataConfig,
    *,
    seed: int,
    steps_per_epoch: int | None,
    steps_rule: str = "method",
    rank: int = 0,
    world_size: int = 1,
) -> TrainLoader:
    """The training loader of a prepared dataset (uses the uint8 cache its meta.json names, when of this size).

    ``steps_per_epoch`` None: as many as ``steps_rule`` (``train.steps_rule``) gives. The reader that
    wrote the dataset (meta.json) decides whether ``data.llcm_infrared_as_visible`` applies.
    """
    samples = training_samples(prepared, data_cfg)
    label_map = make_label_map(samples)
    visible = [s for s in samples if s.modality is Modality.VISIBLE]
    infrared = [s for s in samples if s.modality is Modality.INFRARED]
    sampler = CrossModalityBatchSampler(
        [label_map[s.pid] for s in visible],
        [label_map[s.pid] for s in infrared],
        num_ids=data_cfg.num_ids,
        num_instances=data_cfg.num_instances,
        seed=seed,
        steps_per_epoch=steps_per_epoch,
        steps_rule=steps_rule,
        rank=rank,
        world_size=world_size,
        identity_draw=data_cfg.identity_draw,
        with_replacement=data_cfg.instances_with_replacement,
    )
    # the cache is resized with the bilinear filter at prepare time; another filter decodes the files
    use_cache = data_cfg.use_cache and data_cfg.resize == "bilinear"
    cache = open_prepared_cache(prepared.root, prepared.meta, data_cfg.height, data_cfg.width, samples) if use_cache else None
    transforms = train_transforms(data_cfg, str(prepared.meta.get("reader") or prepared.meta.get("dataset") or ""))
    dataset = PairDataset(visible, infrared, transforms, cache, pseudo_infrared_p=data_cfg.pseudo_infrared_p,
                          spectrum_knots=data_cfg.spectrum_knots)
    workers = usable_workers(data_cfg.workers)
    return TrainLoader(dataset, sampler, label_map, workers=workers, seed=seed, cached=cache is not None)


def describe(loader: TrainLoader) -> dict[str, Any]:
    """A small summary for logs: classes, images per modality, steps, cache use."""
    return {
        "num_classes": loader.num_classes,
        "visible": len(loader.dataset.visible),
        "infrared": len(loader.dataset.infrared),
        "steps_per_epoch": len(loader),
        "cached": loader.cached,
    }
