#!/usr/bin/env bash
# The main job on a fresh machine, with no ComfyUI and no network: make tiny random-weight models,
# start the daemon on the embedded engine, and render page 1 of the example chapter through the
# pipeline stage. Everything lands in demo/ (the image in demo/project/output/ch-01/raw/).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
DEMO=${DEMO_DIR:-demo}
PORT=${DEMO_PORT:-3917}
BIN=.venv/bin
mkdir -p "$DEMO"
if [ ! -f "$DEMO/models/checkpoints/tiny-sd15.safetensors" ]; then
  echo "== making tiny models in $DEMO/models"
  "$BIN/sidecar" models make-tiny --out "$DEMO/models"
  # The example chapter asks for the character's LoRA by name; the tiny one stands in for it.
  cp "$DEMO/models/loras/tiny-lora.safetensors" "$DEMO/models/loras/spyke_plasma_v1.safetensors"
fi
if [ ! -d "$DEMO/project" ]; then
  cp -r examples/project "$DEMO/project"
fi
cat > "$DEMO/sidecar.toml" <<TOML
engine = "embedded"
device = "cpu"
port = $PORT
data_dir = "$PWD/$DEMO/data"
models_dir = "$PWD/$DEMO/models"
checkpoint = "tiny-sd15.safetensors"
controlnet_model = "tiny-controlnet.safetensors"
TOML
echo "== starting the daemon on 127.0.0.1:$PORT (log: $DEMO/daemon.log)"
"$BIN/sidecar" serve --config "$DEMO/sidecar.toml" >"$DEMO/daemon.log" 2>&1 &
daemon=$!
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then break; fi
  if ! kill -0 $daemon 2>/dev/null; then echo "daemon exited:"; cat "$DEMO/daemon.log"; exit 1; fi
  sleep 0.5
done
curl -sf "http://127.0.0.1:$PORT/health"; echo
echo "== generate --comfyui -c 1 --page 1"
"$BIN/generate" --comfyui -c 1 --page 1 --root "$DEMO/project" --daemon "http://127.0.0.1:$PORT"
ls -l "$DEMO/project/output/ch-01/raw/"
