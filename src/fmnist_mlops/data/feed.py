"""Input pipelines: the tf.data datasets that feed ``fit``, ``evaluate`` and ``predict``.

Every dataset here runs with tf.data's autotuning off. With it on (as in Keras' own pipeline
for NumPy arrays), destroying an iterator waits for the autotuning thread's next wake-up; on
this project's 2-core reference machine that was 1-4 s at the start of a third of all
epochs and up to 36 s when ``fit`` returned (``make bench`` reports the effect). The pipelines
are too small to need tuning: a gather of one batch of indices and a cast.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import tensorflow as tf

# Batches in flight ahead of the training step: enough to hide the gather and augmentation.
PREFETCH = 2
# Evaluate and predict are forward-only: bigger batches than training cost less per image.
INFERENCE_BATCH = 1024

# A training-batch transform: (images float32 (B, 28, 28), stateless seed [2]) -> images.
Transform = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def _fixed(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.autotune.enabled = False
    options.deterministic = True
    return ds.with_options(options)


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Batches in one pass over ``n`` images (the last one possibly smaller)."""
    return math.ceil(n / batch_size)


def training_batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    seed: int,
    transform: Transform | None = None,
    start_epoch: int = 0,
) -> tf.data.Dataset:
    """Endless training batches, reshuffled every epoch.

    One iterator serves the whole ``fit`` (pass :func:`batches_per_epoch` as
    ``steps_per_epoch``): an epoch is every image once, in a new order drawn from ``seed``, the
    last batch possibly smaller. Images stay in their stored dtype (uint8: a quarter of
    float32's memory) until each batch is gathered and cast to float32; with a ``transform``
    (augmentation), each batch goes through it with its own stateless seed (reproducible from
    ``seed``, different every epoch).

    Args:
        x: Images ``(N, 28, 28)``, raw 0-255 pixels.
        y: Labels ``(N,)``.
        batch_size: Images per batch.
        seed: Shuffle and augmentation seed.
        transform: Applied to every training batch (None: batches as they are).
        start_epoch: The epoch the first batch belongs to. Epoch ``e``'s order and augmentation
            seeds are the same whether the stream starts at 0 or at ``e`` (a resumed run sees
            exactly the batches an uninterrupted one would).

    Returns:
        The dataset of ``(images float32, labels)`` batches.
    """
    n = len(x)
    images, labels = tf.constant(x), tf.constant(y)

    def gather(idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.cast(tf.gather(images, idx), tf.float32), tf.gather(labels, idx)

    order = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
    order = order.batch(batch_size)
    # Skipped as indices, before any gather or augmentation: a few shuffles of N integers.
    skip = start_epoch * batches_per_epoch(n, batch_size)
    if transform is None:
        ds = order.repeat().skip(skip).map(gather)
    else:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

        def gather_and_transform(idx: tf.Tensor, s: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            batch, batch_labels = gather(idx)
            return transform(batch, s), batch_labels

        # Two fixed workers: augmenting a batch costs about as much as half a training step.
        ds = tf.data.Dataset.zip((order, seeds)).repeat().skip(skip)
        ds = ds.map(gather_and_transform, num_parallel_calls=2, deterministic=True)
    return _fixed(ds.prefetch(PREFETCH))


def inference_batches(
    x: np.ndarray, batch_size: int = INFERENCE_BATCH, y: np.ndarray | None = None
) -> tf.data.Dataset:
    """Batches of ``x`` cast to float32 (with ``y`` when given), in order: evaluate, predict."""
    images = tf.data.Dataset.from_tensor_slices(x).batch(batch_size)
    images = images.map(lambda batch: tf.cast(batch, tf.float32))
    if y is None:
        ds = images
    else:
        ds = tf.data.Dataset.zip((images, tf.data.Dataset.from_tensor_slices(y).batch(batch_size)))
    return _fixed(ds.prefetch(PREFETCH))
