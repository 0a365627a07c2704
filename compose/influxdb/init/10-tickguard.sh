# Runs once, when the InfluxDB volume is first initialised (sourced by the image's init-influxdb.sh,
# which provides $INFLUX_CMD logged in as the admin user).
# Creates the databases the pipeline uses and a read-only user for Grafana.
set -e
for db in fraud chronograf _kapacitor; do
  $INFLUX_CMD "CREATE DATABASE \"$db\""
done
$INFLUX_CMD "CREATE USER \"$INFLUXDB_READER_USER\" WITH PASSWORD '$INFLUXDB_READER_PASSWORD'"
for db in fraud chronograf _kapacitor; do
  $INFLUX_CMD "GRANT READ ON \"$db\" TO \"$INFLUXDB_READER_USER\""
done
