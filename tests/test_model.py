"""MCLNet by contract: shapes, stream split, embeddings, gradients, parameter groups, weights."""

from __future__ import annotations

import dataclasses
import re
import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision

from mclnet_cli.config import ModelConfig, load_config
from mclnet_cli.data.records import Modality
from mclnet_cli.errors import CheckpointError, ConfigError, MclnetError
from mclnet_cli.losses import Criterion
from mclnet_cli.model import OUTPUTS, SCALES, MCLNet, ModelOutput, build_model

H, W = 64, 32


def tiny_cfg(**changes: object) -> ModelConfig:
    """The tiny preset's network at torchvision's width, from random weights (the preset's own
    narrow network and its shipped start: tests/test_pretrained.py)."""
    return dataclasses.replace(load_config("tiny").model, **{"pretrained": "none", "base_channels": 64, **changes})


@pytest.fixture(scope="module")
def tiny() -> MCLNet:
    torch.manual_seed(0)
    return build_model(tiny_cfg(specific_stages=3), num_classes=3)  # the recipe's split (the tiny preset shares from layer1)


def images(n: int, seed: int, h: int = H, w: int = W) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def layer4_size(model: MCLNet, x: torch.Tensor, modality: str) -> tuple[int, ...]:
    seen = []
    handle = model.backbone.shared[-1].register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    with torch.no_grad():
        model.embed(x, modality)
    handle.remove()
    return seen[0]


def test_resnet50_shapes_at_288x144() -> None:
    cfg = dataclasses.replace(ModelConfig(), arch="resnet50", pretrained="none")
    model = build_model(cfg, num_classes=7).eval()
    assert model.feature_dim == 2048
    maps: list[tuple[int, ...]] = []
    model.backbone.shared[-1].register_forward_hook(lambda m, i, o: maps.append(tuple(o.shape)))
    with torch.no_grad():
        out = model(visible=images(1, 0, 288, 144), infrared=images(1, 1, 288, 144))
    assert isinstance(out, ModelOutput)
    assert list(out.features) == list(SCALES)
    assert all(f.shape == (2, 2048) for f in out.features.values())
    assert out.bn_feature.shape == (2, 2048) and out.logits.shape == (2, 7)
    assert maps == [(2, 2048, 18, 9)]  # last stride 1
    heads = model.specific_heads["visible"]
    assert len(heads["layer1"]) == 3 and len(heads["layer2"]) == 2 and len(model.shared_heads["layer3"]) == 1
    # the authors' block: the first 1x1 keeps the width, the second one changes it
    assert [blk[1].out_channels for blk in heads["layer1"]] == [256, 512, 1024]
    assert [blk[5].out_channels for blk in heads["layer1"]] == [512, 1024, 2048]


def test_resnet50_with_395_classes_has_the_authors_parameter_count() -> None:
    """ResNet-50, SYSU-MM01's 395 training ids: the authors' network has 45,217,920 parameters."""
    cfg = dataclasses.replace(ModelConfig(), arch="resnet50", pretrained="none")
    model = build_model(cfg, num_classes=395)
    assert sum(p.numel() for p in model.parameters()) == 45_217_920


def test_head_and_neck_initialisation_follow_the_authors() -> None:
    """Head convs ~ N(0, sqrt(2 / (k*k*out))), head BN 1/0, BNNeck weight ~ N(1, 0.01), classifier ~ N(0, 0.001)."""
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(ModelConfig(), arch="resnet50", pretrained="none"), num_classes=395)
    block = model.specific_heads["visible"]["layer1"][2]  # 1024 -> 2048
    for conv in (block[1], block[5]):
        k = conv.kernel_size[0] * conv.kernel_size[1]
        expected = (2.0 / (k * conv.out_channels)) ** 0.5
        assert abs(conv.weight.std().item() / expected - 1) < 0.02
        assert abs(conv.weight.mean().item()) < expected * 0.02
    assert torch.all(block[2].weight == 1) and torch.all(block[2].bias == 0)
    bn = model.neck.bn.weight
    assert abs(bn.mean().item() - 1) < 0.002 and abs(bn.std().item() / 0.01 - 1) < 0.1
    assert abs(model.neck.classifier.weight.std().item() / 0.001 - 1) < 0.02


