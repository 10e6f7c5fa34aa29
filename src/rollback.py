"""``make rollback``: move @champion back to the previous champion."""

from fmnist_mlops import tfquiet

tfquiet.install()  # before anything imports TensorFlow: its start-up banner stays out

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from fmnist_mlops.cli import entry, run  # noqa: E402


def stage(cfg: DictConfig):
    """Import the stage only now: ``--help`` and ``--cfg job`` never load TensorFlow."""
    from fmnist_mlops.promotion import rollback

    return rollback(cfg)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    """Run :func:`fmnist_mlops.promotion.rollback` with the composed config."""
    run("rollback", stage, cfg)


if __name__ == "__main__":
    entry("rollback", main)
