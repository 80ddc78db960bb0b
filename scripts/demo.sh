#!/usr/bin/env bash
# make demo: broker + topics, a producer, and `dagster dev` with the sensor and schedules running.
# Ctrl-C stops the UI and daemon, then the producer (it flushes), then the broker.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/.dagster}"
mkdir -p "$DAGSTER_HOME" .local
cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"

$BIN/pipeline-project kafka start
RATE="${DEMO_RATE:-200}"
$BIN/pipeline-project produce --rate "$RATE" --bad-ratio 0.03 --duplicate-ratio 0.01 --late-ratio 0.02 \
  > .local/producer.log 2>&1 &
PRODUCER=$!
echo "producer: $RATE events/s into raw-events (log: .local/producer.log)"

DAGSTER=""
stop_all() {
  trap - INT TERM EXIT
  echo; echo "stopping: dagster, producer, broker"
  [ -n "$DAGSTER" ] && kill -TERM "$DAGSTER" 2>/dev/null && timeout 30 tail --pid="$DAGSTER" -f /dev/null || true
  kill -TERM "$PRODUCER" 2>/dev/null && timeout 40 tail --pid="$PRODUCER" -f /dev/null || true
  $BIN/pipeline-project kafka stop || true
}
trap stop_all INT TERM EXIT

echo "Dagster UI: http://localhost:${DAGSTER_PORT:-3000}"
$BIN/dagster dev -w workspace.yaml -h 0.0.0.0 -p "${DAGSTER_PORT:-3000}" &
DAGSTER=$!
wait "$DAGSTER"
