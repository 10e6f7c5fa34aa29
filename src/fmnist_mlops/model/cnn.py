"""The CNN: raw 0-255 pixels in, ten class probabilities out."""

from __future__ import annotations

import keras

from fmnist_mlops.config.schema import IMAGE_SHAPE, NUM_CLASSES, ModelCfg, TrainCfg


def build_model(model_cfg: ModelCfg, precision: str = "float32") -> keras.Model:
    """Build the CNN described by ``cfg.model``.

    Per entry of ``filters`` one block (:func:`_block`): ``convs_per_block`` x
    Conv2D(kernel_size, same) (each followed by BatchNormalization when ``batch_norm``, then
    ReLU), with ``residual`` the block's input added before the last ReLU, MaxPool(2) and,
    when ``block_dropout`` > 0, Dropout. Then the head: Flatten (the tutorial) or global
    average pooling, Dense(dense_units, relu), Dropout(dropout), Dense(10, softmax). The
    defaults of the optional keys give the tutorial's network. Scaling to [0, 1] is the
    model's first step, so the saved model (and the served one) takes raw pixels.

    Args:
        model_cfg: The ``model`` config group (``filters``, ``kernel_size``, ``dense_units``,
            ``dropout``; optional ``convs_per_block`` (1), ``batch_norm`` (false),
            ``residual`` (false), ``block_dropout`` (0), ``head`` (flatten)).
        precision: ``float32``, or ``mixed_bfloat16`` (bfloat16 compute, float32 weights; about
            twice as fast on CPUs with AVX-512 BF16). The softmax always runs in float32.
    """
    dt = precision
    inputs = keras.Input(shape=IMAGE_SHAPE, name="pixels")
    x = keras.layers.Reshape((*IMAGE_SHAPE, 1), name="add_channel", dtype=dt)(inputs)
    x = keras.layers.Rescaling(1.0 / 255.0, name="scale", dtype=dt)(x)
    for i, filters in enumerate(model_cfg.filters, start=1):
        x = _block(x, i, int(filters), model_cfg, dt)
    if model_cfg.head == "global_avg":
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


def _block(x, i: int, filters: int, model_cfg: ModelCfg, dt: str):
    """Block ``i``: its convolutions, the residual sum, pooling and dropout."""
    convs = model_cfg.convs_per_block
    residual = model_cfg.residual
    block_input = x
    for j in range(1, convs + 1):
        # Single-conv blocks keep the tutorial's layer names (conv1, conv2, ...).
        name = f"conv{i}" if convs == 1 else f"conv{i}_{j}"
        # A residual block's last ReLU comes after the sum (ResNet's order).
        relu = not (residual and j == convs)
        x = _conv(
            x, filters, model_cfg.kernel_size, name, bn=model_cfg.batch_norm, relu=relu, dt=dt
        )
    if residual:
        shortcut = block_input
        if block_input.shape[-1] != filters:
            # A 1x1 convolution matches the channels (the image's one, or the last block's).
            shortcut = _conv(
                block_input, filters, 1, f"skip{i}", bn=model_cfg.batch_norm, relu=False, dt=dt
            )
        x = keras.layers.Add(name=f"block{i}_add", dtype=dt)([x, shortcut])
        x = keras.layers.Activation("relu", name=f"block{i}_relu", dtype=dt)(x)
    x = keras.layers.MaxPooling2D(2, name=f"pool{i}", dtype=dt)(x)
    if model_cfg.block_dropout > 0:
        x = keras.layers.Dropout(model_cfg.block_dropout, name=f"block{i}_dropout", dtype=dt)(x)
    return x


def _conv(x, filters: int, kernel: int, name: str, *, bn: bool, relu: bool, dt: str):
    """Conv2D(same), then BatchNormalization when ``bn``, then ReLU when ``relu``."""
    x = keras.layers.Conv2D(
        filters,
        kernel_size=kernel,
        padding="same",
        # The bias is redundant in front of a batch norm's shift.
        use_bias=not bn,
        activation="relu" if relu and not bn else None,
        name=name,
        dtype=dt,
    )(x)
    if bn:
        x = keras.layers.BatchNormalization(name=f"{name}_bn", dtype=dt)(x)
        if relu:
            x = keras.layers.Activation("relu", name=f"{name}_relu", dtype=dt)(x)
    return x


