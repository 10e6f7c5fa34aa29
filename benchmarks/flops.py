"""FLOP accounting for the default model: per image, per epoch (training steps and validation)."""

from __future__ import annotations

from fmnist_mlops.config.schema import ModelCfg, split_sizes


def train_mflop_per_image(model_cfg: ModelCfg) -> tuple[float, float]:
    """Forward and training MFLOP per image of the model (multiply-add = 2 FLOP).

    Training = forward + backward; backward is twice the forward, except the first layer,
    which needs no gradient with respect to its input.
    """
    from fmnist_mlops.model.cnn import build_model

    model = build_model(model_cfg)
    forward, first = 0.0, None
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            flops = 2 * h * w * cout * kh * kw * cin
        elif kind == "Dense":
            cin, cout = layer.kernel.shape
            flops = 2 * cin * cout
        else:
            continue
        first = flops if first is None else first
        forward += flops
    return forward / 1e6, (3 * forward - first) / 1e6


def epoch_gflop(train_mflop: float, forward_mflop: float, val_split: float) -> float:
    """GFLOP of one epoch as both contenders run it: training steps, then validation forwards."""
    sizes = split_sizes(val_split)
    return (sizes["train"] * train_mflop + sizes["val"] * forward_mflop) / 1e3
