"""tickguard: real-time anomaly detection for the TICK stack and Grafana."""

__version__ = "0.1.0"
