"""Model: the tutorial's architecture, built from config, taking raw pixels."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import ROOT
from omegaconf import OmegaConf

from fmnist_mlops.config.compose import compose, validate


def build_model(*args, **kwargs):
    """:func:`fmnist_mlops.model.cnn.build_model` (Keras is imported by tests, not collection)."""
    from fmnist_mlops.model.cnn import build_model as build

    return build(*args, **kwargs)


def test_reference_architecture_and_parameter_count():
    model = build_model(compose(config_dir=ROOT / "conf").model)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == [
        "InputLayer",
        "Reshape",
        "Rescaling",
        "Conv2D",
        "MaxPooling2D",
        "Conv2D",
        "MaxPooling2D",
        "Flatten",
        "Dense",
        "Dropout",
        "Dense",
    ]
    assert model.get_layer("conv1").filters == 32 and model.get_layer("conv2").filters == 64
    assert (
        model.get_layer("conv1").kernel_size == (3, 3)
        and model.get_layer("conv1").padding == "same"
    )
    assert model.get_layer("pool2").output.shape[1:] == (7, 7, 64)
    assert model.get_layer("dropout").rate == 0.4
    # 320 + 18,496 + 313,700 + 1,010: the tutorial's network, parameter for parameter.
    assert model.count_params() == 333_526
    assert model.input_shape == (None, 28, 28) and model.output_shape == (None, 10)


def test_takes_raw_pixels_and_returns_probabilities():
    model = build_model(compose(config_dir=ROOT / "conf").model)
    raw = np.random.default_rng(0).integers(0, 256, size=(4, 28, 28)).astype("float32")
    probs = model.predict(raw, verbose=0)
    assert probs.shape == (4, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    scaled = model.get_layer("scale")(raw[..., None])
    assert float(np.max(scaled)) <= 1.0


def test_filters_from_config_change_the_network():
    overrides = ["model.filters=[16,32,64]", "model.dense_units=20", "model.dropout=0.1"]
    config = validate(compose(overrides, config_dir=ROOT / "conf"))
    from fmnist_mlops.model.cnn import compile_model

    model = compile_model(build_model(config.model), config.train)
    assert [model.get_layer(f"conv{i}").filters for i in (1, 2, 3)] == [16, 32, 64]
    assert model.get_layer("pool3").output.shape[1:] == (3, 3, 64)
    assert [m.name for m in model.metrics] == ["loss", "compile_metrics"] or model.metrics_names


def test_mixed_bfloat16_computes_in_bfloat16_with_float32_weights_and_softmax(tmp_path):
    model = build_model(compose(config_dir=ROOT / "conf").model, precision="mixed_bfloat16")
    conv = model.get_layer("conv2")
    assert conv.compute_dtype == "bfloat16" and conv.variable_dtype == "float32"
    assert model.get_layer("probabilities").compute_dtype == "float32"
    assert model.count_params() == 333_526  # same network
    probs = model.predict(np.random.default_rng(0).integers(0, 256, (4, 28, 28)), verbose=0)
    assert probs.dtype == np.float32 and np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    # The policy travels with the saved file, so evaluation and serving compute the same way.
    model.save(tmp_path / "m.keras")
    import keras

    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True, compile=False)
    assert loaded.get_layer("conv2").compute_dtype == "bfloat16"


def _variant(name: str, **extra):
    cfg = OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml")
    for key, value in extra.items():
        cfg[key] = value
    return cfg


def test_vgg_variant_has_two_convs_per_block_and_block_dropout():
    model = build_model(_variant("vgg"))
    convs = [layer.name for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert convs == ["conv1_1", "conv1_2", "conv2_1", "conv2_2"]
    assert model.get_layer("conv1_2").input.shape[1:] == (28, 28, 32)
    assert model.get_layer("block1_dropout").rate == 0.25
    assert model.get_layer("pool2").output.shape[1:] == (7, 7, 64)
    assert not any(type(layer).__name__ == "BatchNormalization" for layer in model.layers)
    assert model.count_params() > build_model(_variant("cnn")).count_params()


def test_batch_norm_variant_normalises_every_conv_without_a_redundant_bias(tmp_path):
    model = build_model(_variant("cnn_bn"), precision="mixed_bfloat16")
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("BatchNormalization") == kinds.count("Conv2D") == 4
    assert all(not model.get_layer(f"conv{b}_{c}").use_bias for b in (1, 2) for c in (1, 2))
    # Saved and loaded like the reference network (no custom layers).
    import keras

    model.save(tmp_path / "bn.keras")
    loaded = keras.saving.load_model(tmp_path / "bn.keras", safe_mode=True, compile=False)
    x = np.random.default_rng(1).integers(0, 256, (3, 28, 28)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_residual_blocks_add_their_input_before_the_last_relu(tmp_path):
    model = build_model(_variant("resnet", filters=[32, 32, 64]), precision="mixed_bfloat16")
    adds = [layer for layer in model.layers if type(layer).__name__ == "Add"]
    assert [layer.name for layer in adds] == ["block1_add", "block2_add", "block3_add"]
    # The last conv of a block is summed before its ReLU; the first keeps its own.
    assert "conv1_2_relu" not in [layer.name for layer in model.layers]
    assert model.get_layer("conv1_1_relu").input.name == model.get_layer("conv1_1_bn").output.name
    # Channels change into blocks 1 (from the image's one) and 3: a 1x1 projection there only.
    skips = [layer.name for layer in model.layers if layer.name.startswith("skip")]
    assert skips == ["skip1", "skip1_bn", "skip3", "skip3_bn"]
    assert model.get_layer("skip3").kernel_size == (1, 1)
    # Block 2's sum takes block 1's output (after its dropout) unchanged: an identity shortcut.
    add2_inputs = {t.name for t in model.get_layer("block2_add").input}
    assert model.get_layer("block1_dropout").output.name in add2_inputs
    # The shortcut carries the signal: the sum differs from the convolutions alone.
    x = np.random.default_rng(2).integers(0, 256, (3, 28, 28)).astype("float32")
    import keras

    probe = keras.Model(model.input, model.get_layer("block2_add").input)
    conv_out, shortcut = (np.asarray(t, dtype="float32") for t in probe.predict(x, verbose=0))
    assert np.abs(shortcut).sum() > 0 and not np.allclose(conv_out, conv_out + shortcut)
    model.save(tmp_path / "res.keras")
    loaded = keras.saving.load_model(tmp_path / "res.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_residual_off_is_the_same_network_as_before():
    """``residual: false`` (every variant but resnet) builds exactly the layers it always did."""
    plain = build_model(_variant("resnet", residual=False))
    before = build_model(_variant("cnn_bn", dense_units=256, block_dropout=0.2))
    assert [(type(layer).__name__, layer.name) for layer in plain.layers] == [
        (type(layer).__name__, layer.name) for layer in before.layers
    ]
    assert plain.count_params() == before.count_params()


def test_global_average_head_and_a_third_block():
    model = build_model(_variant("cnn", filters=[32, 64, 128], head="global_avg"))
    assert model.get_layer("pool3").output.shape[1:] == (3, 3, 128)
    assert model.get_layer("global_avg").output.shape[1:] == (128,)
    assert model.get_layer("dense").input.shape[1:] == (128,)


@pytest.mark.parametrize(("steps", "expected"), [(188, 47), (375, 25), (8, 8), (191, 1), (1, 1)])
def test_steps_per_execution_divides_the_epoch(steps, expected):
    from fmnist_mlops.model.cnn import steps_per_execution

    chunk = steps_per_execution(steps)
    assert chunk == expected and steps % chunk == 0 and chunk <= 64
