"""Image transforms: training augmentation per modality, channel augmentation, test-time resize.

Training (the method): resize, pad ``data.pad``, random crop back to size,
horizontal flip, random grayscale (visible only), to tensor, optional channel
augmentation (CAJ), normalisation (``data.mean``/``data.std``, ImageNet's by
default), random erasing. All randomness comes from torch's global generator,
which the loader seeds per image. With
``data.llcm_infrared_as_visible``, LLCM's infrared images get the visible
pipeline too (:func:`train_transforms`), as the authors' code.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from mclnet_cli.config import DataConfig
from mclnet_cli.types import Modality
from mclnet_cli.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


RESIZE_FILTERS = {"bilinear": T.InterpolationMode.BILINEAR, "lanczos": T.InterpolationMode.LANCZOS}


def resize_step(height: int, width: int, resize: str = "bilinear") -> T.Resize:
    """Resize to (height, width) with the ``data.resize`` filter (lanczos: PIL's, as the authors' code)."""
    if resize not in RESIZE_FILTERS:
        raise ConfigError(f"data.resize: unknown {resize!r}; choose from: {', '.join(RESIZE_FILTERS)}")
    return T.Resize((height, width), interpolation=RESIZE_FILTERS[resize], antialias=True)


def test_transform(
    height: int,
    width: int,
    resize: str = "bilinear",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """Resize to (height, width) with the ``resize`` filter, to tensor, normalisation (ImageNet's by default).

    Retrieval builds it from a checkpoint's record: :meth:`mclnet_cli.data.preprocess.Preprocess.transform`.
    """
    return T.Compose(
        [
            resize_step(height, width, resize),
            T.ToTensor(),
            T.Normalize(tuple(mean), tuple(std)),
        ]
    )


class ChannelExchange:
    """CAJ channel exchange on a [3, H, W] tensor: with probability ``p``, either
    replicate one random channel to all three or permute the channels at random."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(1).item() >= self.p:
            return image
        if torch.rand(1).item() < 0.5:
            channel = int(torch.randint(0, image.shape[0], (1,)).item())
            return image[channel : channel + 1].expand_as(image).clone()
        return image[torch.randperm(image.shape[0])]

    def __repr__(self) -> str:
        return f"ChannelExchange(p={self.p})"


class ChannelRandomErasing:
    """CAJ random channel erasing: with probability ``p``, fill a random rectangle
    (area 2-40%, aspect 0.3-3.3) of each channel with an independent random value."""

    def __init__(self, p: float = 0.5, area: tuple[float, float] = (0.02, 0.4), ratio: tuple[float, float] = (0.3, 3.3)) -> None:
        self.p = p
        self.area = area
        self.ratio = ratio

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(1).item() >= self.p:
            return image
        channels, height, width = image.shape
        for _ in range(10):
            target = height * width * float(torch.empty(1).uniform_(*self.area))
            aspect = float(torch.empty(1).uniform_(self.ratio[0], self.ratio[1]))
            h, w = int(round((target * aspect) ** 0.5)), int(round((target / aspect) ** 0.5))
            if 0 < h < height and 0 < w < width:
                top = int(torch.randint(0, height - h + 1, (1,)))
                left = int(torch.randint(0, width - w + 1, (1,)))
                out = image.clone()
                out[:, top : top + h, left : left + w] = torch.rand(channels, 1, 1)
                return out
        return image

    def __repr__(self) -> str:
        return f"ChannelRandomErasing(p={self.p})"


def random_curves(image: torch.Tensor, knots: int) -> torch.Tensor:
    """Each channel of a [C, H, W] image (values in [0, 1]) through its own random piecewise-linear
    curve: ``knots`` values drawn from U(0, 1) at evenly spaced inputs, not monotone. Draws from
    torch's global generator."""
    values = torch.rand(image.shape[0], knots)
    position = image.clamp(0, 1) * (knots - 1)
    low = position.floor().long().clamp(max=knots - 2)
    frac = position - low
    channels = [values[c].take(low[c]) * (1 - frac[c]) + values[c].take(low[c] + 1) * frac[c] for c in range(image.shape[0])]
    return torch.stack(channels)


def random_spectral_mix(image: torch.Tensor, knots: int = 0) -> torch.Tensor:
    """A [C, H, W] image (values in [0, 1]) through one random spectral response.

    gray = sum_c w_c x_c with w_c ~ U(-1, 1), rescaled to [0, 1] and repeated on the
    C channels. With ``knots`` >= 2 each channel first goes through a random curve
    (:func:`random_curves`), so a material's gray level no longer follows its colour
    linearly (as a near-infrared reflectance does not). Draws from torch's global generator.
    """
    if knots >= 2:
        image = random_curves(image, knots)
    w = torch.rand(image.shape[0]) * 2 - 1
    g = (w.view(-1, 1, 1) * image).sum(0, keepdim=True)
    lo, hi = g.min(), g.max()
    g = (g - lo) / (hi - lo).clamp(min=1e-6)
    return g.expand_as(image).clone()


def pseudo_infrared(image: Image.Image, knots: int = 0) -> Image.Image:
    """A visible PIL image as a random spectral response sees it: gray, returned in RGB mode.

    Used by ``data.pseudo_infrared_p``: the infrared stream gets a visible image whose
    region layout is exactly the one the visible stream sees in the same pair.
    """
    return TF.to_pil_image(random_spectral_mix(TF.to_tensor(image.convert("RGB")), knots))


class RandomSpectrum:
    """With probability ``p``, view a [3, H, W] image (values in [0, 1]) through a random
    spectral response: gray = sum_c w_c x_c with w_c ~ U(-1, 1), rescaled to [0, 1] and
    repeated on the three channels.

    Why: across spectra, material boundaries stay where they are but the brightness of
    each material changes arbitrarily (and an infrared camera may be white- or
    black-hot). A random signed mix of the channels keeps the layout of regions and
    scrambles their intensities, so the network is pushed towards cues both spectra
    share. Applied to both modalities (on an infrared image, whose channels are equal,
    it is a random polarity).
    """

    def __init__(self, p: float = 0.5, knots: int = 0) -> None:
        self.p = p
        self.knots = knots

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(1).item() >= self.p:
            return image
        return random_spectral_mix(image, self.knots)

    def __repr__(self) -> str:
        return f"RandomSpectrum(p={self.p}, knots={self.knots})"


class RandomZoom:
    """With probability ``p``, shrink a [C, H, W] image by a factor U(``low``, 1) and place it at a
    random position on a canvas of its own mean colour (same size as before).

    Why: cameras see people at different distances, and a detector's box is not always tight;
    the crop-and-pad of the method only shifts by a few pixels. Draws from torch's global generator.
    """

    def __init__(self, p: float, low: float) -> None:
        self.p = p
        self.low = low

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(1).item() >= self.p:
            return image
        _, height, width = image.shape
        factor = self.low + (1.0 - self.low) * torch.rand(1).item()
        h, w = max(1, round(height * factor)), max(1, round(width * factor))
        small = torch.nn.functional.interpolate(
            image.unsqueeze(0), size=(h, w), mode="bilinear", align_corners=False, antialias=True
        )[0]
        top = int(torch.randint(0, height - h + 1, (1,)))
        left = int(torch.randint(0, width - w + 1, (1,)))
        canvas = image.mean(dim=(1, 2), keepdim=True).expand_as(image).clone()
        canvas[:, top : top + h, left : left + w] = small
        return canvas

    def __repr__(self) -> str:
        return f"RandomZoom(p={self.p}, low={self.low})"


class SensorNoise:
    """With probability ``p``, add Gaussian noise of standard deviation U(0, ``std``) to a [C, H, W]
    image in [0, 1], the same on every channel of a pixel, and clip to [0, 1].

    Why: infrared (and low-light visible) cameras are noisy, and the noise is grey: a model trained on
    clean images reads it as texture. Draws from torch's global generator.
    """

    def __init__(self, p: float, std: float) -> None:
        self.p = p
        self.std = std

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(1).item() >= self.p:
            return image
        sigma = self.std * torch.rand(1).item()
        noise = torch.randn(1, *image.shape[1:]) * sigma
        return (image + noise).clamp(0.0, 1.0)

    def __repr__(self) -> str:
        return f"SensorNoise(p={self.p}, std={self.std})"


def train_transform(data_cfg: DataConfig, modality: Modality | str) -> Callable[[Image.Image], torch.Tensor]:
    """The training augmentation of one modality: a PIL RGB image -> normalised [3, H, W] tensor."""
    modality = Modality.parse(modality)
    size = (data_cfg.height, data_cfg.width)
    steps: list[Callable] = [resize_step(data_cfg.height, data_cfg.width, data_cfg.resize)]
    if data_cfg.pad > 0:
        steps.append(T.Pad(data_cfg.pad))
    steps += [T.RandomCrop(size), T.RandomHorizontalFlip(data_cfg.flip_p)]
    if modality is Modality.VISIBLE and data_cfg.grayscale_p > 0:
        steps.append(T.RandomGrayscale(data_cfg.grayscale_p))
    if data_cfg.jitter > 0:
        steps.append(T.ColorJitter(brightness=data_cfg.jitter, contrast=data_cfg.jitter))
    if data_cfg.blur_p > 0:
        steps.append(T.RandomApply([T.GaussianBlur(3, sigma=(0.1, 1.5))], p=data_cfg.blur_p))
    steps.append(T.ToTensor())
    if data_cfg.zoom_p > 0:
        steps.append(RandomZoom(data_cfg.zoom_p, data_cfg.zoom_min))
    if data_cfg.spectrum_p > 0:
        steps.append(RandomSpectrum(data_cfg.spectrum_p, data_cfg.spectrum_knots))
    if data_cfg.noise_p > 0:
        steps.append(SensorNoise(data_cfg.noise_p, data_cfg.noise_std))
    if data_cfg.channel_aug:
        if modality is Modality.VISIBLE:
            steps.append(ChannelExchange(0.5))
        steps.append(ChannelRandomErasing(0.5))
    steps.append(T.Normalize(tuple(data_cfg.mean), tuple(data_cfg.std)))
    if data_cfg.erasing_p > 0:
        steps.append(T.RandomErasing(p=data_cfg.erasing_p, value=0))
    return T.Compose(steps)


def infrared_as_visible(data_cfg: DataConfig, dataset: str | None) -> bool:
    """Whether infrared training images get the visible augmentation: ``data.llcm_infrared_as_visible``
    on a dataset read by the LLCM reader (the authors' code passes its visible transform to LLCMData
    for both modalities, and to SYSU and RegDB a separate infrared one without grayscale)."""
    return data_cfg.llcm_infrared_as_visible and dataset == "llcm"


def train_transforms(data_cfg: DataConfig, dataset: str | None = None) -> dict[Modality, Callable[[Image.Image], torch.Tensor]]:
    """The training augmentation of each modality for a dataset read by ``dataset``'s reader (meta.json's
    ``reader``): :func:`train_transform` of each, or of visible for both (:func:`infrared_as_visible`)."""
    infrared = Modality.VISIBLE if infrared_as_visible(data_cfg, dataset) else Modality.INFRARED
    return {Modality.VISIBLE: train_transform(data_cfg, Modality.VISIBLE), Modality.INFRARED: train_transform(data_cfg, infrared)}
