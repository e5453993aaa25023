"""Export the retrieval path of one spectrum to ONNX or TorchScript, checked against PyTorch.

The exported graph is what ``mclnet index``/``query`` run for one modality: that
stream's own stages, the shared stages, pooling, the BNNeck batch norm and the
L2 normalisation. Input ``images`` is a float32 ``[batch, 3, H, W]`` tensor
(dynamic batch; H x W from the checkpoint's config), RGB in 0..1 normalised with
the ImageNet mean/std; the output (named after the feature, ``bn``) is
``[batch, D]``, unit length, so inner products are the cosine scores of the
index. Every export is checked: max |difference| to PyTorch on random inputs of
two batch sizes must stay under :data:`TOLERANCE`, else :class:`ExportError`
and no file is left. A JSON sidecar (``FILE.json``) says how to feed the model.
Nothing here prints. ONNX needs the ``export`` extra (onnx, onnxruntime).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mclnet_cli.atomic import atomic_write_text, storage_error
from mclnet_cli.types import Modality
from mclnet_cli.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mclnet_cli.errors import MclnetError

FORMATS = ("onnx", "torchscript")
FEATURE = "bn"  # the retrieval feature the index stores
INPUT_NAME = "images"
TOLERANCE = 1e-4
PARITY_BATCHES = (1, 3)  # checked batch sizes (neither is the traced one: the batch really is dynamic)
TRACE_BATCH = 2
OPSET = 18
SIDECAR_FORMAT = "mclnet-export/1"


class ExportError(MclnetError):
    """An export failed or does not match PyTorch."""


class RetrievalNet(torch.nn.Module):
    """One spectrum's retrieval path of an MCLNet as a plain ``images -> feature`` module."""

    def __init__(self, model: torch.nn.Module, modality: Modality | str, feature: str = FEATURE) -> None:
        super().__init__()
        self.model = model
        self.modality = Modality.parse(modality)
        self.feature = feature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images, self.modality, self.feature)


@dataclass
class ExportReport:
    """What :func:`export_model` wrote and how close it is to PyTorch."""

    path: Path
    sidecar: Path
    format: str
    modality: str
    feature: str
    input_size: tuple[int, int]  # height, width
    dimension: int
    max_abs_diff: float
    tolerance: float
    batch_sizes: tuple[int, ...]
    checkpoint: str
    fingerprint: str
    seconds: float
    notices: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sidecar": str(self.sidecar),
            "format": self.format,
            "modality": self.modality,
            "feature": self.feature,
            "input_size": list(self.input_size),
            "dimension": self.dimension,
            "max_abs_diff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "batch_sizes": list(self.batch_sizes),
            "checkpoint": self.checkpoint,
            "fingerprint": self.fingerprint,
            "seconds": round(self.seconds, 3),
            "notices": list(self.notices),
        }


