"""DVC stage ``train`` and ad-hoc experiments: ``python src/train.py model.filters=[32,64]``."""

from fmnist_mlops.runtime import tfquiet

tfquiet.install()  # before anything imports TensorFlow: its start-up banner stays out

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from fmnist_mlops.runtime.cli import entry, run  # noqa: E402
from fmnist_mlops.tracking import nesting  # noqa: E402


def stage(cfg: DictConfig):
    """Validate first, then import the stage: bad input and ``--help`` never load TensorFlow."""
    from fmnist_mlops.tracking.context import open_stage

    ctx = open_stage(cfg)
    from fmnist_mlops.train.training import train

    return train(ctx)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    """Run :func:`fmnist_mlops.train.training.train`; in a sweep (``-m``), keep going on errors."""
    run("train", stage, cfg, **nesting.job_hooks(cfg))


if __name__ == "__main__":
    entry("train", main)
