"""DVC stage ``evaluate``: test-set metrics and reports in the train run, then the promotion rule.

``python src/register.py`` runs the promotion rule alone.
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
    from fmnist_mlops.registry.stages import evaluate_and_promote

    return evaluate_and_promote(ctx)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    """Run :func:`fmnist_mlops.registry.stages.evaluate_and_promote` with the composed config."""
    run("evaluate", stage, cfg)


if __name__ == "__main__":
    entry("evaluate", main)
