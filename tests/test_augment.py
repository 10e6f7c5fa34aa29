"""On-the-fly augmentation: what each transform does, reproducibility, training batches only."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf


def aug(**kw):
    return OmegaConf.create({"flip": False, "shift": 0.0, "erase": 0.0, **kw})


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    x = np.zeros((64, 28, 28), "float32")
    x[:, 8:20, 6:14] = rng.integers(1, 256, (64, 12, 8))  # an off-centre block on black
    return x


def augmented(images: np.ndarray, **kw) -> np.ndarray:
    """``images`` through :func:`augment_batch` with the settings ``kw`` and a fixed seed."""
    import tensorflow as tf

    from fmnist_mlops.data.augment import augment_batch

    return augment_batch(tf.constant(images), tf.constant([1, 2], tf.int64), aug(**kw)).numpy()


def test_off_means_nothing_changes(images):
    from fmnist_mlops.data.augment import enabled

    assert not enabled(aug()) and not enabled(None)
    out = augmented(images)
    np.testing.assert_array_equal(out, images)


def test_flip_mirrors_about_half_the_images_left_right(images):
    out = augmented(images, flip=True)
    flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images, strict=True)]
    same = [np.array_equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(f or s for f, s in zip(flipped, same, strict=True))
    assert 16 <= sum(flipped) <= 48


def test_shift_translates_within_the_limit_and_keeps_the_garment(images):
    out = augmented(images, shift=0.1)  # up to 3 px
    moved = 0
    for o, i in zip(out, images, strict=True):
        # The block stays whole (it is >= 6 px from every edge): same pixels, same sum.
        assert o.sum() == pytest.approx(i.sum())
        rows, cols = np.nonzero(o)
        dy, dx = rows.min() - 8, cols.min() - 6
        assert abs(dy) <= 3 and abs(dx) <= 3
        np.testing.assert_array_equal(o[8 + dy : 20 + dy, 6 + dx : 14 + dx], i[8:20, 6:14])
        moved += (dy, dx) != (0, 0)
    assert moved > 40


def test_erase_replaces_one_rectangle_in_the_chosen_share_of_images(images):
    out = augmented(images, erase=0.5)
    changed = 0
    for o, i in zip(out, images, strict=True):
        diff = np.argwhere(o != i)
        if len(diff) == 0:
            continue
        changed += 1
        (r0, c0), (r1, c1) = diff.min(0), diff.max(0)
        area = (r1 - r0 + 1) * (c1 - c0 + 1)
        assert area <= 0.25 * 784 * 1.3  # one bounded rectangle
        assert o.min() >= 0 and o.max() <= 255
    assert 16 <= changed <= 48


def epochs_of(x, y, batch_size, seed, cfg, n_epochs):
    """The first ``n_epochs`` epochs of the endless training dataset, as lists of batches."""
    from fmnist_mlops.data.augment import batch_transform
    from fmnist_mlops.data.feed import batches_per_epoch, training_batches

    ds = training_batches(x, y, batch_size, seed, batch_transform(cfg))
    steps = batches_per_epoch(len(x), batch_size)
    it = iter(ds)
    return [[next(it) for _ in range(steps)] for _ in range(n_epochs)]


def test_dataset_is_reproducible_differs_per_epoch_and_keeps_labels(images):
    y = np.arange(64) % 10
    cfg = aug(flip=True, shift=0.1, erase=0.3)
    first = epochs_of(images, y, 16, 7, cfg, 2)
    again = epochs_of(images, y, 16, 7, cfg, 2)
    for (xa, ya), (xb, yb) in zip(sum(first, []), sum(again, []), strict=True):
        np.testing.assert_array_equal(xa.numpy(), xb.numpy())
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())
    (epoch1,), (epoch2,) = epochs_of(images, y, 64, 7, cfg, 2)
    assert not np.array_equal(epoch1[0].numpy(), epoch2[0].numpy())
    # Every image keeps its own label: image k is a block of value k + 1, labelled k.
    marked = np.zeros((64, 28, 28), "uint8")
    for k in range(64):
        marked[k, 8:20, 6:14] = k + 1
    for plain in (None, aug(flip=True, shift=0.1)):
        orders = []
        for epoch in epochs_of(marked, np.arange(64), 20, 3, plain, 2):
            seen = []
            for xb, yb in epoch:
                assert xb.dtype == "float32"
                for image, label in zip(xb.numpy(), yb.numpy(), strict=True):
                    assert set(np.unique(image)) == {0.0, float(label + 1)}
                    seen.append(int(label))
            # Each epoch is every image once (the last batch of 4 included), shuffled.
            assert sorted(seen) == list(range(64)) and seen != list(range(64))
            orders.append(seen)
        assert orders[0] != orders[1]  # reshuffled every epoch
