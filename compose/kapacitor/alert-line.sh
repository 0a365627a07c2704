#!/bin/sh
# Kapacitor alert handler (`.exec('/bin/sh', alert_line, alert_log)` in the alert task templates): reads one alert
# as Kapacitor's JSON on stdin and appends one human-readable line to the file named by $1, so the alert
# log can be followed with `tail -f`:
#   2026-12-02T06:59:01.52Z CRITICAL fraud_alert:tx231205  fraud flagged: txid tx231205, Amount 1, score 0.993
# The JSON records themselves go to alerts.json (the tasks' `.log()` handler). Every Kapacitor handler
# emits JSON, and the official kapacitor image has neither jq nor Python: hence POSIX sh and sed, which
# that image (Ubuntu) and local mode both have.
set -eu
log_file=${1:?usage: alert-line.sh ALERT_LOG < alert.json}
json=$(cat)
# Kapacitor encodes its alert struct in field order: {"id":"…","message":"…","details":"…","time":"…",
# "duration":N,"level":"…","data":…}. A JSON string is "([^"\\]|\\.)*". Anchoring the whole prefix
# keeps a tag or field called "level" or "id" inside "data" from being mistaken for the alert's own.
line=$(printf '%s\n' "$json" | sed -nE \
  's/^\{"id":"(([^"\\]|\\.)*)","message":"(([^"\\]|\\.)*)","details":"([^"\\]|\\.)*","time":"([^"]*)","duration":[^,]*,"level":"([A-Z]+)".*/\6 \7 \1  \3/p')
if [ -z "$line" ]; then
  # An alert format this script does not know: keep the raw record rather than lose the alert.
  line="unparsed alert: $json"
fi
# Undo JSON's escapes for the characters messages use (Go escapes <, > and & as \u003c, \u003e, \u0026).
# Newlines stay escaped (\n), so one alert is always one line.
printf '%s\n' "$line" |
  sed -e 's/\\u003c/</g' -e 's/\\u003e/>/g' -e 's/\\u0026/\&/g' -e 's/\\"/"/g' -e 's/\\\\/\\/g' >>"$log_file"
