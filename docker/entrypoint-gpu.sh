#!/bin/sh
# First start: export the model into the volume. Every start: build the TensorRT plan
# unless the card already holds one for this GPU and TensorRT version (the exporter
# checks and keeps a current plan), then serve. Fails in one line, never half-serves.
set -eu
model="${STEMLINK_MODEL}"
if [ ! -f "$model/model.json" ]; then
  echo "stemlink: exporting the model into $model (first start)"
  stemlink export spleeter --out "$model"
fi
if [ "${STEMLINK_BACKEND}" = "tensorrt" ]; then
  stemlink export tensorrt --model "$model" --batch "${STEMLINK_BATCH}"
  if [ "${STEMLINK_FP16:-0}" = "1" ]; then
    stemlink export tensorrt --model "$model" --batch "${STEMLINK_BATCH}" --fp16
  fi
fi
exec stemlink serve --host 0.0.0.0 --port "${STEMLINK_PORT}" --model "$model" \
  --backend "${STEMLINK_BACKEND}" --preset "${STEMLINK_PRESET}" "$@"
