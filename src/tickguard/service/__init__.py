"""The REST classifier service: Flask app factory, config, metrics, logs and the `serve` command."""
