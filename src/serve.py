"""``make serve`` / ``make serve-stop``: the model server this checkout started, and only that one.

``python src/serve.py {start,stop} --port 5001 [-- command ...]``
"""

import argparse
import sys

from fmnist_mlops.runtime.cli import command


def main(argv: list[str] | None = None) -> int:
    """``start`` (stopping this checkout's server on the port first) or ``stop``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--port", type=int, default=5001)
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    cmd = argv[cut + 1 :]
    from fmnist_mlops.serving.model_server import holder, port_in_use, start, stop

    if args.action == "start":
        if not cmd:
            parser.error("start needs the server command after --")
        start(args.port, cmd)
    if stop(args.port):
        print(f"stopped the model server on port {args.port}")
    elif port_in_use(args.port):
        print(
            f"port {args.port} is held by {holder(args.port)}, not a model server this checkout "
            "started: left alone",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    command("serve", main)
