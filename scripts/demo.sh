#!/usr/bin/env bash
# make demo: broker + topics, a producer, and `dagster dev` with the sensor and schedules running.
# Ctrl-C (or SIGTERM) stops everything within 10 s, runs in flight included: dagster dev (UI, daemon,
# code server, runs) and the producer together, then the broker once both are gone.
#
# Job control (set -m) matters: without it bash starts background jobs with SIGINT *ignored*, Python
# children inherit that, and `dagster dev` can then never stop its webserver and daemon. With it, each
# child runs in its own process group with default signals, and this script forwards the stop.
# When this script itself was started in the background by a shell without job control, it inherits
# SIGINT ignored: bash cannot trap it then (stop it with SIGTERM), and its children would inherit it
# too, so each is started under `env --default-signal=INT`: dagster dev, its webserver, daemon, code
# server and run workers stop on the INT this script forwards instead of waiting to be killed.
set -euo pipefail
set -m
DEFAULT_INT="env --default-signal=INT"
cd "$(dirname "$0")/.."
BIN=.venv/bin
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/.dagster}"
LOCAL="${PIPELINE_LOCAL_DIR:-.local}"
mkdir -p "$DAGSTER_HOME" "$LOCAL"
cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"

$BIN/pipeline-project kafka start
# DEMO_LAKE=s3: the lake on a local S3 server (versitygw on 127.0.0.1, built by `make install`).
if [ "${DEMO_LAKE:-local}" = s3 ]; then
  eval "$($BIN/pipeline-project s3 start)"
  echo "lake: $PIPELINE_LAKE_URI on $AWS_ENDPOINT_URL"
fi
RATE="${DEMO_RATE:-200}"
$DEFAULT_INT $BIN/pipeline-project produce --rate "$RATE" --bad-ratio 0.03 --duplicate-ratio 0.01 --late-ratio 0.02 \
  > "$LOCAL/producer.log" 2>&1 &
PRODUCER=$!
echo "producer: $RATE events/s into raw-events (log: $LOCAL/producer.log)"

DAGSTER=""
# A run interrupted by the INT reports what it committed (a range is one Delta commit or nothing) and
# exits within a second or two; dagster dev itself would then wait up to 60 s for its webserver, daemon and code
# server, which hold nothing of ours. So once no run worker is left (or after DAGSTER_GRACE seconds),
# dagster dev's process group is killed.
DAGSTER_GRACE="${DAGSTER_GRACE:-5}"
PRODUCER_GRACE=3
# runs_left PGID: run workers (and their step processes) still alive in dagster dev's process group.
runs_left() { pgrep -g "$1" -f "multiprocessing.spawn|execute_run|execute_step" >/dev/null; }
stop_dagster() {
  local deadline=$((SECONDS + DAGSTER_GRACE))
  sleep 0.5  # the INT reaches every run worker before it is asked for
  while runs_left "$1" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
  kill -KILL -- "-$1" 2>/dev/null || true
}
# wait_or_kill PID SECONDS: wait up to SECONDS for PID to exit, then SIGKILL its process group.
wait_or_kill() {
  timeout "$2" tail --pid="$1" -f /dev/null || kill -KILL -- "-$1" 2>/dev/null || true
}
stop_all() {
  trap - INT TERM HUP EXIT
  trap '' PIPE  # the terminal (or a `| tee`) may be gone already: keep stopping regardless
  set +e
  echo; echo "stopping: dagster (UI, daemon, runs) and producer, then the broker"
  [ -n "$DAGSTER" ] && kill -INT -- "-$DAGSTER" 2>/dev/null
  kill -TERM -- "-$PRODUCER" 2>/dev/null  # it flushes what it sent, then prints its summary
  [ -n "$DAGSTER" ] && stop_dagster "$DAGSTER"
  wait_or_kill "$PRODUCER" "$PRODUCER_GRACE"
  $BIN/pipeline-project kafka stop || true
  if [ "${DEMO_LAKE:-local}" = s3 ]; then $BIN/pipeline-project s3 stop || true; fi
}
trap stop_all INT TERM HUP EXIT

echo "Dagster UI: http://localhost:${DAGSTER_PORT:-3000}"
$DEFAULT_INT $BIN/dagster dev -w workspace.yaml -h 0.0.0.0 -p "${DAGSTER_PORT:-3000}" &
DAGSTER=$!
wait "$DAGSTER"
