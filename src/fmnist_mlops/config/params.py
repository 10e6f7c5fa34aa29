"""``params.yaml``: written from ``conf/`` (``make params``) or checked against it.

The command is ``src/params.py``; ``dvc exp run -S`` edits the file, every stage reads it.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from fmnist_mlops.config.compose import params_yaml, validate
from fmnist_mlops.runtime.files import write_text


def write_params(out: Path, overrides: list[str]) -> None:
    """Compose ``conf/`` with ``overrides``, validate it, write it to ``out`` atomically."""
    text = params_yaml(overrides)
    validate(OmegaConf.create(text))
    write_text(out, text)
    print(f"wrote {out} from conf/ {' '.join(overrides)}".rstrip())


def check_params(out: Path, overrides: list[str]) -> int:
    """0 if ``out`` is what ``conf/`` composes to (with ``overrides``), else 1 with a message."""
    current = out.read_text(encoding="utf-8") if out.exists() else ""
    if current != params_yaml(overrides):
        print(f"{out} is stale: run `make params` (it is composed from conf/)")
        return 1
    return 0
