"""Operating the pipeline: backfill of points the stream tasks never scored, and measurement probes."""