def test_tiny_shapes_and_last_stride(tiny: MCLNet) -> None:
    tiny.eval()
    with torch.no_grad():
        out = tiny(visible=images(3, 0), infrared=images(2, 1))
    assert tiny.feature_dim == 512
    assert all(out.features[s].shape == (5, 512) for s in SCALES)
    assert out.bn_feature.shape == (5, 512) and out.logits.shape == (5, 3)
    assert layer4_size(tiny, images(2, 2), "visible") == (2, 512, 4, 2)
    stride2 = build_model(tiny_cfg(last_stride=2), 3).eval()
    assert layer4_size(stride2, images(2, 2), "visible") == (2, 512, 2, 1)


def test_rows_are_visible_then_infrared() -> None:
    torch.manual_seed(0)
    tiny = build_model(tiny_cfg(), 3).eval()  # eval: BN rows do not depend on the rest of the batch
    with torch.no_grad():  # the streams start as copies; make the infrared stem differ
        tiny.backbone.specific["infrared"][0][0].weight.mul_(-1.0)
    v, i = images(2, 3), images(3, 4)
    with torch.no_grad():
        both = tiny(visible=v, infrared=i)
        only_v = tiny(visible=v)
        only_i = tiny(infrared=i)
    for s in SCALES:
        torch.testing.assert_close(both.features[s], torch.cat([only_v.features[s], only_i.features[s]]))
    with torch.no_grad():
        v_as_ir = tiny(infrared=v)  # same pixels through the other stream
    assert not torch.allclose(v_as_ir.features["layer4"], only_v.features["layer4"])
    with pytest.raises(ValueError):
        tiny()


def test_modality_stems_are_separate_parameters() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_cfg(specific_stages=3), 3).train()  # the recipe's split (tiny shares from layer1)
    vis_stem, ir_stem = model.backbone.specific["visible"], model.backbone.specific["infrared"]
    assert len(vis_stem) == len(ir_stem) == 3  # stem, layer1, layer2
    vis_ptrs = {p.data_ptr() for p in vis_stem.parameters()}
    assert vis_ptrs.isdisjoint({p.data_ptr() for p in ir_stem.parameters()})
    assert vis_stem[0] is not ir_stem[0]
    before_v = [p.detach().clone() for p in vis_stem.parameters()]
    before_i = [p.detach().clone() for p in ir_stem.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = model(visible=images(4, 5))
    out.features["layer4"].pow(2).mean().backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before_v, vis_stem.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before_i, ir_stem.parameters()))


def test_later_stages_are_shared(tiny: MCLNet) -> None:
    tiny.eval()
    calls: list[int] = []
    hooks = [st.register_forward_hook(lambda m, i, o: calls.append(o.shape[0])) for st in tiny.backbone.shared]
    with torch.no_grad():
        tiny(visible=images(2, 6), infrared=images(3, 7))
        tiny.embed(images(2, 6), "infrared")
    for h in hooks:
        h.remove()
    assert len(tiny.backbone.shared) == 2  # layer3, layer4: one module for both modalities
    assert calls == [5, 5, 2, 2]  # one call on the concatenated batch, and the same module for embed
    assert set(tiny.shared_heads) == {"layer3"}


def test_four_specific_stages_split_layer3_and_its_head() -> None:
    model = build_model(tiny_cfg(specific_stages=4), 3)
    assert len(model.backbone.specific["visible"]) == 4 and len(model.backbone.shared) == 1
    assert model.backbone.specific["visible"][3] is not model.backbone.specific["infrared"][3]
    assert set(model.specific_heads["infrared"]) == {"layer1", "layer2", "layer3"}
    assert len(model.shared_heads) == 0
    one = build_model(tiny_cfg(specific_stages=1), 3)
    assert len(one.specific_heads["visible"]) == 0 and set(one.shared_heads) == {"layer1", "layer2", "layer3"}
    with torch.no_grad():
        out = model.eval()(visible=images(1, 8), infrared=images(1, 9))
    assert all(out.features[s].shape == (2, 512) for s in SCALES)


def test_embed_is_unit_norm_for_every_modality_spelling(tiny: MCLNet) -> None:
    tiny.eval()
    x = images(3, 10)
    with torch.no_grad():
        out_v, out_i = tiny(visible=x), tiny(infrared=x)
        for modality, out in (("visible", out_v), ("infrared", out_i), (Modality.VISIBLE, out_v),
                              (Modality.INFRARED, out_i), ("ir", out_i)):
            emb = tiny.embed(x, modality)
            assert emb.shape == (3, 512)
            torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
            torch.testing.assert_close(emb, F.normalize(out.bn_feature, dim=1))
            pool = tiny.embed(x, modality, feature="pool")
            torch.testing.assert_close(pool, F.normalize(out.features["layer4"], dim=1))
    with pytest.raises(ConfigError):
        tiny.embed(x, "visible", feature="fc")
    with pytest.raises(MclnetError):
        tiny.embed(x, "ultraviolet")


