#!/usr/bin/env bash
# Regenerates the committed Python stubs from proto/ into sdk/durable/ (package durable.v1 and
# durable.internal.v1). Run through `make proto`; CI runs it and fails on a diff.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
OUT=sdk
find "$OUT/durable/v1" "$OUT/durable/internal" -name '*_pb2*.py*' -delete 2>/dev/null || true
mkdir -p "$OUT/durable/v1" "$OUT/durable/internal/v1"
"$PY" -m grpc_tools.protoc -I proto \
  --python_out="$OUT" --mypy_out="$OUT" \
  --grpc_python_out="$OUT" --mypy_grpc_out="$OUT" \
  $(find proto -name '*.proto' | sort)
for d in "$OUT/durable/v1" "$OUT/durable/internal" "$OUT/durable/internal/v1"; do
  [ -f "$d/__init__.py" ] || : > "$d/__init__.py"
done
