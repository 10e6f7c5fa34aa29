"""Input pipelines: the tf.data datasets that feed ``fit``, ``evaluate`` and ``predict``.

Every dataset here runs with tf.data's autotuning off. With it on (as in Keras' own pipeline
for NumPy arrays), destroying an iterator waits for the autotuning thread's next wake-up; on
this project's 2-core reference machine that was 1-4 s at the start of a third of all
epochs and up to 36 s when ``fit`` returned (``make bench`` reports the effect). The pipelines
are too small to need tuning: a gather of one batch of indices and a cast.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tensorflow as tf

from fmnist_mlops import augment

# Batches in flight ahead of the training step: enough to hide the gather and augmentation.
PREFETCH = 2


def _fixed(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.autotune.enabled = False
    options.deterministic = True
    return ds.with_options(options)


def training_batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    seed: int,
    augment_cfg: Any = None,
) -> tuple[tf.data.Dataset, int]:
    """Endless training batches, reshuffled every epoch, and the number of batches per epoch.

    One iterator serves the whole ``fit`` (pass the count as ``steps_per_epoch``): an epoch is
    every image once, in a new order drawn from ``seed``, the last batch possibly smaller.
    Images stay in their stored dtype (uint8: a quarter of float32's memory) until each batch is
    gathered and cast to float32; when ``train.augment`` asks for it, batches are augmented with
    one stateless seed per batch (reproducible from ``seed``, different every epoch).

    Args:
        x: Images ``(N, 28, 28)``, raw 0-255 pixels.
        y: Labels ``(N,)``.
        batch_size: Images per batch.
        seed: Shuffle and augmentation seed.
        augment_cfg: ``train.augment`` (None or all off: no augmentation).

    Returns:
        The dataset of ``(images float32, labels)`` batches and the batches per epoch.
    """
    n = len(x)
    images, labels = tf.constant(x), tf.constant(y)
    order = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
    order = order.batch(batch_size)
    if augment.enabled(augment_cfg):
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((order, seeds)).repeat()

        def gather(idx: tf.Tensor, s: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            batch = tf.cast(tf.gather(images, idx), tf.float32)
            return augment.augment_batch(batch, s, augment_cfg), tf.gather(labels, idx)

        # Two fixed workers: augmenting a batch costs about as much as half a training step.
        ds = ds.map(gather, num_parallel_calls=2, deterministic=True)
    else:
        ds = order.repeat().map(
            lambda idx: (tf.cast(tf.gather(images, idx), tf.float32), tf.gather(labels, idx))
        )
    return _fixed(ds.prefetch(PREFETCH)), math.ceil(n / batch_size)


def inference_batches(
    x: np.ndarray, batch_size: int, y: np.ndarray | None = None
) -> tf.data.Dataset:
    """Batches of ``x`` as float32 (with ``y`` when given) in order, for evaluate and predict."""
    images = tf.data.Dataset.from_tensor_slices(x.astype(np.float32, copy=False))
    if y is None:
        ds = images
    else:
        ds = tf.data.Dataset.zip((images, tf.data.Dataset.from_tensor_slices(y)))
    return _fixed(ds.batch(batch_size).prefetch(PREFETCH))
