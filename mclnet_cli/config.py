"""Configuration schema, presets and ``--set`` overrides.

This is the one place YAML is parsed. The schema is a tree of frozen
dataclasses; a preset is a YAML file that fills part of it, optionally on top of
one ``base:`` preset. Values are type-checked strictly, so YAML 1.1 surprises
(``on`` read as ``True`` for a string option) are refused instead of silently
changing behaviour.

``data.dataset`` is informational: nothing reads it to choose behaviour (the
prepared dataset's meta.json says which reader wrote it, and ``eval.protocol``
picks the test protocol). It names what a preset or run was meant for, is kept
in saved configs and checkpoints (older ones carry it), and is still checked
against the dataset names (``Dataset``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

import yaml

from mclnet_cli.errors import ConfigError, MclnetDeprecationWarning

PRESET_SUFFIX = ".yaml"

# The closed choices: each list of names is spelled here once. The schema's
# fields use these types, CHOICES is derived from them, and every other module
# (model builders, protocols, index kinds, CLI choices) takes its names from here.
Dataset = Literal["sysu", "regdb", "llcm", "synthetic"]
Arch = Literal["resnet18", "resnet34", "resnet50"]
Pooling = Literal["gem", "avg"]
ResizeFilter = Literal["bilinear", "lanczos"]
IdentityDraw = Literal["cycle", "independent"]
StepsRule = Literal["method", "official"]  # train.steps_rule: steps of an epoch when train.steps_per_epoch is null
OptimName = Literal["sgd", "adam"]
MmdFeature = Literal["pool", "standardized"]  # loss.mmd_feature: what MMD aligns (pool: pre-BN f4, the method)
Protocol = Literal["sysu", "regdb", "llcm", "own"]  # own: a prepared folder/csv dataset (metrics/protocols.py)
SysuMode = Literal["all", "indoor"]
Direction = Literal["visible_to_infrared", "infrared_to_visible", "both"]
IndexKind = Literal["flat", "ivf", "hnsw", "ivfpq", "auto"]
Draws = Literal["agw", "official"]  # SYSU-MM01 gallery draw families (a command option, not a config key)
Device = Literal["auto", "cpu", "cuda"]  # also cuda:N (a command option)
# loss.mmd_bandwidth: the MMD kernels' data-driven bandwidth is a constant for the gradient
# (the authors' code) or differentiated too, so that the loss cannot be lowered by shrinking
# the features' spread (docs/method.md, "Observed when training from scratch")
MmdBandwidth = Literal["detached", "differentiable"]


def names(choice: Any) -> tuple[str, ...]:
    """The allowed values of one of the closed-choice types above, in order."""
    return tuple(typing.get_args(choice))


@dataclass(frozen=True)
class DataConfig:
    """Input pipeline: image size, sampler and augmentation."""

    dataset: Dataset = "synthetic"  # sysu | regdb | llcm | synthetic (informational)
    height: int = 288
    width: int = 144
    num_ids: int = 4  # P identities per batch
    num_instances: int = 4  # K images per identity and modality
    workers: int = 2
    train_on_val: bool = True  # SYSU: train on train+val ids (standard practice)
    regdb_split: int = 1  # RegDB identity split 1..10 (its idx files; `prepare regdb --trial`); was data.trial
    use_cache: bool = True  # use the prepared uint8 cache when present
    pad: int = 10
    grayscale_p: float = 0.5  # visible only
    flip_p: float = 0.5
    erasing_p: float = 0.5
    channel_aug: bool = False  # CAJ channel exchange / random channel erasing
    spectrum_p: float = 0.0  # random signed channel mix, both modalities (transforms.RandomSpectrum); not in the method
    pseudo_infrared_p: float = 0.0  # share of pairs whose infrared image is their visible one, spectrally mixed; not in the method
    spectrum_knots: int = 0  # >= 2: spectral mixes (spectrum_p, pseudo_infrared_p) first bend each channel by a random curve
    jitter: float = 0.0  # random brightness and contrast in [1 - jitter, 1 + jitter], both modalities; not in the method
    blur_p: float = 0.0  # share of images blurred (Gaussian, sigma 0.1-1.5 px), both modalities; not in the method
    zoom_p: float = 0.0  # share of images shrunk by U(zoom_min, 1) onto their mean colour at a random place; not in the method
    zoom_min: float = 0.6  # the smallest zoom_p factor, in (0, 1]
    noise_p: float = 0.0  # share of images with Gaussian sensor noise, sigma U(0, noise_std) of the range; not in the method
    noise_std: float = 0.1  # the largest noise_p sigma, in pixel values / 255
    resize: ResizeFilter = "bilinear"  # bilinear | lanczos (the authors' code: lanczos)
    identity_draw: IdentityDraw = "cycle"  # cycle: every id before any repeats | independent: P fresh ids each batch (the code)
    instances_with_replacement: bool = False  # K images of an id drawn with replacement even when it has K (the code)
    llcm_infrared_as_visible: bool = False  # LLCM only: infrared images get the visible augmentation, random grayscale included (the code)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # per-channel (R, G, B) normalisation of pixels / 255: ImageNet's
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        for name in ("grayscale_p", "flip_p", "erasing_p", "spectrum_p", "pseudo_infrared_p", "blur_p",
                     "zoom_p", "noise_p"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(f"data.{name} is a probability and must be in [0, 1], got {value}")
        if self.spectrum_knots == 1 or self.spectrum_knots < 0:
            raise ConfigError(f"data.spectrum_knots must be 0 (a linear mix) or at least 2, got {self.spectrum_knots}")
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"data.jitter must be in [0, 1] (factors in [1 - jitter, 1 + jitter]), got {self.jitter}")
        if not 0 < self.zoom_min <= 1:
            raise ConfigError(f"data.zoom_min must be in (0, 1] (a shrink factor), got {self.zoom_min}")
        if not 0 <= self.noise_std <= 1:
            raise ConfigError(f"data.noise_std must be in [0, 1] (a share of the pixel range), got {self.noise_std}")
        for name, low in (("mean", -math.inf), ("std", 0.0)):
            value = tuple(getattr(self, name))
            if len(value) != 3 or not all(low < v < math.inf for v in value):
                what = "finite numbers" if name == "mean" else "positive finite numbers"
                raise ConfigError(f"data.{name} must be 3 {what} (R, G, B), got {list(value)}")


@dataclass(frozen=True)
class ModelConfig:
    """Two-stream MCLNet network."""

    arch: Arch = "resnet50"  # resnet18 | resnet34 | resnet50
    pretrained: str = "imagenet"  # imagenet | none | synthetic (shipped, whole network) | <path to a state dict>
    specific_stages: int = 3  # stem, layer1, layer2 modality-specific (code: share_net=3)
    last_stride: int = 1
    base_channels: int = 64  # planes of the stem and layer1 (layer k: base_channels x 2^(k-1)); 64: torchvision's ResNet
    pooling: Pooling = "gem"  # gem | avg
    gem_p: float = 3.0


@dataclass(frozen=True)
class LossWeights:
    """Weight of each term of the objective; zero skips the term."""

    id: float = 1.0
    supcon: float = 5.0
    hks: float = 5.0
    mmd: float = 0.25
    triplet: float = 0.0


@dataclass(frozen=True)
class LossConfig:
    """The weighted MCLNet objective."""

    weights: LossWeights = field(default_factory=LossWeights)
    supcon_temperature: float = 0.1
    hks_temperature: float = 1.0
    mmd_margin: float | None = None
    mmd_bandwidth: MmdBandwidth = "detached"  # "differentiable": the bandwidth is not a constant for the gradient
    mmd_feature: MmdFeature = "pool"  # standardized: f4 standardised per channel over the batch, no learnable scale, so MMD cannot shrink every feature to a point
    mmd_gate: float | None = None  # MMD joins after the first epoch whose identity loss is below mmd_gate x ln C; None: from the start (the method)
    mmd_ramp: float | None = None  # MMD's weight in each step x clamp((start - L_id / ln C) / mmd_ramp, 0, 1), start = mmd_gate or 1: alignment never runs ahead of identity; None: the full weight (the method)
    hks_smoothing: float = 0.0  # the code's KL adds eps to both softmaxes: (p + eps) / (1 + C eps); code: 1e-8
    label_smoothing: float = 0.0
    triplet_margin: float = 0.3


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser, parameter groups and learning-rate schedule."""

    name: OptimName = "sgd"  # sgd | adam
    lr: float = 0.01  # backbone, heads
    head_lr: float = 0.1  # BNNeck + classifier
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: int = 10
    milestones: tuple[int, ...] = (20, 50)
    gamma: float = 0.1
    head_only_epochs: int = 0  # the first N epochs train only the BNNeck + classifier (backbone lr 0); not in the method

    def __post_init__(self) -> None:
        if self.head_only_epochs < 0:
            raise ConfigError(f"optim.head_only_epochs must be 0 or more, got {self.head_only_epochs}")


