#!/usr/bin/env bash
# Regenerates the committed Python stubs from proto/: durable/ into sdk/durable/ (packages
# durable.v1 and durable.internal.v1) and examples/ into examples/v1 (package examples.v1).
# Run through `make proto`; CI runs it and fails on a diff.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
OUT=sdk
find "$OUT/durable/v1" "$OUT/durable/internal" examples/v1 -name '*_pb2*.py*' -delete 2>/dev/null || true
mkdir -p "$OUT/durable/v1" "$OUT/durable/internal/v1" examples/v1
gen() {
  local out="$1"; shift
  "$PY" -m grpc_tools.protoc -I proto \
    --python_out="$out" --mypy_out="$out" \
    --grpc_python_out="$out" --mypy_grpc_out="$out" "$@"
}
gen "$OUT" $(find proto/durable -name '*.proto' | sort)
gen . $(find proto/examples -name '*.proto' | sort)
for d in "$OUT/durable/v1" "$OUT/durable/internal" "$OUT/durable/internal/v1" examples/v1; do
  [ -f "$d/__init__.py" ] || : > "$d/__init__.py"
done
