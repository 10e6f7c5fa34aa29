"""Classify images with the champion: ``python src/predict.py shirt.jpg``, ``--test-samples 5``."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

from fmnist_mlops.predict import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
