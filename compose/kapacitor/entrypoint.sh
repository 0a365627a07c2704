#!/bin/sh
# Copy the shared TICKscripts (kapacitor_stats) into Kapacitor's load directory, then start Kapacitor
# through the image's own entrypoint. A variable TICKVAR_<name> in the environment replaces the default of
# `var <name> = ...` in every script that declares it. Each detector's tasks (score and alerts) are not
# files: compose's `deploy` job defines them from task templates over Kapacitor's HTTP API once it is up.
set -eu
src=/etc/tickguard/tasks
dst=/var/lib/kapacitor/load/tasks
mkdir -p "$dst"
rm -f "$dst"/*.tick
for script in "$src"/*.tick; do
  target="$dst/$(basename "$script")"
  cp "$script" "$target"
  env | grep '^TICKVAR_' | while IFS='=' read -r key value; do
    name=${key#TICKVAR_}
    sed -i "s|^var $name = .*|var $name = $value|" "$target"
  done
done
# The alert log exists from the start, so `tail -f` on it works before the first alert.
touch /var/lib/kapacitor/alerts.log
chown -R kapacitor:kapacitor /var/lib/kapacitor 2>/dev/null || true
echo "tickguard: loading $(ls "$dst" | tr '\n' ' ')from $dst"
exec /entrypoint.sh "$@"