@dataclass(frozen=True)
class TrainConfig:
    """Training loop."""

    epochs: int = 151
    steps_per_epoch: int | None = None  # None: from train.steps_rule (N = max(#vis, #ir) training images)
    steps_rule: StepsRule = "method"  # method: N // (P*K) | official: int(N / (P*K)) + 1, as the authors' sampler
    eval_every: int = 0  # evaluate on the validation split every N epochs; 0 = never
    amp: bool = True  # mixed precision on CUDA only
    channels_last: bool = True  # CUDA only
    compile: bool = False
    log_every: int = 10
    recalibrate_neck: bool = False  # after training, BNNeck statistics from inference-mode f4 (engine.recalibrate); not in the method
    stop_on_collapse: bool = False  # stop (exit 1) when the health check finds the run collapsed (engine.health)
    health_from_epoch: int | None = None  # first 0-based epoch the health check looks at; None: after warm-up and a quarter of the schedule


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation protocol."""

    protocol: Protocol = "sysu"  # sysu | regdb | llcm | own
    mode: SysuMode = "all"  # sysu: all | indoor
    shots: int = 1  # sysu: 1 | 10
    trials: int = 10
    direction: Direction = "both"  # regdb/llcm/own: visible_to_infrared | infrared_to_visible | both
    batch_size: int = 64
    flip: bool = False  # flip test-time augmentation
    rerank: bool = False  # k-reciprocal re-ranking


@dataclass(frozen=True)
class IndexConfig:
    """Defaults of ``mclnet index`` and ``mclnet query`` (their command-line options override them).

    ``None`` means automatic, chosen from the gallery size by
    :func:`mclnet_cli.index.store.plan_index`: ``nlist ~ 4 sqrt(N)``,
    ``nprobe = nlist / 8`` (at least 16), ``pq_m`` the largest divisor of the
    feature dimension up to ``dim / 8``.
    """

    kind: IndexKind = "flat"  # flat | ivf | hnsw | ivfpq | auto
    batch_size: int = 64
    nlist: int | None = None
    nprobe: int | None = None
    hnsw_m: int = 32
    pq_m: int | None = None
    recall: float = 0.95  # auto: recall@10 target against exact search
    memory_gb: float | None = None  # auto: memory budget of the index (null: no limit)

    def __post_init__(self) -> None:
        for name in ("batch_size", "nlist", "nprobe", "hnsw_m", "pq_m"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"index.{name} must be at least 1 (or null for automatic), got {value}")
        if not 0 < self.recall <= 1:
            raise ConfigError(f"index.recall must be in (0, 1], got {self.recall}")
        if self.memory_gb is not None and not (0 < self.memory_gb < float("inf")):
            raise ConfigError(f"index.memory_gb must be a positive number of GB (or null), got {self.memory_gb}")


@dataclass(frozen=True)
class Config:
    """The whole resolved configuration of a run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), safe for YAML and JSON."""
        return _to_plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _choices(cls: type, prefix: str = "") -> dict[str, tuple[str, ...]]:
    hints = typing.get_type_hints(cls)
    found: dict[str, tuple[str, ...]] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            found.update(_choices(tp, f"{prefix}{f.name}."))
        elif typing.get_origin(tp) is Literal:
            found[f"{prefix}{f.name}"] = names(tp)
    return found


#: dotted key -> allowed values, for every closed-choice field of the schema
CHOICES: dict[str, tuple[str, ...]] = _choices(Config)


def flatten(data: Mapping[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> one level of ``a.b.c`` keys (``sep`` between parts; tuples as lists)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, sep, f"{name}{sep}"))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


# ----------------------------------------------------------------------------
# Presets


def presets_dir() -> Path:
    """Folder holding the shipped presets (inside the installed package)."""
    return Path(str(resources.files("mclnet_cli") / "presets"))


def list_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob(f"*{PRESET_SUFFIX}"))


def _preset_path(preset: str | Path) -> Path:
    text = str(preset)
    candidate = Path(text)
    if text.endswith((".yaml", ".yml")) or candidate.parent != Path("."):
        if not candidate.is_file():
            raise ConfigError(f"preset file not found: {candidate}")
        return candidate
    path = presets_dir() / f"{text}{PRESET_SUFFIX}"
    if not path.is_file():
        names = list_presets()
        raise ConfigError(f"unknown preset {text!r}{_suggest(text, names)}; choose from: {', '.join(names)}")
    return path


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _read_preset(path: Path) -> dict[str, Any]:
    """A preset file with renamed keys under their new names, and a warning for each old one (shipped or not)."""
    data, messages = upgrade_keys(_read_yaml(path), str(path))
    for message in messages:
        warnings.warn(message, MclnetDeprecationWarning, stacklevel=3)
    return data


def load_preset_dict(preset: str | Path) -> dict[str, Any]:
    """Raw preset as a nested dict, its ``base:`` merged in (one level only)."""
    path = _preset_path(preset)
    data = _read_preset(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a preset name, got {base!r}")
    if base.endswith((".yaml", ".yml")):
        base_path = _preset_path(path.parent / base)
    else:
        base_path = _preset_path(base)
    base_data = _read_preset(base_path)
    if "base" in base_data:
        raise ConfigError(f"{path}: base preset {base!r} has a base of its own; only one 'base:' level is allowed")
    return _deep_merge(base_data, data)


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


# ----------------------------------------------------------------------------
# Renamed keys: the old name is still read, with a deprecation message, for one release

#: old dotted key -> its new name
RENAMED_KEYS: dict[str, str] = {
    "data.trial": "data.regdb_split",  # 0.x: "trial" now means only the gallery-draw trial of evaluation
}


def _renamed_message(where: str, old: str) -> str:
    return f"{where}: {old} is deprecated, use {RENAMED_KEYS[old]} (the old name stops working in the next release)"


def upgrade_keys(data: Mapping[str, Any], where: str = "config") -> tuple[dict[str, Any], list[str]]:
    """``data`` (a nested dict) with renamed keys under their new names, and one message per old key found.

    Giving both the old and the new name of a key in one place is a ConfigError.
    """
    result = _copy_tree(data)
    messages: list[str] = []
    for old, new in RENAMED_KEYS.items():
        *old_parents, old_leaf = old.split(".")
        *new_parents, new_leaf = new.split(".")
        node = _node(result, old_parents)
        if node is None or old_leaf not in node:
            continue
        target = _node(result, new_parents, create=True)
        assert target is not None
        if new_leaf in target:
            raise ConfigError(f"{where}: both {old} and {new} are given; keep {new} ({old} is its old name)")
        target[new_leaf] = node.pop(old_leaf)
        messages.append(_renamed_message(where, old))
    return result, messages


def _copy_tree(data: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _copy_tree(value) if isinstance(value, Mapping) else value for key, value in data.items()}


def _node(data: dict[str, Any], keys: list[str], create: bool = False) -> dict[str, Any] | None:
    for key in keys:
        child = data.get(key)
        if not isinstance(child, dict):
            if not create:
                return None
            child = data[key] = {}
        data = child
    return data


# ----------------------------------------------------------------------------
# Overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], typed value via ``yaml.safe_load``)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form key.path=value (e.g. optim.lr=0.02)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML") from exc
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """``data`` with each ``a.b=value`` set (an old key name is set under its new one, with a warning)."""
    result = _deep_merge({}, data)
    for text in overrides:
        keys, value = parse_override(text)
        new = RENAMED_KEYS.get(".".join(keys))
        if new is not None:
            warnings.warn(_renamed_message(f"--set {text}", ".".join(keys)), MclnetDeprecationWarning, stacklevel=2)
            keys = new.split(".")
        node = result
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[keys[-1]] = value
    return result


# ----------------------------------------------------------------------------
# Building the typed config


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(tp: Any) -> str:
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    return str(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:  # a closed choice: a string, checked against CHOICES by the caller
        return _coerce(value, str, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is tuple:
        (item,) = typing.get_args(tp)[:1]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            raise ConfigError(
                f"{where}: expected a string, got the boolean {value!r} "
                "(YAML reads on/off/yes/no as booleans; quote the value)"
            )
        if isinstance(value, (int, float)):
            return str(value)
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _suggest_key(cls: type, key: str, prefix: str) -> str:
    """`` (did you mean 'train.epochs'?)`` for an unknown ``prefix + key``: always the full dotted key.

    A key of this level spelled nearly right (``train.epoch``), else a key one or more levels
    down whose last part is ``key`` or close to it (``epochs`` -> ``train.epochs``); several
    equally good ones are all named.
    """
    here: list[str] = []
    below: dict[str, list[str]] = {}  # last part -> full dotted keys under this level

    def walk(tp: type, at: str, depth: int) -> None:
        hints = typing.get_type_hints(tp)
        for f in dataclasses.fields(tp):
            inner = hints[f.name]
            if depth == 0:
                here.append(f.name)
            else:
                below.setdefault(f.name, []).append(f"{at}{f.name}")
            if dataclasses.is_dataclass(inner):
                walk(inner, f"{at}{f.name}.", depth + 1)

    walk(cls, prefix, 0)
    close = difflib.get_close_matches(key, here, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {prefix + close[0]!r}?)"
    names = [key] if key in below else difflib.get_close_matches(key, list(below), n=1, cutoff=0.8)
    found = [full for name in names for full in below[name]]
    return f" (did you mean {' or '.join(repr(k) for k in found)}?)" if found else ""


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of options, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(
                f"unknown config key {where!r}{_suggest_key(cls, str(key), prefix)}; "
                f"valid keys{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(fields)}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{where}.")
        else:
            kwargs[key] = _coerce(value, tp, where)
            allowed = CHOICES.get(where)
            if allowed and kwargs[key] not in allowed:
                raise ConfigError(
                    f"{where}: {kwargs[key]!r} is not allowed{_suggest(kwargs[key], allowed)}; "
                    f"choose from: {', '.join(allowed)}"
                )
    return cls(**kwargs)


MAX_IMAGE_SIDE = 4096  # pixels; input sizes above this are a typo, not a model


def _validate(cfg: Config) -> None:
    checks = [
        (0 < cfg.data.height <= MAX_IMAGE_SIDE and 0 < cfg.data.width <= MAX_IMAGE_SIDE,
         f"data.height and data.width must be between 1 and {MAX_IMAGE_SIDE}"),
        (cfg.data.workers >= 0, "data.workers must be 0 or more"),
        (cfg.data.num_ids >= 2, "data.num_ids must be at least 2 (contrastive losses need negatives)"),
        (cfg.data.num_instances >= 1, "data.num_instances must be at least 1"),
        (1 <= cfg.data.regdb_split <= 10, "data.regdb_split must be between 1 and 10"),
        (1 <= cfg.model.specific_stages <= 4, "model.specific_stages must be between 1 and 4"),
        (cfg.model.last_stride in (1, 2), "model.last_stride must be 1 or 2"),
        (8 <= cfg.model.base_channels <= 256, f"model.base_channels must be between 8 and 256, got {cfg.model.base_channels!r}"),
        (cfg.eval.shots in (1, 10), "eval.shots must be 1 or 10"),
        (1 <= cfg.eval.trials <= 10, "eval.trials must be between 1 and 10"),
        (cfg.train.epochs >= 1, "train.epochs must be at least 1"),
        (0 < cfg.optim.lr < math.inf and 0 < cfg.optim.head_lr < math.inf,
         "optim.lr and optim.head_lr must be positive and finite"),
        (0 <= cfg.loss.hks_smoothing < 0.01, "loss.hks_smoothing must be at least 0 and below 0.01"),
        (cfg.loss.mmd_gate is None or 0 < cfg.loss.mmd_gate < math.inf,
         f"loss.mmd_gate must be null or a positive finite number, got {cfg.loss.mmd_gate!r}"),
        (cfg.loss.mmd_ramp is None or 0 < cfg.loss.mmd_ramp < math.inf,
         f"loss.mmd_ramp must be null or a positive finite number, got {cfg.loss.mmd_ramp!r}"),
        (cfg.loss.mmd_ramp is None or cfg.loss.weights.id > 0 or cfg.loss.weights.mmd == 0,
         "loss.mmd_ramp scales MMD by the identity loss: it needs loss.weights.id > 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Typed, validated :class:`Config` from a nested dict (missing keys take defaults).

    Renamed keys are read under their new names without a message: this is how the
    configs saved in older checkpoints and run directories load.
    """
    cfg = _build(Config, upgrade_keys(data)[0], "")
    _validate(cfg)
    return cfg


def load_config(preset: str | Path = "base", overrides: Iterable[str] = ()) -> Config:
    """Resolve a preset (name or path) plus ``a.b=value`` overrides into a :class:`Config`."""
    return config_from_dict(apply_overrides(load_preset_dict(preset), overrides))
