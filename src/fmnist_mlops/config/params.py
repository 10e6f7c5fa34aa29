"""``make params`` / ``make check-params``: write or check ``params.yaml`` composed from ``conf/``.

``python -m fmnist_mlops.config.params [--check] [overrides...]``
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from fmnist_mlops.config.compose import params_yaml, validate
from fmnist_mlops.runtime.cli import command
from fmnist_mlops.runtime.files import write_text


def main(argv: list[str] | None = None) -> int:
    """Write ``params.yaml`` from ``conf/`` (``make params``); ``--check`` only compares."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--output", default="params.yaml")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. +experiment=smoke")
    args = parser.parse_args(argv)
    text = params_yaml(args.overrides)
    out = Path(args.output)
    if args.check:
        current = out.read_text(encoding="utf-8") if out.exists() else ""
        if current != text:
            print(f"{out} is stale: run `make params` (it is composed from conf/)")
            return 1
        return 0
    validate(OmegaConf.create(text))
    write_text(out, text)
    print(f"wrote {out} from conf/ {' '.join(args.overrides)}".rstrip())
    return 0


if __name__ == "__main__":
    command("params", main)
