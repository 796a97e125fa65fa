#!/usr/bin/env bash
# Build the image and run it for real: `make docker-test`. Needs a Docker engine; on the
# development machines ../shared/docker-local/setup.sh starts one (DOCKER_SETUP points at it).
#  1. hadolint, and `docker-compose config` on the real file;
#  2. the image: built, no wheels or build leftovers in it, healthy on a PORT of its own;
#  3. compose with .env.example's placeholders: the preflight refuses once, the app never starts;
#  4. compose with real secrets: upload, allocate, redeem with keys; 401 without; published on
#     loopback only; then down -v;
#  5. docker-compose.cluster.yml: six Redis nodes formed into a cluster, the service on it
#     with 16 shards: upload (a MEGADEAL coupon too), allocate, redeem; then down -v.
set -euo pipefail
cd "$(dirname "$0")/.."
setup=${DOCKER_SETUP:-../shared/docker-local/setup.sh}
if ! docker info >/dev/null 2>&1; then
  [ -x "$setup" ] || [ -f "$setup" ] || { echo "docker-test: no Docker engine, and no $setup to start one" >&2; exit 1; }
  bash "$setup"
fi
compose() { docker-compose -p cpsmoke --env-file "$envfile" "$@"; }
say() { echo "docker-test: $*"; }
work=$(mktemp -d)
envfile="$work/real.env"
cleanup() {
  docker-compose -p cpsmoke --env-file "$envfile" down -v --remove-orphans >/dev/null 2>&1 || true
  docker-compose -p cpsmoke --env-file .env.example down -v --remove-orphans >/dev/null 2>&1 || true
  docker-compose -p cpsmokecl -f docker-compose.cluster.yml --env-file "$envfile" down -v --remove-orphans >/dev/null 2>&1 || true
  docker rm -f cpsmoke-port >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

say "1. lint"
.venv/bin/hadolint Dockerfile
docker-compose --env-file .env.example config -q
docker-compose -f docker-compose.cluster.yml --env-file .env.example config -q

say "2. the image"
started=$(date +%s)
docker build -q -t coupon-pool:local . >/dev/null
say "   built in $(( $(date +%s) - started )) s; $(docker image inspect coupon-pool:local --format '{{.Size}}' | numfmt --to=iec) uncompressed"
docker run --rm --entrypoint sh coupon-pool:local -c \
  'test ! -e /wheels && test ! -e /src && test ! -e /opt/venv/bin/pip && test "$(id -u)" = 10001'
# The build context is the whitelist of .dockerignore: no .env, .git, tests or .venv inside.
docker run --rm --entrypoint sh coupon-pool:local -c 'test ! -e /opt/venv/lib/python3.11/site-packages/tests'
docker run -d --name cpsmoke-port -e PORT=9090 coupon-pool:local >/dev/null
for _ in $(seq 60); do
  health=$(docker inspect cpsmoke-port --format '{{.State.Health.Status}}')
  [ "$health" = healthy ] && break; sleep 1
done
[ "$health" = healthy ] || { docker logs cpsmoke-port; echo "docker-test: a container on PORT=9090 is $health" >&2; exit 1; }
docker rm -f cpsmoke-port >/dev/null
say "   healthy on PORT=9090"

say "3. placeholders are refused once"
if docker-compose -p cpsmoke --env-file .env.example up -d --build >"$work/placeholder.log" 2>&1; then
  cat "$work/placeholder.log"; echo "docker-test: compose started on .env.example's placeholders" >&2; exit 1
fi
refusal=$(docker-compose -p cpsmoke --env-file .env.example logs --no-color preflight | grep "coupon-pool:" || true)
[[ "$refusal" == *"is it a placeholder"* ]] || { docker-compose -p cpsmoke --env-file .env.example logs; exit 1; }
[ -z "$(docker ps -aq --filter name=cpsmoke_app)" ] || { echo "docker-test: the app container was created" >&2; exit 1; }
[ "$(docker ps -aq --filter name=cpsmoke_preflight | wc -l)" = 1 ] || { echo "docker-test: the preflight ran again" >&2; exit 1; }
docker-compose -p cpsmoke --env-file .env.example down -v >/dev/null 2>&1
say "   refused once, no app container:${refusal#*|}"

say "4. compose with real secrets"
admin=$(openssl rand -hex 32); client=$(openssl rand -hex 32)
printf 'REDIS_PASSWORD=%s\nCOUPON_POOL_ADMIN_KEYS=%s\nCOUPON_POOL_CLIENT_KEYS=%s\nCOUPON_POOL_PUBLISH=127.0.0.1:18080\n' \
  "$(openssl rand -hex 32)" "$admin" "$client" >"$envfile"
compose up -d --build >"$work/up.log" 2>&1 || { cat "$work/up.log"; exit 1; }
for _ in $(seq 60); do curl -sf http://127.0.0.1:18080/readyz >/dev/null && break; sleep 1; done
api() { curl -s -o "$work/body" -w '%{http_code}' "$@"; }
expect() { [ "$1" = "$2" ] || { echo "docker-test: $3: got $1, expected $2: $(cat "$work/body")" >&2; compose logs app | tail -20; exit 1; }; }
expect "$(api http://127.0.0.1:18080/v1/stats)" 401 "no key"
expect "$(api -X POST http://127.0.0.1:18080/v1/coupons -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
  -d '{"coupons":[{"code":"DOCKER-1","discount":{"kind":"flat","value":"5"},"expires_at":"2099-01-01T00:00:00Z"}]}')" 201 "upload"
