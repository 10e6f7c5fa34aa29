"""The CNN: raw 0-255 pixels in, ten class probabilities out."""

from __future__ import annotations

import keras

from fmnist_mlops.config.schema import IMAGE_SHAPE, NUM_CLASSES, ModelCfg, TrainCfg


def build_model(model_cfg: ModelCfg, precision: str = "float32") -> keras.Model:
    """Build the CNN described by ``cfg.model``.

    Per entry of ``filters`` one block: ``convs_per_block`` x Conv2D(kernel_size, same) (each
    followed by BatchNormalization when ``batch_norm``, then ReLU), MaxPool(2) and, when
    ``block_dropout`` > 0, Dropout. Then the head: Flatten (the tutorial) or global average
    pooling, Dense(dense_units, relu), Dropout(dropout), Dense(10, softmax). The defaults of the
    optional keys give the tutorial's network. Scaling to [0, 1] is the model's first step, so
    the saved model (and the served one) takes raw pixels.

    Args:
        model_cfg: The ``model`` config group (``filters``, ``kernel_size``, ``dense_units``,
            ``dropout``; optional ``convs_per_block`` (1), ``batch_norm`` (false),
            ``block_dropout`` (0), ``head`` (flatten)).
        precision: ``float32``, or ``mixed_bfloat16`` (bfloat16 compute, float32 weights; about
            twice as fast on CPUs with AVX-512 BF16). The softmax always runs in float32.
    """
    dt = precision
    convs = model_cfg.convs_per_block
    batch_norm = model_cfg.batch_norm
    block_dropout = model_cfg.block_dropout
    head = model_cfg.head
    inputs = keras.Input(shape=IMAGE_SHAPE, name="pixels")
    x = keras.layers.Reshape((*IMAGE_SHAPE, 1), name="add_channel", dtype=dt)(inputs)
    x = keras.layers.Rescaling(1.0 / 255.0, name="scale", dtype=dt)(x)
    for i, filters in enumerate(model_cfg.filters, start=1):
        for j in range(1, convs + 1):
            # Single-conv blocks keep the tutorial's layer names (conv1, conv2, ...).
            name = f"conv{i}" if convs == 1 else f"conv{i}_{j}"
            x = keras.layers.Conv2D(
                int(filters),
                kernel_size=model_cfg.kernel_size,
                padding="same",
                # The bias is redundant in front of a batch norm's shift.
                use_bias=not batch_norm,
                activation=None if batch_norm else "relu",
                name=name,
                dtype=dt,
            )(x)
            if batch_norm:
                x = keras.layers.BatchNormalization(name=f"{name}_bn", dtype=dt)(x)
                x = keras.layers.Activation("relu", name=f"{name}_relu", dtype=dt)(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}", dtype=dt)(x)
        if block_dropout > 0:
            x = keras.layers.Dropout(block_dropout, name=f"block{i}_dropout", dtype=dt)(x)
    if head == "global_avg":
        x = keras.layers.GlobalAveragePooling2D(name="global_avg", dtype=dt)(x)
    else:
        x = keras.layers.Flatten(name="flatten", dtype=dt)(x)
    x = keras.layers.Dense(model_cfg.dense_units, activation="relu", name="dense", dtype=dt)(x)
    x = keras.layers.Dropout(model_cfg.dropout, name="dropout", dtype=dt)(x)
    # Probabilities in float32: bfloat16 has 3 significant digits, too few for a softmax.
    outputs = keras.layers.Dense(
        NUM_CLASSES, activation="softmax", name="probabilities", dtype="float32"
    )(x)
    return keras.Model(inputs, outputs, name=f"fmnist_{model_cfg.name}")


def make_optimizer(train_cfg: TrainCfg) -> keras.optimizers.Optimizer:
    """Return the optimizer named by ``train.optimizer`` with learning rate ``train.lr``."""
    classes = {
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
    }
    return classes[train_cfg.optimizer](learning_rate=train_cfg.lr)


def compile_model(
    model: keras.Model, train_cfg: TrainCfg, steps_per_execution: int = 1
) -> keras.Model:
    """Compile with sparse categorical cross-entropy and a metric named ``accuracy``.

    Args:
        model: The network from :func:`build_model`.
        train_cfg: The ``train`` config group (``optimizer``, ``lr``).
        steps_per_execution: Training steps per call into TensorFlow; see
            :func:`steps_per_execution`.
    """
    model.compile(
        optimizer=make_optimizer(train_cfg),
        loss=keras.losses.SparseCategoricalCrossentropy(name="loss"),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        steps_per_execution=steps_per_execution,
    )
    return model


def steps_per_execution(steps_per_epoch: int, cap: int = 64) -> int:
    """The largest divisor of ``steps_per_epoch`` up to ``cap``.

    Running many steps per call into TensorFlow saves Keras' per-step Python overhead (8% of
    the default model's epoch on the 2-core reference machine). It must divide the epoch:
    Keras rounds an epoch up to whole executions, so 16 steps per call with 188 batches per
    epoch would train 192 batches and shift every later epoch's boundary.
    """
    return max(d for d in range(1, min(cap, steps_per_epoch) + 1) if steps_per_epoch % d == 0)
