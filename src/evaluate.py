"""DVC stage ``evaluate``: test-set metrics and reports, logged to the train run."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from fmnist_mlops.cli import run  # noqa: E402
from fmnist_mlops.evaluation import evaluate  # noqa: E402


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    """Run :func:`fmnist_mlops.evaluation.evaluate` with the composed config."""
    run("evaluate", evaluate, cfg)


if __name__ == "__main__":
    main()