def test_criterion_backward_reaches_every_trainable_parameter() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), num_classes=2).train()
    labels = torch.tensor([0, 0, 1, 1])
    out = model(visible=images(4, 11), infrared=images(4, 12))
    weights = {"id": 1.0, "supcon": 5.0, "hks": 5.0, "mmd": 0.25, "triplet": 1.0}
    result = Criterion(weights)(out, torch.cat([labels, labels]), torch.tensor([0] * 4 + [1] * 4))
    assert torch.isfinite(result.total)
    result.total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.neck.bn.bias.grad is None  # BNNeck bias frozen


@pytest.mark.parametrize("specific_stages", [1, 3])
@pytest.mark.parametrize(
    "outputs",
    [
        ("features.layer1",),
        ("features.layer2", "bn_feature"),
        ("features.layer4",),
        ("logits",),
        ("features.layer1", "features.layer2", "features.layer3", "logits"),
        OUTPUTS,
    ],
    ids=",".join,
)
def test_parameters_unused_by_are_those_without_a_gradient(specific_stages: int, outputs: tuple[str, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_cfg(specific_stages=specific_stages), num_classes=2).train()
    out = model(visible=images(2, 21), infrared=images(2, 22))
    named = {**{f"features.{s}": out.features[s] for s in SCALES}, "bn_feature": out.bn_feature, "logits": out.logits}
    sum(named[o].sum() for o in outputs).backward()
    no_grad = {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in model.parameters_unused_by(outputs)} == no_grad
    assert MCLNet.uses_every_parameter(outputs) == (not no_grad)
    with pytest.raises(ConfigError, match="unknown model output 'features.layer5'"):
        model.parameters_unused_by(["features.layer5"])


def test_parameter_groups_are_disjoint_and_complete(tiny: MCLNet) -> None:
    from mclnet_cli.config import OptimConfig
    from mclnet_cli.engine.optim import parameter_groups

    head_group, body_group = parameter_groups(tiny, OptimConfig())
    head, body = head_group["params"], body_group["params"]
    head_ids, body_ids = {id(p) for p in head}, {id(p) for p in body}
    assert head_ids.isdisjoint(body_ids)
    assert head_ids | body_ids == {id(p) for p in tiny.parameters() if p.requires_grad}
    assert head_ids == {id(tiny.neck.bn.weight), id(tiny.neck.classifier.weight)}
    assert tiny.neck.classifier.bias is None and not tiny.neck.bn.bias.requires_grad


def _saved_resnet18(path, seed: int = 123) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, path)
    return state


def test_pretrained_path_loads_into_both_streams(tmp_path) -> None:
    state = _saved_resnet18(tmp_path / "r18.pth")
    torch.manual_seed(999)  # a different init, so equality can only come from the file
    model = build_model(tiny_cfg(pretrained=str(tmp_path / "r18.pth"), specific_stages=3), 3)
    spec = model.backbone.specific
    for m in ("visible", "infrared"):
        torch.testing.assert_close(spec[m][0][0].weight, state["conv1.weight"], rtol=0, atol=0)
        torch.testing.assert_close(spec[m][1][0].conv1.weight, state["layer1.0.conv1.weight"], rtol=0, atol=0)
        torch.testing.assert_close(spec[m][0][1].running_var, state["bn1.running_var"], rtol=0, atol=0)
    torch.testing.assert_close(model.backbone.shared[-1][1].conv2.weight, state["layer4.1.conv2.weight"], rtol=0, atol=0)


