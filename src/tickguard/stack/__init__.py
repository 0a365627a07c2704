"""The stack: holdout replay generator, Kapacitor tasks (shared scripts, detectors deployed from task templates),
Grafana dashboards and the local (no-Docker) pipeline."""
