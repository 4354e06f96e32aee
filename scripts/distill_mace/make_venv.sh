#!/usr/bin/env bash
# Create the SevenNet-0 teacher environment in <repo>/.venv-sevenn (gitignored: .venv*/).
# SevenNet needs e3nn >= 0.5 while the project's MACE stack pins e3nn 0.4.4, so the teacher
# lives in its own virtual environment. torch is installed FIRST so that resolving sevenn never
# pulls another build: on this project's machines torch==2.13.0 resolves to the local CPU
# wheel; elsewhere plain PyPI gives the CUDA build, so set
# TORCH_INDEX=https://download.pytorch.org/whl/cpu for the CPU one.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-$REPO/.venv-sevenn}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3

"$PY" -m venv "$VENV"
"$VENV/bin/pip" install --upgrade pip wheel
"$VENV/bin/pip" install "torch==2.13.0" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
"$VENV/bin/pip" install "sevenn==${SEVENN_VERSION:-0.13.0}" "ase>=3.23"
"$VENV/bin/python" - <<'PY'
import ase, e3nn, torch, sevenn
print("torch", torch.__version__, "| e3nn", e3nn.__version__, "| ase", ase.__version__,
      "| sevenn", sevenn.__version__)
from sevenn.calculator import SevenNetCalculator
calc = SevenNetCalculator("7net-0", device="cpu")  # weights ship inside the wheel (offline)
print("SevenNet-0 loaded offline: cutoff", getattr(calc, "cutoff", "?"))
PY
