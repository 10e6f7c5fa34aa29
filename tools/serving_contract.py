"""Measure what a real `mlflow models serve` answers to each kind of request: a markdown table.

``python tools/serving_contract.py [--model-uri models:/NAME@ALIAS]`` starts
the scoring server on 127.0.0.1 (as ``make serve`` does), sends every documented request format
and the client mistakes, and prints status, body size and the start of the message. The
README's serving tables come from this output.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
from pathlib import Path

IMG = [[0] * 28] * 28
COLUMNS = [f"p{i}" for i in range(784)]
JSON = {"Content-Type": "application/json"}


def cases() -> dict[str, tuple[bytes, dict[str, str]]]:
    """Request name -> (body, headers)."""
    flat = [0] * 784

    def js(payload) -> bytes:
        return json.dumps(payload).encode()

    return {
        "`inputs`: (N, 28, 28) ints or floats": (js({"inputs": [IMG]}), JSON),
        "`instances`: (N, 28, 28)": (js({"instances": [IMG]}), JSON),
        "`dataframe_split`: 784 columns": (
            js({"dataframe_split": {"columns": COLUMNS, "data": [flat]}}),
            JSON,
        ),
        "`dataframe_split`: one column of 784-value lists": (
            js({"dataframe_split": {"columns": ["image"], "data": [[flat]]}}),
            JSON,
        ),
        "`dataframe_records`: 784 keys": (
            js({"dataframe_records": [dict.fromkeys(COLUMNS, 0)]}),
            JSON,
        ),
        "CSV (`text/csv`): 784 columns, header row": (
            (",".join(COLUMNS) + "\n" + ",".join(["0"] * 784) + "\n").encode(),
            {"Content-Type": "text/csv"},
        ),
        "shape (N, 784) as `inputs`": (js({"inputs": [flat]}), JSON),
        "shape (N, 28, 28, 1)": (js({"inputs": [[[[0]] * 28] * 28]}), JSON),
        'named inputs `{"x": ...}`': (js({"inputs": {"x": IMG}}), JSON),
        "CSV with 5 columns": (b"a,b,c,d,e\n1,2,3,4,5\n", {"Content-Type": "text/csv"}),
        "non-numeric values": (js({"inputs": [[["a"] * 28] * 28]}), JSON),
        "NaN": (b'{"inputs": [' + json.dumps([[float("nan")] * 28] * 28).encode() + b"]}", JSON),
        "values outside 0-255 (784 long floats)": (
            js({"inputs": [[[255.12345678901234] * 28] * 28]}),
            JSON,
        ),
        "empty list": (js({"inputs": []}), JSON),
        "missing `inputs`": (js({"pixels": [IMG]}), JSON),
        "`top_k` = 11": (js({"inputs": [IMG], "params": {"top_k": 11}}), JSON),
        "`top_k` = -1": (js({"inputs": [IMG], "params": {"top_k": -1}}), JSON),
        '`top_k` = "x"': (js({"inputs": [IMG], "params": {"top_k": "x"}}), JSON),
        "malformed JSON": (b'{"inputs": [[[0, 1', JSON),
        "empty body": (b"", JSON),
        "`Content-Type: text/plain`": (js({"inputs": [IMG]}), {"Content-Type": "text/plain"}),
        "no `Content-Type`": (js({"inputs": [IMG]}), {}),
    }


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST ``body`` to ``<url>/invocations`` with exactly ``headers``.

    Unlike urllib, which adds a Content-Type of its own when none is given.
    """
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request("POST", "/invocations", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def table(port: int) -> str:
    """The markdown table of every case against the server on ``port``."""
    rows = ["| request | status | body | message |", "| --- | --- | --- | --- |"]
    for name, (body, headers) in cases().items():
        status, reply = post(f"http://127.0.0.1:{port}", body, headers)
        try:
            message = json.loads(reply).get("message", "")
        except ValueError:
            message = reply.decode(errors="replace")
        if status == 200:
            message = "predictions"
        message = " ".join(message.split())[:110].replace("|", "\\|")
        rows.append(f"| {name} | {status} | {len(reply)} B | {message} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Serve the model, print the table."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from fmnist_mlops.runtime.processes import running

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model-uri", default=None, help="default: @champion of conf/")
    parser.add_argument("--port", type=int, default=5391)
    args = parser.parse_args(argv)
    if args.model_uri is None:
        from fmnist_mlops.config.compose import champion_uri

        args.model_uri = champion_uri()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(bin_dir / "mlflow"), "models", "serve", "-m", args.model_uri]
    cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(args.port)]
    log = Path(tempfile.mkdtemp(prefix="fmnist-contract-")) / "serve.log"
    with running(cmd, env, f"http://127.0.0.1:{args.port}/ping", log):
        print(table(args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
