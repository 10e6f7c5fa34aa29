"""Register the evaluated model, promote it to @champion if it is better.

The DVC ``evaluate`` stage already does this after scoring; run this to repeat only the
promotion (e.g. after a registry outage) for the model in ``paths.out``.
"""

from fmnist_mlops.runtime import tfquiet

tfquiet.install()  # before anything imports TensorFlow: its start-up banner stays out

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from fmnist_mlops.runtime.cli import entry, run  # noqa: E402


def stage(cfg: DictConfig):
    """Validate first, then import the stage: bad input and ``--help`` never load TensorFlow."""
    from fmnist_mlops.tracking.context import open_stage

    ctx = open_stage(cfg)
    from fmnist_mlops.registry.promotion import promote

    return promote(ctx)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    """Run :func:`fmnist_mlops.registry.promotion.promote` with the composed config."""
    run("register", stage, cfg)


if __name__ == "__main__":
    entry("register", main)