def with_shift_tta(network: keras.Model, shift: int) -> keras.Model:
    """``network`` averaged over the image and its four copies shifted by ``shift`` pixels.

    Test-time augmentation as plain Keras layers (zero padding and cropping, the background
    that training's shifts fill in too, and an average of the five softmax outputs), so the
    saved ``.keras`` file carries it: the evaluation, ``predict.py`` and ``mlflow models
    serve`` all run the same averaged model, with no code of this package. The weights are the
    network's, shared. ``shift`` 0 returns ``network`` itself.
    """
    if shift == 0:
        return network
    inputs = keras.Input(shape=IMAGE_SHAPE, name="pixels")
    image = keras.layers.Reshape((*IMAGE_SHAPE, 1), name="tta_channel")(inputs)
    outputs = [network(inputs)]
    # (top, bottom), (left, right): pad on one side and crop the other to move the content.
    moves = {
        "down": (((shift, 0), (0, 0)), ((0, shift), (0, 0))),
        "up": (((0, shift), (0, 0)), ((shift, 0), (0, 0))),
        "right": (((0, 0), (shift, 0)), ((0, 0), (0, shift))),
        "left": (((0, 0), (0, shift)), ((0, 0), (shift, 0))),
    }
    for name, (pad, crop) in moves.items():
        moved = keras.layers.ZeroPadding2D(pad, name=f"tta_{name}_pad")(image)
        moved = keras.layers.Cropping2D(crop, name=f"tta_{name}_crop")(moved)
        moved = keras.layers.Reshape(IMAGE_SHAPE, name=f"tta_{name}")(moved)
        outputs.append(network(moved))
    averaged = keras.layers.Average(name="tta_average")(outputs)
    return keras.Model(inputs, averaged, name=f"{network.name}_tta{shift}")


@keras.saving.register_keras_serializable(package="fmnist_mlops")
class SparseSmoothedCrossentropy(keras.losses.Loss):
    """Cross-entropy of integer labels smoothed to ``(1 - s) x one-hot + s / classes``.

    Keras' sparse cross-entropy has no ``label_smoothing``; this one takes the same integer
    labels, so the data feed and the ``accuracy`` metric stay as they are.
    """

    def __init__(self, label_smoothing: float = 0.0, name: str = "loss", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):  # noqa: D102
        labels = keras.ops.one_hot(
            keras.ops.cast(keras.ops.reshape(y_true, [-1]), "int32"), NUM_CLASSES
        )
        return keras.losses.categorical_crossentropy(
            labels, y_pred, label_smoothing=self.label_smoothing
        )

    def get_config(self) -> dict:  # noqa: D102
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def learning_rate(train_cfg: TrainCfg, total_steps: int):
    """``train.lr`` (schedule ``plateau``), or the one-cycle schedule over ``total_steps``.

    One cycle: linear warm-up from ``lr / 10`` to ``lr`` over ``lr_warmup`` of the steps, then
    a cosine decay to 0 at the last step. It is a function of the optimizer's step counter,
    which the backups keep, so a resumed run continues on the same curve.
    """
    if train_cfg.schedule != "onecycle":
        return train_cfg.lr
    warmup = int((train_cfg.lr_warmup or 0.0) * total_steps)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=train_cfg.lr / 10,
        decay_steps=max(total_steps - warmup, 1),
        alpha=0.0,
        warmup_target=train_cfg.lr,
        warmup_steps=warmup,
    )


def make_optimizer(train_cfg: TrainCfg, total_steps: int = 1) -> keras.optimizers.Optimizer:
    """The optimizer named by ``train.optimizer``, on :func:`learning_rate`, with ``train.ema``.

    Args:
        train_cfg: The ``train`` config group.
        total_steps: Training steps of the whole run (epochs x batches), for ``onecycle``.
    """
    classes = {
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
    }
    ema = {} if train_cfg.ema is None else {"use_ema": True, "ema_momentum": train_cfg.ema}
    return classes[train_cfg.optimizer](learning_rate=learning_rate(train_cfg, total_steps), **ema)


def compile_model(
    model: keras.Model, train_cfg: TrainCfg, steps_per_execution: int = 1, total_steps: int = 1
) -> keras.Model:
    """Compile with (label-smoothed) cross-entropy and a metric named ``accuracy``.

    Args:
        model: The network from :func:`build_model`.
        train_cfg: The ``train`` config group (``optimizer``, ``lr``, ``schedule``,
            ``label_smoothing``, ``ema``).
        steps_per_execution: Training steps per call into TensorFlow; see
            :func:`steps_per_execution`.
        total_steps: Training steps of the whole run, for the one-cycle schedule.
    """
    if train_cfg.label_smoothing > 0:
        loss = SparseSmoothedCrossentropy(train_cfg.label_smoothing)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(name="loss")
    model.compile(
        optimizer=make_optimizer(train_cfg, total_steps),
        loss=loss,
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
