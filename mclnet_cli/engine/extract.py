"""Feature extraction: image files -> L2-normalised embeddings through one modality's stream.

Shared by evaluation, indexing and querying, so all three see exactly the same
decoding, resizing and normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mclnet_cli.data.images import load_rgb
from mclnet_cli.types import Modality
from mclnet_cli.data.transforms import test_transform
from mclnet_cli.data.workers import usable_workers
from mclnet_cli.errors import DataError


@dataclass
class Extracted:
    """Embeddings of the images that decoded, and the ones that did not."""

    features: np.ndarray  # [N, D] float32, L2-normalised, the first requested feature
    paths: list[str]
    failed: list[tuple[str, str]] = field(default_factory=list)
    by_name: dict[str, np.ndarray] = field(default_factory=dict)  # every requested feature


class ImageFiles(Dataset):
    """Decoded, resized images; a file that fails comes back as (None, index, reason).

    Errors are returned rather than raised so that, with worker processes, the
    main process can raise one clean :class:`DataError` instead of torch's
    multi-line re-raise of a worker exception.
    """

    def __init__(self, paths: Sequence[str], height: int, width: int, resize: str = "bilinear") -> None:
        self.paths = list(paths)
        self.transform = test_transform(height, width, resize)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        try:
            return self.transform(load_rgb(path)), i, ""
        except DataError as exc:
            return None, i, str(exc)


def collate_images(items):
    """Stack the images that decoded; returns (images or None, their indices, [(index, reason)] of failures)."""
    good = [(img, i) for img, i, _ in items if img is not None]
    bad = [(i, reason) for img, i, reason in items if img is None]
    images = torch.stack([img for img, _ in good]) if good else None
    return images, [i for _, i in good], bad


@torch.no_grad()
def embed_batch(model: torch.nn.Module, images: torch.Tensor, modality: Modality, flip: bool = False) -> dict[str, torch.Tensor]:
    """Every retrieval feature of a preprocessed batch; ``flip`` averages with the mirrored batch, re-normalised."""
    embs = model.embed_all(images, modality)
    if flip:
        mirrored = model.embed_all(torch.flip(images, dims=[3]), modality)
        embs = {k: torch.nn.functional.normalize(v + mirrored[k], dim=1) for k, v in embs.items()}
    return embs


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    paths: Sequence[str],
    modality: Modality | str,
    *,
    height: int,
    width: int,
    resize: str = "bilinear",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    workers: int = 0,
    feature: str | Sequence[str] = "bn",
    flip: bool = False,
    skip_bad: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> Extracted:
    """Embed ``paths`` with the ``modality`` stream of ``model``.

    ``feature`` is ``"bn"`` (BNNeck output, the method's retrieval feature), ``"pool"``
    (pre-BN f4), or several of them (all from one forward pass). ``resize`` is the
    checkpoint's ``data.resize`` filter. ``flip`` averages the
    embeddings of the image and its mirror before re-normalising.
    """
    modality = Modality.parse(modality)
    names = [feature] if isinstance(feature, str) else list(feature)
    device = torch.device(device)
    model.eval()
    loader = DataLoader(
        ImageFiles(paths, height, width, resize),
        batch_size=batch_size,
        shuffle=False,
        num_workers=usable_workers(workers),
        collate_fn=collate_images,
        pin_memory=device.type == "cuda",
    )
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    kept: list[int] = []
    failed: list[tuple[str, str]] = []
    for images, indices, bad in loader:
        if bad and not skip_bad:
            raise DataError(bad[0][1])
        failed.extend((paths[i], reason) for i, reason in bad)
        if images is not None:
            images = images.to(device, non_blocking=True)
            embs = embed_batch(model, images, modality, flip)
            for name in names:
                chunks[name].append(embs[name].float().cpu())
            kept.extend(indices)
        if on_progress is not None:
            on_progress(len(indices) + len(bad))
    dim = int(getattr(model, "feature_dim", 0))
    by_name = {
        name: (torch.cat(parts).numpy() if parts else np.zeros((0, dim), dtype=np.float32)).astype(np.float32)
        for name, parts in chunks.items()
    }
    return Extracted(by_name[names[0]], [paths[i] for i in kept], failed, by_name)
