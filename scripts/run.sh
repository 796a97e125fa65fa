#!/usr/bin/env bash
# Start the service. Without REDIS_URL, first start (or reuse) a project-local Redis with
# ./redis.conf on REDIS_PORT (default 6390, so a system Redis on 6379 is left alone),
# keeping its data in $DATA_DIR/redis (DATA_DIR: default .data). Pid files go to DATA_DIR
# too, for `make stop`.
set -euo pipefail
cd "$(dirname "$0")/.."

root=$(realpath -m "${DATA_DIR:-.data}")
mkdir -p "$root"
if [ -z "${REDIS_URL:-}" ]; then
  port=${REDIS_PORT:-6390}
  if ! [[ $port =~ ^[1-9][0-9]{0,4}$ ]] || [ "$port" -gt 65535 ]; then
    echo "run: REDIS_PORT must be 1 to 65,535, not '$port'" >&2
    exit 2
  fi
  data="$root/redis"
  mkdir -p "$data"
  if redis-cli -p "$port" ping >/dev/null 2>&1; then
    dir=$(redis-cli -p "$port" config get dir | tail -n 1)
    if [ "$dir" != "$data" ]; then
      echo "run: port $port already serves another Redis (data in $dir); set REDIS_PORT or REDIS_URL" >&2
      exit 1
    fi
  else
    redis-server "$PWD/redis.conf" --port "$port" --dir "$data" --daemonize yes \
      --pidfile "$root/redis.pid" --logfile "$root/redis.log"
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis-cli -p "$port" ping >/dev/null || { echo "run: Redis did not start; see $root/redis.log" >&2; exit 1; }
    echo "run: Redis on 127.0.0.1:$port, data in $data (stop it with: make stop)"
  fi
  export REDIS_URL="redis://127.0.0.1:$port/0"
fi
# In the foreground (Ctrl-C stops it); `make stop` from another terminal stops it too.
echo $$ > "$root/app.pid"  # exec keeps this shell's pid
exec .venv/bin/coupon-pool serve
