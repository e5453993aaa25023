"""`mclnet convert`: checkpoints of the authors' code load into exactly the same network.

The reference below rebuilds the authors' ``embed_net`` module tree from the facts
of their public code (names, block order, forward), independently of mclnet's
model code: streams ``visible_module.visible`` / ``thermal_module.thermal`` (stem,
layer1, layer2, heads ``auxiliary1``/``auxiliary2``), shared
``base_resnet.base`` (layer3, layer4, head ``auxiliary3``), ``bottleneck`` and
``classifier``; each ResNet block carries an unused ``shrinkage`` module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models
from typer.testing import CliRunner

from mclnet_cli.cli.app import app
from mclnet_cli.config import load_config
from mclnet_cli.engine.checkpoint import load_model

runner = CliRunner()
NUM_CLASSES = 7


class SepConv(nn.Module):
    """Authors' block: dw3x3 s2 (in) -> 1x1 in->in -> BN(in) -> ReLU -> dw3x3 (in) -> 1x1 in->out -> BN(out) -> ReLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.Conv2d(c_in, c_in, 3, 2, 1, groups=c_in, bias=False), nn.Conv2d(c_in, c_in, 1, bias=False),
            nn.BatchNorm2d(c_in), nn.ReLU(),
            nn.Conv2d(c_in, c_in, 3, 1, 1, groups=c_in, bias=False), nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Shrinkage(nn.Module):
    """Built in every authors' ResNet block, never called by their forward."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(c, c), nn.BatchNorm1d(c), nn.ReLU(), nn.Linear(c, c), nn.Sigmoid())


def authors_resnet(arch: str) -> nn.Module:
    """ResNet with last stride 1, shrinkage modules and the three auxiliary heads, as their resnet.py builds it."""
    net = getattr(models, arch)(weights=None)
    first = net.layer4[0]
    (first.conv2 if hasattr(first, "conv3") else first.conv1).stride = (1, 1)
    first.downsample[0].stride = (1, 1)
    c1 = 256 if arch == "resnet50" else 64
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in layer:
            out = block.bn3.num_features if hasattr(block, "bn3") else block.bn2.num_features
            block.shrinkage = Shrinkage(out)
    net.auxiliary1 = nn.Sequential(SepConv(c1, 2 * c1), SepConv(2 * c1, 4 * c1), SepConv(4 * c1, 8 * c1))
    net.auxiliary2 = nn.Sequential(SepConv(2 * c1, 4 * c1), SepConv(4 * c1, 8 * c1))
    net.auxiliary3 = nn.Sequential(SepConv(4 * c1, 8 * c1))
    return net


class AuthorsNet(nn.Module):
    """The authors' embed_net with share_net=3 and average pooling (what their YAML effectively ran)."""

    def __init__(self, arch: str, num_classes: int) -> None:
        super().__init__()
        self.visible_module, self.thermal_module, self.base_resnet = nn.Module(), nn.Module(), nn.Module()
        for holder, name in ((self.visible_module, "visible"), (self.thermal_module, "thermal")):
            src, stream = authors_resnet(arch), nn.ModuleList()
            for part in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "auxiliary1", "auxiliary2"):
                setattr(stream, part, getattr(src, part))
            setattr(holder, name, stream)
        src, base = authors_resnet(arch), nn.ModuleList()
        for part in ("layer3", "layer4", "auxiliary3"):
            setattr(base, part, getattr(src, part))
        self.base_resnet.base = base
        dim = 2048 if arch == "resnet50" else 512
        self.bottleneck = nn.BatchNorm1d(dim)
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False)

    @staticmethod
    def _stream(s: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = s.maxpool(s.relu(s.bn1(s.conv1(x))))
        x = s.layer1(x)
        a1 = s.auxiliary1(x)
        x = s.layer2(x)
        return x, [a1, s.auxiliary2(x)]

    def forward(self, visible: torch.Tensor | None, infrared: torch.Tensor | None):
        parts = []
        if visible is not None:
            parts.append(self._stream(self.visible_module.visible, visible))
        if infrared is not None:
            parts.append(self._stream(self.thermal_module.thermal, infrared))
        x = torch.cat([p[0] for p in parts])
        aux = [torch.cat([p[1][i] for p in parts]) for i in range(2)]
        x = self.base_resnet.base.layer3(x)
        aux.append(self.base_resnet.base.auxiliary3(x))
        x = self.base_resnet.base.layer4(x)
        pools = [t.mean(dim=(2, 3)) for t in (*aux, x)]
        feat = self.bottleneck(pools[-1])
        if self.training:
            return pools, self.classifier(feat)
        return [F.normalize(p, dim=1) for p in pools], F.normalize(feat, dim=1)


def randomised(net: nn.Module, seed: int) -> nn.Module:
    """Every tensor (BN statistics too) random, so a swapped or missed tensor shows in the numbers."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if tensor.dtype.is_floating_point:
                values = torch.rand(tensor.shape, generator=gen) * 0.5 + 0.75 if name.endswith("running_var") else (
                    torch.randn(tensor.shape, generator=gen) * (0.05 if tensor.dim() > 1 else 0.1)
                    + (1.0 if name.endswith(".weight") and tensor.dim() == 1 else 0.0)
                )
                tensor.copy_(values)
    return net


def authors_file(path: Path, net: nn.Module, *, wrap: str = "main_net", prefix: str = "") -> Path:
    state = {prefix + k: v for k, v in net.state_dict().items()}
    if wrap == "main_net":
        payload = {
            "main_net": state, "cmc": np.linspace(0.5, 1.0, 50), "mAP": np.float64(0.61),
            "mINP": np.float64(0.42), "epoch": 37, "n_class": NUM_CLASSES,
        }
    else:
        payload = state
    torch.save(payload, path)
    return path


@pytest.fixture(scope="module")
def reference() -> AuthorsNet:
    torch.manual_seed(0)
    return randomised(AuthorsNet("resnet18", NUM_CLASSES), seed=1).eval()


@pytest.fixture(scope="module")
def converted(reference: AuthorsNet, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("convert")
    source = authors_file(folder / "best_checkpoint.pth", reference)
    result = runner.invoke(app, ["convert", str(source), "--out", str(folder / "mclnet.pt"), "--json"])
    assert result.exit_code == 0, result.output
    return folder / "mclnet.pt", json.loads(result.stdout)


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 64, 32, generator=torch.Generator().manual_seed(seed))


def test_every_tensor_lands_on_its_counterpart(reference: AuthorsNet, converted) -> None:
    path, report = converted
    loaded = load_model(path)
    ours = loaded.model.state_dict()
    theirs = reference.state_dict()
    used = [k for k in theirs if ".shrinkage." not in k]
    assert report["tensors_mapped"] == len(used) == len(ours)
    assert report["tensors_unused"] == len(theirs) - len(used) > 0
    assert set(report["ignored_entries"]) == {"cmc", "mAP", "mINP", "epoch", "n_class"}
    assert report["ignored_entries"]["mAP"] == pytest.approx(0.61)
    # a few named counterparts, in both streams, the shared stages and the neck
    pairs = {
        "visible_module.visible.conv1.weight": "backbone.specific.visible.0.0.weight",
        "thermal_module.thermal.bn1.running_var": "backbone.specific.infrared.0.1.running_var",
        "thermal_module.thermal.layer2.1.conv2.weight": "backbone.specific.infrared.2.1.conv2.weight",
        "visible_module.visible.auxiliary1.2.op.5.weight": "specific_heads.visible.layer1.2.5.weight",
        "thermal_module.thermal.auxiliary2.0.op.2.running_mean": "specific_heads.infrared.layer2.0.2.running_mean",
        "base_resnet.base.layer3.0.downsample.0.weight": "backbone.shared.0.0.downsample.0.weight",
        "base_resnet.base.layer4.1.bn2.weight": "backbone.shared.1.1.bn2.weight",
        "base_resnet.base.auxiliary3.0.op.1.weight": "shared_heads.layer3.0.1.weight",
        "bottleneck.running_mean": "neck.bn.running_mean",
        "classifier.weight": "neck.classifier.weight",
    }
    for their_key, our_key in pairs.items():
        assert torch.equal(theirs[their_key], ours[our_key]), their_key
    # and every parameter value of the source is in the converted model exactly once
    source_values = sorted(float(v.double().sum()) for k, v in theirs.items() if k in used)
    our_values = sorted(float(v.double().sum()) for v in ours.values())
    assert source_values == pytest.approx(our_values, rel=0, abs=1e-9)


def test_converted_config_is_the_official_code_preset(converted) -> None:
    path, report = converted
    config = load_model(path).config
    official = load_config("official-code")
    assert config.model.pooling == "avg" and config.model.arch == "resnet18" == report["arch"]
    assert config.model.specific_stages == 3
    assert config.loss == official.loss and config.data == official.data


def test_retrieval_features_equal_the_authors_model_in_both_streams(reference: AuthorsNet, converted) -> None:
    path, _ = converted
    model = load_model(path).model
    x = images(5, 3)
    with torch.no_grad():
        for modality, theirs in (("visible", reference(x, None)[1]), ("infrared", reference(None, x)[1])):
            ours = model.embed(x, modality)
            assert torch.allclose(ours, theirs, atol=1e-4), modality
        # the two streams really differ, so a routing mistake could not pass
        assert not torch.allclose(model.embed(x, "visible"), model.embed(x, "infrared"), atol=1e-2)


def test_training_features_and_logits_equal_the_authors_model(reference: AuthorsNet, converted) -> None:
    path, _ = converted
    model = load_model(path).model.train()
    reference.train()
    try:
        vis, ir = images(4, 5), images(4, 6)
        with torch.no_grad():
            pools, logits = reference(vis, ir)
            out = model(visible=vis, infrared=ir)
        for theirs, scale in zip(pools, ("layer1", "layer2", "layer3", "layer4")):
            assert torch.allclose(out.features[scale], theirs, atol=1e-4), scale
        assert torch.allclose(out.logits, logits, atol=1e-4)
    finally:
        reference.eval()


@pytest.mark.parametrize("wrap,prefix", [("bare", ""), ("main_net", "module.")])
def test_bare_state_dicts_and_dataparallel_prefixes_are_accepted(reference, tmp_path: Path, wrap: str, prefix: str) -> None:
    source = authors_file(tmp_path / "a.pth", reference, wrap=wrap, prefix=prefix)
    result = runner.invoke(app, ["convert", str(source), "--out", str(tmp_path / "b.pt"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["module_prefix_removed"] is bool(prefix) and report["num_classes"] == NUM_CLASSES
    x = images(2, 9)
    with torch.no_grad():
        assert torch.allclose(load_model(tmp_path / "b.pt").model.embed(x, "infrared"), reference(None, x)[1], atol=1e-4)


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "weights_only=False" not in result.output
    return lines[0]


def _broken(reference: AuthorsNet, tmp_path: Path, edit) -> Path:
    state = dict(reference.state_dict())
    edit(state)
    torch.save({"main_net": state, "n_class": NUM_CLASSES}, tmp_path / "bad.pth")
    return tmp_path / "bad.pth"


def test_a_wrong_shape_names_the_key_and_both_shapes(reference, tmp_path: Path) -> None:
    key = "base_resnet.base.auxiliary3.0.op.5.weight"
    path = _broken(reference, tmp_path, lambda s: s.__setitem__(key, torch.zeros(512, 128, 1, 1)))
    line = one_line_error(runner.invoke(app, ["convert", str(path), "--out", str(tmp_path / "o.pt")]))
    assert key in line and "(512, 128, 1, 1)" in line and "(512, 256, 1, 1)" in line
    assert not (tmp_path / "o.pt").exists()


def test_a_missing_key_is_named_with_the_authors_name(reference, tmp_path: Path) -> None:
    key = "thermal_module.thermal.layer1.1.bn2.running_mean"
    path = _broken(reference, tmp_path, lambda s: s.pop(key))
    line = one_line_error(runner.invoke(app, ["convert", str(path), "--out", str(tmp_path / "o.pt")]))
    assert f"missing key {key}" in line


def test_an_extra_key_is_refused(reference, tmp_path: Path) -> None:
    path = _broken(reference, tmp_path, lambda s: s.__setitem__("visible_module.visible.layer2.9.conv1.weight", torch.zeros(1)))
    line = one_line_error(runner.invoke(app, ["convert", str(path), "--out", str(tmp_path / "o.pt")]))
    assert "unexpected key visible_module.visible.layer2.9.conv1.weight" in line


def test_n_class_must_agree_with_the_classifier(reference, tmp_path: Path) -> None:
    torch.save({"main_net": reference.state_dict(), "n_class": NUM_CLASSES + 1}, tmp_path / "bad.pth")
    line = one_line_error(runner.invoke(app, ["convert", str(tmp_path / "bad.pth"), "--out", str(tmp_path / "o.pt")]))
    assert f"n_class is {NUM_CLASSES + 1}" in line


@pytest.mark.parametrize("declared", ["seven", 7.5, np.float64("nan"), [7]], ids=["text", "fraction", "numpy-nan", "list"])
def test_a_non_integer_n_class_is_one_line(reference, tmp_path: Path, declared) -> None:
    torch.save({"main_net": reference.state_dict(), "n_class": declared}, tmp_path / "bad.pth")
    line = one_line_error(runner.invoke(app, ["convert", str(tmp_path / "bad.pth"), "--out", str(tmp_path / "o.pt")]))
    assert str(tmp_path / "bad.pth") in line and "n_class must be a whole number" in line
    assert not (tmp_path / "o.pt").exists()


def test_whole_numbers_of_any_type_are_accepted_as_n_class(reference, tmp_path: Path) -> None:
    for declared in (np.int64(NUM_CLASSES), float(NUM_CLASSES), torch.tensor(NUM_CLASSES)):
        torch.save({"main_net": reference.state_dict(), "n_class": declared}, tmp_path / "a.pth")
        result = runner.invoke(app, ["convert", str(tmp_path / "a.pth"), "--out", str(tmp_path / "o.pt"), "--force", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["num_classes"] == NUM_CLASSES


def test_an_existing_output_is_refused_without_force_and_replaced_with_it(reference, tmp_path: Path) -> None:
    source = authors_file(tmp_path / "a.pth", reference)
    out = tmp_path / "o.pt"
    out.write_bytes(b"an older file")
    line = one_line_error(runner.invoke(app, ["convert", str(source), "--out", str(out)]))
    assert f"{out} already exists" in line and "--force" in line
    assert out.read_bytes() == b"an older file"
    result = runner.invoke(app, ["convert", str(source), "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert load_model(out).config.model.arch == "resnet18"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pth", "o.pt"]


def test_the_source_is_never_the_output_not_even_with_force(reference, tmp_path: Path) -> None:
    source = authors_file(tmp_path / "a.pth", reference)
    before = source.read_bytes()
    (tmp_path / "link.pt").symlink_to(source)
    (tmp_path / "hard.pt").hardlink_to(source)
    for out in (source, tmp_path / "link.pt", tmp_path / "hard.pt", tmp_path / "." / "a.pth"):
        for force in ([], ["--force"]):
            line = one_line_error(runner.invoke(app, ["convert", str(source), "--out", str(out), *force]))
            assert "is the input" in line and "never overwritten" in line
    line = one_line_error(runner.invoke(app, ["convert", str(tmp_path / "link.pt"), "--out", str(source), "--force"]))
    assert "is the input" in line
    assert source.read_bytes() == before


def test_an_output_folder_is_one_line_naming_it(reference, tmp_path: Path) -> None:
    source = authors_file(tmp_path / "a.pth", reference)
    (tmp_path / "out").mkdir()
    for force in ([], ["--force"]):
        line = one_line_error(runner.invoke(app, ["convert", str(source), "--out", str(tmp_path / "out"), *force]))
        assert f"{tmp_path / 'out'} is a folder" in line and ".tmp" not in line  # never the temp's name


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"main_net": {"classifier.weight": torch.zeros(2, 2)}, "cmc": _Payload(marker)}, tmp_path / "evil.pth")
    line = one_line_error(runner.invoke(app, ["convert", str(tmp_path / "evil.pth"), "--out", str(tmp_path / "o.pt")]))
    assert "refused to load" in line and "evil.pth" in line
    assert not marker.exists()


def test_a_random_file_and_a_missing_file_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "noise.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    line = one_line_error(runner.invoke(app, ["convert", str(tmp_path / "noise.pth"), "--out", str(tmp_path / "o.pt")]))
    assert "noise.pth" in line
    line = one_line_error(runner.invoke(app, ["convert", str(tmp_path / "absent.pth"), "--out", str(tmp_path / "o.pt")]))
    assert "not found" in line


@pytest.mark.slow
def test_resnet50_with_395_classes_converts_with_the_authors_key_set(tmp_path: Path) -> None:
    """The full-size network: every authors' ResNet-50 tensor name and shape has its place."""
    torch.manual_seed(0)
    reference = AuthorsNet("resnet50", 395)
    state = {k: v for k, v in reference.state_dict().items() if ".shrinkage." not in k}  # keeps the file small
    torch.save({"main_net": state, "n_class": 395}, tmp_path / "r50.pth")
    del reference
    result = runner.invoke(app, ["convert", str(tmp_path / "r50.pth"), "--out", str(tmp_path / "r50.pt"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["arch"] == "resnet50" and report["tensors_mapped"] == len(state)
    model = load_model(tmp_path / "r50.pt").model
    assert sum(p.numel() for p in model.parameters()) == 45_217_920
    ours = model.state_dict()
    assert torch.equal(ours["shared_heads.layer3.0.5.weight"], state["base_resnet.base.auxiliary3.0.op.5.weight"])
    assert torch.equal(ours["specific_heads.infrared.layer1.2.1.weight"], state["thermal_module.thermal.auxiliary1.2.op.1.weight"])


def test_checkpoints_with_the_earlier_head_block_are_refused_clearly(tmp_path: Path) -> None:
    from mclnet_cli.engine.checkpoint import checkpoint_payload, save_checkpoint
    from mclnet_cli.model import build_model

    config = load_config("tiny", ["model.specific_stages=3", "model.pretrained=none"])  # per-modality layer1 heads, as the authors'
    model = build_model(config.model, 3)
    payload = checkpoint_payload(model, config, {1: 0, 2: 1, 3: 2})
    block = "specific_heads.visible.layer1.0."
    # the earlier block changed the width in its first 1x1: 64 -> 128 there, BN and depthwise on 128
    payload["model"][block + "1.weight"] = torch.zeros(128, 64, 1, 1)
    payload["mclnet_version"] = "0.1.0"
    save_checkpoint(tmp_path / "old.pt", payload)
    from mclnet_cli.errors import CheckpointError

    with pytest.raises(CheckpointError, match="earlier projection-head block"):
        load_model(tmp_path / "old.pt")


def test_converted_checkpoint_serves_evaluate_index_and_query(reference, prepared_dataset: Path, tmp_path: Path) -> None:
    """`--set` reaches the stored config, and index/query scores are the authors' model's cosine similarities."""
    from mclnet_cli.data.transforms import test_transform as eval_transform

    source = authors_file(tmp_path / "a.pth", reference)
    ckpt = tmp_path / "c.pt"
    result = runner.invoke(app, ["convert", str(source), "--out", str(ckpt), "--set", "data.height=64", "--set", "data.width=32"])
    assert result.exit_code == 0, result.output
    assert (load_model(ckpt).config.data.height, load_model(ckpt).config.data.width) == (64, 32)

    result = runner.invoke(app, ["evaluate", str(ckpt), "--data", str(prepared_dataset), "--trials", "1", "--json"])
    assert result.exit_code == 0, result.output

    images_dir = prepared_dataset.parent / "img"
    gallery = sorted(p for p in images_dir.iterdir() if p.name.split("_")[1] in ("1", "2"))
    for path in gallery:
        (tmp_path / "gallery").mkdir(exist_ok=True)
        (tmp_path / "gallery" / path.name).write_bytes(path.read_bytes())
    result = runner.invoke(app, ["index", str(tmp_path / "gallery"), "--checkpoint", str(ckpt), "--modality", "visible", "--out", str(tmp_path / "idx")])
    assert result.exit_code == 0, result.output
    probe = next(p for p in sorted(images_dir.iterdir()) if p.name.split("_")[1] == "3")
    result = runner.invoke(app, ["query", str(probe), "--index", str(tmp_path / "idx"), "--modality", "infrared", "--top-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout)[0]["results"]

    transform = eval_transform(64, 32, "lanczos")
    def load(path: Path) -> torch.Tensor:
        return transform(Image.open(path).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        probe_feat = reference(None, load(probe))[1]
        gallery_feats = torch.cat([reference(load(p), None)[1] for p in (tmp_path / "gallery" / r["path"].split("/")[-1] for r in top)])
    assert [r["score"] for r in top] == pytest.approx((gallery_feats @ probe_feat.T).squeeze(1).tolist(), abs=1e-4)


# --------------------------------------------------------------------------- issue 30: the remaining edges


@pytest.mark.parametrize(
    "override",
    ["model.arch=resnet50", "model.specific_stages=2", "model.pretrained=imagenet", "model={arch: resnet34}",
     "model.base_channels=32"],
)
def test_a_set_of_what_the_checkpoint_decides_is_refused_not_ignored(reference, tmp_path: Path, override: str) -> None:
    """Was: parsed, then overwritten by the checkpoint's own value without a word."""
    source = authors_file(tmp_path / "a.pth", reference)
    line = one_line_error(runner.invoke(app, ["convert", str(source), "--out", str(tmp_path / "o.pt"), "--set", override]))
    assert f"--set {override} does not apply to convert" in line and str(source) in line
    assert not (tmp_path / "o.pt").exists()


def test_a_set_that_agrees_with_the_checkpoint_is_accepted(reference, tmp_path: Path) -> None:
    source = authors_file(tmp_path / "a.pth", reference)
    result = runner.invoke(app, [
        "convert", str(source), "--out", str(tmp_path / "o.pt"), "--json",
        "--set", "model.arch=resnet18", "--set", "model.specific_stages=3", "--set", "model.last_stride=1",
    ])
    assert result.exit_code == 0, result.output
    assert load_model(tmp_path / "o.pt").config.model.arch == "resnet18"


def test_an_mclnet_checkpoint_needs_no_conversion(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Was: "not a state dict of tensors ('format' is str)"."""
    line = one_line_error(runner.invoke(app, ["convert", str(tiny_checkpoint), "--out", str(tmp_path / "o.pt")]))
    assert f"{tiny_checkpoint} is already an mclnet checkpoint" in line and "needs no conversion" in line
    assert not (tmp_path / "o.pt").exists()


@pytest.mark.parametrize(
    "key",
    [
        "visible_module.visible.layer3.0.shrinkage.fc.0.weight",  # a block the stream does not hold (share_net=3)
        "base_resnet.base.layer4.7.shrinkage.fc.0.weight",  # a block that does not exist
        "bottleneck.layer1.0.shrinkage.weight",  # under the BNNeck, not a ResNet block
        "classifier.layer2.1.shrinkage.fc.3.bias",
        "thermal_module.thermal.auxiliary1.0.op.shrinkage.weight",  # in a projection head
    ],
)
def test_only_the_blocks_own_shrinkage_tensors_are_skipped(reference, tmp_path: Path, key: str) -> None:
    """Any other tensor named like one is no part of the authors' network: refused, never silently dropped."""
    path = _broken(reference, tmp_path, lambda s: s.__setitem__(key, torch.zeros(4)))
    line = one_line_error(runner.invoke(app, ["convert", str(path), "--out", str(tmp_path / "o.pt")]))
    assert f"unexpected key {key}" in line
    assert not (tmp_path / "o.pt").exists()


def test_the_blocks_shrinkage_tensors_are_reported_unused(reference, converted) -> None:
    _, report = converted
    shrinkage = [k for k in reference.state_dict() if ".shrinkage." in k]
    assert shrinkage and report["tensors_unused"] == len(shrinkage)
