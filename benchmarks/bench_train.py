"""Training throughput (images/s) of one MCLNet optimisation step, data loading excluded.

Each measured step is what ``fit`` does per batch: forward of P*K visible + P*K
infrared images, the full weighted objective, backward, SGD step. Inputs are
random tensors, so the number is the model + loss + optimiser ceiling; the data
pipeline is measured separately by the data benchmarks.

    python benchmarks/bench_train.py                      # tiny and full on CPU
    python benchmarks/bench_train.py --device cuda        # + AMP / channels_last variants
    python benchmarks/bench_train.py --only tiny --steps 20 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from datetime import datetime, timezone

import torch

from mclnet_cli.config import load_config
from mclnet_cli.engine.optim import build_optimizer
from mclnet_cli.engine.train import _float_output
from mclnet_cli.losses import Criterion
from mclnet_cli.model import build_model

SETTINGS = {
    # name: (preset, overrides)
    "tiny": ("tiny", ["data.num_ids=4", "data.num_instances=4"]),
    "full": ("base", ["model.pretrained=none", "data.num_ids=4", "data.num_instances=4"]),
}


def bench(name: str, device: torch.device, *, amp: bool, channels_last: bool, steps: int, warmup: int, classes: int,
          extra: tuple[str, ...] = ()) -> dict:
    """Mean images/s over ``steps`` steps after ``warmup`` steps; ``extra``: further ``--set`` overrides."""
    preset, overrides = SETTINGS[name]
    cfg = load_config(preset, [*overrides, *extra])
    model = build_model(cfg.model, classes).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = Criterion.from_config(cfg.loss)
    optimizer = build_optimizer(model, cfg.optim)
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    per_modality = cfg.data.num_ids * cfg.data.num_instances
    shape = (per_modality, 3, cfg.data.height, cfg.data.width)
    gen = torch.Generator().manual_seed(0)
    visible = torch.randn(shape, generator=gen).to(device)
    infrared = torch.randn(shape, generator=gen).to(device)
    if channels_last:
        visible = visible.contiguous(memory_format=torch.channels_last)
        infrared = infrared.contiguous(memory_format=torch.channels_last)
    labels = torch.arange(cfg.data.num_ids).repeat_interleave(cfg.data.num_instances).to(device)
    all_labels = torch.cat([labels, labels])
    modalities = torch.cat([torch.zeros_like(labels), torch.ones_like(labels)])

    def step() -> None:
        ctx = torch.autocast(device_type="cuda", dtype=dtype) if amp else contextlib.nullcontext()
        with ctx:
            output = model(visible=visible, infrared=infrared)
        loss = criterion(_float_output(output), all_labels, modalities)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    elapsed = time.perf_counter() - start
    images = steps * 2 * per_modality
    return {
        "model": name,
        "arch": cfg.model.arch,
        "input": f"{cfg.data.height}x{cfg.data.width}",
        "batch": 2 * per_modality,
        "device": str(device),
        "amp": str(dtype).replace("torch.", "") if amp else "fp32",
        "channels_last": channels_last,
        "steps": steps,
        "s_per_step": elapsed / steps,
        "images_per_s": images / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--only", choices=sorted(SETTINGS), action="append", help="model setting(s) to run")
    parser.add_argument("--steps", type=int, default=None, help="measured steps (default: tiny 10, full 3)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--classes", type=int, default=395, help="classifier size (SYSU: 395)")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override on top of the setting, e.g. --set model.base_channels=32")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variants = [(False, False)]
    if device.type == "cuda":
        variants = [(False, False), (True, False), (False, True), (True, True)]
    rows = []
    for name in args.only or ["tiny", "full"]:
        steps = args.steps or (10 if name == "tiny" else 3)
        for amp, channels_last in variants:
            rows.append(bench(name, device, amp=amp, channels_last=channels_last, steps=steps, warmup=args.warmup,
                              classes=args.classes, extra=tuple(args.overrides)))
            rows[-1]["overrides"] = list(args.overrides)
            if not args.json:
                r = rows[-1]
                print(f"{r['model']:5s} {r['arch']:9s} {r['input']:7s} batch {r['batch']:3d} {r['device']:5s} "
                      f"{r['amp']:5s} cl={int(r['channels_last'])}  {r['s_per_step']:.3f} s/step  "
                      f"{r['images_per_s']:.1f} img/s", flush=True)
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
