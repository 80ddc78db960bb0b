#!/usr/bin/env bash
# make demo: broker + topics, a producer, and `dagster dev` with the sensor and schedules running.
# Ctrl-C stops the UI and daemon, then the producer (it flushes), then the broker, each within a bound.
#
# Job control (set -m) matters: without it bash starts background jobs with SIGINT *ignored*, Python
# children inherit that, and `dagster dev` can then never stop its webserver and daemon. With it, each
# child runs in its own process group with default signals, and this script forwards the stop.
set -euo pipefail
set -m
cd "$(dirname "$0")/.."
BIN=.venv/bin
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/.dagster}"
LOCAL="${PIPELINE_LOCAL_DIR:-.local}"
mkdir -p "$DAGSTER_HOME" "$LOCAL"
cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"

$BIN/pipeline-project kafka start
RATE="${DEMO_RATE:-200}"
$BIN/pipeline-project produce --rate "$RATE" --bad-ratio 0.03 --duplicate-ratio 0.01 --late-ratio 0.02 \
  > "$LOCAL/producer.log" 2>&1 &
PRODUCER=$!
echo "producer: $RATE events/s into raw-events (log: $LOCAL/producer.log)"

DAGSTER=""
# stop PID SIGNAL SECONDS: signal the process group, wait up to SECONDS, then SIGKILL the group.
stop() {
  kill "-$2" -- "-$1" 2>/dev/null || return 0
  timeout "$3" tail --pid="$1" -f /dev/null || kill -KILL -- "-$1" 2>/dev/null || true
}
stop_all() {
  trap - INT TERM HUP EXIT
  trap '' PIPE  # the terminal (or a `| tee`) may be gone already: keep stopping regardless
  set +e
  echo; echo "stopping: dagster (UI and daemon), producer, broker"
  [ -n "$DAGSTER" ] && stop "$DAGSTER" INT 40
  stop "$PRODUCER" TERM 40
  $BIN/pipeline-project kafka stop || true
}
trap stop_all INT TERM HUP EXIT

echo "Dagster UI: http://localhost:${DAGSTER_PORT:-3000}"
$BIN/dagster dev -w workspace.yaml -h 0.0.0.0 -p "${DAGSTER_PORT:-3000}" &
DAGSTER=$!
wait "$DAGSTER"
