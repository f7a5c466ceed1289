#!/usr/bin/env bash
# Runs of experiments/algorithms.md: the configs named (paths relative to
# experiments/algorithms/BENCH/, without .toml: `mcc`, `swept/mcc`), 3 seeds, on every task of
# the benchmark's base.toml (SURF and Amazon: all 12; TASKS='["a->b", ...]' runs those only),
# one process, one thread; BENCH's source_only first, on its own (the source models SHOT
# adapts: a SHOT config is checked against them before any run). Reruns reuse finished runs
# (--resume); a run that diverges is kept as failed and the others go on (--keep-going).
#
#   nice -n 10 experiments/algorithms_run.sh office_caltech10 mcc swept/mcc swept/jda_mcc ...
set -euo pipefail
bench=$1
shift
tl="${TLADAPT:-.venv/bin/tladapt}"
export OMP_NUM_THREADS=1
tasks=()
[ -n "${TASKS:-}" ] && tasks=(--set "data.tasks=$TASKS")
"$tl" run --resume "experiments/algorithms/$bench/source_only.toml" "${tasks[@]}"
configs=()
for m in "$@"; do configs+=("experiments/algorithms/$bench/$m.toml"); done
[ ${#configs[@]} -eq 0 ] || "$tl" run --resume --keep-going "${configs[@]}" "${tasks[@]}"