def sidecar_path(path: Path | str) -> Path:
    """Where the JSON description of an exported file lives: ``FILE.json`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def random_inputs(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Images as the pipeline makes them: uniform 0..1 pixels, ImageNet-normalised."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand((batch, 3, height, width), generator=generator)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def _export_onnx(net: RetrievalNet, example: torch.Tensor, target: Path) -> None:
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise ExportError("ONNX export needs the 'export' extra: pip install 'mclnet[export]'") from None
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the exporter reports progress on stdout; keep --json clean
            program = _onnx_program(net, example, batch)
    except Exception as exc:  # the exporter raises many types
        raise ExportError(f"ONNX export failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from exc
    program.save(str(target), external_data=False)


def _onnx_program(net: RetrievalNet, example: torch.Tensor, batch: Any) -> Any:
    return torch.onnx.export(
        net,
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[net.feature],
        dynamic_shapes={"images": {0: batch}},
        opset_version=OPSET,
        external_data=False,
        verbose=False,
    )


def _export_torchscript(net: RetrievalNet, example: torch.Tensor, target: Path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        _trace_and_save(net, example, target)


def _trace_and_save(net: RetrievalNet, example: torch.Tensor, target: Path) -> None:
    with torch.no_grad():
        traced = torch.jit.trace(net, (example,), check_trace=False)
    traced = torch.jit.freeze(traced.eval()) if hasattr(torch.jit, "freeze") else traced
    torch.jit.save(traced, str(target))


def run_exported(path: Path | str, fmt: str, images: np.ndarray) -> np.ndarray:
    """Run an exported file on ``images`` [B, 3, H, W] float32 (CPU) and return its features."""
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportError("checking an ONNX export needs onnxruntime: pip install 'mclnet[export]'") from None
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: images.astype(np.float32)})[0]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            return module(torch.from_numpy(images)).numpy()


def parity(net: RetrievalNet, path: Path, fmt: str, height: int, width: int, seed: int = 0) -> float:
    """Max |exported - PyTorch| over random batches of :data:`PARITY_BATCHES` images."""
    worst = 0.0
    for i, batch in enumerate(PARITY_BATCHES):
        images = random_inputs(batch, height, width, seed + i)
        with torch.no_grad():
            expected = net(images).numpy()
        got = run_exported(path, fmt, images.numpy())
        if got.shape != expected.shape:
            raise ExportError(f"the {fmt} export returns shape {tuple(got.shape)} for batch {batch}, expected {expected.shape}")
        worst = max(worst, float(np.max(np.abs(got - expected))))
    return worst


def export_model(
    checkpoint: Path | str,
    out: Path | str,
    *,
    fmt: str,
    modality: Modality | str,
    tolerance: float = TOLERANCE,
) -> ExportReport:
    """Export ``checkpoint``'s ``modality`` retrieval path to ``out`` (``fmt``: onnx or torchscript), checked.

    The file and its sidecar appear only when the parity check passes (written
    beside ``out`` under a temporary name, then renamed).
    """
    from mclnet_cli.engine.checkpoint import load_model

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose from: {', '.join(FORMATS)}")
    spectrum = Modality.parse(modality)
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"{out} is a folder; give a file name such as model.{'onnx' if fmt == 'onnx' else 'pt'}")
    started = time.perf_counter()
    loaded = load_model(checkpoint, "cpu")
    data = loaded.config.data
    height, width = int(data.height), int(data.width)
    net = RetrievalNet(loaded.model, spectrum).eval()
    example = random_inputs(TRACE_BATCH, height, width, seed=1234)
    diff = _write_checked(net, example, out, fmt, height, width, tolerance)
    dimension = int(getattr(loaded.model, "feature_dim", 0))
    sidecar = sidecar_path(out)
    description = _describe(checkpoint, out, fmt, spectrum, loaded, dimension, diff, tolerance)
    atomic_write_text(sidecar, json.dumps(description, indent=2) + "\n")
    return ExportReport(
        path=out,
        sidecar=sidecar,
        format=fmt,
        modality=spectrum.value,
        feature=FEATURE,
        input_size=(height, width),
        dimension=dimension,
        max_abs_diff=diff,
        tolerance=tolerance,
        batch_sizes=PARITY_BATCHES,
        checkpoint=str(Path(checkpoint).resolve()),
        fingerprint=loaded.fingerprint,
        seconds=time.perf_counter() - started,
    )


def _write_checked(
    net: RetrievalNet, example: torch.Tensor, out: Path, fmt: str, height: int, width: int, tolerance: float
) -> float:
    """Export to a temp file beside ``out``, check parity, rename into place; returns the max difference.

    Nothing is left behind on failure; a full disk names ``out``, never the temp.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if fmt == "onnx":
            _export_onnx(net, example, tmp)
        else:
            _export_torchscript(net, example, tmp)
        diff = parity(net, tmp, fmt, height, width)
        if not diff <= tolerance:
            raise ExportError(
                f"the {fmt} export differs from PyTorch by up to {diff:.3g} (tolerance {tolerance:g}); nothing written"
            )
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        translated = storage_error(exc, out)  # a full disk names the user's file, never the temp
        if translated is not None:
            raise translated from exc
        raise
    return diff


def _describe(
    checkpoint: Path | str, out: Path, fmt: str, spectrum: Modality, loaded: Any, dimension: int, diff: float,
    tolerance: float,
) -> dict[str, Any]:
    """The sidecar JSON: how to feed the exported model and what it returns."""
    data = loaded.config.data
    height, width = int(data.height), int(data.width)
    return {
        "format": SIDECAR_FORMAT,
        "file": out.name,
        "model_format": fmt,
        "modality": spectrum.value,
        "feature": FEATURE,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, height, width],
            "dtype": "float32",
            "layout": "NCHW, RGB",
            "size": [height, width],
            "resize": data.resize,
            "scale": "pixels / 255",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "output": {"name": FEATURE if fmt == "onnx" else "output 0", "shape": ["batch", dimension], "l2_normalised": True},
        "checkpoint": {"path": str(Path(checkpoint).resolve()), "fingerprint": loaded.fingerprint},
        "parity": {"max_abs_diff": diff, "tolerance": tolerance, "batch_sizes": list(PARITY_BATCHES)},
        "opset": OPSET if fmt == "onnx" else None,
        "mclnet_version": _version(),
    }


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _version() -> str:
    from mclnet_cli import __version__

    return __version__
