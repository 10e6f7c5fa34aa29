"""``make report``: a self-contained HTML report of the registered champion."""

from fmnist_mlops import tfquiet

tfquiet.install()  # before anything imports TensorFlow: its start-up banner stays out

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from fmnist_mlops.cli import entry, run  # noqa: E402


def stage(cfg: DictConfig):
    """Import the stage only now: ``--help`` and ``--cfg job`` never load TensorFlow."""
    from fmnist_mlops.reporting import build_report

    return build_report(cfg)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    """Run :func:`fmnist_mlops.reporting.build_report` (writes ``reports/champion.html``)."""
    run("report", stage, cfg)


if __name__ == "__main__":
    entry("report", main)
