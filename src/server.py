"""``make server``: a shared MLflow tracking server, lean enough for a 2-core box.

``python src/server.py [--backend-store-uri URI] [--artifacts-destination DEST] [--port 5000]``
"""

import argparse
import os

from fmnist_mlops.runtime.cli import command


def main(argv: list[str] | None = None) -> int:
    """Check the backend and the artifacts destination, then become ``mlflow server``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend-store-uri", default=None)
    parser.add_argument(
        "--artifacts-destination",
        default=os.environ.get("MLFLOW_ARTIFACTS_DESTINATION"),
        help="where served artifacts live (default: <project>/mlruns)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    from fmnist_mlops.tracking.server import serve

    serve(args.backend_store_uri, args.artifacts_destination, args.host, args.port, args.workers)
    return 0


if __name__ == "__main__":
    command("server", main)
