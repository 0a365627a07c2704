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

# set_env_value KEY VALUE: replace the KEY= line of .env, or append one (the file keeps its mode).
set_env_value() {
  local tmp
  tmp=$(mktemp)
  awk -v k="$1" -v v="$2" 'BEGIN{done=0} $0 ~ "^"k"=" {print k"="v; done=1; next} {print} END{if(!done) print k"="v}' .env >"$tmp"
  cat "$tmp" >.env && rm -f "$tmp"
}

# --- .env with random secrets on first run ------------------------------------------------------
init_env() {
  local secrets=(INFLUXDB_ADMIN_PASSWORD INFLUXDB_READER_PASSWORD GRAFANA_ADMIN_PASSWORD JUPYTER_TOKEN TICKGUARD_ADMIN_TOKEN)
  if [ ! -f .env ]; then
    cp .env.example .env
    chmod 600 .env
    echo "up.sh: created .env from .env.example"
  fi
  local key value
  for key in "${secrets[@]}"; do
    if grep -q "^${key}=\$" .env || ! grep -q "^${key}=" .env; then
      value=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
      set_env_value "$key" "$value"
      echo "up.sh: generated $key"
    fi
  done
  # `cd compose && docker compose up` reads compose/.env: point it at the same file.
  [ -e compose/.env ] || ln -s ../.env compose/.env
  # Plain `docker compose exec|logs|ps ...` from the repository root (and from compose/, through the link)
  # finds the compose file through COMPOSE_FILE in .env. Absolute, because compose resolves a relative
  # one against the working directory; rewritten on every run, so a moved checkout is followed.
  set_env_value COMPOSE_FILE "$ROOT/compose/docker-compose.yml"
  # jupyter runs as the invoking user, so notebooks it saves into notebooks/ stay theirs (any uid, not
  # just 1000); kept if already set, so a sudo run does not switch the owner to root.
  grep -q '^HOST_UID=.' .env || set_env_value HOST_UID "$(id -u)"
  grep -q '^HOST_GID=.' .env || set_env_value HOST_GID "$(id -g)"
}

if [ "${1:-}" = "--init-env" ]; then
  init_env
  exit 0
fi

if [ "${1:-}" = "--local" ]; then
  shift
  command -v make >/dev/null || die "make not found (apt-get install make)"
  for arg in "$@"; do
    case "$arg" in
      -h | --help)
        # Help needs only the venv: no server build, no data download, and no make chatter around the usage.
        if [ ! -f "$ROOT/.venv/.installed" ]; then
          prep_log=$(mktemp)
          make --no-print-directory -s venv >"$prep_log" 2>&1 || { cat "$prep_log" >&2; die "creating .venv failed"; }
          rm -f "$prep_log"
        fi
        exec "$ROOT/.venv/bin/tickguard" up --local "$@"
        ;;
    esac
  done
  # First run: the venv, the native servers and the data set are built/fetched here (cached afterwards).
  echo "up.sh: preparing the local runtime (venv, servers from 'make tick', data)..."
  make --no-print-directory venv tick data || die "preparing the local runtime failed (see above)"
  exec "$ROOT/.venv/bin/tickguard" up --local "$@"
fi

