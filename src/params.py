"""``make params`` / ``make check-params``: write or check ``params.yaml`` composed from ``conf/``.

``python src/params.py [--check] [--output FILE] [overrides...]``
"""

import argparse
from pathlib import Path

from fmnist_mlops.runtime.cli import command


def main(argv: list[str] | None = None) -> int:
    """Write ``params.yaml`` from ``conf/`` (``make params``); ``--check`` only compares."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--output", default="params.yaml")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. +experiment=smoke")
    args = parser.parse_args(argv)
    from fmnist_mlops.config.params import check_params, write_params

    out = Path(args.output)
    if args.check:
        return check_params(out, args.overrides)
    write_params(out, args.overrides)
    return 0


if __name__ == "__main__":
    command("params", main)
