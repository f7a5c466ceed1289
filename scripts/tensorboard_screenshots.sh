#!/usr/bin/env bash
# Start TensorBoard on a runs directory and take headless Chromium screenshots of the views a
# run opens on: the custom-scalars layout (accuracy and validators, losses, schedules), the
# scalars, the images (feature t-SNE, oracle confusion matrix) and the embedding projector.
#
#   scripts/tensorboard_screenshots.sh RUNS_DIR [OUT_DIR]     # PNGs in OUT_DIR (default: RUNS_DIR/screenshots)
#
# Needs a Chromium (Debian: apt-get install -y chromium) and the tensorboard of the venv.
# Make pictures first: `tladapt run ... --set trainer.plots=true` or `tladapt plot RUN_DIR`.
set -euo pipefail
runs=${1:?usage: $0 RUNS_DIR [OUT_DIR]}
out=${2:-$runs/screenshots}
here=$(cd "$(dirname "$0")/.." && pwd)
tensorboard=${TENSORBOARD:-$here/.venv/bin/tensorboard}
chromium=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome)}
port=${PORT:-6123}
mkdir -p "$out"
"$tensorboard" --logdir "$runs" --port "$port" --host localhost >"$out/tensorboard.log" 2>&1 &
tb=$!
trap 'kill $tb 2>/dev/null || true' EXIT
for _ in $(seq 60); do  # until TensorBoard answers
  if python3 -c "import urllib.request; urllib.request.urlopen('http://localhost:$port')" 2>/dev/null; then break; fi
  sleep 1
done
for view in custom_scalars scalars images projector; do
  "$chromium" --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1600,1200 \
    --virtual-time-budget=20000 --screenshot="$out/$view.png" "http://localhost:$port/#$view" \
    >>"$out/chromium.log" 2>&1
  echo "$out/$view.png"
done
