#!/usr/bin/env bash
# Installs agefuse into ./.venv on a machine with nothing but Python 3.10+.
# torch/torchvision are installed first at the versions this machine serves locally, so the
# package's own torch range is already satisfied and no second torch is pulled.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -c "import torch, dlib, cv2, albumentations, agefuse.regions; print('agefuse installed: torch', torch.__version__, '| dlib', dlib.__version__, '| opencv', cv2.__version__)"
