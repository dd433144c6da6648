#!/usr/bin/env bash
# The base install is the client: in a throwaway venv with only `pip install .`, check that
# no ONNX Runtime or torch came with it, that `stemlink serve` names the extra to install,
# and that `stemlink send` streams a clip through a server run from the repository's own
# venv (.venv, with the server extra).
#   usage: scripts/check-client-install.sh [MODEL_DIR]   (default models/spleeter-2stems)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-models/spleeter-2stems}"
TMP="$(mktemp -d)"
trap 'kill "${SERVER_PID:-}" 2>/dev/null || true; rm -rf "$TMP"' EXIT

python3 -m venv "$TMP/venv"
"$TMP/venv/bin/pip" install -q .
echo "client venv packages:"; "$TMP/venv/bin/pip" list --format=freeze | sed 's/^/  /'
if "$TMP/venv/bin/pip" list --format=freeze | grep -iE '^(onnxruntime|onnxruntime-gpu|torch)=='; then
  echo "FAIL: the base install pulled in the engine"; exit 1
fi
if "$TMP/venv/bin/stemlink" serve --model "$MODEL" --port 0 2> "$TMP/serve.err"; then
  echo "FAIL: serve started without onnxruntime"; exit 1
fi
grep -q "pip install 'stemlink\[server\]'" "$TMP/serve.err" || { cat "$TMP/serve.err"; exit 1; }
echo "serve without the extra: $(cat "$TMP/serve.err")"

.venv/bin/stemlink keygen "$TMP/key" > /dev/null
PORT="$(.venv/bin/python -c 'from stemlink.bench.procs import free_port; print(free_port())')"
.venv/bin/stemlink serve --model "$MODEL" --port "$PORT" --key-file "$TMP/key" \
  --log-level warning 2> "$TMP/server.log" &
SERVER_PID=$!
for _ in $(seq 100); do grep -q "stemlink serving" "$TMP/server.log" && break; sleep 0.2; done
.venv/bin/python -c "
import numpy as np, soundfile as sf
t = np.arange(3 * 44100) / 44100
sf.write('$TMP/in.wav', np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], 1) * 0.3, 44100)"
"$TMP/venv/bin/stemlink" send "$TMP/in.wav" --server "127.0.0.1:$PORT" --key-file "$TMP/key" \
  --out "$TMP/out" --as-fast-as-possible | tee "$TMP/send.out"
grep -q "lost 0" "$TMP/send.out"
ls "$TMP/out"/vocals.wav "$TMP/out"/accompaniment.wav > /dev/null
echo "OK: send works with the base install only"
