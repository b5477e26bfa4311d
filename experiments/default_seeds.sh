#!/usr/bin/env bash
# The README's headline numbers: the default run over 3 seeds, and the self-teacher control
# (teacher = a frozen copy of the initial student), then mean +- std tables.
# Usage: bash experiments/default_seeds.sh [extra overrides...]   (about 8 minutes on 2 CPU cores)
set -euo pipefail
PY=${PY:-.venv/bin/python}
stamp=$(date +%Y%m%d-%H%M%S)
out=multirun/default-seeds-$stamp
$PY -m pad_lightning.run --multirun seed=0,1,2 "$@" hydra.sweep.dir="$out/pad"
$PY -m pad_lightning.run --multirun seed=0,1,2 model.teacher.zoo=student "$@" \
  hydra.sweep.dir="$out/self-teacher"
echo "## PAD (default config)"
$PY experiments/aggregate.py "$out/pad"
echo "## Self-teacher control (model.teacher.zoo=student)"
$PY experiments/aggregate.py "$out/self-teacher"