def test_pretrained_errors_are_one_clear_line(tmp_path) -> None:
    messages = []
    with pytest.raises(CheckpointError, match="nope.pth: file not found") as info:
        build_model(tiny_cfg(pretrained=str(tmp_path / "nope.pth")), 3)
    messages.append(str(info.value))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth: cannot read") as info:
        build_model(tiny_cfg(pretrained=str(garbage)), 3)
    messages.append(str(info.value))
    _saved_resnet18(tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match="keys do not match") as info:  # resnet18 weights, resnet50 arch
        build_model(tiny_cfg(arch="resnet50", pretrained=str(tmp_path / "r18.pth")), 3)
    messages.append(str(info.value))
    state = torch.load(tmp_path / "r18.pth", weights_only=True)
    state["conv1.weight"] = torch.zeros(32, 3, 7, 7)
    torch.save(state, tmp_path / "narrow.pth")
    with pytest.raises(CheckpointError, match=r"conv1.weight has shape \(32, 3, 7, 7\)") as info:
        build_model(tiny_cfg(pretrained=str(tmp_path / "narrow.pth")), 3)
    messages.append(str(info.value))
    assert all("\n" not in m for m in messages), messages


def test_imagenet_without_network_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache: it must try to download

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(CheckpointError) as info:
        build_model(tiny_cfg(pretrained="imagenet"), 3)
    message = str(info.value)
    assert "\n" not in message
    assert "resnet18" in message and "name resolution" in message
    assert "model.pretrained=none" in message


def test_build_model_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="resnet101"):
        build_model(tiny_cfg(arch="resnet101"), 3)
    with pytest.raises(ConfigError, match="pooling"):
        build_model(tiny_cfg(pooling="max"), 3)
    with pytest.raises(ConfigError, match="num_classes"):
        build_model(tiny_cfg(), 0)


def test_base_channels_narrows_every_stage_and_the_features() -> None:
    from mclnet_cli.model.backbone import build_resnet, stage_channels

    narrow = build_model(tiny_cfg(base_channels=32), 3).eval()
    with torch.no_grad():
        out = narrow(visible=images(3, 0), infrared=images(2, 1))
    assert narrow.feature_dim == 256
    assert all(out.features[s].shape == (5, 256) for s in SCALES) and out.bn_feature.shape == (5, 256)
    assert layer4_size(narrow, images(2, 2), "visible") == (2, 256, 4, 2)  # last stride 1 still applied
    wide = build_model(tiny_cfg(base_channels=64), 3)  # torchvision's width
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(narrow) < count(wide) / 3.5  # about a quarter: every convolution is half as wide on both sides
    assert stage_channels(build_resnet("resnet50", base_channels=16)) == (64, 128, 256, 512)
    assert stage_channels(build_resnet("resnet34", base_channels=24)) == (24, 48, 96, 192)


def test_narrow_resnet_is_initialised_as_torchvision_initialises_its_own() -> None:
    from mclnet_cli.model.backbone import build_resnet

    torch.manual_seed(0)
    narrow = build_resnet("resnet18", base_channels=32)
    for conv in (narrow.conv1, narrow.layer3[0].conv2, narrow.layer4[1].conv1):
        out_channels, _, kh, kw = conv.weight.shape
        expected = (2.0 / (out_channels * kh * kw)) ** 0.5  # kaiming normal, fan_out, relu
        assert abs(float(conv.weight.detach().std()) / expected - 1) < 0.1
    assert all(torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.bias.any()
               for bn in narrow.modules() if isinstance(bn, torch.nn.BatchNorm2d))
    assert narrow.layer3[0].downsample is not None and narrow.fc.in_features == 256


def test_base_channels_other_than_64_needs_training_from_scratch(tmp_path) -> None:
    narrow_imagenet = load_config("tiny", ["model.base_channels=32", "model.pretrained=imagenet"])  # --init may use it
    with pytest.raises(ConfigError, match=r"model.base_channels=32 needs model.pretrained=none"):
        build_model(narrow_imagenet.model, 3)  # refused before any download is tried
    with pytest.raises(ConfigError, match=r"model.base_channels must be between 8 and 256, got 4"):
        load_config("tiny", ["model.base_channels=4"])
    assert load_config("tiny", ["model.base_channels=32"]).model.base_channels == 32
    assert load_config("sysu").model.base_channels == 64  # the recipe: torchvision's resnet50


def test_unknown_modality_message_lists_every_word_parse_accepts() -> None:
    from mclnet_cli.errors import DataError

    with pytest.raises(DataError) as info:
        Modality.parse("uv")
    message = str(info.value)
    assert message.startswith("unknown modality 'uv'; expected visible (")
    said = re.findall(r"[a-z]+", message.split("expected", 1)[1])
    assert sorted(w for w in said if w != "or") == sorted(Modality.words())  # every word, whole, once
    for word in Modality.words():
        assert Modality.parse(word.upper()).value in ("visible", "infrared")
