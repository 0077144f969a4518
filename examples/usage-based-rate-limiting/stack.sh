#!/usr/bin/env bash
# Starts and stops the demo stack in the background: llmsim, redis-server (when installed; or the
# Redis at $REDIS_URL) and `tollgate run` (control plane, ratelimit service, Envoy). Used by
# `task up` and `task down`.
#
#   stack.sh up   BIN_DIR POLICY RUN_DIR
#   stack.sh down RUN_DIR
set -euo pipefail

up() {
  local bin=$1 policy=$2 run=$3
  local logs=$run/logs
  mkdir -p "$logs"
  if [ -f "$run/tollgate.pid" ] && kill -0 "$(cat "$run/tollgate.pid")" 2>/dev/null; then
    echo "the demo stack is already running ('task down' stops it)"
    return 0
  fi
  # A fresh stack needs its own ports: an old stack or another Redis would answer in its place
  # (and someone else's Redis would carry its counters into the demo).
  free_port 8000 || return 1
  start llmsim "$run" "$logs/llmsim.log" "$bin/llmsim" --listen 127.0.0.1:8000 --name llm-sim
  local redis_args=()
  if [ -n "${REDIS_URL:-}" ]; then
    redis_args=(--redis "$REDIS_URL")
  elif command -v redis-server >/dev/null; then
    free_port 6379 || { down "$run" >/dev/null; return 1; }
    start redis "$run" "$logs/redis.log" redis-server --port 6379 --bind 127.0.0.1 --save "" --appendonly no
    redis_args=(--redis 127.0.0.1:6379)
  fi
  start tollgate "$run" "$logs/tollgate.log" "$bin/tollgate" run -f "$policy" "${redis_args[@]}" --log-dir "$logs"

  # Ready means our tollgate printed its banner (it does once Envoy is live), not merely that
  # something answers on the usual ports.
  local pid
  pid=$(cat "$run/tollgate.pid")
  for _ in $(seq 1 150); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "tollgate exited; the end of its log:" >&2
      tail -n 30 "$logs/tollgate.log" >&2
      down "$run" >/dev/null
      return 1
    fi
    if grep -q "Ctrl-C to stop" "$logs/tollgate.log"; then
      echo "gateway ready on http://127.0.0.1:8080 (policy $policy; logs in ${logs#"$PWD"/})"
      return 0
    fi
    sleep 0.2
  done
  echo "the gateway did not become ready in 30s; see $logs" >&2
  return 1
}

# free_port PORT: fail with a message when something listens on 127.0.0.1:PORT.
free_port() {
  if (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
    echo "port $1 is already in use on 127.0.0.1: stop what listens there ('task down' for an old demo stack)" >&2
    return 1
  fi
}

# start NAME RUN_DIR LOG COMMAND...: run a command detached from this shell, pid in RUN_DIR.
start() {
  local name=$1 run=$2 log=$3
  shift 3
  setsid "$@" >"$log" 2>&1 </dev/null &
  echo $! >"$run/$name.pid"
}

down() {
  local run=$1
  for name in tollgate llmsim redis; do
    local f=$run/$name.pid
    [ -f "$f" ] || continue
    local pid
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill -INT "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
      echo "stopped $name"
    fi
    rm -f "$f"
  done
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) shift; down "$@" ;;
  *) echo "usage: $0 up BIN_DIR POLICY RUN_DIR | down RUN_DIR" >&2; exit 2 ;;
esac
