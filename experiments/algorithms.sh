#!/usr/bin/env bash
# The runs of experiments/algorithms.md: every method of experiments/algorithms/BENCH/ on the
# tasks given, 3 seeds, one process, one thread (the shared 2-core machine). Rerunning it
# reuses finished runs and resumes unfinished ones (tladapt run --resume).
#
#   nice -n 10 experiments/algorithms.sh office_caltech10 '["amazon->webcam", ...]' [METHOD ...]
#
# source_only runs first (its checkpoints are the source models SHOT adapts).
set -euo pipefail
bench=$1 tasks=$2
shift 2
methods=("$@")
if [ ${#methods[@]} -eq 0 ]; then
    methods=(dann dan deep_coral iw_discriminative cdan_e mdd mcc bnm fixmatch self_training shot jda jda_mcc jda_cdan_e_st)
fi
dir=experiments/algorithms/$bench
tl="${TLADAPT:-.venv/bin/tladapt}"
export OMP_NUM_THREADS=1
"$tl" run --resume "$dir/source_only.toml" --set "data.tasks=$tasks"
configs=()
for m in "${methods[@]}"; do configs+=("$dir/$m.toml"); done
"$tl" run --resume "${configs[@]}" --set "data.tasks=$tasks"
