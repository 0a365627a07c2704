"""Rows/s of Open Inference Protocol batches over REST: binary tensors against JSON.

The binary tensor data extension (what tritonclient.http sends by default) moves a batch as raw
little-endian floats after a small JSON header, where the JSON form spells every value in decimal.
This measures what that is worth to the service: `tickguard serve` (gunicorn, 2 workers, the
production fraud model) receives 1,000- and 10,000-row batches of real rows from the data set as
- json:   FP64 `data` in JSON, JSON outputs;
- binary: FP64 bytes in, both outputs as bytes (`binary_data_output`), as tritonclient's defaults;
- binary_fp32: the same with FP32 inputs (half the bytes).
Bodies are encoded once before the clock starts and sent over keep-alive connections by two client
threads with http.client, so the client's cost is one send and one receive per request; the server
shares the machine's cores with them, so the load average at start is recorded too.

Run: .venv/bin/python -m benchmarks.oip_binary [--duration 8] [--models-dir models]
Writes benchmarks/results/oip_binary.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np

from tickguard.service.local import LocalService

RESULTS = Path(__file__).parent / "results" / "oip_binary.json"
HEADER = "Inference-Header-Content-Length"


def holdout_rows(features: list[str], count: int) -> np.ndarray:
    """The last `count` rows of the credit-card data set, in the card's feature order."""
    import pandas as pd

    from tickguard.data.config import data_settings
    from tickguard.detectors import load_detector

    frame = pd.read_csv(data_settings().csv_for(load_detector("fraud")), usecols=features)
    return frame.tail(count)[features].to_numpy(np.float64)


def encode(rows: np.ndarray, form: str) -> tuple[bytes, dict[str, str]]:
    """One pre-encoded request body and its headers."""
    if form == "json":
        tensor = {
            "name": "features",
            "shape": list(rows.shape),
            "datatype": "FP64",
            "data": rows.ravel().tolist(),
        }
        return json.dumps({"inputs": [tensor]}).encode(), {"Content-Type": "application/json"}
    dtype, numpy_type = ("FP32", "<f4") if form == "binary_fp32" else ("FP64", "<f8")
    blob = rows.astype(numpy_type).tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": list(rows.shape),
                    "datatype": dtype,
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return head + blob, {HEADER: str(len(head))}


def run_load(port: int, body: bytes, headers: dict[str, str], seconds: float, clients: int = 2) -> dict:
    """Closed-loop requests from `clients` threads for `seconds`; requests/s and latency."""
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            connection.request("POST", "/v2/models/fraud/infer", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"status {response.status}")
            mine.append(time.perf_counter() - start)
        connection.close()
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "seconds": round(elapsed, 3),
        "requests_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per scenario")
    parser.add_argument("--models-dir", default="models")
    args = parser.parse_args()
    card = json.loads((Path(args.models_dir) / "fraud" / "production" / "model_card.json").read_text())
    rows_all = holdout_rows(card["features"], 10_000)
    results: dict = {
        "benchmark": "oip_binary",
        "model_version": card["version"],
        "server": "tickguard serve, 2 gunicorn workers x 4 threads, 2 closed-loop client threads",
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "scenarios": {},
    }
    with LocalService(models_dir=args.models_dir, detectors=("fraud",), workers=2, threads=4) as service:
        for count in (1_000, 10_000):
            rows = rows_all[:count]
            for form in ("json", "binary", "binary_fp32"):
                body, headers = encode(rows, form)
                run_load(service.port, body, headers, 1.0)  # warm both workers and connections
                measured = run_load(service.port, body, headers, args.duration)
                measured["rows_per_s"] = round(measured["requests_per_s"] * count)
                measured["request_bytes"] = len(body)
                results["scenarios"][f"{form}_{count}"] = measured
                print(
                    f"{form:>12} {count:>6} rows: {measured['rows_per_s']:>10,} rows/s  p50 {measured['p50_ms']} ms"
                )
    for count in (1_000, 10_000):
        json_rate = results["scenarios"][f"json_{count}"]["rows_per_s"]
        for form in ("binary", "binary_fp32"):
            results["scenarios"][f"{form}_{count}"]["vs_json"] = round(
                results["scenarios"][f"{form}_{count}"]["rows_per_s"] / json_rate, 2
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
