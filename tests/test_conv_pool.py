"""Convolution and pooling layers: shape rules, flax.linen and NumPy oracles, gradients, errors."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from layer_checks import assert_grads_match_finite_differences, assert_shape_agreement, random_input

from fundl import LayerError, LayerTypeError, avg_pool, conv1d, conv2d, conv2d_transpose, global_avg_pool, max_pool

PADDINGS_2D = ["SAME", "VALID", 1, ((1, 2), (0, 1))]


def run(layer, x, seed=0):
    """Initialises ``layer`` for ``x`` and applies it; returns ``(y, params)``."""
    _, params, state = layer.init(jax.random.key(seed), x.shape)
    return layer.apply(params, state, x)[0], params


def flax_conv_params(params):
    return {"params": {"kernel": params["w"], **({"bias": params["b"]} if "b" in params else {})}}


# --- shape rules: init's analytic output shape equals apply's ---------------------------


@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("padding", PADDINGS_2D)
def test_conv2d_shape_agreement(padding, strides, dilation):
    assert_shape_agreement(conv2d(4, (3, 2), strides=strides, padding=padding, dilation=dilation), (2, 7, 9, 3))


@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("padding", ["SAME", "VALID", 1, ((1, 2),)])
def test_conv1d_shape_agreement(padding, strides, dilation):
    assert_shape_agreement(conv1d(4, 3, strides=strides, padding=padding, dilation=dilation), (2, 9, 3))


def test_conv2d_shape_rules_by_hand():
    # k_eff = (3 - 1) * 2 + 1 = 5 rows, 2 columns; (7 + 1 + 2 - 5) // 2 + 1 = 3, (9 + 0 + 1 - 2) // 2 + 1 = 5
    out, _, _ = conv2d(4, (3, 2), strides=2, padding=((1, 2), (0, 1)), dilation=(2, 1)).init(
        jax.random.key(0), (2, 7, 9, 3)
    )
    assert out == (2, 3, 5, 4)
    assert conv2d(4, 3, strides=2).init(jax.random.key(0), (2, 7, 9, 3))[0] == (2, 4, 5, 4)  # ceil(n / s)


@pytest.mark.parametrize("kernel", [2, 3, 4])
@pytest.mark.parametrize("strides", [1, 2, 3])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_conv2d_transpose_shape_agreement(padding, strides, kernel):
    out, *_ = assert_shape_agreement(conv2d_transpose(2, (kernel, 3), strides=strides, padding=padding), (2, 4, 3, 3))
    grow = max(kernel - strides, 0) if padding == "VALID" else 0
    assert out[1] == 4 * strides + grow


@pytest.mark.parametrize("padding", PADDINGS_2D)
@pytest.mark.parametrize("window, strides", [((2, 2), None), ((3, 2), 1), ((3, 2), (2, 3))])
@pytest.mark.parametrize("pool", [max_pool, avg_pool])
def test_pool_2d_shape_agreement(pool, window, strides, padding):
    assert_shape_agreement(pool(window, strides, padding), (2, 7, 9, 3))


@pytest.mark.parametrize("padding", ["SAME", "VALID", ((0, 2),)])
@pytest.mark.parametrize("pool", [max_pool, avg_pool])
def test_pool_1d_shape_agreement(pool, padding):
    assert_shape_agreement(pool((3,), 2, padding), (2, 9, 3))


@pytest.mark.parametrize("shape", [(2, 9, 3), (2, 7, 9, 3)])
def test_global_avg_pool_shape_agreement(shape):
    out, _, _, y = assert_shape_agreement(global_avg_pool(), shape)
    assert out == (2, 3)


# --- flax.linen with the same weights -------------------------------------------------


@pytest.mark.parametrize(
    "kernel, strides, padding, dilation",
    [
        ((3, 2), 1, "SAME", 1),
        ((3, 3), 2, "same", 1),
        ((3, 2), (2, 1), "VALID", (2, 1)),
        ((2, 3), 1, 1, 2),
        ((3, 2), 2, ((1, 2), (0, 1)), 1),
    ],
)
def test_conv2d_matches_flax(kernel, strides, padding, dilation):
    x = random_input((2, 7, 9, 3))
    y, params = run(
        conv2d(4, kernel, strides=strides, padding=padding, dilation=dilation, b_init=jax.nn.initializers.normal(1.0)),
        x,
    )
    as_pair = (strides,) * 2 if isinstance(strides, int) else strides
    ref = nn.Conv(
        4, kernel, as_pair, padding if isinstance(padding, (int, tuple)) else padding.upper(), kernel_dilation=dilation
    ).apply(flax_conv_params(params), x)
    np.testing.assert_allclose(y, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strides, padding, dilation", [(1, "SAME", 1), (2, "VALID", 1), (1, ((2, 0),), 2), (3, 1, 1)])
def test_conv1d_matches_flax(strides, padding, dilation):
    x = random_input((2, 11, 3))
    y, params = run(conv1d(5, 3, strides=strides, padding=padding, dilation=dilation), x)
    ref = nn.Conv(5, (3,), strides, padding, kernel_dilation=dilation).apply(flax_conv_params(params), x)
    np.testing.assert_allclose(y, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kernel, strides, padding", [(3, 2, "SAME"), ((4, 3), 2, "VALID"), ((2, 3), 3, "VALID"), (3, 1, "same")]
)
def test_conv2d_transpose_matches_flax(kernel, strides, padding):
    x = random_input((2, 4, 3, 3))
    y, params = run(
        conv2d_transpose(2, kernel, strides=strides, padding=padding, b_init=jax.nn.initializers.normal(1.0)), x
    )
    kernel = (kernel,) * 2 if isinstance(kernel, int) else kernel
    ref = nn.ConvTranspose(2, kernel, (strides,) * 2, padding.upper()).apply(flax_conv_params(params), x)
    np.testing.assert_allclose(y, ref, atol=1e-5, rtol=1e-5)


def test_conv_without_bias_matches_flax():
    x = random_input((2, 7, 9, 3))
    y, params = run(conv2d(4, (3, 2), use_bias=False), x)
    assert set(params) == {"w"}
    ref = nn.Conv(4, (3, 2), use_bias=False).apply(flax_conv_params(params), x)
    np.testing.assert_allclose(y, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "window, strides, padding",
    [((2, 2), None, "VALID"), ((3, 2), (1, 2), "SAME"), ((3, 3), 2, "same"), ((2, 3), 1, ((1, 0), (1, 1)))],
)
def test_pools_match_flax(window, strides, padding):
    x = random_input((2, 7, 9, 3))
    flax_padding = padding.upper() if isinstance(padding, str) else padding
    # flax's default stride is 1, fundl's is the window: pass it explicitly
    as_tuple = window if strides is None else (strides,) * 2 if isinstance(strides, int) else strides
    y_max, _ = run(max_pool(window, strides, padding), x)
    np.testing.assert_allclose(y_max, nn.max_pool(x, window, as_tuple, flax_padding), atol=1e-6)
    y_avg, _ = run(avg_pool(window, strides, padding), x)
    ref = nn.avg_pool(x, window, as_tuple, flax_padding, count_include_pad=False)
    np.testing.assert_allclose(y_avg, ref, atol=1e-6, rtol=1e-5)


def test_avg_pool_same_counts_only_real_elements():
    x = jnp.ones((1, 3, 3, 1))
    y, _ = run(avg_pool((3, 3), 1, "SAME"), x)
    np.testing.assert_allclose(y, 1.0)  # counting the zero padding would give 4/9 in the corners


def test_global_avg_pool_is_spatial_mean():
    x = random_input((2, 4, 5, 3))
    np.testing.assert_allclose(run(global_avg_pool(), x)[0], np.asarray(x).mean(axis=(1, 2)), atol=1e-6)


# --- an independent NumPy oracle ------------------------------------------------------


def loop_conv2d(x, w, b, strides, pads):
    """Cross-correlation by nested loops, after explicit zero padding ``pads = ((lo, hi), (lo, hi))``."""
    x = np.pad(x, ((0, 0), *pads, (0, 0)))
    (kh, kw, _, f), (sh, sw) = w.shape, strides
    oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    y = np.zeros((x.shape[0], oh, ow, f))
    for n in range(x.shape[0]):
        for i in range(oh):
            for j in range(ow):
                patch = x[n, i * sh : i * sh + kh, j * sw : j * sw + kw, :]
                for o in range(f):
                    y[n, i, j, o] = np.sum(patch * w[..., o]) + b[o]
    return y


def test_conv2d_matches_numpy_loops_valid():
    x = random_input((2, 7, 9, 3))
    y, p = run(conv2d(4, (3, 2), padding="VALID", b_init=jax.nn.initializers.normal(1.0)), x)
    ref = loop_conv2d(np.asarray(x), np.asarray(p["w"]), np.asarray(p["b"]), (1, 1), ((0, 0), (0, 0)))
    assert ref.shape == (2, 5, 8, 4)
    np.testing.assert_allclose(y, ref, atol=1e-5, rtol=1e-5)


def test_conv2d_matches_numpy_loops_strided_same():
    # SAME, stride 2, 7 x 9 input, 3 x 2 kernel: outputs ceil(7 / 2) x ceil(9 / 2) = 4 x 5, total padding
    # (4 - 1) * 2 + 3 - 7 = 2 rows, split (1, 1), and (5 - 1) * 2 + 2 - 9 = 1 column, split (0, 1).
    x = random_input((2, 7, 9, 3))
    y, p = run(conv2d(4, (3, 2), strides=2, b_init=jax.nn.initializers.normal(1.0)), x)
    ref = loop_conv2d(np.asarray(x), np.asarray(p["w"]), np.asarray(p["b"]), (2, 2), ((1, 1), (0, 1)))
    assert ref.shape == (2, 4, 5, 4)
    np.testing.assert_allclose(y, ref, atol=1e-5, rtol=1e-5)


def test_max_pool_matches_numpy_loops():
    x = np.asarray(random_input((2, 7, 9, 3)))
    y, _ = run(max_pool((3, 2), (2, 3)), jnp.asarray(x))
    ref = np.zeros((2, 3, 3, 3))
    for i in range(3):
        for j in range(3):
            ref[:, i, j, :] = x[:, 2 * i : 2 * i + 3, 3 * j : 3 * j + 2, :].max(axis=(1, 2))
    np.testing.assert_allclose(y, ref)


# --- gradients against finite differences, and jit ------------------------------------

GRAD_CASES = {
    "conv1d": (conv1d(2, 3, strides=2, padding=1, dilation=2), (2, 7, 2)),
    "conv2d": (conv2d(2, (3, 2), strides=(2, 1), padding="SAME"), (1, 5, 4, 2)),
    "conv2d_transpose": (conv2d_transpose(2, (3, 2), strides=2, padding="VALID"), (1, 3, 2, 2)),
    "avg_pool": (avg_pool((2, 3), 1, "SAME"), (1, 4, 5, 2)),
    "max_pool": (max_pool((2, 2), 1), (1, 4, 5, 2)),
    "global_avg_pool": (global_avg_pool(), (2, 3, 4, 2)),
}


@pytest.mark.parametrize("name", GRAD_CASES)
def test_grads_match_finite_differences(name):
    layer, shape = GRAD_CASES[name]
    assert_grads_match_finite_differences(layer, shape)


@pytest.mark.parametrize("name", ["conv2d", "avg_pool", "max_pool"])
def test_jit_matches_eager(name):
    layer, shape = GRAD_CASES[name]
    _, params, state = layer.init(jax.random.key(0), shape)
    x = random_input(shape)
    eager = layer.apply(params, state, x)[0]
    np.testing.assert_allclose(jax.jit(layer.apply)(params, state, x)[0], eager, atol=1e-6)


def test_custom_initializers_are_used():
    _, params, _ = conv2d(3, 2, w_init=jax.nn.initializers.ones, b_init=jax.nn.initializers.ones).init(
        jax.random.key(0), (1, 4, 4, 2)
    )
    assert params["w"].shape == (2, 2, 2, 3) and params["b"].shape == (3,)
    np.testing.assert_array_equal(params["w"], 1.0)
    np.testing.assert_array_equal(params["b"], 1.0)


# --- errors ---------------------------------------------------------------------------


def test_conv2d_wrong_rank_names_layout_and_fix():
    layer = conv2d(4, 3)
    with pytest.raises(
        LayerError,
        match=r"conv2d expects inputs of shape \(batch, height, width, channels\).*"
        r"got \(32, 64\).*reshape\(\(8, 8, 1\)\)",
    ):
        layer.init(jax.random.key(0), (32, 64))
    _, params, state = layer.init(jax.random.key(0), (2, 8, 8, 1))
    with pytest.raises(LayerError, match=r"\(batch, height, width, channels\).*got \(2, 8, 8\).*reshape\(\(8, 8, 1"):
        layer.apply(params, state, jnp.zeros((2, 8, 8)))


def test_conv1d_wrong_rank_names_layout():
    with pytest.raises(LayerError, match=r"conv1d expects inputs of shape \(batch, width, channels\).*\(4, 5, 6, 7\)"):
        conv1d(4, 3).init(jax.random.key(0), (4, 5, 6, 7))


@pytest.mark.parametrize("make", [lambda: conv2d(4, 3), lambda: max_pool((2, 2)), lambda: global_avg_pool()])
def test_integer_inputs_are_rejected(make):
    layer = make()
    _, params, state = layer.init(jax.random.key(0), (1, 4, 4, 1))
    with pytest.raises(LayerTypeError, match="expects floating-point inputs, got int32"):
        layer.apply(params, state, jnp.zeros((1, 4, 4, 1), jnp.int32))
    assert issubclass(LayerTypeError, TypeError)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: conv2d(0, 3), "`features` must be a positive integer, got 0"),
        (lambda: conv2d(4, (3, 0)), r"`kernel_size` must be a tuple of positive integers, got \(3, 0\)"),
        (lambda: conv1d(4, 3, strides=-1), "`strides` must be a positive integer, got -1"),
        (lambda: conv2d(4, 3, dilation=(1, 0)), "`dilation` must be a tuple of positive integers"),
        (lambda: conv2d(4, (3, 3, 3)), r"`kernel_size` must be an int or a tuple of 2 ints"),
        (lambda: conv2d_transpose(4, 3, strides=0), "`strides` must be a positive integer, got 0"),
        (lambda: max_pool((2, 0)), "`window` must be a tuple of positive integers"),
        (lambda: max_pool(2), r"`window` must be a tuple .* max_pool\(\(2, 2\)\)"),
        (lambda: avg_pool((2, 2), strides=(1, 2, 3)), "`strides` must be an int or a tuple of 2 ints"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(LayerError, match=match):
        make()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: conv2d(4, 3, padding="full"), r"unknown padding 'full'; expected 'SAME', 'VALID'"),
        (lambda: conv2d(4, 3, padding=((1, 1),)), r"one \(low, high\) pair per spatial dim \(2\), got 1"),
        (lambda: conv1d(4, 3, padding=((1, 1), (1, 1))), r"one \(low, high\) pair per spatial dim \(1\), got 2"),
        (lambda: conv2d(4, 3, padding=-1), "padding must be 'SAME', 'VALID', a non-negative int"),
        (lambda: conv2d_transpose(4, 3, padding=1), "padding must be 'SAME' or 'VALID', got 1"),
        (lambda: avg_pool((2, 2), padding="CIRCULAR"), "unknown padding 'CIRCULAR'; expected 'SAME', 'VALID'"),
    ],
)
def test_bad_padding(make, match):
    with pytest.raises(LayerError, match=match):
        make()


@pytest.mark.parametrize("make", [lambda: conv2d(4, 3), lambda: conv2d_transpose(4, 3), lambda: conv1d(4, 3)])
def test_channel_mismatch_names_both_counts(make):
    layer = make()
    spatial = (5,) if layer.name == "conv1d" else (5, 5)
    _, params, state = layer.init(jax.random.key(0), (2, *spatial, 3))
    x = jnp.zeros((2, *spatial, 5))
    with pytest.raises(
        LayerError, match=rf"{layer.name} expects inputs with 3 channels, got 5.*{re.escape(str(x.shape))}"
    ):
        layer.apply(params, state, x)


def test_params_that_do_not_match():
    layer = conv2d(4, 3)
    _, params, state = layer.init(jax.random.key(0), (2, 5, 5, 3))
    x = jnp.zeros((2, 5, 5, 3))
    with pytest.raises(LayerError, match=r"conv2d params do not match.*missing \['b'\]"):
        layer.apply({"w": params["w"]}, state, x)
    with pytest.raises(LayerError, match=r"conv2d param 'w' should have shape \(3, 3, 3, 4\), got \(2, 2, 3, 4\)"):
        layer.apply({**params, "w": jnp.zeros((2, 2, 3, 4))}, state, x)
    with pytest.raises(LayerError, match=r"unexpected \['b'\]"):
        conv2d(4, 3, use_bias=False).apply(params, state, x)


@pytest.mark.parametrize(
    "layer, shape, match",
    [
        (
            conv2d(4, 3, padding="VALID", dilation=2),
            (1, 4, 9, 1),
            r"input size 4 along spatial dim 0 .* size 3 \(dilated to 5",
        ),
        (
            conv1d(4, 5, padding=1),
            (1, 2, 1),
            r"input size 2 .* kernel size 5 with padding \(\(1, 1\),\).*padding='SAME'",
        ),
        (max_pool((3, 3)), (1, 2, 8, 1), r"input size 2 .* window size 3"),
        (avg_pool((3,)), (1, 2, 1), r"input size 2 .* window size 3"),
    ],
)
def test_input_smaller_than_kernel(layer, shape, match):
    with pytest.raises(LayerError, match=match):
        layer.init(jax.random.key(0), shape)


def test_pool_wrong_rank_names_layout():
    layout = r"\(batch, height, width, channels\)"
    with pytest.raises(
        LayerError, match=rf"max_pool expects inputs of shape {layout}.*\(2, 28, 28\).*reshape\(\(28, 28, 1"
    ):
        max_pool((2, 2)).init(jax.random.key(0), (2, 28, 28))
    _, params, state = avg_pool((2,)).init(jax.random.key(0), (2, 8, 3))
    with pytest.raises(
        LayerError, match=r"avg_pool expects inputs of shape \(batch, width, channels\).*\(2, 8, 8, 3\)"
    ):
        avg_pool((2,)).apply(params, state, jnp.zeros((2, 8, 8, 3)))
    with pytest.raises(
        LayerError, match=r"global_avg_pool expects inputs of shape \(batch, \*spatial, channels\).*\(2, 64"
    ):
        global_avg_pool().init(jax.random.key(0), (2, 64))
