"""The `official-code` preset: each difference from the method presets is a key, and each key is applied."""

from __future__ import annotations

import dataclasses
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


# ----------------------------------------------------------------------------- issue 29: steps, LLCM infrared, channels_last
#
# The references below write out what the authors' public code (qyhsxdx/MCLNet) does, from its
# main_train.py, utils.py (IdentitySampler) and data_loader.py (LLCMData), so that each test
# compares mclnet with that behaviour and not with mclnet's own formula.


def public_steps_per_epoch(n_visible: int, n_infrared: int, num_ids: int, num_instances: int, dataset_num_size: int = 1) -> int:
    """Steps of one epoch of the authors' training loop, written out.

    IdentitySampler: N = dataset_num_size * max(#visible, #infrared) (their config: dataset_num_size 1,
    train_batch_size P = 4, num_pos K = 4); ``for j in range(int(N / (P * K)) + 1)`` appends P * K
    indices, and ``__iter__`` yields all of them. DataLoader(batch_size=P * K, drop_last=True) then
    runs one step per P * K indices (its ``len()``, N // (P * K) from ``__len__ = N``, is only printed).
    """
    n = dataset_num_size * max(n_visible, n_infrared)
    batch = num_ids * num_instances
    indices = 0
    for _ in range(int(n / batch) + 1):
        indices += batch
    return indices // batch


def test_public_steps_reference_is_one_more_than_the_floor() -> None:
    """The reference itself: one step more than N // 16, also when 16 divides N."""
    assert public_steps_per_epoch(100, 80, 4, 4) == 7 and 100 // 16 == 6
    assert public_steps_per_epoch(96, 10, 4, 4) == 7 and 96 // 16 == 6
    assert public_steps_per_epoch(5, 3, 4, 4) == 1
    # SYSU-MM01 train + val (395 ids): 22,258 visible, 11,909 infrared images
    assert public_steps_per_epoch(22258, 11909, 4, 4) == 1392 and 22258 // 16 == 1391


def _labels(per_id: int, ids: int = 6) -> list[int]:
    return [label for label in range(ids) for _ in range(per_id)]


