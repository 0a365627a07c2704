"""In-process scoring speed of the production model; writes benchmarks/results/model.json.

Run: .venv/bin/python benchmarks/model_bench.py [--model production] [--seconds 5]
Scores real holdout rows through `ModelArtifact.score` (what the REST service calls) in batches of
1, 1000 and 10000 rows and the whole holdout, and records wall-clock and CPU-time throughput: the
machine's cores are shared, so CPU time says what the model costs and wall time what was observed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "model.json"


def measure(score, X: np.ndarray, batch: int, min_seconds: float) -> dict:
    """Score X in `batch`-row slices repeatedly for at least min_seconds; return throughput figures."""
    score(X[:batch])  # warm-up
    latencies, rows = [], 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    start = 0
    while time.perf_counter() - wall0 < min_seconds or not latencies:
        if start + batch > len(X):
            start = 0
        t = time.perf_counter()
        score(X[start : start + batch])
        latencies.append(time.perf_counter() - t)
        rows += batch
        start += batch
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    lat_ms = np.array(latencies) * 1000
    return {
        "batch_rows": batch,
        "calls": len(latencies),
        "rows": rows,
        "rows_per_s_wall": rows / wall,
        "rows_per_s_cpu": rows / cpu if cpu > 0 else None,
        "latency_ms_p50": float(np.percentile(lat_ms, 50)),
        "latency_ms_p95": float(np.percentile(lat_ms, 95)),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the JSON result file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="production", help="version, path or 'production'")
    parser.add_argument("--seconds", type=float, default=5.0, help="minimum measuring time per batch size")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from tickguard import modelstore
    from tickguard.data import load_dataset, time_split
    from tickguard.scoring.predictor import Predictor  # scores as the service does (compiled when it can)
    from tickguard.training.config import models_dir

    artifact = Predictor.load(
        modelstore.resolve_model_dir(modelstore.detector_models_dir(models_dir()), args.model), max_rows=1
    )
    _, holdout = time_split(load_dataset())
    X = np.ascontiguousarray(holdout[artifact.features].to_numpy(dtype=np.float64))
    runs = [measure(artifact.score, X, b, args.seconds) for b in (1, 1000, 10_000)]
    runs.append(measure(artifact.score, X, len(X), args.seconds))
    result = {
        "benchmark": "model_inprocess_scoring",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_version": artifact.version,
        "model_size_bytes": artifact.card.get("model_size_bytes"),
        "target_rows_per_s": 100_000,
        "runs": runs,
        "meets_target_1000_row_batches_wall": runs[1]["rows_per_s_wall"] >= 100_000,
        "meets_target_1000_row_batches_cpu": (runs[1]["rows_per_s_cpu"] or 0) >= 100_000,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1m_at_end": os.getloadavg()[0],
            "python": platform.python_version(),
        },
        "command": "python benchmarks/model_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for run in runs:
        print(
            f"batch {run['batch_rows']:>6}: {run['rows_per_s_wall']:>10,.0f} rows/s wall, "
            f"{run['rows_per_s_cpu'] or 0:>10,.0f} rows/s per CPU-second, p50 {run['latency_ms_p50']:.2f} ms"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
