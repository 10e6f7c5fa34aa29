"""``make clean-runs``: remove what old experiments leave, never what a model or live run needs.

``python src/clean_runs.py [--tracking-uri URI] [--model-name NAME] [--alias ALIAS] [--no-dvc]``
"""

import argparse
import json

from fmnist_mlops.runtime.cli import command


def main(argv: list[str] | None = None) -> int:
    """Command line for ``make clean-runs``: prints what was removed as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--model-name", default=None, help="default: registry.model_name of conf/")
    parser.add_argument("--alias", default=None, help="default: registry.alias of conf/")
    parser.add_argument("--no-dvc", action="store_true", help="leave DVC experiments and cache")
    args = parser.parse_args(argv)
    from fmnist_mlops.experiments.housekeeping import clean_project

    result = clean_project(args.tracking_uri, args.model_name, args.alias, dvc=not args.no_dvc)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    command("clean-runs", main)
