"""Feature extraction: images -> L2-normalised embeddings through one modality's stream.

:func:`image_batches` is the one decode-transform-batch loop and :func:`embed_batch` the
one per-batch forward; :func:`extract_features` joins them. Evaluation, ``index``,
``query``, ``serve``, the API and BNNeck recalibration all go through here with the
checkpoint's :class:`~mclnet_cli.data.preprocess.Preprocess` record, so all of them see
exactly the same decoding, resizing and normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mclnet_cli.data.images import load_rgb, to_rgb
from mclnet_cli.data.preprocess import Preprocess
from mclnet_cli.data.workers import usable_workers
from mclnet_cli.errors import CheckpointError, ConfigError, DataError
from mclnet_cli.types import Modality


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


#: what the embedding loop takes: an image file, a decoded PIL image, or an already preprocessed [3, H, W] tensor
ImageLike = Union[str, Path, Image.Image, torch.Tensor]


def image_name(item: ImageLike, i: int) -> str:
    """How :class:`Extracted` and error messages name input ``i``: its path, else its position and kind."""
    if isinstance(item, (str, Path)):
        return str(item)
    return f"image {i} ({'tensor' if isinstance(item, torch.Tensor) else 'PIL image'})"


def prepare_image(
    item: ImageLike, transform: Callable[[Image.Image], torch.Tensor], preprocess: Preprocess, i: int = 0
) -> torch.Tensor:
    """One input as the model's [3, H, W] tensor: files are decoded, PIL images converted to RGB, both transformed.

    A tensor is taken as already preprocessed and must be [3, height, width]; anything else raises :class:`DataError`.
    """
    if isinstance(item, (str, Path)):
        return transform(load_rgb(item))
    if isinstance(item, Image.Image):
        return transform(to_rgb(item))
    if isinstance(item, torch.Tensor):
        want = (3, preprocess.height, preprocess.width)
        if tuple(item.shape) != want or not item.is_floating_point():
            raise DataError(
                f"{image_name(item, i)}: expected a preprocessed float tensor of shape {list(want)}, "
                f"got {item.dtype} {list(item.shape)}"
            )
        return item.float()
    raise DataError(f"image {i}: expected an image file path, a PIL image or a [3, H, W] tensor, got {type(item).__name__}")


class ImageInputs(Dataset):
    """Inputs as the model's tensors (:func:`prepare_image`); one that fails comes back as (None, index, reason).

    Errors are returned rather than raised so that, with worker processes, the
    main process can raise one clean :class:`DataError` instead of torch's
    multi-line re-raise of a worker exception.
    """

    def __init__(self, images: Sequence[ImageLike], preprocess: Preprocess) -> None:
        self.images = list(images)
        self.preprocess = preprocess
        self.transform = preprocess.transform()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        try:
            return prepare_image(self.images[i], self.transform, self.preprocess, i), i, ""
        except DataError as exc:
            return None, i, str(exc)


def collate_images(items):
    """Stack the images that decoded; returns (images or None, their indices, [(index, reason)] of failures)."""
    good = [(img, i) for img, i, _ in items if img is not None]
    bad = [(i, reason) for img, i, reason in items if img is None]
    images = torch.stack([img for img, _ in good]) if good else None
    return images, [i for _, i in good], bad


@dataclass
class ImageBatch:
    """One batch of :func:`image_batches`: the model's input and which inputs it holds."""

    images: torch.Tensor | None  # [B, 3, H, W] on the device; None when no input of the batch decoded
    indices: list[int]  # positions in the input list of the rows of ``images``
    failed: list[tuple[int, str]]  # (position, reason) of the inputs that did not decode


