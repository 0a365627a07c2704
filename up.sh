#!/usr/bin/env bash
# Start the tickguard stack.
#   ./up.sh           Docker: InfluxDB, Kapacitor, Chronograf, Grafana, JupyterLab, api, udf, generator
#   ./up.sh --local   no Docker: the native servers from `make tick`, the API, the UDF and the generator
#                     (extra flags go to `tickguard up --local`, e.g. --rate 100); Ctrl-C stops everything
#   ./up.sh --init-env  only create/complete .env (random secrets) and exit
# On first run .env is created from .env.example with random secrets.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)

die() { echo "up.sh: $*" >&2; exit 1; }

# --- .env with random secrets on first run ------------------------------------------------------
init_env() {
  local secrets=(INFLUXDB_ADMIN_PASSWORD INFLUXDB_READER_PASSWORD GRAFANA_ADMIN_PASSWORD JUPYTER_TOKEN TICKGUARD_ADMIN_TOKEN)
  if [ ! -f .env ]; then
    cp .env.example .env
    chmod 600 .env
    echo "up.sh: created .env from .env.example"
  fi
  local key value tmp
  for key in "${secrets[@]}"; do
    if grep -q "^${key}=\$" .env || ! grep -q "^${key}=" .env; then
      value=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
      tmp=$(mktemp)
      awk -v k="$key" -v v="$value" 'BEGIN{done=0} $0 ~ "^"k"=" {print k"="v; done=1; next} {print} END{if(!done) print k"="v}' .env >"$tmp"
      cat "$tmp" >.env && rm -f "$tmp"
      echo "up.sh: generated $key"
    fi
  done
  # `cd compose && docker compose up` reads compose/.env: point it at the same file.
  [ -e compose/.env ] || ln -s ../.env compose/.env
}

if [ "${1:-}" = "--init-env" ]; then
  init_env
  exit 0
fi

if [ "${1:-}" = "--local" ]; then
  shift
  # First run: the venv, the native servers and the data set are built/fetched here (cached afterwards).
  command -v make >/dev/null || die "make not found (apt-get install make)"
  echo "up.sh: preparing the local runtime (venv, servers from 'make tick', data)..."
  make --no-print-directory venv tick data || die "preparing the local runtime failed (see above)"
  exec "$ROOT/.venv/bin/python" -m tickguard.stack.local "$@"
fi

# --- prerequisites ------------------------------------------------------------------------------
command -v docker >/dev/null || die "docker not found (install Docker, or use ./up.sh --local)"
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
  COMPOSE=(docker-compose)
else
  die "neither 'docker compose' nor 'docker-compose' found"
fi
docker info >/dev/null 2>&1 || die "the Docker daemon is not reachable (is it running? may this user use it?)"
if [ ! -f data/raw/creditcard.csv ]; then
  # The generator replays the holdout rows; fetch the hash-verified data set once (cached in ~/.cache/tickguard).
  echo "up.sh: data/raw/creditcard.csv missing: fetching it (make data)..."
  make --no-print-directory data || die "fetching the data set failed; or put a creditcard.csv of the Kaggle schema in data/raw/"
fi
[ -e models/production ] || die "models/production missing: run 'make train' (or 'make train-fast') first"

init_env

# --- build, start, wait -------------------------------------------------------------------------
compose() { "${COMPOSE[@]}" --env-file "$ROOT/.env" -f "$ROOT/compose/docker-compose.yml" "$@"; }
compose build
compose up -d
echo "up.sh: waiting for the services to be healthy..."
deadline=$((SECONDS + ${UP_TIMEOUT:-300}))
for service in influxdb api udf kapacitor chronograf grafana jupyter; do
  while :; do
    id=$(compose ps -q "$service" 2>/dev/null || true)
    status=$([ -n "$id" ] && docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo starting)
    case "$status" in
      healthy) echo "  $service: healthy"; break ;;
      unhealthy|exited|dead) compose logs --tail 30 "$service" >&2; die "$service is $status (logs above)" ;;
    esac
    [ $SECONDS -lt $deadline ] || { compose logs --tail 30 "$service" >&2; die "$service not healthy after ${UP_TIMEOUT:-300}s"; }
    sleep 2
  done
done

port() { grep -E "^$1=" .env | cut -d= -f2; }
cat <<INFO

tickguard is up (everything listens on 127.0.0.1 only):
  Grafana     http://127.0.0.1:$(port GRAFANA_PORT)/d/tickguard-fraud-live   user GRAFANA_ADMIN_USER / GRAFANA_ADMIN_PASSWORD
  Chronograf  http://127.0.0.1:$(port CHRONOGRAF_PORT)   (alerts: Alerting > Alert History; rules: Alerting > Manage Tasks)
  JupyterLab  http://127.0.0.1:$(port JUPYTER_PORT)/lab?token=<JUPYTER_TOKEN>
  REST API    http://127.0.0.1:$(port API_PORT)/model     admin token: TICKGUARD_ADMIN_TOKEN
  InfluxDB    http://127.0.0.1:$(port INFLUXDB_PORT)      user INFLUXDB_ADMIN_USER / INFLUXDB_ADMIN_PASSWORD
  Kapacitor   http://127.0.0.1:$(port KAPACITOR_PORT)/kapacitor/v1/tasks
Credentials are in $ROOT/.env (mode 600). Logs: ${COMPOSE[*]} -f compose/docker-compose.yml logs -f
Stop: ./down.sh    Wipe all data: ./down.sh --volumes
INFO
