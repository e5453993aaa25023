#!/usr/bin/env bash
# GPU readiness check (see benchmarks/gpu_check.py): run from the repository root on a CUDA machine
# with the project installed; writes gpu_check.json. About 8 minutes on one H200-class GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run on a GPU machine (or gpu_check.py --smoke on CPU)')"
timeout 900 python benchmarks/gpu_check.py --device cuda --out "${1:-gpu_check.json}"
