"""Benchmarks of tickguard: `make bench` runs `python -m benchmarks.run_all`; results in benchmarks/results/."""
