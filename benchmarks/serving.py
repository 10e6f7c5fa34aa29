"""Serving benchmark: our pyfunc vs the plain ``mlflow.tensorflow`` flavor, side by side.

Starts a real ``mlflow models serve`` for each model in turn (same machine, same run), sends
real test images over HTTP and prints one table (also written as JSON):
single-image latency p50/p95 and batch throughput (images/s, batches of 256).

    python benchmarks/serving.py [--model-uri models:/NAME@ALIAS]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from measure import BIN, ROOT

from fmnist_mlops.runtime.processes import running


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(model_uri: str, tracking_uri: str, log: Path) -> Iterator[str]:
    """A real ``mlflow models serve`` of ``model_uri`` on a free port, for the block."""
    port = free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, PATH=f"{BIN}:{os.environ['PATH']}")
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
    cmd += ["-h", "127.0.0.1", "-p", str(port)]
    url = f"http://127.0.0.1:{port}"
    with running(cmd, env, f"{url}/ping", log, timeout=180):
        yield url


def post(url: str, body: bytes) -> float:
    req = urllib.request.Request(
        f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as resp:
        resp.read()
        assert resp.status == 200
    return time.perf_counter() - t0


def measure(url: str, x: np.ndarray, singles: int, batches: int) -> dict:
    """Latency of single images and throughput of 256-image batches, payloads pre-encoded."""
    one = [json.dumps({"inputs": [x[i].tolist()]}).encode() for i in range(singles)]
    batch = [
        json.dumps({"inputs": x[i * 256 : (i + 1) * 256].tolist()}).encode() for i in range(batches)
    ]
    for body in one[:10] + batch[:2]:  # warm-up: graph tracing, allocator, connection setup
        post(url, body)
    lat = sorted(post(url, body) * 1000 for body in one)
    t0 = time.perf_counter()
    for body in batch:
        post(url, body)
    elapsed = time.perf_counter() - t0
    return {
        "p50_ms": statistics.median(lat),
        "p95_ms": lat[int(0.95 * (len(lat) - 1))],
        "images_per_s": batches * 256 / elapsed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", default=None, help="default: @champion of conf/")
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'mlflow.db'}")
    parser.add_argument("--singles", type=int, default=200)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving.json"
    )
    args = parser.parse_args()
    if args.model_uri is None:
        from fmnist_mlops.config.compose import champion_uri

        args.model_uri = champion_uri()

    import mlflow

    sys.path.insert(0, str(ROOT / "src"))
    from fmnist_mlops.evaluate.scoring import load_network

    with np.load(ROOT / "data" / "prepared" / "test.npz") as npz:
        pixels = npz["x"]
    # Raw pixels are integers; float JSON ("12.0") costs the server ~5x more to parse.
    x = pixels.astype(np.int64)
    xf = pixels.astype(np.float32)
    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_registry_uri(args.tracking_uri)
    network = load_network(args.model_uri)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        # The same network, logged with the plain TensorFlow flavor into a scratch store.
        plain_store = f"sqlite:///{tmp}/plain.db"
        mlflow.set_tracking_uri(plain_store)
        mlflow.set_experiment("bench")
        with mlflow.start_run():
            signature = mlflow.models.infer_signature(xf[:2], network.predict(xf[:2], verbose=0))
            plain = mlflow.tensorflow.log_model(
                network, name="model", signature=signature, pip_requirements=["tensorflow-cpu"]
            )
        for label, uri, store in (
            ("project pyfunc", args.model_uri, args.tracking_uri),
            ("plain mlflow.tensorflow", plain.model_uri, plain_store),
        ):
            with serving(uri, store, Path(tmp) / f"{label.split()[0]}.log") as url:
                results[label] = measure(url, x, args.singles, args.batches)
                results[f"{label}, float JSON"] = measure(url, xf, args.singles, args.batches)

    ours, theirs = results["project pyfunc"], results["plain mlflow.tensorflow"]
    ratio = ours["images_per_s"] / theirs["images_per_s"]
    print(f"{'model, payload':<38}{'p50 ms':>9}{'p95 ms':>9}{'images/s (256)':>16}")
    for label, r in results.items():
        name = label if "float" in label else f"{label}, int JSON"
        print(f"{name:<38}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{r['images_per_s']:>16.0f}")
    ratio_f = (
        results["project pyfunc, float JSON"]["images_per_s"]
        / results["plain mlflow.tensorflow, float JSON"]["images_per_s"]
    )
    print(
        f"batch throughput ratio, project / plain: {ratio:.2f}x (int JSON), {ratio_f:.2f}x (float)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "results": results,
                "throughput_ratio": ratio,
                "throughput_ratio_float_json": ratio_f,
                "singles": args.singles,
                "batches": args.batches,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
