#!/usr/bin/env bash
# The GPU check (`make gpu-check`): runs experiments/gpu_check.py (its docstring says what it does) with what it
# needs importable. On a CUDA machine without network, the wheels that `make gpu-wheels` put in .whl/ (Hydra,
# OmegaConf, ...) are installed into a temporary folder, never into the machine's environment, and never torch.
# Usage: bash experiments/gpu_check.sh [--budget SECONDS] [--out DIR] [--data DIR] [--tiny] [--skip STEPS]
#        bash experiments/gpu_check.sh --exec SCRIPT.py [ARGS]   # any script of the project with the same set-up, e.g.
#            --exec experiments/paper/reproduce.py --table denoise9 --mode full --data .gpu_data --out "$OUT" ...
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c 'import hydra, omegaconf' 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "error: $PYTHON cannot import hydra and there is no .whl/ folder; run 'make gpu-wheels' where pip reaches" \
             "the registry and carry .whl/ (and .gpu_data/) to this machine, or 'make install'." >&2
        exit 2
    fi
    SITE=$(mktemp -d /tmp/dip_gpu_site.XXXXXX)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl || exit 2
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-}" = "--exec" ]; then
    shift
    exec "$PYTHON" "$@"
fi
exec "$PYTHON" experiments/gpu_check.py "$@"
