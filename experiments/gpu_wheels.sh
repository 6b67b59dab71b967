#!/usr/bin/env bash
# `make gpu-wheels`: run here, where pip reaches the registry. Gathers what `make gpu-check` needs on a CUDA machine
# that has torch, pytorch-lightning, torchmetrics, numpy, pillow, scikit-image, matplotlib, rich, joblib, PyYAML and
# pytest but no network:
#   .whl/       the pure-Python wheels that importing dip_lightning and its Hydra plugins needs beyond those, at the
#               versions installed in .venv (what the tests here ran with); W&B stays out (the check logs nothing)
#   .gpu_data/  the benchmark images the check's paper step reads (denoise9, set5), copied from DATA
# Both folders are git-ignored: name them in the device tool's `carry`. WHL=... GPU_DATA=... write elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DATA=${DATA:-../shared/data}
WHL=${WHL:-.whl}
GPU_DATA=${GPU_DATA:-.gpu_data}
PACKAGES="hydra-core omegaconf antlr4-python3-runtime hydra-joblib-launcher"

pins=()
for pkg in $PACKAGES; do
    pins+=("$pkg==$("$PYTHON" -c "import importlib.metadata as m; print(m.version('$pkg'))")")
done
rm -rf "$WHL" && mkdir -p "$WHL"
# pip wheel takes the registry's wheel where there is one and builds one from the source archive where there is
# none (antlr4-python3-runtime 4.9.3); --no-deps: the GPU machine's image has the rest
"$PYTHON" -m pip wheel -q --no-deps --wheel-dir "$WHL" "${pins[@]}"

rm -rf "$GPU_DATA" && mkdir -p "$GPU_DATA"
for folder in denoise9 set5; do
    if [ -d "$DATA/$folder" ]; then
        cp -r "$DATA/$folder" "$GPU_DATA/"
    else
        echo "warning: $DATA/$folder not found: the check's paper step will skip its table (set DATA=...)" >&2
    fi
done
du -sh "$WHL" "$GPU_DATA"
ls "$WHL"