# --- prerequisites ------------------------------------------------------------------------------
# without_docker REASON: say why Docker cannot be used and how to run the same pipeline natively, then fail.
without_docker() {
  cat >&2 <<MSG
up.sh: $1.
The same pipeline runs without Docker:  ./up.sh --local   (./up.sh --local --help lists its options)
  It needs make, a C compiler (gcc), Go (https://go.dev/dl), Rust's cargo (https://rustup.rs) and
  Python 3.11 with venv. The first run builds InfluxDB and Kapacitor from source (several minutes;
  cached in ~/.cache/tickguard) and fetches the data set; later runs start in seconds.
  Grafana and Chronograf only run under Docker.
MSG
  exit 1
}
command -v docker >/dev/null || without_docker "docker not found (install Docker Engine with its compose plugin)"
docker info >/dev/null 2>&1 ||
  without_docker "the Docker daemon is not reachable (docker info failed: is it running? may this user use it?)"
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
  COMPOSE=(docker-compose)
else
  without_docker "neither 'docker compose' nor 'docker-compose' found (install Docker's compose plugin)"
fi
if [ ! -f data/raw/creditcard.csv ]; then
  # The generator replays the holdout rows; fetch the hash-verified data set once (cached in ~/.cache/tickguard).
  echo "up.sh: data/raw/creditcard.csv missing: fetching it (make data)..."
  make --no-print-directory data || die "fetching the data set failed; or put a creditcard.csv of the Kaggle schema in data/raw/"
fi
# The service serves every models/<detector>/production; the committed fraud model is one.
ls -d models/*/production >/dev/null 2>&1 || die "no models/<detector>/production: run 'make train' (or 'make train-fast') first"

init_env

# --- build, start, wait -------------------------------------------------------------------------
compose() { "${COMPOSE[@]}" --env-file "$ROOT/.env" -f "$ROOT/compose/docker-compose.yml" "$@"; }
compose build

# service_state SERVICE: restarting (it exited; the restart policy brings it back), else its health
# (healthy, unhealthy, starting), else its state (exited, ...), or missing.
service_state() {
  local id
  id=$(compose ps -q "$1" 2>/dev/null) || true
  if [ -z "$id" ]; then
    echo missing
    return 0
  fi
  docker inspect -f '{{if .State.Restarting}}restarting{{else if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null ||
    echo unknown
}

# diagnose SERVICE PROBLEM: the service's last log lines and what to do, then exit 1. Every command here
# tolerates failure, so `set -e` cannot cut the diagnosis short.
diagnose() {
  echo "up.sh: $1 is $2; its last log lines:" >&2
  compose logs --no-color --tail 30 "$1" >&2 || echo "  (no logs: '${COMPOSE[*]} logs $1' failed)" >&2
  die "$1 is $2 (logs above; more: '${COMPOSE[*]} logs $1' in $ROOT; README: Troubleshooting)"
}

# wait_healthy UP_STATUS: wait for every service with a healthcheck, in dependency order. When
# `compose up` failed (UP_STATUS != 0, e.g. "dependency failed to start"), a service that was never
# created is diagnosed at once instead of waited for.
wait_healthy() {
  local up_status=$1 deadline=$((SECONDS + ${UP_TIMEOUT:-300})) service state
  echo "up.sh: waiting for the services to be healthy..."
  for service in influxdb api udf kapacitor chronograf grafana jupyter; do
    while :; do
      state=$(service_state "$service")
      case "$state" in
        healthy) echo "  $service: healthy"; break ;;
        unhealthy | exited | dead | restarting) diagnose "$service" "$state" ;;
        missing) [ "$up_status" -eq 0 ] || diagnose "$service" "not created (compose up failed, see above)" ;;
      esac
      [ $SECONDS -lt $deadline ] || diagnose "$service" "not healthy after ${UP_TIMEOUT:-300}s (state: $state)"
      sleep 2
    done
  done
  [ "$up_status" -eq 0 ] || die "'${COMPOSE[*]} up -d' failed (exit $up_status, see above) although every service is healthy"
}

# compose up waits for healthy dependencies and fails when one is unhealthy: diagnose it, do not just exit.
up_status=0
compose up -d || up_status=$?
wait_healthy "$up_status"

port() { grep -E "^$1=" .env | cut -d= -f2; }
cat <<INFO

tickguard is up (everything listens on 127.0.0.1 only):
  Grafana     http://127.0.0.1:$(port GRAFANA_PORT)/d/tickguard-fraud-live   user GRAFANA_ADMIN_USER / GRAFANA_ADMIN_PASSWORD
  Chronograf  http://127.0.0.1:$(port CHRONOGRAF_PORT)   (alerts: Alerting > Alert History; rules: Alerting > Manage Tasks)
  JupyterLab  http://127.0.0.1:$(port JUPYTER_PORT)/lab?token=<JUPYTER_TOKEN>
  REST API    http://127.0.0.1:$(port API_PORT)/model     admin token: TICKGUARD_ADMIN_TOKEN
  InfluxDB    http://127.0.0.1:$(port INFLUXDB_PORT)      user INFLUXDB_ADMIN_USER / INFLUXDB_ADMIN_PASSWORD
  Kapacitor   http://127.0.0.1:$(port KAPACITOR_PORT)/kapacitor/v1/tasks
Credentials are in $ROOT/.env (mode 600). Logs (from $ROOT): ${COMPOSE[*]} logs -f [SERVICE]
Stop: ./down.sh    Wipe all data: ./down.sh --volumes
INFO
