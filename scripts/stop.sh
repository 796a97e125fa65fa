#!/usr/bin/env bash
# Stop what `make run` started: the service (pid in $DATA_DIR/app.pid) and the project-local
# Redis (pid in $DATA_DIR/redis.pid; SIGTERM, on which it saves its data as SHUTDOWN does). DATA_DIR: default .data. Silent when nothing runs;
# a pid file whose process is gone, or is another program now, is only removed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${DATA_DIR:-.data}

alive() {  # $1: pid file, $2: what its command line must contain
  [ -f "$1" ] || return 1
  local pid; pid=$(cat "$1")
  [[ "$pid" =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2"
}
wait_gone() {  # $1: pid; up to 20 s (the service lets requests finish: SHUTDOWN_TIMEOUT_S)
  for _ in $(seq 200); do [ -d "/proc/$1" ] || return 0; sleep 0.1; done
  echo "stop: process $1 is still running after 20 s" >&2; return 1
}

if alive "$root/app.pid" "coupon-pool serve"; then
  pid=$(cat "$root/app.pid")
  kill -TERM "$pid" && wait_gone "$pid" && echo "stop: the service (pid $pid) stopped"
fi
rm -f "$root/app.pid"

if alive "$root/redis.pid" "redis-server"; then
  pid=$(cat "$root/redis.pid")
  kill -TERM "$pid"  # as SHUTDOWN: it writes what it must, then exits
  wait_gone "$pid" && echo "stop: the project-local Redis (pid $pid) stopped"
fi
