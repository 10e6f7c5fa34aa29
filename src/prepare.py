"""DVC stage ``prepare``: find, verify and split the real Fashion-MNIST IDX files."""

import hydra
from omegaconf import DictConfig

from fmnist_mlops.runtime.cli import entry, run


def stage(cfg: DictConfig):
    """Import the stage only now: ``--help`` and ``--cfg job`` never load TensorFlow."""
    from fmnist_mlops.data.preparation import prepare

    return prepare(cfg)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    """Run :func:`fmnist_mlops.data.preparation.prepare` with the composed config."""
    run("prepare", stage, cfg)


if __name__ == "__main__":
    entry("prepare", main)
