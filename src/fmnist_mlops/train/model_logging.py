"""What a logged model carries: the served pyfunc, its pinned environment, its class names."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf

from fmnist_mlops.config.schema import CLASS_NAMES
from fmnist_mlops.train import platforms


def pip_requirements() -> list[str]:
    """Pinned requirements for logged models (inference by MLflow costs ~6 s and is wrong)."""
    return platforms.model_requirements(
        {
            "mlflow": mlflow.__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
        }
    )


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def log_served_model(
    keras_file: Path, example: np.ndarray, best_epoch: int
) -> mlflow.models.model.ModelInfo:
    """Log the network as the models-from-code pyfunc in ``pyfunc_model.py`` (name ``model``).

    Linked to the run's metrics of ``best_epoch`` (the restored weights), so MLflow 3's model
    page and ``search_logged_models`` show that epoch's numbers, not the first epoch's.

    The signature declares the ``top_k`` param and no input schema on purpose: MLflow's tensor
    schema enforcement refuses any dtype but the declared one before the model's code runs
    (uint8 pixels, as read from image files, were refused for a float32 spec), so the model
    validates its input itself (``pyfunc_model.validate_pixels``; the contract is in the README).
    A real uint8 input example, explicit pip requirements (inference costs seconds and lists
    the wrong TensorFlow), and the class names as an artifact inside the model.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec

    signature = ModelSignature(params=ParamSchema([ParamSpec("top_k", "long", 0)]))
    # The model's environment is its requirements.txt; MLflow would otherwise copy this
    # project's uv.lock and pyproject.toml (dev tools, the project itself) into every model.
    with _env("MLFLOW_LOG_UV_FILES", "false"), tempfile.TemporaryDirectory() as tmp:
        names = Path(tmp) / "class_names.json"
        names.write_text(json.dumps(list(CLASS_NAMES)))
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).parents[1] / "model" / "pyfunc_model.py"),
            artifacts={"keras_model": str(keras_file), "class_names": str(names)},
            signature=signature,
            input_example=(example, {"top_k": 3}),
            pip_requirements=pip_requirements(),
            metadata={"class_names": list(CLASS_NAMES)},
            step=best_epoch,
        )
