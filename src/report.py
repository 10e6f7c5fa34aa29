"""``make report``: a self-contained HTML report of the registered champion."""

from fmnist_mlops.runtime import tfquiet

tfquiet.install()  # before anything imports TensorFlow: its start-up banner stays out

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from fmnist_mlops.runtime.cli import entry, run  # noqa: E402


def stage(cfg: DictConfig):
    """Validate first, then import the stage: bad input and ``--help`` never load TensorFlow."""
    from fmnist_mlops.tracking.context import open_stage

    ctx = open_stage(cfg)
    from fmnist_mlops.evaluate.reporting import build_report

    return build_report(ctx)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    """Run :func:`fmnist_mlops.evaluate.reporting.build_report` (``reports/champion.html``)."""
    run("report", stage, cfg)


if __name__ == "__main__":
    entry("report", main)
