#!/usr/bin/env bash
# The label-free hyper-parameter sweeps of experiments/algorithms.md: for each method named,
# `tladapt sweep` of experiments/algorithms/BENCH/METHOD.toml over its space in
# experiments/algorithms/spaces/ (the learning rate and the method's main coefficient), with
# the default objective validator/im, seed 0, on the design tasks given, TRIALS trials; the
# trials' runs go to runs/algorithms_sweeps (apart from the tables' runs). Rerunning it
# continues each study (finished trials are kept).
#
#   nice -n 10 experiments/algorithms_sweep.sh office_caltech10 TRIALS '["amazon->webcam", ...]' METHOD[:SPACE] ...
#
# METHOD:SPACE names the space when it is not METHOD's own (jda_mcc:mcc).
set -euo pipefail
bench=$1 trials=$2 tasks=$3
shift 3
tl="${TLADAPT:-.venv/bin/tladapt}"
export OMP_NUM_THREADS=1
for spec in "$@"; do
    method=${spec%%:*} space=${spec#*:}
    "$tl" sweep "experiments/algorithms/$bench/$method.toml" --space "experiments/algorithms/spaces/$space.toml" \
        --trials "$trials" --seeds 0 --runs-dir runs/algorithms_sweeps --set "data.tasks=$tasks"
done
