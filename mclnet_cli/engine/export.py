"""Export the retrieval path of one spectrum to ONNX or TorchScript, checked against PyTorch.

The exported graph is what ``mclnet index``/``query`` run for one modality: that
stream's own stages, the shared stages, pooling, the BNNeck batch norm and the
L2 normalisation. Input ``images`` is a float32 ``[batch, 3, H, W]`` tensor
(dynamic batch), RGB in 0..1, resized and normalised as the checkpoint's
preprocessing record says (``LoadedModel.preprocess``: H x W, filter, mean/std,
ImageNet's by default); the output (named after the feature, ``bn``) is
``[batch, D]``, unit length, so inner products are the cosine scores of the
index. Every export is checked on what retrieval uses, the direction of each
feature: on random images (batches of :data:`PARITY_BATCHES` as probes, one of
:data:`RANK_GALLERY` as a gallery) the cosine between the exported and the
PyTorch L2-normalised features must be at least :data:`MIN_COSINE` everywhere,
and every probe's top-:data:`TOP_K` neighbours in the gallery must be the same
(PyTorch scores within :data:`RANK_TIE` of each other are a tie, in any order),
else :class:`ExportError` and no file is left. The max |difference| is reported,
as information. A model whose own outputs are not finite is refused before
anything is exported. A JSON sidecar (``FILE.json``) says how to feed the model;
the two files are written as one unit (both or neither), and an existing output
is replaced only with ``force`` (the checkpoint itself never). Nothing here prints.
ONNX needs the ``export`` extra (onnx, onnxruntime).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mclnet_cli.atomic import (
    commit_together, named_temp, readdress, refuse_overwrite, settle_temp, storage_error, write_temp,
)  # fmt: skip
from mclnet_cli.types import Modality
from mclnet_cli.data.preprocess import Preprocess
from mclnet_cli.errors import MclnetError

FORMATS = ("onnx", "torchscript")
FEATURE = "bn"  # the retrieval feature the index stores
INPUT_NAME = "images"
MIN_COSINE = 0.9999  # least cosine between an exported and the PyTorch feature (both L2-normalised)
PARITY_BATCHES = (1, 3)  # probe batch sizes (neither is the traced one: the batch really is dynamic)
RANK_GALLERY = 8  # gallery batch of the ranking check (a third batch size)
TOP_K = 5  # neighbours per probe that must be the same
RANK_TIE = 1e-5  # PyTorch scores closer than this are a tie: their order is float noise
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


@dataclass(frozen=True)
class Parity:
    """How an export compares with PyTorch on the same random images."""

    min_cosine: float  # least cosine between exported and PyTorch features, both L2-normalised
    max_abs_diff: float  # information only: retrieval uses the direction
    probes: int
    gallery: int
    top_k: int
    probes_reordered: int  # probes whose top-k neighbours differ (beyond ties)
    min_cosine_required: float = MIN_COSINE

    @property
    def passed(self) -> bool:
        return self.min_cosine >= self.min_cosine_required and self.probes_reordered == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "min_cosine": self.min_cosine,
            "min_cosine_required": self.min_cosine_required,
            "max_abs_diff": self.max_abs_diff,
            "batch_sizes": list(PARITY_BATCHES),
            "ranking": {
                "probes": self.probes, "gallery": self.gallery, "top_k": self.top_k,
                "same_neighbours": self.probes_reordered == 0, "probes_reordered": self.probes_reordered,
                "tie": RANK_TIE,
            },
        }


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
    parity: Parity
    batch_sizes: tuple[int, ...]
    checkpoint: str
    fingerprint: str
    seconds: float
    notices: list[str] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        return self.parity.max_abs_diff

    @property
    def min_cosine(self) -> float:
        return self.parity.min_cosine

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sidecar": str(self.sidecar),
            "format": self.format,
            "modality": self.modality,
            "feature": self.feature,
            "input_size": list(self.input_size),
            "dimension": self.dimension,
            **self.parity.to_json(),
            "checkpoint": self.checkpoint,
            "fingerprint": self.fingerprint,
            "seconds": round(self.seconds, 3),
            "notices": list(self.notices),
        }


def sidecar_path(path: Path | str) -> Path:
    """Where the JSON description of an exported file lives: ``FILE.json`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def random_inputs(batch: int, preprocess: Preprocess, seed: int) -> torch.Tensor:
    """Images as the pipeline makes them: uniform 0..1 pixels at the record's size, normalised with its mean/std."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand((batch, 3, preprocess.height, preprocess.width), generator=generator)
    mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std).view(1, 3, 1, 1)
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


def _export_torchscript(net: RetrievalNet, example: torch.Tensor) -> bytes:
    """The traced, frozen TorchScript file's bytes (written to the disk by the caller)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return _trace_and_save(net, example)


def _trace_and_save(net: RetrievalNet, example: torch.Tensor) -> bytes:
    with torch.no_grad():
        traced = torch.jit.trace(net, (example,), check_trace=False)
    traced = torch.jit.freeze(traced.eval()) if hasattr(torch.jit, "freeze") else traced
    # Into memory, never by file name: torch's C++ file writer aborts the whole process on a full
    # disk (exit 134, temp left behind); Python's write path below raises ENOSPC as an OSError.
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    return buffer.getvalue()


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


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def compare_features(
    expected_probes: np.ndarray,
    got_probes: np.ndarray,
    expected_gallery: np.ndarray,
    got_gallery: np.ndarray,
    *,
    top_k: int = TOP_K,
    tie: float = RANK_TIE,
    min_cosine: float = MIN_COSINE,
) -> Parity:
    """Exported (``got``) against PyTorch (``expected``) features of the same probe and gallery images.

    Cosines are of the L2-normalised rows. Each probe's exported top-``top_k`` list must name, rank
    by rank, gallery items whose PyTorch scores equal those of PyTorch's own list within ``tie``
    (identical lists, up to the order of tied items).
    """
    expected = np.concatenate([expected_probes, expected_gallery])
    got = np.concatenate([got_probes, got_gallery])
    cosines = np.sum(_unit(expected) * _unit(got), axis=1)
    reference = _unit(expected_probes) @ _unit(expected_gallery).T
    exported = _unit(got_probes) @ _unit(got_gallery).T
    k = min(top_k, reference.shape[1])
    want = np.argsort(-reference, axis=1, kind="stable")[:, :k]
    have = np.argsort(-exported, axis=1, kind="stable")[:, :k]
    gaps = np.abs(np.take_along_axis(reference, have, axis=1) - np.take_along_axis(reference, want, axis=1))
    return Parity(
        min_cosine=float(np.min(cosines)),
        max_abs_diff=float(np.max(np.abs(got.astype(np.float64) - expected))),
        probes=int(expected_probes.shape[0]),
        gallery=int(expected_gallery.shape[0]),
        top_k=k,
        probes_reordered=int(np.sum(np.any(gaps > tie, axis=1))),
        min_cosine_required=min_cosine,
    )


def parity(
    net: RetrievalNet, path: Path, fmt: str, preprocess: Preprocess, seed: int = 0, min_cosine: float = MIN_COSINE
) -> Parity:
    """The export at ``path`` against PyTorch on random probe batches (:data:`PARITY_BATCHES`) and a gallery batch.

    Raises :class:`~mclnet_cli.engine.extract.NonFiniteFeatures` when PyTorch's own features are not
    finite, :class:`ExportError` when only the export's are.
    """
    from mclnet_cli.engine.extract import require_finite

    expected: list[np.ndarray] = []
    got: list[np.ndarray] = []
    for i, batch in enumerate((*PARITY_BATCHES, RANK_GALLERY)):
        images = random_inputs(batch, preprocess, seed + i)
        with torch.no_grad():
            reference = net(images)
        require_finite(reference, net.model, images, net.modality)
        out = run_exported(path, fmt, images.numpy())
        if out.shape != tuple(reference.shape):
            raise ExportError(f"the {fmt} export returns shape {tuple(out.shape)} for batch {batch}, expected {tuple(reference.shape)}")
        if not np.isfinite(out).all():
            raise ExportError(f"the {fmt} export's outputs are not finite (NaN or infinite) where PyTorch's are; nothing written")
        expected.append(reference.numpy())
        got.append(out)
    probes = len(PARITY_BATCHES)
    return compare_features(
        np.concatenate(expected[:probes]), np.concatenate(got[:probes]), expected[probes], got[probes],
        min_cosine=min_cosine,
    )


def export_model(
    checkpoint: Path | str,
    out: Path | str,
    *,
    fmt: str,
    modality: Modality | str,
    min_cosine: float = MIN_COSINE,
    force: bool = False,
) -> ExportReport:
    """Export ``checkpoint``'s ``modality`` retrieval path to ``out`` (``fmt``: onnx or torchscript), checked.

    The file and its sidecar appear together, and only when the parity check passes (written
    beside ``out`` under temporary names, then renamed). An existing ``out`` (or sidecar) is
    replaced only with ``force``; ``out`` or its sidecar being the checkpoint is always refused.
    """
    from mclnet_cli.engine.checkpoint import load_model
    from mclnet_cli.engine.extract import NonFiniteFeatures, require_finite

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose from: {', '.join(FORMATS)}")
    spectrum = Modality.parse(modality)
    out = Path(out)
    sidecar = sidecar_path(out)
    for target in (out, sidecar):
        if target.is_dir():
            raise ExportError(f"{target} is a folder; give a file name such as model.{'onnx' if fmt == 'onnx' else 'pt'}")
    refuse_overwrite([out, sidecar], [checkpoint], force=force, error=ExportError)
    started = time.perf_counter()
    loaded = load_model(checkpoint, "cpu")
    preprocess = loaded.preprocess  # the checkpoint's record: what the graph takes and the sidecar states
    net = RetrievalNet(loaded.model, spectrum, preprocess.feature).eval()
    example = random_inputs(TRACE_BATCH, preprocess, seed=1234)
    dimension = int(getattr(loaded.model, "feature_dim", 0))
    try:
        with torch.no_grad():
            require_finite(net(example), loaded.model, example, spectrum)  # before any file: nothing to export
        result = _write_checked(
            net, example, out, fmt, preprocess, min_cosine,
            lambda checked: _describe(checkpoint, out, fmt, spectrum, loaded, dimension, checked),
            checkpoint=checkpoint, force=force,
        )
    except NonFiniteFeatures as exc:
        raise exc.at(checkpoint, "export, nothing written") from exc
    return ExportReport(
        path=out,
        sidecar=sidecar,
        format=fmt,
        modality=spectrum.value,
        feature=preprocess.feature,
        input_size=preprocess.size,
        dimension=dimension,
        parity=result,
        batch_sizes=PARITY_BATCHES,
        checkpoint=str(Path(checkpoint).resolve()),
        fingerprint=loaded.fingerprint,
        seconds=time.perf_counter() - started,
    )


def _failure(fmt: str, checked: Parity) -> str:
    """One line on why an export does not match PyTorch."""
    reasons = []
    if not checked.min_cosine >= checked.min_cosine_required:
        reasons.append(f"min cosine {checked.min_cosine:.6f} (needs >= {checked.min_cosine_required:g})")
    if checked.probes_reordered:
        reasons.append(
            f"the top-{checked.top_k} neighbours of {checked.probes_reordered} of {checked.probes} probes "
            f"among {checked.gallery} gallery images differ"
        )
    return (
        f"the {fmt} export differs from PyTorch: {' and '.join(reasons)} "
        f"(max |diff| {checked.max_abs_diff:.3g}); nothing written"
    )


def _write_checked(
    net: RetrievalNet,
    example: torch.Tensor,
    out: Path,
    fmt: str,
    preprocess: Preprocess,
    min_cosine: float,
    describe: Any,
    *,
    checkpoint: Path | str,
    force: bool,
) -> Parity:
    """Export to a temp file beside ``out``, check parity, write the sidecar's temp, rename both into place.

    Nothing is left behind on failure (neither file, nor a temp); a full disk names the user's
    file, never the temp.
    """
    sidecar = sidecar_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise (storage_error(exc, out) or exc) from exc
    tmp: Path | None = None
    tmp_sidecar: Path | None = None
    try:
        try:
            if fmt == "onnx":
                tmp = named_temp(out)  # the exporter writes by file name; errors name ``out``
                _export_onnx(net, example, tmp)
                settle_temp(tmp)
            else:
                data = _export_torchscript(net, example)
                tmp = write_temp(out, lambda handle: handle.write(data))  # full disk, permissions: name ``out``
            checked = parity(net, tmp, fmt, preprocess, min_cosine=min_cosine)
            if not checked.passed:
                raise ExportError(_failure(fmt, checked))
        except BaseException as exc:
            translated = readdress(exc, tmp, out)  # a full disk or a refused write names the user's file, never the temp
            if translated is not exc:
                raise translated from exc
            raise
        text = json.dumps(describe(checked), indent=2) + "\n"
        tmp_sidecar = write_temp(sidecar, lambda handle: handle.write(text.encode("utf-8")))  # names the sidecar
        refuse_overwrite([out, sidecar], [checkpoint], force=force, error=ExportError)  # again: minutes have passed
        commit_together([(tmp, out), (tmp_sidecar, sidecar)])
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if tmp_sidecar is not None:
            tmp_sidecar.unlink(missing_ok=True)
        raise
    return checked


def _describe(
    checkpoint: Path | str, out: Path, fmt: str, spectrum: Modality, loaded: Any, dimension: int, checked: Parity
) -> dict[str, Any]:
    """The sidecar JSON: how to feed the exported model (the checkpoint's preprocessing record) and what it returns."""
    preprocess = loaded.preprocess
    return {
        "format": SIDECAR_FORMAT,
        "file": out.name,
        "model_format": fmt,
        "modality": spectrum.value,
        "feature": preprocess.feature,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, preprocess.height, preprocess.width],
            "dtype": "float32",
            "layout": "NCHW, RGB",
            **preprocess.to_json(),  # size, resize, scale, mean, std
        },
        "output": {
            "name": preprocess.feature if fmt == "onnx" else "output 0", "shape": ["batch", dimension], "l2_normalised": True,
        },
        "checkpoint": {"path": str(Path(checkpoint).resolve()), "fingerprint": loaded.fingerprint},
        "parity": checked.to_json(),
        "opset": OPSET if fmt == "onnx" else None,
        "mclnet_version": _version(),
    }


def _version() -> str:
    from mclnet_cli import __version__

    return __version__
