"""The weight average (``train.ema``): in the model whenever it is judged, raw while it learns."""

from __future__ import annotations

import keras


class EmaWeights(keras.callbacks.SwapEMAWeights):
    """The averaged weights (``train.ema``) in the model for validation and every epoch's end.

    Keras swaps them in only at the end of ``fit``; here validation, the best-only checkpoint,
    early stopping (and the weights it restores) and the backup all see them. Backups thus hold
    the averages in the model and the raw weights in the optimizer: :func:`unswap` turns a
    restored backup back before training continues.
    """

    def __init__(self) -> None:
        super().__init__(swap_on_epoch=True)

    def _swap_variables(self) -> None:
        # Keras' TensorFlow swap is arithmetic (a + b - b), which rounds the raw weights a
        # little at every swap; through a copy the training steps are exactly those without EMA.
        self._apply_to_ema_optimizers(self._backend_swap_variables, self._backend_swap_variables)


def unswap(model: keras.Model) -> None:
    """Swap a model restored from an :class:`EmaWeights` backup back to its raw weights."""
    swap = EmaWeights()
    swap.set_model(model)
    swap._swap_variables()