expect "$(api -X POST http://127.0.0.1:18080/v1/allocations -H "Authorization: Bearer $client" -H 'Content-Type: application/json' \
  -d '{"user_id":"docker-user"}')" 201 "allocate"
grep -q '"code":"DOCKER-1"' "$work/body"
expect "$(api -X POST http://127.0.0.1:18080/v1/redemptions -H "Authorization: Bearer $client" -H 'Content-Type: application/json' \
  -d '{"code":"DOCKER-1","user_id":"docker-user"}')" 201 "redeem"
expect "$(api http://127.0.0.1:18080/v1/stats -H "Authorization: Bearer $client")" 200 "stats"
grep -q '"used":1' "$work/body"
published=$(docker port cpsmoke_app_1 8080)
[ "$published" = "127.0.0.1:18080" ] || { echo "docker-test: published on $published, not loopback" >&2; exit 1; }
say "   upload, allocate, redeem, stats with keys; 401 without; published on $published"
compose down -v >/dev/null 2>&1

say "5. compose on a Redis Cluster"
echo "COUPON_POOL_CLUSTER_PUBLISH=127.0.0.1:18081" >>"$envfile"
cluster() { docker-compose -p cpsmokecl -f docker-compose.cluster.yml --env-file "$envfile" "$@"; }
cluster up -d --build >"$work/cluster.log" 2>&1 || { cat "$work/cluster.log"; exit 1; }
for _ in $(seq 90); do curl -sf http://127.0.0.1:18081/readyz >/dev/null && break; sleep 1; done
expect "$(api -X POST http://127.0.0.1:18081/v1/coupons -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
  -d '{"coupons":[{"code":"CL-1","discount":{"kind":"flat","value":"5"},"expires_at":"2099-01-01T00:00:00Z"},
  {"code":"CL-M","type":"MEGADEAL","discount":{"kind":"flat","value":"5"},"expires_at":"2099-01-01T00:00:00Z"}]}')" 201 "cluster upload"
expect "$(api -X POST http://127.0.0.1:18081/v1/allocations -H "Authorization: Bearer $client" -H 'Content-Type: application/json' \
  -d '{"user_id":"u","type":"MEGADEAL"}')" 201 "cluster MEGADEAL allocation"
expect "$(api -X POST http://127.0.0.1:18081/v1/allocations -H "Authorization: Bearer $client" -H 'Content-Type: application/json' \
  -d '{"user_id":"u"}')" 201 "cluster allocation"
expect "$(api -X POST http://127.0.0.1:18081/v1/redemptions -H "Authorization: Bearer $client" -H 'Content-Type: application/json' \
  -d '{"code":"CL-1","user_id":"u"}')" 201 "cluster redemption"
cluster exec -T node-1 redis-cli cluster info | grep -q cluster_state:ok
say "   six nodes, the cluster formed; upload, MEGADEAL and STANDARD allocations, redemption"
say "passed"