def resolve_preprocess(
    model: Any, preprocess: Preprocess | None = None, *, height: int | None = None, width: int | None = None,
    resize: str | None = None,
) -> tuple[torch.nn.Module, Preprocess]:
    """(the network, its preprocessing record) for a model or a ``LoadedModel``.

    The record is ``preprocess``, else the loaded model's own; ``height``, ``width`` and
    ``resize`` given replace its values (a bare network needs at least ``height`` and ``width``).
    """
    net = model if isinstance(model, torch.nn.Module) else model.model
    record = preprocess if preprocess is not None else getattr(model, "preprocess", None)
    if record is None:
        if height is None or width is None:
            raise ConfigError("no preprocessing for the images: pass a loaded model, preprocess=, or height= and width=")
        record = Preprocess(int(height), int(width))
    return net, record.replace(height=height, width=width, resize=resize)


def image_batches(
    images: Sequence[ImageLike],
    preprocess: Preprocess,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    workers: int = 0,
    skip_bad: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[ImageBatch]:
    """The one decode-transform-batch loop: ``images`` in order, as batches of the model's input on ``device``.

    An input that does not decode raises :class:`DataError`, or with ``skip_bad`` is listed in its
    batch's ``failed``. ``on_progress(n)`` is called after the consumer is done with each batch of n inputs.
    """
    device = torch.device(device)
    loader = DataLoader(
        ImageInputs(images, preprocess),
        batch_size=batch_size,
        shuffle=False,
        num_workers=usable_workers(workers),
        collate_fn=collate_images,
        pin_memory=device.type == "cuda",
    )
    for tensor, indices, bad in loader:
        if bad and not skip_bad:
            raise DataError(bad[0][1])
        yield ImageBatch(None if tensor is None else tensor.to(device, non_blocking=True), indices, bad)
        if on_progress is not None:
            on_progress(len(indices) + len(bad))


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


def _model_device(net: torch.nn.Module) -> torch.device:
    parameter = next(net.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def extract_features(
    model: Any,
    paths: Sequence[ImageLike],
    modality: Modality | str,
    *,
    preprocess: Preprocess | None = None,
    height: int | None = None,
    width: int | None = None,
    resize: str | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    workers: int = 0,
    feature: str | Sequence[str] | None = None,
    flip: bool = False,
    skip_bad: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> Extracted:
    """Embed images (files, PIL images or preprocessed tensors) with the ``modality`` stream of ``model``.

    ``model`` is a network or a ``LoadedModel``; preprocessing is ``preprocess``, else the loaded
    model's record, with ``height``/``width``/``resize`` given in its place (:func:`resolve_preprocess`).
    ``feature`` is ``"bn"`` (BNNeck output), ``"pool"`` (pre-BN f4), or several of them (all from one
    forward pass); ``None`` is the record's. ``device`` ``None`` is the model's. ``flip`` averages the
    embeddings of the image and its mirror before re-normalising. Evaluation, ``index``, ``query``,
    ``serve`` and the API all embed through here.
    """
    net, record = resolve_preprocess(model, preprocess, height=height, width=width, resize=resize)
    modality = Modality.parse(modality)
    names = [feature or record.feature] if feature is None or isinstance(feature, str) else list(feature)
    net.eval()
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    kept: list[int] = []
    failed: list[tuple[str, str]] = []
    batches = image_batches(
        paths, record, batch_size=batch_size, device=device if device is not None else _model_device(net),
        workers=workers, skip_bad=skip_bad, on_progress=on_progress,
    )
    for batch in batches:
        failed.extend((image_name(paths[i], i), reason) for i, reason in batch.failed)
        if batch.images is not None:
            embs = embed_batch(net, batch.images, modality, flip)
            for name in names:
                chunks[name].append(embs[name].float().cpu())
            kept.extend(batch.indices)
    dim = int(getattr(net, "feature_dim", 0))
    by_name = {
        name: (torch.cat(parts).numpy() if parts else np.zeros((0, dim), dtype=np.float32)).astype(np.float32)
        for name, parts in chunks.items()
    }
    return Extracted(by_name[names[0]], [image_name(paths[i], i) for i in kept], failed, by_name)
