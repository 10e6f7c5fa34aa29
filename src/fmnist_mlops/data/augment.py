"""On-the-fly augmentation of training batches: flips, shifts and random erasing.

Only training batches are augmented; validation, test and served images never are, so the
saved model stays the plain network. Everything is stateless-random from one seed, so a run
is as reproducible with augmentation as without.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from fmnist_mlops.config.schema import AugmentCfg

SIDE = 28
# Random erasing (Zhong et al., 2017): rectangle area as a share of the image, aspect ratio.
ERASE_AREA = (0.02, 0.25)
ERASE_ASPECT = (0.3, 3.3)


def enabled(augment_cfg: AugmentCfg | None) -> bool:
    """True when ``train.augment`` asks for any augmentation (None: a caller without any)."""
    if augment_cfg is None:
        return False
    return augment_cfg.flip or augment_cfg.shift > 0 or augment_cfg.erase > 0


def _flip(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    batch = tf.shape(x)[0]
    mask = tf.random.stateless_uniform([batch], seed) < 0.5
    return tf.where(mask[:, None, None], tf.reverse(x, axis=[2]), x)


def _shift(x: tf.Tensor, pad: int, seed: tf.Tensor) -> tf.Tensor:
    """Translate each image by up to ``pad`` pixels per axis, filling with background (0)."""
    batch = tf.shape(x)[0]
    padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad]])
    offsets = tf.random.stateless_uniform(
        [batch, 2], seed, minval=0, maxval=2 * pad + 1, dtype=tf.int32
    )
    rows = offsets[:, :1] + tf.range(SIDE)[None, :]
    cols = offsets[:, 1:] + tf.range(SIDE)[None, :]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(out, cols, axis=2, batch_dims=1)


def _erase(x: tf.Tensor, probability: float, seed: tf.Tensor) -> tf.Tensor:
    """Replace one random rectangle with random pixels in a ``probability`` share of images."""
    batch = tf.shape(x)[0]
    s = tf.random.experimental.stateless_split(seed, 5)
    area = tf.random.stateless_uniform([batch], s[0], *ERASE_AREA) * SIDE * SIDE
    log_aspect = tf.random.stateless_uniform(
        [batch], s[1], float(np.log(ERASE_ASPECT[0])), float(np.log(ERASE_ASPECT[1]))
    )
    aspect = tf.exp(log_aspect)
    h = tf.clip_by_value(tf.round(tf.sqrt(area * aspect)), 1, SIDE)
    w = tf.clip_by_value(tf.round(tf.sqrt(area / aspect)), 1, SIDE)
    corner = tf.random.stateless_uniform([batch, 2], s[2])
    top = tf.floor(corner[:, 0] * (SIDE - h + 1))
    left = tf.floor(corner[:, 1] * (SIDE - w + 1))
    pos = tf.range(SIDE, dtype=tf.float32)
    inside_rows = (pos[None, :] >= top[:, None]) & (pos[None, :] < (top + h)[:, None])
    inside_cols = (pos[None, :] >= left[:, None]) & (pos[None, :] < (left + w)[:, None])
    apply = tf.random.stateless_uniform([batch], s[3]) < probability
    mask = inside_rows[:, :, None] & inside_cols[:, None, :] & apply[:, None, None]
    noise = tf.random.stateless_uniform(tf.shape(x), s[4], 0.0, 255.0)
    return tf.where(mask, noise, x)


def augment_batch(x: tf.Tensor, seed: tf.Tensor, augment_cfg: AugmentCfg) -> tf.Tensor:
    """Augment a batch of raw-pixel images ``(batch, 28, 28)`` float32.

    Args:
        x: The batch.
        seed: A ``[2]`` int64 stateless seed for this batch.
        augment_cfg: ``train.augment``: ``flip`` (bool), ``shift`` (fraction of 28 px),
            ``erase`` (probability per image).
    """
    seeds = tf.random.experimental.stateless_split(seed, 3)
    if augment_cfg.flip:
        x = _flip(x, seeds[0])
    pad = round(augment_cfg.shift * SIDE)
    if pad > 0:
        x = _shift(x, pad, seeds[1])
    if augment_cfg.erase > 0:
        x = _erase(x, augment_cfg.erase, seeds[2])
    return x


def batch_transform(
    augment_cfg: AugmentCfg | None,
) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None:
    """:func:`augment_batch` bound to ``train.augment``, or None when it asks for nothing."""
    if not enabled(augment_cfg):
        return None
    return lambda x, seed: augment_batch(x, seed, augment_cfg)
