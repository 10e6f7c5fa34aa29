"""The served model: raw 28x28 pixels in, class names and probabilities out.

This file is logged as an MLflow *models-from-code* pyfunc: MLflow copies it into the model and
executes it to obtain the model object, so loading a model never unpickles code. It imports
only mlflow, keras and numpy; the Keras network and the class names are model artifacts.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

IMAGE_SHAPE = (28, 28)
MAX_TOP_K = 10
# Images per forward pass of a large request.
CHUNK = 1024


class InvalidInput(MlflowException):
    """A client mistake: the scoring server answers 400 with this message, and only this.

    MLflow's scoring server prefixes a model's error with the whole parsed input
    (``Failed to predict data '<array>'``), which for 784 long floats runs past 7 KB. Keeping
    the message short here bounds every error body without changing NumPy's global print
    options in the caller's process.
    """

    @property
    def message(self) -> str:  # noqa: D102
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        marker = "\nError: "
        if value.startswith("Failed to predict data") and marker in value:
            value = "Failed to predict: " + value.split(marker, 1)[1]
        self._message = value


def _invalid(message: str) -> MlflowException:
    return InvalidInput(message, error_code=INVALID_PARAMETER_VALUE)


ACCEPTED = (
    "expected raw grayscale pixels 0-255 as an (N, 28, 28) array (any integer or float dtype), "
    "or a table with one row per image: 784 pixel columns, or one column of 784-value lists"
)
PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]


def _from_table(frame: Any) -> Any:
    """A pandas table (``dataframe_split``/``records``, CSV) as an (N, 784) array of pixels."""
    if frame.shape[1] == PIXELS:
        return frame.to_numpy()
    if frame.shape[1] == 1:
        try:
            return np.stack(
                [np.asarray(cell, dtype=np.float32).reshape(-1) for cell in frame.iloc[:, 0]]
            )
        except (TypeError, ValueError):
            raise _invalid(f"the table's cells are not pixel lists: {ACCEPTED}") from None
    raise _invalid(f"the table has {frame.shape[1]} columns: {ACCEPTED}")


def validate_pixels(model_input: Any) -> np.ndarray:
    """Return ``model_input`` as a float32 (N, 28, 28) array of finite values in [0, 255].

    Accepts an array (or nested lists) of shape (N, 28, 28) of any numeric dtype (uint8 as read
    from image files or the IDX arrays, ints or floats from JSON), or a table with one row per
    image (784 columns, or one column of 784-value lists).

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE naming what is wrong and what is accepted
            (the scoring server turns it into a 400).
    """
    if hasattr(model_input, "iloc"):  # a pandas DataFrame, without importing pandas here
        if len(model_input) == 0:
            raise _invalid(f"the table has no rows: {ACCEPTED}")
        model_input = _from_table(model_input).reshape(-1, *IMAGE_SHAPE)
    elif isinstance(model_input, dict):
        raise _invalid(f"named inputs {sorted(model_input)[:5]} are not accepted: {ACCEPTED}")
    try:
        x = np.asarray(model_input, dtype=np.float32)
    except (TypeError, ValueError):
        raise _invalid(f"inputs are not numeric: {ACCEPTED}") from None
    if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE or x.shape[0] == 0:
        raise _invalid(f"inputs have shape {tuple(x.shape)}: {ACCEPTED}")
    finite = np.isfinite(x)
    if not finite.all():
        raise _invalid(f"inputs contain {int((~finite).sum())} NaN/inf values: {ACCEPTED}")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 255:
        raise _invalid(f"inputs range from {low:g} to {high:g}: {ACCEPTED}")
    return x


def validate_top_k(params: dict[str, Any] | None) -> int:
    """Return the ``top_k`` param (0 = omit the top-k list)."""
    value = (params or {}).get("top_k", 0)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise _invalid(f"params.top_k={value!r}: expected an integer 0-{MAX_TOP_K}")
    if not 0 <= int(value) <= MAX_TOP_K:
        raise _invalid(f"params.top_k={int(value)}: expected an integer 0-{MAX_TOP_K}")
    return int(value)


def format_predictions(
    probs: np.ndarray, class_names: list[str], top_k: int = 0
) -> list[dict[str, Any]]:
    """Turn an (N, 10) probability matrix into one readable record per image."""
    records = []
    order = np.argsort(-probs, axis=1, kind="stable")
    for row, ranking in zip(probs, order, strict=True):
        best = int(ranking[0])
        record: dict[str, Any] = {
            "class": class_names[best],
            "index": best,
            "probability": float(row[best]),
            "probabilities": [float(p) for p in row],
        }
        if top_k:
            record["top_k"] = [
                {"class": class_names[int(i)], "index": int(i), "probability": float(row[i])}
                for i in ranking[:top_k]
            ]
        records.append(record)
    return records


class FashionMnistClassifier(PythonModel):
    """Pyfunc wrapper around the Keras CNN."""

    # The tensor signature, not type hints, is this model's input contract: tell MLflow not to
    # look for hints (it warned "Add type hints to the `predict` method" at every load).
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        """Load the ``.keras`` network (safe mode) and the class names from the artifacts."""
        import keras
        import tensorflow as tf

        self.model = keras.saving.load_model(
            context.artifacts["keras_model"], safe_mode=True, compile=False
        )
        # One traced graph for any batch size: 0.5 ms per image instead of 4 ms eager, and
        # half the time of an eager call for a batch of 256 (Model.predict is slower still).
        self._forward = tf.function(
            lambda x: self.model(x, training=False),
            input_signature=[tf.TensorSpec((None, *IMAGE_SHAPE), tf.float32)],
        )
        with open(context.artifacts["class_names"]) as fh:
            self.class_names = list(json.load(fh))

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Return the (N, 10) class probabilities for validated pixels ``x``.

        In chunks of :data:`CHUNK` images: the first convolution's activations for 10,000
        images at once are about 1 GB; per chunk they stay near 100 MB.
        """
        parts = [self._forward(x[i : i + CHUNK]).numpy() for i in range(0, len(x), CHUNK)]
        return np.concatenate(parts)

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        """Validate pixels and ``top_k``; return one record per image."""
        top_k = validate_top_k(params)
        x = validate_pixels(model_input)
        records = format_predictions(self.predict_proba(x), self.class_names, top_k)
        if len(x) >= CHUNK:
            # The server still holds the parsed request (millions of Python objects) until
            # this returns: give the freed heap back to the OS shortly after.
            threading.Timer(2.0, release_memory).start()
        return records


def release_memory() -> None:
    """Collect garbage and return free heap pages to the OS (glibc), so RSS falls again."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    # Not glibc (macOS): the allocator keeps its pages.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


set_model(FashionMnistClassifier())
