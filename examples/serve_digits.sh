#!/usr/bin/env bash
# Train the digits CNN, serve it over HTTP and query it with curl (run from the repository root).
#   pip install "layerwise[serve]"; bash examples/serve_digits.sh
# See docs/serving.md for every endpoint, limit and option.
set -euo pipefail
PORT=${PORT:-8000}
URL="http://127.0.0.1:$PORT"

layerwise train examples/digits.yaml --set train.epochs=5 --quiet
RUN=$(ls -d runs/digits-cnn-2* | tail -1)

layerwise serve "$RUN" --port "$PORT" --log-level warning &   # add --backend onnx for ONNX Runtime
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER' EXIT     # graceful shutdown: exit code 0
until curl -sf "$URL/health" > /dev/null; do sleep 0.5; done

echo "--- health and metadata"
curl -s "$URL/health"; echo
curl -s "$URL/metadata" | python -c "import json, sys; m = json.load(sys.stdin); print(m['input'], m['model']['metrics']['accuracy'])"

echo "--- one 8x8 image as JSON (pixels 0-255): a 0"
ZERO='[[0,0,80,200,200,40,0,0],[0,40,240,80,120,200,0,0],[0,80,200,0,0,200,40,0],[0,120,120,0,0,160,80,0],
       [0,120,80,0,0,200,80,0],[0,80,120,0,40,240,40,0],[0,40,240,160,240,120,0,0],[0,0,80,200,120,0,0,0]]'
curl -s "$URL/predict" -H 'content-type: application/json' -d "{\"inputs\": [$ZERO]}"; echo

echo "--- an image file upload (resized to 8x8 like layerwise predict)"
python -c "
from PIL import Image; from sklearn.datasets import load_digits
Image.fromarray((load_digits().images[7] * 255 / 16).astype('uint8')).resize((32, 32)).save('/tmp/digit.png')"
curl -s "$URL/predict/image" -F files=@/tmp/digit.png; echo

echo "--- a wrong shape: 422 naming the field"
curl -s "$URL/predict" -H 'content-type: application/json' -d '{"inputs": [[[0,0,0],[0,0,0]]]}'; echo
