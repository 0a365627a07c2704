"""Rows/s of 1,000-row Open Inference Protocol requests: gRPC (tritonclient.grpc) against REST JSON.

Why: issue 15 asks whether gRPC's raw tensors buy throughput over the V2 REST JSON body on the same
service. One `tickguard serve --grpc-port` (2 workers x 4 threads, the committed fraud model) answers
both; each transport gets the same 1,000 real rows (data/raw/creditcard.csv) from `--clients`
closed-loop client threads for `--seconds`, transports interleaved over `--rounds` so drift on the
shared 2-core machine hits both alike. Clients run in this process, so the figures include client
CPU as a real caller pays it (tritonclient for gRPC, orjson + requests for REST).

Run: .venv/bin/python -m benchmarks.oip_grpc_bench [--seconds 8] [--rounds 3] [--clients 2]
Writes benchmarks/results/oip_grpc.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import requests
import tritonclient.grpc as grpcclient

from tickguard.service.local import LocalService, free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "oip_grpc.json"
ROWS = 1000


def load_rows(features: list[str]) -> np.ndarray:
    with (ROOT / "data" / "raw" / "creditcard.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        return np.array(
            [[float(record[f]) for f in features] for record, _ in zip(reader, range(ROWS), strict=False)]
        )


def grpc_caller(service: LocalService, matrix: np.ndarray, datatype: str):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{service.grpc_port}")
    values = matrix.astype(np.float32 if datatype == "FP32" else np.float64)

    def call() -> None:
        tensor = grpcclient.InferInput("features", list(values.shape), datatype)
        tensor.set_data_from_numpy(values)
        result = client.infer("fraud", [tensor])
        assert result.as_numpy("score").shape == (ROWS,)

    return call


def rest_caller(service: LocalService, matrix: np.ndarray):
    session = requests.Session()
    url = f"{service.url}/v2/models/fraud/infer"

    def call() -> None:
        body = {"inputs": [{"name": "features", "shape": list(matrix.shape), "datatype": "FP64",
                            "data": matrix.ravel().tolist()}]}  # fmt: skip
        response = session.post(
            url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}, timeout=30
        )
        assert response.status_code == 200, response.text
        assert len(orjson.loads(response.content)["outputs"][0]["data"]) == ROWS

    return call


def measure(make_call, clients: int, seconds: float) -> float:
    """Rows/s of `clients` threads each calling in a closed loop for `seconds`."""
    calls = [make_call() for _ in range(clients)]
    for call in calls:
        call()  # warm the connection
    done = [0] * clients
    stop = time.perf_counter() + seconds

    def loop(index: int) -> None:
        while time.perf_counter() < stop:
            calls[index]()
            done[index] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) * ROWS / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2)
    args = parser.parse_args()
    service = LocalService(models_dir=ROOT / "models", detectors=("fraud",), workers=2, threads=4,
                           grpc_port=free_port())  # fmt: skip
    with service:
        card = requests.get(f"{service.url}/model?model=fraud", timeout=10).json()
        matrix = load_rows(card["features"])
        transports = {
            "grpc_fp64_raw": lambda: grpc_caller(service, matrix, "FP64"),
            "grpc_fp32_raw": lambda: grpc_caller(service, matrix, "FP32"),
            "rest_json_fp64": lambda: rest_caller(service, matrix),
        }
        samples: dict[str, list[float]] = {name: [] for name in transports}
        for _ in range(args.rounds):
            for name, make_call in transports.items():
                samples[name].append(measure(make_call, args.clients, args.seconds))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    result = {
        "what": "rows/s of 1,000-row V2 inference requests, closed-loop clients, one tickguard serve",
        "command": f"python -m benchmarks.oip_grpc_bench --seconds {args.seconds} --rounds {args.rounds} "
        f"--clients {args.clients}",
        "model": f"fraud {card['version']}",
        "server": "tickguard serve --grpc-port: 2 gunicorn workers x 4 threads, gRPC in the same workers",
        "clients": args.clients,
        "rows_per_request": ROWS,
        "rows_per_s_median": {name: round(value) for name, value in medians.items()},
        "rows_per_s_rounds": {name: [round(value) for value in values] for name, values in samples.items()},
        "grpc_over_rest_json": round(medians["grpc_fp64_raw"] / medians["rest_json_fp64"], 2),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["rows_per_s_median"]), "gRPC/REST JSON:", result["grpc_over_rest_json"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
