"""The `official-code` preset: each difference from the method presets is a key, and each key is applied."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from mclnet_cli.config import load_config
from mclnet_cli.data.sampler import CrossModalityBatchSampler
from mclnet_cli.data.transforms import IMAGENET_MEAN, IMAGENET_STD, train_transform
from mclnet_cli.data.transforms import test_transform as eval_transform
from mclnet_cli.model.net import ModelOutput
from mclnet_cli.losses.criterion import Criterion
from mclnet_cli.losses.functional import hks_loss, kl_divergence


def test_official_code_resolves_to_each_setting_of_the_authors_code() -> None:
    official, method = load_config("official-code"), load_config("base")
    assert official.model.pooling == "avg" and method.model.pooling == "gem"
    assert official.loss.mmd_margin is None
    assert official.loss.hks_smoothing == 1e-8 and method.loss.hks_smoothing == 0.0
    assert official.data.identity_draw == "independent" and method.data.identity_draw == "cycle"
    assert official.data.instances_with_replacement is True and method.data.instances_with_replacement is False
    assert official.data.resize == "lanczos" and method.data.resize == "bilinear"
    assert official.train.amp is False and method.train.amp is True
    assert official.loss.weights.triplet == 0.0
    # everything else is the method's recipe
    assert official.optim == method.optim and official.model.arch == method.model.arch
    assert official.loss.weights == method.loss.weights


def smoothed_kl(target: torch.Tensor, logits: torch.Tensor, eps: float) -> torch.Tensor:
    """The authors' formula written out: p~ = (p + eps) / (1 + C eps), mean_n sum_c p~ log(p~ / q~)."""
    c = target.shape[1]
    p = (torch.softmax(target.double(), 1) + eps) / (1 + c * eps)
    q = (torch.softmax(logits.double(), 1) + eps) / (1 + c * eps)
    return (p * torch.log(p / q)).sum(1).mean()


@pytest.mark.parametrize("eps", [1e-8, 1e-3])
def test_kl_smoothing_matches_the_written_out_formula(eps: float) -> None:
    gen = torch.Generator().manual_seed(0)
    target, logits = torch.randn(6, 40, generator=gen) * 4, torch.randn(6, 40, generator=gen) * 4
    assert float(kl_divergence(target, logits, smoothing=eps)) == pytest.approx(float(smoothed_kl(target, logits, eps)), rel=1e-5)
    # with a visible epsilon the value differs from the plain KL, so the option cannot be silently dropped
    if eps >= 1e-3:
        assert abs(float(kl_divergence(target, logits, smoothing=eps)) - float(kl_divergence(target, logits))) > 1e-3


def test_criterion_passes_hks_smoothing_to_the_loss() -> None:
    gen = torch.Generator().manual_seed(1)
    feats = [torch.randn(8, 16, generator=gen) * 3 for _ in range(4)]
    cfg = load_config("tiny", ["loss.hks_smoothing=0.005", "loss.weights.id=0", "loss.weights.supcon=0", "loss.weights.mmd=0"])
    criterion = Criterion.from_config(cfg.loss)
    assert criterion.hks_smoothing == 0.005

    out = ModelOutput(features=dict(zip(("layer1", "layer2", "layer3", "layer4"), feats)), bn_feature=feats[3], logits=torch.zeros(8, 4))
    labels = torch.arange(8) // 2
    parts = criterion(out, labels, torch.arange(8) % 2).parts
    expected = sum(smoothed_kl(feats[j], feats[i], 0.005) for i in range(4) for j in range(4) if i != j)
    assert float(parts["hks"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(parts["hks"]) != pytest.approx(float(hks_loss(feats)), rel=1e-3)


def _sampler(**kwargs) -> CrossModalityBatchSampler:
    visible = [label for label in range(12) for _ in range(8)]
    infrared = [label for label in range(12) for _ in range(8)]
    return CrossModalityBatchSampler(visible, infrared, num_ids=4, num_instances=4, seed=3, steps_per_epoch=60, **kwargs)


def test_independent_identity_draws_are_not_cycles() -> None:
    """cycle: every id once before any repeats (3 batches cover 12 ids); independent: batches repeat ids sooner."""
    for draw, expect_cover in (("cycle", True), ("independent", False)):
        plan = _sampler(identity_draw=draw).plan(0)
        groups = [plan[i : i + 3] for i in range(0, 60, 3)]
        covered = [len({key[2] for batch in group for key in batch}) == 12 for group in groups]
        assert all(covered) is expect_cover, draw
        for batch in plan:  # P distinct ids per batch either way
            assert len({key[2] for key in batch}) == 4


def test_instances_with_replacement_repeat_images_of_an_identity() -> None:
    """8 images per id and K=4: without replacement never a repeat in a batch; with it, repeats occur."""
    def repeats(sampler: CrossModalityBatchSampler) -> int:
        count = 0
        for batch in sampler.plan(0):
            per_id = Counter((key[2], key[0]) for key in batch)
            count += sum(n - 1 for n in per_id.values())
        return count

    assert repeats(_sampler()) == 0
    assert repeats(_sampler(with_replacement=True)) > 0


def _image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(97, 41, 3), dtype=np.uint8))


@pytest.mark.parametrize("resize,pil_filter", [("bilinear", Image.Resampling.BILINEAR), ("lanczos", Image.Resampling.LANCZOS)])
def test_test_transform_uses_the_configured_filter(resize: str, pil_filter) -> None:
    """Against PIL's own resize + numpy normalisation (tolerance covers one 8-bit rounding step)."""
    image = _image()
    ours = eval_transform(64, 32, resize)(image).numpy()
    ref = np.asarray(image.resize((32, 64), pil_filter), dtype=np.float32) / 255.0
    ref = ((ref - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)
    assert np.abs(ours - ref).max() < 0.02
    other = eval_transform(64, 32, "bilinear" if resize == "lanczos" else "lanczos")(image).numpy()
    assert np.abs(other - ref).max() > 0.05  # the filters differ on this image, so the choice shows


def test_training_resize_follows_data_resize() -> None:
    image = _image()
    cfg = load_config("tiny", ["data.pad=0", "data.flip_p=0", "data.grayscale_p=0", "data.erasing_p=0", "data.spectrum_p=0",
                                 "data.resize=lanczos"])
    torch.manual_seed(0)
    ours = train_transform(cfg.data, "infrared")(image)
    assert torch.allclose(ours, eval_transform(64, 32, "lanczos")(image), atol=1e-6)
    assert not torch.allclose(ours, eval_transform(64, 32, "bilinear")(image), atol=1e-2)
