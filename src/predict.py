"""Classify images with the champion: ``python src/predict.py shirt.jpg``, ``--test-samples 5``."""

from fmnist_mlops.runtime import tfquiet

tfquiet.install()  # before anything imports TensorFlow: its start-up banner stays out

from fmnist_mlops.runtime.cli import command  # noqa: E402
from fmnist_mlops.serving.prediction import main  # noqa: E402

if __name__ == "__main__":
    command("predict", main)
