#!/usr/bin/env bash
# Start the service. Without REDIS_URL, first start (or reuse) a project-local Redis with
# ./redis.conf on REDIS_PORT (default 6390, so a system Redis on 6379 is left alone),
# keeping its data in .data/redis.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${REDIS_URL:-}" ]; then
  port=${REDIS_PORT:-6390}
  data="$PWD/.data/redis"
  mkdir -p "$data"
  if redis-cli -p "$port" ping >/dev/null 2>&1; then
    dir=$(redis-cli -p "$port" config get dir | tail -n 1)
    if [ "$dir" != "$data" ]; then
      echo "run: port $port already serves another Redis (data in $dir); set REDIS_PORT or REDIS_URL" >&2
      exit 1
    fi
  else
    redis-server "$PWD/redis.conf" --port "$port" --dir "$data" --daemonize yes \
      --pidfile "$PWD/.data/redis.pid" --logfile "$PWD/.data/redis.log"
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis-cli -p "$port" ping >/dev/null || { echo "run: Redis did not start; see .data/redis.log" >&2; exit 1; }
    echo "run: Redis on 127.0.0.1:$port, data in $data (stop it with: make stop)"
  fi
  export REDIS_URL="redis://127.0.0.1:$port/0"
fi
exec .venv/bin/coupon-pool serve
