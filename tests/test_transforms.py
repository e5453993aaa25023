"""Training and test transforms: shapes, per-modality grayscale, pad+crop, flips, channel augmentation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from mclnet_cli.config import DataConfig
from mclnet_cli.errors import ConfigError
from mclnet_cli.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ChannelExchange,
    ChannelRandomErasing,
    RandomSpectrum,
    pseudo_infrared,
    test_transform as make_test_transform,
    train_transform,
)

PLAIN = DataConfig(height=16, width=8, pad=0, grayscale_p=0.0, flip_p=0.0, erasing_p=0.0, channel_aug=False)


def colour_image(height: int = 16, width: int = 8, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), mode="RGB")


def unnormalise(tensor: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return tensor * std + mean


def test_shapes_from_any_size() -> None:
    cfg = DataConfig(height=32, width=16, pad=4)
    for modality in ("visible", "infrared"):
        out = train_transform(cfg, modality)(colour_image(50, 23))
        assert out.shape == (3, 32, 16) and out.dtype == torch.float32
    assert make_test_transform(32, 16)(colour_image(50, 23)).shape == (3, 32, 16)


def test_plain_training_transform_is_normalised_pixels() -> None:
    image = colour_image()
    out = unnormalise(train_transform(PLAIN, "visible")(image))
    expected = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    assert torch.allclose(out, expected, atol=1e-5)


def test_grayscale_only_on_visible() -> None:
    cfg = dataclasses.replace(PLAIN, grayscale_p=1.0)
    image = colour_image()
    visible = unnormalise(train_transform(cfg, "visible")(image))
    infrared = unnormalise(train_transform(cfg, "infrared")(image))
    assert torch.allclose(visible[0], visible[1], atol=1e-5) and torch.allclose(visible[1], visible[2], atol=1e-5)
    assert (infrared[0] - infrared[2]).abs().max() > 0.1  # colour kept
    assert "Grayscale" not in repr(train_transform(dataclasses.replace(PLAIN, grayscale_p=0.5), "infrared"))


def test_pad_crop_is_a_shift_and_flip_mirrors() -> None:
    cfg = dataclasses.replace(PLAIN, pad=3)
    image = colour_image()
    pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255
    padded = np.pad(pixels, ((0, 0), (3, 3), (3, 3)))
    crops = [padded[:, y : y + 16, x : x + 8] for y in range(7) for x in range(7)]
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        out = unnormalise(train_transform(cfg, "infrared")(image)).numpy()
        matches = [k for k, crop in enumerate(crops) if np.allclose(out, crop, atol=1e-5)]
        assert matches, "output is not a crop of the padded image"
        seen.add(matches[0])
    assert len(seen) > 1  # the crop position is random
    flipped = unnormalise(train_transform(dataclasses.replace(PLAIN, flip_p=1.0), "visible")(image))
    assert torch.allclose(flipped, torch.from_numpy(pixels[:, :, ::-1].copy()), atol=1e-5)


def test_random_erasing_zeroes_a_rectangle() -> None:
    cfg = dataclasses.replace(PLAIN, height=32, width=16, erasing_p=1.0)
    torch.manual_seed(1)
    out = train_transform(cfg, "visible")(colour_image(32, 16))
    zero = (out == 0).all(dim=0)
    assert zero.any()
    rows, cols = torch.nonzero(zero, as_tuple=True)
    assert zero[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()


def test_channel_exchange_replicates_or_permutes() -> None:
    image = torch.rand(3, 8, 4)
    torch.manual_seed(0)
    kinds = set()
    for _ in range(30):
        out = ChannelExchange(p=1.0)(image)
        channels = [out[c] for c in range(3)]
        if all(torch.equal(channels[0], c) for c in channels):
            assert any(torch.equal(channels[0], image[c]) for c in range(3))
            kinds.add("replicate")
        else:
            assert sorted(tuple(c.flatten().tolist()) for c in channels) == sorted(tuple(image[c].flatten().tolist()) for c in range(3))
            kinds.add("permute")
    assert kinds == {"replicate", "permute"}
    assert torch.equal(ChannelExchange(p=0.0)(image), image)


def test_channel_erasing_fills_one_rectangle_per_channel_with_constants() -> None:
    image = torch.rand(3, 32, 16)
    torch.manual_seed(3)
    out = ChannelRandomErasing(p=1.0)(image)
    changed = (out != image).any(dim=0)
    assert changed.any()
    rows, cols = torch.nonzero(changed, as_tuple=True)
    box = out[:, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    for c in range(3):
        assert torch.all(box[c] == box[c, 0, 0])


@pytest.mark.parametrize("modality", ["visible", "infrared"])
def test_channel_aug_option(modality: str) -> None:
    on = repr(train_transform(dataclasses.replace(PLAIN, channel_aug=True), modality))
    off = repr(train_transform(PLAIN, modality))
    assert "ChannelRandomErasing" in on and "ChannelRandomErasing" not in off
    assert ("ChannelExchange" in on) == (modality == "visible")


def test_random_spectrum_is_a_signed_channel_mix_rescaled_to_unit_range() -> None:
    image = torch.rand(3, 6, 4)
    torch.manual_seed(3)
    out = RandomSpectrum(1.0)(image)
    torch.manual_seed(3)
    torch.rand(1)  # the p draw
    w = torch.rand(3) * 2 - 1
    gray = (w.view(3, 1, 1) * image).sum(0)
    expected = (gray - gray.min()) / (gray.max() - gray.min())
    for c in range(3):
        assert torch.allclose(out[c], expected, atol=1e-6)
    assert torch.equal(RandomSpectrum(0.0)(image), image)


def test_random_spectrum_on_a_gray_image_keeps_or_inverts_it() -> None:
    gray = torch.rand(1, 6, 4).expand(3, 6, 4)
    unit = (gray - gray.min()) / (gray.max() - gray.min())
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        out = RandomSpectrum(1.0)(gray)
        same, inverted = torch.allclose(out, unit, atol=1e-5), torch.allclose(out, 1 - unit, atol=1e-5)
        assert same or inverted
        seen.add(same)
    assert seen == {True, False}


@pytest.mark.parametrize("modality", ["visible", "infrared"])
def test_spectrum_option_reaches_both_modalities(modality: str) -> None:
    cfg = dataclasses.replace(PLAIN, spectrum_p=1.0)
    assert "RandomSpectrum" in repr(train_transform(cfg, modality))
    assert "RandomSpectrum" not in repr(train_transform(PLAIN, modality))
    out = unnormalise(train_transform(cfg, modality)(colour_image()))
    assert torch.allclose(out[0], out[1], atol=1e-5) and torch.allclose(out[1], out[2], atol=1e-5)
    assert out.min() > -1e-5 and out.max() < 1 + 1e-5


def test_pseudo_infrared_is_the_visible_image_through_one_spectral_response() -> None:
    image = colour_image(12, 6, seed=4)
    torch.manual_seed(5)
    out = pseudo_infrared(image)
    assert out.mode == "RGB" and out.size == image.size
    pixels = np.asarray(out, dtype=np.float32) / 255.0
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2])
    torch.manual_seed(5)
    w = (torch.rand(3) * 2 - 1).numpy()
    gray = (np.asarray(image, dtype=np.float32) / 255.0 * w).sum(-1)
    expected = (gray - gray.min()) / (gray.max() - gray.min())
    assert np.abs(pixels[..., 0] - expected).max() <= 1.0 / 255 + 1e-6


@pytest.mark.parametrize("modality", ["visible", "infrared"])
def test_jitter_scales_brightness_and_contrast_within_its_range(modality: str) -> None:
    image = colour_image(16, 8, seed=7)
    plain = unnormalise(train_transform(PLAIN, modality)(image))
    cfg = dataclasses.replace(PLAIN, jitter=0.4)
    torch.manual_seed(0)
    means = [unnormalise(train_transform(cfg, modality)(image)).mean().item() for _ in range(20)]
    assert max(means) - min(means) > 0.02  # applied: the brightness moves from draw to draw
    assert all(0.6 * plain.mean().item() - 0.1 < m < 1.4 * plain.mean().item() + 0.1 for m in means)
    with pytest.raises(ConfigError, match="data.jitter"):
        DataConfig(jitter=1.5)


@pytest.mark.parametrize("modality", ["visible", "infrared"])
def test_blur_smooths_edges_when_on(modality: str) -> None:
    board = Image.fromarray(((np.indices((16, 8)).sum(0) % 2) * 255).astype(np.uint8)).convert("RGB")
    sharp = unnormalise(train_transform(PLAIN, modality)(board))
    step = lambda x: (x[:, :, 1:] - x[:, :, :-1]).abs().mean().item()  # noqa: E731
    torch.manual_seed(0)
    blur = train_transform(dataclasses.replace(PLAIN, blur_p=1.0), modality)
    steps = [step(unnormalise(blur(board))) for _ in range(10)]  # sigma is drawn per image
    assert step(sharp) > 0.99 and min(steps) < 0.7 and max(steps) <= step(sharp) + 1e-6


def test_random_curves_are_per_channel_piecewise_linear_tables() -> None:
    from mclnet_cli.data.transforms import random_curves

    image = torch.rand(3, 8, 4)
    image[0, 0, 0], image[1, 0, 0] = 1.0, 0.0  # both ends of the table
    torch.manual_seed(3)
    out = random_curves(image, 5)
    torch.manual_seed(3)
    values = torch.rand(3, 5).numpy()
    expected = np.stack([np.interp(image[c].numpy(), np.linspace(0, 1, 5), values[c]) for c in range(3)])
    assert np.allclose(out.numpy(), expected, atol=1e-6)


def test_spectrum_knots_reach_the_training_mix_and_the_pseudo_infrared_pairs() -> None:
    image = colour_image(16, 8, seed=2)
    cfg = dataclasses.replace(PLAIN, spectrum_p=1.0, spectrum_knots=4)
    assert "knots=4" in repr(train_transform(cfg, "visible"))
    torch.manual_seed(9)
    curved = unnormalise(train_transform(cfg, "visible")(image))
    torch.manual_seed(9)
    linear = unnormalise(train_transform(dataclasses.replace(cfg, spectrum_knots=0), "visible")(image))
    assert not torch.allclose(curved, linear, atol=1e-3)
    torch.manual_seed(9)
    a = np.asarray(pseudo_infrared(image, 4), dtype=np.float32)
    torch.manual_seed(9)
    b = np.asarray(pseudo_infrared(image), dtype=np.float32)
    assert np.abs(a - b).max() > 10
    with pytest.raises(ConfigError, match="spectrum_knots"):
        DataConfig(spectrum_knots=1)


def test_random_zoom_shrinks_the_image_onto_its_mean_colour() -> None:
    from mclnet_cli.data.transforms import RandomZoom

    image = torch.zeros(3, 40, 20)
    image[0] = 1.0  # a red image with a green 10x10 square in the middle
    image[:, 15:25, 5:15] = torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1)
    mean = image.mean(dim=(1, 2))
    torch.manual_seed(0)
    zoom = RandomZoom(1.0, 0.5)
    factors = []
    for _ in range(20):
        out = zoom(image)
        assert out.shape == image.shape
        green = ((out[1] > 0.5) & (out[0] < 0.5)).sum().item()  # the square's pixels, smaller after a shrink
        factors.append((green / 100) ** 0.5)
        border = torch.cat([out[:, 0], out[:, -1]], dim=1)  # the canvas shows at the top or bottom row unless the factor is ~1
        if factors[-1] < 0.9:
            assert torch.allclose(border.mean(dim=1), mean, atol=0.15)
    assert min(factors) < 0.7 and max(factors) <= 1.0 + 1e-6
    assert all(f > 0.4 for f in factors)  # never below the lowest factor (0.5, less a pixel's rounding)
    assert torch.equal(RandomZoom(0.0, 0.5)(image), image)


def test_sensor_noise_is_grey_bounded_and_off_at_p_zero() -> None:
    from mclnet_cli.data.transforms import SensorNoise

    image = torch.full((3, 32, 16), 0.5)
    torch.manual_seed(1)
    noise = SensorNoise(1.0, 0.2)
    spreads = []
    for _ in range(20):
        out = noise(image)
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])  # the same on every channel
        assert out.min() >= 0 and out.max() <= 1
        spreads.append(float(out[0].std()))
    assert max(spreads) > 0.05 and max(spreads) < 0.2 * 1.2 and min(spreads) < max(spreads) / 2  # sigma drawn per image
    assert torch.equal(SensorNoise(0.0, 0.2)(image), image)


@pytest.mark.parametrize("modality", ["visible", "infrared"])
def test_zoom_and_noise_reach_the_training_transform(modality: str) -> None:
    image = colour_image(16, 8, seed=4)
    plain = unnormalise(train_transform(PLAIN, modality)(image))
    for key in ({"zoom_p": 1.0, "zoom_min": 0.5}, {"noise_p": 1.0, "noise_std": 0.3}):
        torch.manual_seed(2)
        out = unnormalise(train_transform(dataclasses.replace(PLAIN, **key), modality)(image))
        assert out.shape == plain.shape and (out - plain).abs().mean() > 0.01, key
    with pytest.raises(ConfigError, match="data.zoom_min"):
        DataConfig(zoom_min=0.0)
    with pytest.raises(ConfigError, match="data.noise_std"):
        DataConfig(noise_std=2.0)
    with pytest.raises(ConfigError, match="data.zoom_p"):
        DataConfig(zoom_p=1.5)
