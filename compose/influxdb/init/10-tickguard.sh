# Runs once, when the InfluxDB volume is first initialised (sourced by the image's init-influxdb.sh,
# which provides $INFLUX_CMD logged in as the admin user).
# Creates the databases the pipeline uses — every detector's (the `database` of each detector file in
# /etc/tickguard/detectors, mounted from ../detectors), the alert history's and Kapacitor's statistics' —
# and a read-only user for Grafana that may read all of them.
# A detector added after the volume exists gets the same from compose's `deploy` service (`tickguard
# deploy` as the admin, with INFLUXDB_READER_USER: tickguard.stack.deploy.ensure_databases).
set -e
detectors_dir=${TICKGUARD_DETECTORS_DIR:-/etc/tickguard/detectors}
detector_dbs=$(sed -n 's/^database[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$detectors_dir"/*.toml 2>/dev/null | sort -u)
databases=$(printf '%s\n' fraud chronograf _kapacitor $detector_dbs | awk 'NF && !seen[$0]++')
echo "tickguard: creating databases: $(echo $databases)"
for db in $databases; do
  $INFLUX_CMD "CREATE DATABASE \"$db\""
done
$INFLUX_CMD "CREATE USER \"$INFLUXDB_READER_USER\" WITH PASSWORD '$INFLUXDB_READER_PASSWORD'"
for db in $databases; do
  $INFLUX_CMD "GRANT READ ON \"$db\" TO \"$INFLUXDB_READER_USER\""
done
