#!/usr/bin/env bash
# Stop the tickguard stack. `./down.sh --volumes` also deletes its data (InfluxDB, Kapacitor, Grafana, Chronograf).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
command -v docker >/dev/null || {
  echo "down.sh: docker not found: nothing to stop (a './up.sh --local' stack stops with Ctrl-C)" >&2; exit 1
}
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
  COMPOSE=(docker-compose)
else
  echo "down.sh: neither 'docker compose' nor 'docker-compose' found" >&2; exit 1
fi
[ -f .env ] || { echo "down.sh: no .env: nothing was started with ./up.sh" >&2; exit 1; }
args=(down --remove-orphans)
case "${1:-}" in
  --volumes|-v) args+=(--volumes); echo "down.sh: stopping and deleting all data volumes" ;;
  "") ;;
  *) echo "usage: ./down.sh [--volumes]" >&2; exit 2 ;;
esac
"${COMPOSE[@]}" --env-file "$ROOT/.env" -f "$ROOT/compose/docker-compose.yml" "${args[@]}"