@pytest.mark.parametrize("n_visible, n_infrared", [(96, 60), (100, 80), (60, 102), (12, 6)])
def test_official_code_runs_the_public_steps_per_epoch(n_visible: int, n_infrared: int) -> None:
    """official-code (steps_per_epoch null) runs int(N / 16) + 1 steps; the method presets N // 16."""
    official, method = load_config("official-code"), load_config("base")
    assert official.train.steps_per_epoch is None and official.train.steps_rule == "official"
    assert method.train.steps_rule == "method"
    visible = [i % 6 for i in range(n_visible)]
    infrared = [i % 6 for i in range(n_infrared)]

    def steps(cfg) -> int:
        return len(CrossModalityBatchSampler(
            visible, infrared, num_ids=cfg.data.num_ids, num_instances=cfg.data.num_instances,
            steps_per_epoch=cfg.train.steps_per_epoch, steps_rule=cfg.train.steps_rule,
        ))

    p, k = official.data.num_ids, official.data.num_instances
    assert steps(official) == public_steps_per_epoch(n_visible, n_infrared, p, k)
    assert steps(method) == max(1, max(n_visible, n_infrared) // (p * k))
    assert steps(official) == steps(method) + (0 if max(n_visible, n_infrared) < p * k else 1)
    # an explicit steps_per_epoch is taken as given under either rule
    explicit = load_config("official-code", ["train.steps_per_epoch=5"])
    assert steps(explicit) == 5


def test_the_official_steps_rule_splits_over_ranks_like_the_method_one() -> None:
    visible, infrared = _labels(16), _labels(10)  # N = 96: 7 steps in all
    shards = [CrossModalityBatchSampler(visible, infrared, num_ids=4, num_instances=4, steps_rule="official", rank=r, world_size=2)
              for r in range(2)]
    assert [len(s) for s in shards] == [4, 4]  # ceil(7 / 2) per rank, as for any total


def test_an_unknown_steps_rule_is_refused() -> None:
    from mclnet_cli.errors import ConfigError, DataError

    with pytest.raises(ConfigError, match="train.steps_rule"):
        load_config("base", ["train.steps_rule=plus_one"])
    with pytest.raises(DataError, match="steps_rule"):
        CrossModalityBatchSampler(_labels(4), _labels(4), num_ids=4, num_instances=4, steps_rule="plus_one")


def _write_llcm_like(root, reader: str):
    """A prepared dataset of 4 ids: 8 visible and 5 *coloured* infrared images each (N = 32), under ``reader``."""
    from mclnet_cli.data.records import load_prepared, write_prepared
    from mclnet_cli.types import Modality, Sample

    rng = np.random.default_rng(7)
    samples = []
    for pid in (1, 2, 3, 4):
        for modality, cam, count in ((Modality.VISIBLE, 1, 8), (Modality.INFRARED, 2, 5)):
            for k in range(count):
                path = root / "raw" / f"{pid}_{cam}_{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, size=(20, 10, 3), dtype=np.uint8)).save(path)
                samples.append(Sample(str(path), pid, cam, modality, "train"))
    return load_prepared(write_prepared(root / f"prepared-{reader}", samples, {"dataset": reader, "reader": reader}))


def test_the_training_loader_of_official_code_has_the_public_steps(tmp_path) -> None:
    from mclnet_cli.data.loader import build_train_loader

    prepared = _write_llcm_like(tmp_path, "sysu")
    for preset, expected in (("official-code", public_steps_per_epoch(32, 20, 4, 4)), ("base", 32 // 16)):
        cfg = load_config(preset, ["data.workers=0"])
        loader = build_train_loader(prepared, cfg.data, seed=0, steps_per_epoch=cfg.train.steps_per_epoch,
                                    steps_rule=cfg.train.steps_rule)
        assert len(loader) == expected, preset
    assert public_steps_per_epoch(32, 20, 4, 4) == 3


def test_training_passes_the_steps_rule_to_the_loader(prepared_dataset, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """engine.train builds its loader with the config's train.steps_rule (stopped right there)."""
    from mclnet_cli.data import loader as loader_mod
    from mclnet_cli.engine import train as train_mod

    class Stop(Exception):
        pass

    seen: list[dict] = []

    def spy(*args, **kwargs):
        seen.append(kwargs)
        raise Stop

    monkeypatch.setattr(loader_mod, "build_train_loader", spy)
    for rule in ("official", "method"):
        cfg = load_config("tiny", ["train.steps_per_epoch=null", f"train.steps_rule={rule}"])
        with pytest.raises(Stop):
            train_mod.fit(cfg, prepared_dataset, tmp_path / rule, device="cpu")
        assert seen[-1]["steps_rule"] == rule and seen[-1]["steps_per_epoch"] is None


#: the authors' transform_train_rgb, step by step; LLCMData applies it to *both* modalities (their
#: infrared transform, the same without RandomGrayscale, is only given to SYSUData and RegDBData)
PUBLIC_VISIBLE_TRANSFORM = ("ToPILImage", "Pad", "RandomGrayscale", "RandomCrop", "RandomHorizontalFlip", "ToTensor",
                            "Normalize", "RandomErasing")


def _steps(transform) -> list:
    return list(transform.transforms)


def _grayscale_p(transform) -> list[float]:
    from torchvision import transforms as T

    return [step.p for step in _steps(transform) if isinstance(step, T.RandomGrayscale)]


def _is_grey(tensor: torch.Tensor) -> bool:
    pixels = tensor * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    return bool((pixels[0] - pixels[1]).abs().max() < 1e-5 and (pixels[1] - pixels[2]).abs().max() < 1e-5)


SMALL = ["data.height=32", "data.width=16", "data.pad=2", "data.erasing_p=0"]  # erasing off: a grey image stays grey


def test_official_code_greyscales_llcm_infrared_with_the_visible_probability() -> None:
    from mclnet_cli.config import list_presets
    from mclnet_cli.data.transforms import train_transforms
    from mclnet_cli.types import Modality

    full = load_config("official-code", ["data.height=32", "data.width=16"]).data
    assert full.llcm_infrared_as_visible is True
    infrared = train_transforms(full, "llcm")[Modality.INFRARED]
    # the same steps as the public visible transform; mclnet resizes inside the pipeline (their load-time
    # pre-resize) instead of ToPILImage, and greyscales after crop and flip (docs/method.md, deviations)
    names = [type(step).__name__ for step in _steps(infrared)]
    assert set(names) - {"Resize"} == set(PUBLIC_VISIBLE_TRANSFORM) - {"ToPILImage"} and len(names) == len(PUBLIC_VISIBLE_TRANSFORM)
    assert _grayscale_p(infrared) == [full.grayscale_p] == [0.5]
    cfg = load_config("official-code", SMALL).data
    llcm = train_transforms(cfg, "llcm")
    assert repr(llcm[Modality.INFRARED]) == repr(llcm[Modality.VISIBLE])  # the visible pipeline, step for step
    # behaviour, on a coloured "infrared" image (a grey one would hide the step): grey about half the time
    image = _image()
    grey = 0
    for seed in range(400):
        torch.manual_seed(seed)
        grey += _is_grey(llcm[Modality.INFRARED](image))
    assert 0.4 < grey / 400 < 0.6, grey
    # the public code's condition is `dataset == "llcm"`: SYSU and RegDB infrared are never greyscaled
    for dataset in ("sysu", "regdb", "synthetic", None):
        assert _grayscale_p(train_transforms(cfg, dataset)[Modality.INFRARED]) == [], dataset
    # and no other preset greyscales infrared, LLCM included
    for preset in list_presets():
        if preset == "official-code":
            continue
        other = load_config(preset, SMALL).data
        assert other.llcm_infrared_as_visible is False, preset
        assert _grayscale_p(train_transforms(other, "llcm")[Modality.INFRARED]) == [], preset
        # tiny's random spectral mix (data.spectrum_p, both modalities) also gives grey images: off for the count
        infrared = train_transforms(dataclasses.replace(other, spectrum_p=0.0), "llcm")[Modality.INFRARED]
        for seed in range(50):
            torch.manual_seed(seed)
            assert not _is_grey(infrared(image)), (preset, seed)


def test_the_llcm_infrared_option_reaches_the_training_batches(tmp_path) -> None:
    """Through build_train_loader: LLCM-read data under official-code gets grey infrared images, SYSU-read data none."""
    from mclnet_cli.data.loader import build_train_loader

    cfg = load_config("official-code", [*SMALL, "data.workers=0"]).data
    for reader, expect_grey in (("llcm", True), ("sysu", False)):
        prepared = _write_llcm_like(tmp_path, reader)
        loader = build_train_loader(prepared, cfg, seed=0, steps_per_epoch=2)
        rows = [row for batch in loader for row in batch.infrared]
        grey = sum(_is_grey(row) for row in rows)
        assert (grey > 0) is expect_grey and grey < len(rows), (reader, grey, len(rows))


def test_official_code_turns_channels_last_off() -> None:
    """Their network runs in the default NCHW layout; channels_last only changes CUDA kernels' rounding."""
    assert load_config("official-code").train.channels_last is False
    assert load_config("base").train.channels_last is True
