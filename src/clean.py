"""``make clean``: remove this checkout's dead scratch folders (``paths.scratch``).

``python src/clean.py [--root FOLDER]``
"""

import argparse
import sys

from fmnist_mlops.runtime.cli import command


def main(argv: list[str] | None = None) -> int:
    """Remove every scratch folder whose owner process is gone; say which live ones were kept."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="scratch folder (default: paths.scratch of conf/)")
    args = parser.parse_args(argv)
    from fmnist_mlops.runtime.paths import scratch_root
    from fmnist_mlops.tracking.scratch import clean

    if args.root is None:
        from fmnist_mlops.config.compose import compose

        args.root = compose().paths.scratch
    root = scratch_root(args.root)
    removed, kept = clean(root)
    print(f"clean: removed {len(removed)} scratch folders in {root}", file=sys.stderr)
    for folder in kept:
        print(f"clean: kept {folder}: its run is still going", file=sys.stderr)
    return 0


if __name__ == "__main__":
    command("clean", main)
