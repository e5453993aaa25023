"""`mclnet train` images/s on an idle machine and under extra CPU load, per thread setting.

Each cell is one real `mclnet train --preset tiny --json` run on a small synthetic
set (the loader included, the first epoch dropped as warm-up); "load N" starts N
busy Python processes first (each keeps one core's run queue full), so the
1-minute load average approaches N plus the run itself.

    python benchmarks/bench_load.py                              # idle and load 7; default, 1 and 2 threads
    python benchmarks/bench_load.py --loads 0 7 --threads default 1 --json out.json
    python benchmarks/bench_load.py --threads 2 --env OMP_WAIT_POLICY=PASSIVE --set data.workers=2

The thread setting "default" is what a user gets without --threads (the rule in
mclnet_cli/cli/options.py: 1 thread when the machine is already busy, else one per core).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path


def _spin() -> None:
    while True:
        pass


def train_command(data: Path, out: Path, threads: str, epochs: int, steps: int, sets: list[str] | None = None) -> list[str]:
    """The `mclnet train` command of one cell: the tiny preset for ``epochs`` x ``steps``, plus ``sets``."""
    cmd = [sys.executable, "-m", "mclnet_cli", "train", "--preset", "tiny", "--data", str(data), "--out", str(out),
           "--device", "cpu", "--json", "--quiet", "--set", f"train.epochs={epochs}",
           "--set", f"train.steps_per_epoch={steps}", "--set", "optim.milestones=[100]"]
    if threads != "default":
        cmd += ["--threads", threads]
    for item in sets or []:
        cmd += ["--set", item]
    return cmd


def train_env(extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without thread settings (the cell chooses them), plus ``extra_env``."""
    env = {k: v for k, v in os.environ.items() if k not in ("MCLNET_THREADS", "OMP_NUM_THREADS")}
    env.update(extra_env or {})
    return env


def parse_pairs(items: list[str], what: str) -> dict[str, str]:
    """``KEY=VALUE`` strings -> dict; a ValueError naming the bad item otherwise."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {item!r}: expected KEY=VALUE")
        pairs[key] = value
    return pairs


def _train(data: Path, out: Path, threads: str, epochs: int, steps: int,
           extra_env: dict[str, str] | None = None, sets: list[str] | None = None) -> dict:
    cmd = train_command(data, out, threads, epochs, steps, sets)
    env = train_env(extra_env)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    summary = json.loads(proc.stdout)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    epochs_rows = [r for r in rows if r.get("kind") == "epoch"]
    rates = [r["images_per_s"] for r in epochs_rows[1:]] or [summary.get("images_per_s", 0.0)]
    environment = json.loads((out / "environment.json").read_text())
    return {"images_per_s": round(sum(rates) / len(rates), 1), "time_s": round(summary.get("time_s", 0.0), 1),
            "threads_used": environment.get("torch_threads")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, nargs="+", default=[0, 7])
    parser.add_argument("--threads", nargs="+", default=["default", "1", "2"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--settle", type=float, default=20.0, help="seconds to let the load average rise")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment of every training run, e.g. OMP_WAIT_POLICY=PASSIVE")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="config override of every training run, e.g. data.workers=2")
    args = parser.parse_args()
    try:
        extra_env = parse_pairs(args.env, "--env")
        parse_pairs(args.sets, "--set")
    except ValueError as error:
        parser.error(str(error))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        subprocess.run([sys.executable, "-m", "mclnet_cli", "--quiet", "prepare", "synthetic", str(Path(tmp) / "raw"),
                        "--ids", "12", "--out", str(data)], check=True, capture_output=True)
        for load in args.loads:
            spinners = [mp.Process(target=_spin, daemon=True) for _ in range(load)]
            for p in spinners:
                p.start()
            try:
                if load:
                    time.sleep(args.settle)
                for threads in args.threads:
                    before = os.getloadavg()[0]
                    cell = _train(data, Path(tmp) / f"run-{load}-{threads}", threads, args.epochs, args.steps,
                                  extra_env, args.sets)
                    rows.append({"load": load, "threads": threads, "env": extra_env, "sets": args.sets,
                                 "loadavg_1min": round(before, 1), **cell})
                    print(json.dumps(rows[-1]), flush=True)
            finally:
                for p in spinners:
                    p.terminate()
                for p in spinners:
                    p.join()
            time.sleep(args.settle if load else 0)
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
              "cores": os.cpu_count(), "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
