"""``make train-workers N=2 ARGS=...``: one multi-worker training as N local processes.

``python src/train_workers.py -n N [--host H] [--] ARGS...`` (ARGS: overrides for src/train.py)
"""

import argparse

from fmnist_mlops.runtime.cli import command


def main(argv: list[str] | None = None) -> int:
    """Parse ``-n N [--host H] [--] ARGS...``, run the workers, return the exit code."""
    parser = argparse.ArgumentParser(prog="make train-workers", description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--workers", type=int, default=2, help="worker processes (>= 2)")
    parser.add_argument("--host", default="127.0.0.1", help="address the workers listen on")
    parser.add_argument("args", nargs="*", help="overrides for src/train.py")
    ns = parser.parse_args(argv)
    from fmnist_mlops.train.launch import launch

    return launch(ns.workers, ns.args, ns.host)


if __name__ == "__main__":
    command("train-workers", main)
