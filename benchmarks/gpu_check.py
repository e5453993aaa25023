"""GPU readiness check: the figures the ResNet-50 recipe needs, in one run, written as one JSON.

1. Training-step throughput of the full model (ResNet-50, 288x144, P=4 x K=4,
   the whole objective) in fp32, AMP, channels_last and AMP + channels_last
   (``benchmarks/bench_train.py``).
2. One epoch of the ResNet-50 preset through the real loader on a generated
   SYSU-size synthetic set, with the prepared uint8 cache and without it
   (decoding the files): images/s from the run's metrics.jsonl, and whether the
   loader kept up (data wait share of the epoch).
3. Extraction throughput of ``mclnet index`` with the trained checkpoint.

Usage on a CUDA machine (about 8 minutes on one H200-class GPU)::

    bash benchmarks/gpu_check.sh                 # writes gpu_check.json
    python benchmarks/gpu_check.py --smoke       # CPU: every step at toy size, to check the script

The JSON goes to ``--out`` (default gpu_check.json); copy its figures into
docs/benchmarks.md with the command and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, text=True, capture_output=True, **kwargs)


def _mclnet(*args: str) -> list[str]:
    return [sys.executable, "-m", "mclnet_cli", "--quiet", *args]


def step_throughput(device: str, steps: int) -> list[dict]:
    out = _run([sys.executable, str(HERE / "bench_train.py"), "--device", device, "--only", "full",
                "--steps", str(steps), "--warmup", "3", "--json"])
    return json.loads(out.stdout)["results"]


def one_epoch(work: Path, device: str, ids: int, per_camera: int, size: str, steps: int | None, workers: int) -> dict:
    """Draw a synthetic set, prepare it with a cache of the training size, train one epoch with and without the cache."""
    height, width = size.split("x")
    started = time.perf_counter()
    prep = _run(_mclnet("prepare", "synthetic", str(work / "raw"), "--out", str(work / "data"), "--ids", str(ids),
                        "--images-per-camera", str(per_camera), "--cache", "--cache-size", size, "--json"))
    report: dict = {"prepare_s": round(time.perf_counter() - started, 1), "prepare": json.loads(prep.stdout)}
    for label, use_cache in (("cached", True), ("decoding", False)):
        run = work / f"run-{label}"
        overrides = [
            "model.pretrained=none", "train.epochs=1", f"data.height={height}", f"data.width={width}",
            f"data.workers={workers}", f"data.use_cache={str(use_cache).lower()}", "data.dataset=synthetic",
        ]
        if steps:
            overrides.append(f"train.steps_per_epoch={steps}")
        sets = [x for o in overrides for x in ("--set", o)]
        started = time.perf_counter()
        _run(_mclnet("train", "--preset", "base", "--data", str(work / "data"), "--out", str(run), "--device", device, *sets))
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        epoch = next(r for r in reversed(rows) if "images_per_s" in r)
        report[label] = {
            "wall_s": round(time.perf_counter() - started, 1),
            "images_per_s": epoch.get("images_per_s"),
            "epoch_time_s": epoch.get("epoch_time_s"),
            "data_time_s": epoch.get("data_time_s"),
            "data_wait_share": round(epoch["data_time_s"] / epoch["epoch_time_s"], 3)
            if epoch.get("epoch_time_s") else None,
        }
    return report


def extraction(work: Path, device: str) -> dict:
    started = time.perf_counter()
    out = _run(_mclnet("index", str(work / "raw" / "cam1"), "--checkpoint", str(work / "run-cached" / "last.pt"),
                       "--modality", "visible", "--out", str(work / "index"), "--device", device, "--json"))
    report = json.loads(out.stdout)
    return {"images": report.get("added"), "images_per_s": report.get("images_per_s"),
            "wall_s": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="loader workers")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on CPU: checks the script, not the machine")
    args = parser.parse_args(argv)
    if args.smoke:
        device, ids, per_camera, size, steps, step_count, workers = "cpu", 12, 2, "64x32", 2, 1, 0
    else:
        # SYSU-MM01's training set is 395 ids, 22,258 visible + 11,909 infrared images
        device, ids, per_camera, size, steps, step_count, workers = args.device, 494, 14, "288x144", None, 30, args.workers
    import torch

    result: dict = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "smoke": args.smoke,
    }
    with tempfile.TemporaryDirectory(prefix="mclnet-gpu-check-") as tmp:
        work = Path(tmp)
        result["train_step"] = step_throughput(device, step_count) if not args.smoke else []
        result["epoch"] = one_epoch(work, device, ids, per_camera, size, steps, workers)
        result["extraction"] = extraction(work, device)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
