"""Feature extraction: image files -> L2-normalised embeddings through one modality's stream.

Shared by evaluation, indexing and querying, so all three see exactly the same
decoding, resizing and normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mclnet_cli.data.images import load_rgb
from mclnet_cli.types import Modality
from mclnet_cli.data.transforms import test_transform
from mclnet_cli.data.workers import usable_workers
from mclnet_cli.errors import CheckpointError, DataError


class NonFiniteFeatures(CheckpointError):
    """A model gave NaN or infinite features: its weights (or the numbers they make) are not finite.

    Raised by :func:`embed_batch`, the one place every retrieval feature passes;
    :meth:`at` names the checkpoint and the stage for the user.
    """

    def __init__(self, modality: Modality | str, layer: str | None = None, where: str = "") -> None:
        self.modality = Modality.parse(modality)
        self.layer = layer
        self.where = where
        found = f"; first non-finite layer: {layer}" if layer else ""
        super().__init__(
            f"{where}the {self.modality.value} stream's outputs are not finite (NaN or infinite{found}); "
            "the checkpoint's weights are damaged or its training diverged"
        )

    def at(self, checkpoint: Path | str, stage: str) -> "NonFiniteFeatures":
        """The same error naming ``checkpoint`` and ``stage`` (e.g. ``"evaluate, embedding test images"``)."""
        return NonFiniteFeatures(self.modality, self.layer, f"checkpoint {checkpoint}: {stage}: ")


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    return []


def _finite(values: Any) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in _tensors(values) if t.is_floating_point())


def _bad_tensor(module: torch.nn.Module) -> str:
    """`` with NaN in its weight`` for a module holding a non-finite tensor of its own, else ``""``."""
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f" with {'NaN' if bool(torch.isnan(tensor).any()) else 'inf'} in its {name}"
    return ""


@torch.no_grad()
def first_non_finite_layer(model: torch.nn.Module, images: torch.Tensor, modality: Modality | str) -> str | None:
    """The first layer (in forward order) whose output is not finite on ``images``, with its bad tensor if it holds one.

    Only called after features came out non-finite: one more forward of a single image.
    """
    found: list[str] = []

    def watch(name: str, module: torch.nn.Module):
        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            if not found and not _finite(output):
                found.append(f"{name}, a {type(module).__name__}{_bad_tensor(module)}")
        return hook

    handles = [
        module.register_forward_hook(watch(name, module))
        for name, module in model.named_modules()
        if name and next(module.children(), None) is None
    ]
    try:
        model.embed_all(images[:1], Modality.parse(modality))
    except Exception:  # never hide the error being reported behind another one
        return None
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def require_finite(features: Any, model: torch.nn.Module, images: torch.Tensor, modality: Modality | str) -> None:
    """Raise :class:`NonFiniteFeatures` (with the first non-finite layer) unless every feature value is finite."""
    if _finite(features):
        return
    rows = torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
    for tensor in _tensors(features):
        if tensor.dim() >= 1 and tensor.shape[0] == images.shape[0]:
            rows &= torch.isfinite(tensor.reshape(tensor.shape[0], -1)).all(dim=1)
    first_bad = int((~rows).nonzero()[0]) if bool((~rows).any()) else 0
    raise NonFiniteFeatures(modality, first_non_finite_layer(model, images[first_bad:], modality))


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
    """Every retrieval feature of a preprocessed batch; ``flip`` averages with the mirrored batch, re-normalised.

    Raises :class:`NonFiniteFeatures` when a value is NaN or infinite (a damaged or diverged checkpoint):
    evaluation, indexing, query, serving and the API all embed through here, so none ranks NaN scores.
    """
    embs = model.embed_all(images, modality)
    if flip:
        mirrored = model.embed_all(torch.flip(images, dims=[3]), modality)
        embs = {k: torch.nn.functional.normalize(v + mirrored[k], dim=1) for k, v in embs.items()}
    require_finite(embs, model, images, modality)
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
