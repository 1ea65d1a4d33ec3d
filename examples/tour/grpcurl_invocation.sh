#!/usr/bin/env bash
# grpcurl-invocation: the whole lifecycle with nothing but server reflection, using grpcurl
# when it is installed and `buf curl` (from the buf-bin wheel in .venv) otherwise.
#   make example-grpcurl-invocation
set -euo pipefail
TARGET="${DURABLE_TARGET:-localhost:50051}"
BUF="${BUF:-$(dirname "$0")/../../.venv/bin/buf}"
call() {  # call <Method> <json>
  if command -v grpcurl >/dev/null 2>&1; then
    grpcurl -plaintext -d "$2" "$TARGET" "durable.v1.DurableControl/$1"
  else
    "$BUF" curl --protocol grpc --http2-prior-knowledge --data "$2" \
      "http://$TARGET/durable.v1.DurableControl/$1"
  fi
}
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

echo "# Invoke and wait"
call Invoke '{"handler": "greeter/greet", "input": {"json": "grpcurl"}, "wait": true}' | tee /tmp/durable-invoke.$$.json
ID=$(field "['invocationId']" < /tmp/durable-invoke.$$.json)
rm -f /tmp/durable-invoke.$$.json
echo "# GetWorkflow $ID"
call GetWorkflow "{\"invocation_id\": \"$ID\"}"
echo "# An approval: Invoke without waiting, then Pause, Resume, ResolveAwakeable"
EXP=$(call Invoke '{"handler": "expenses/submit", "input": {"json": {"employee": "ada", "amount": 5, "reason": "taxi"}}}' | field "['invocationId']")
AWK=""
for _ in $(seq 100); do
  AWK=$(call GetWorkflow "{\"invocation_id\": \"$EXP\", \"skip_journal\": true}" \
    | field "['invocation'].get('waitingFor', [{}])[0].get('awakeableId', '')")
  [ -n "$AWK" ] && break
  sleep 0.1
done
call Pause "{\"invocation_id\": \"$EXP\", \"reason\": \"checking\"}"
call Resume "{\"invocation_id\": \"$EXP\"}"
call ResolveAwakeable "{\"awakeable_id\": \"$AWK\", \"value\": {\"json\": true}}"
echo "# AwaitResult"
call AwaitResult "{\"invocation_id\": \"$EXP\", \"timeout\": \"30s\"}"
echo "# ListWorkflows and Stats"
call ListWorkflows '{"handler": "expenses/submit", "page_size": 3}'
call Stats '{}'
