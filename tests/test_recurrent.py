"""Recurrent layers: shape rules, NumPy and flax.linen oracles, masks, gradients, errors."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from layer_checks import assert_grads_match_finite_differences, assert_shape_agreement, random_input

from fundl import LayerError, LayerTypeError, dense, named, serial
from fundl.layers._recurrent import bidirectional, gru, lstm, simple_rnn

CELLS = {"simple_rnn": simple_rnn, "lstm": lstm, "gru": gru}
B, T, F, H = 3, 6, 4, 5
LENGTHS = np.array([6, 3, 1])  # right-padded sequences of different lengths, one of them full
MASK = np.arange(T)[None, :] < LENGTHS[:, None]  # (B, T)


def make_params(layer, seed=0):
    """The layer's params for (B, T, F) inputs, with random biases so a bias in the wrong gate shows."""
    _, params, _ = layer.init(jax.random.key(seed), (B, T, F))
    rng = np.random.default_rng(seed)
    noise = lambda v: jnp.asarray(0.5 * rng.standard_normal(v.shape), jnp.float32)  # noqa: E731
    return {name: v + noise(v) if name.startswith("b") else v for name, v in params.items()}


def random_carry(kind, batch=B, seed=3):
    h, c = (random_input((batch, H), seed=seed + i) for i in range(2))
    return (h, c) if kind == "lstm" else h


def assert_close(actual, expected, atol=1e-5):
    jax.tree.map(lambda a, e: np.testing.assert_allclose(np.asarray(a), e, atol=atol, rtol=0), actual, expected)


def with_call_args(layer, **kwargs):
    """``layer`` with keyword arguments (mask, initial_state) bound into its apply."""
    return layer._replace(apply=lambda params, state, x, **rest: layer.apply(params, state, x, **kwargs, **rest))


# --- NumPy reference: each cell's equations, one step at a time, in float64 --------------


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def np_step(kind, p, x_t, carry):
    n = p["u"].shape[0]

    def block(name, k):  # gate k's columns of w, u or b
        return p[name][..., k * n : (k + 1) * n]

    def gate(h, k):  # x_t w_k + h u_k + b_k
        return x_t @ block("w", k) + h @ block("u", k) + block("b", k)

    if kind == "simple_rnn":
        return np.tanh(gate(carry, 0))
    if kind == "lstm":  # gates [i, f, g, o]
        h, c = carry
        i, f, g, o = sigmoid(gate(h, 0)), sigmoid(gate(h, 1)), np.tanh(gate(h, 2)), sigmoid(gate(h, 3))
        c = f * c + i * g
        return o * np.tanh(c), c
    h = carry  # gru, gates [r, z, n]
    r, z = sigmoid(gate(h, 0)), sigmoid(gate(h, 1))
    new = np.tanh(x_t @ block("w", 2) + block("b", 2) + r * (h @ block("u", 2) + p["b_hn"]))
    return (1 - z) * new + z * h


def np_run(kind, params, x, carry=None, reverse=False):
    """Runs ``kind``'s equations over ``x (batch, time, features)``; returns (outputs, final carry)."""
    p = {name: np.asarray(v, np.float64) for name, v in params.items()}
    x = np.asarray(x, np.float64)
    batch, time, _ = x.shape
    if carry is None:
        carry = (np.zeros((batch, H)),) * 2 if kind == "lstm" else np.zeros((batch, H))
    carry = jax.tree.map(lambda a: np.asarray(a, np.float64), carry)
    ys = np.zeros((batch, time, H))
    for t in reversed(range(time)) if reverse else range(time):
        carry = np_step(kind, p, x[:, t], carry)
        ys[:, t] = carry[0] if kind == "lstm" else carry
    return ys, carry


# --- shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("return_state", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("kind", CELLS)
def test_shape_agreement(kind, return_sequences, return_state, reverse):
    layer = CELLS[kind](H, return_sequences=return_sequences, return_state=return_state, reverse=reverse)
    out, params, state, _ = assert_shape_agreement(layer, (B, T, F))
    y_shape = (B, T, H) if return_sequences else (B, H)
    carry_shape = ((B, H), (B, H)) if kind == "lstm" else (B, H)
    assert out == ((y_shape, carry_shape) if return_state else y_shape)
    gates = {"simple_rnn": 1, "lstm": 4, "gru": 3}[kind]
    expected = {"w": (F, gates * H), "u": (H, gates * H), "b": (gates * H,)}
    expected |= {"b_hn": (H,)} if kind == "gru" else {}
    assert jax.tree.map(jnp.shape, params) == expected
    assert state == {}


@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("kind", CELLS)
def test_bidirectional_shape_agreement(kind, return_sequences):
    layer = bidirectional(CELLS[kind](H, return_sequences=return_sequences))
    out, params, _, _ = assert_shape_agreement(layer, (B, T, F))
    assert out == ((B, T, 2 * H) if return_sequences else (B, 2 * H))
    assert sorted(params) == ["backward", "forward"]


def test_bidirectional_in_a_model():
    model = serial(bidirectional(gru(H, return_sequences=True)), dense(2))
    out, params, _, _ = assert_shape_agreement(model, (B, T, F))
    assert out == (B, T, 2)
    assert jax.tree.map(jnp.shape, params["bidirectional_0"]["backward"])["w"] == (F, 3 * H)


def test_lstm_forget_bias_starts_at_one():
    _, params, _ = lstm(H).init(jax.random.key(0), (B, T, F))
    np.testing.assert_array_equal(params["b"], np.repeat([0.0, 1.0, 0.0, 0.0], H))
    _, params, _ = lstm(H, forget_bias=0.0).init(jax.random.key(0), (B, T, F))
    np.testing.assert_array_equal(params["b"], np.zeros(4 * H))


# --- the equations, against NumPy --------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kind", CELLS)
def test_matches_numpy_equations(kind, reverse):
    layer = CELLS[kind](H, return_sequences=True, return_state=True, reverse=reverse)
    params, x = make_params(layer), random_input((B, T, F))
    (ys, carry), _ = layer.apply(params, {}, x)
    assert_close((ys, carry), np_run(kind, params, x, reverse=reverse))
    last, _ = CELLS[kind](H, reverse=reverse).apply(params, {}, x)  # return_sequences=False: the final h
    assert_close(last, carry[0] if kind == "lstm" else carry)


@pytest.mark.parametrize("kind", CELLS)
def test_initial_state(kind):
    layer = CELLS[kind](H, return_sequences=True, return_state=True)
    params, x, start = make_params(layer), random_input((B, T, F)), random_carry(kind)
    (ys, carry), _ = layer.apply(params, {}, x, initial_state=start)
    assert_close((ys, carry), np_run(kind, params, x, carry=start))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kind", CELLS)
def test_mask_right_padded(kind, reverse):
    """Pads give zero outputs; the final carry is the state after each sequence's last valid step."""
    layer = CELLS[kind](H, return_sequences=True, return_state=True, reverse=reverse)
    params, x = make_params(layer), random_input((B, T, F))  # the pads hold random values too
    for mask in (MASK, MASK.astype(np.int32)):
        (ys, carry), _ = jax.tree.map(np.asarray, layer.apply(params, {}, x, mask=mask))
        for i, length in enumerate(LENGTHS):
            ref_ys, ref_carry = np_run(kind, params, x[i : i + 1, :length], reverse=reverse)  # the unpadded sequence
            assert_close(ys[i : i + 1, :length], ref_ys)
            np.testing.assert_array_equal(ys[i, length:], 0.0)
            assert_close(jax.tree.map(lambda a: a[i : i + 1], carry), ref_carry)


# --- against flax.linen cells with copied weights ---------------------------------------


def to_flax(kind, p):
    """Our params in flax's layout. LSTMCell: input kernels ii, if, ig, io (F, H) without bias and
    hidden kernels hi, hf, hg, ho (H, H) with bias. GRUCell: ir, iz, in (F, H) with bias, hr, hz
    (H, H) without bias, and hn (H, H) with bias, which is our b_hn."""
    block = lambda a, g: a[..., g * H : (g + 1) * H]  # noqa: E731
    if kind == "lstm":
        return {
            **{f"i{name}": {"kernel": block(p["w"], g)} for g, name in enumerate("ifgo")},
            **{f"h{name}": {"kernel": block(p["u"], g), "bias": block(p["b"], g)} for g, name in enumerate("ifgo")},
        }
    return {
        **{f"i{name}": {"kernel": block(p["w"], g), "bias": block(p["b"], g)} for g, name in enumerate("rzn")},
        "hr": {"kernel": block(p["u"], 0)},
        "hz": {"kernel": block(p["u"], 1)},
        "hn": {"kernel": block(p["u"], 2), "bias": p["b_hn"]},
    }


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_matches_flax_cell(kind, reverse, masked):
    cell = nn.LSTMCell(H) if kind == "lstm" else nn.GRUCell(H)
    layer = CELLS[kind](H, return_sequences=True, return_state=True, reverse=reverse)
    params, x = make_params(layer), random_input((B, T, F))
    flax_params = to_flax(kind, params)
    flax_init = cell.init(jax.random.key(0), cell.initialize_carry(jax.random.key(0), (B, F)), x[:, 0])["params"]
    assert jax.tree.map(jnp.shape, flax_params) == jax.tree.map(jnp.shape, flax_init)  # the layout above

    rnn = nn.RNN(cell, return_carry=True, reverse=reverse, keep_order=True)
    lengths = LENGTHS if masked else np.full(B, T)
    flax_carry, flax_ys = rnn.apply({"params": {"cell": flax_params}}, x, seq_lengths=jnp.asarray(lengths))
    (ys, carry), _ = layer.apply(params, {}, x, mask=MASK if masked else None)
    valid = (np.arange(T)[None, :] < lengths[:, None])[..., None]
    assert_close(np.where(valid, ys, 0), np.where(valid, flax_ys, 0))  # flax runs on past the end
    assert_close(carry, flax_carry[::-1] if kind == "lstm" else flax_carry)  # flax's LSTM carry is (c, h)


# --- gradients, jit, bidirectional ---------------------------------------------------


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("kind", CELLS)
def test_gradients_match_finite_differences(kind, masked):
    shape = (2, 4, 3)
    layer = CELLS[kind](3, return_sequences=True, return_state=True)
    if masked:
        layer = with_call_args(layer, mask=np.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool))
    assert_grads_match_finite_differences(layer, shape)


@pytest.mark.parametrize("kind", CELLS)
def test_jit_equals_eager(kind):
    layer = CELLS[kind](H, return_sequences=True, return_state=True, reverse=True)
    params, x, start = make_params(layer), random_input((B, T, F)), random_carry(kind)
    apply = lambda p, x, mask, start: layer.apply(p, {}, x, mask=mask, initial_state=start)[0]  # noqa: E731
    assert_close(jax.jit(apply)(params, x, MASK, start), apply(params, x, MASK, start), atol=1e-6)


@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("kind", CELLS)
def test_bidirectional_is_forward_and_reversed_twin(kind, return_sequences):
    factory = CELLS[kind]
    layer = bidirectional(named("encoder", factory(H, return_sequences=return_sequences)))
    _, params, _ = layer.init(jax.random.key(0), (B, T, F))
    assert not np.allclose(params["forward"]["w"], params["backward"]["w"])  # different keys
    x, start = random_input((B, T, F)), (random_carry(kind, seed=3), random_carry(kind, seed=7))
    y, _ = layer.apply(params, {}, x, mask=MASK, initial_state=start)
    twins = factory(H, return_sequences=return_sequences), factory(H, return_sequences=return_sequences, reverse=True)
    halves = [
        twin.apply(params[name], {}, x, mask=MASK, initial_state=s)[0]
        for twin, name, s in zip(twins, ("forward", "backward"), start)
    ]
    np.testing.assert_array_equal(y, np.concatenate(halves, axis=-1))


# --- errors ---------------------------------------------------------------------------


def raises(message, error=LayerError):
    """Expects ``error`` with a message that starts with ``message`` (plain text, not a regex)."""
    return pytest.raises(error, match="^" + re.escape(message))


@pytest.mark.parametrize("hidden", [0, -2, 2.5, True])
@pytest.mark.parametrize("kind", CELLS)
def test_hidden_must_be_positive(kind, hidden):
    with raises(f"{kind}: `hidden` must be a positive integer, got {hidden!r}"):
        CELLS[kind](hidden)


@pytest.mark.parametrize("kind", CELLS)
def test_wrong_rank(kind):
    layer = CELLS[kind](H)
    layout = f"{kind} expects inputs of shape (batch, time, features) (rank 3), got"
    with raises(f"{layout} (32, 64): add reshape((8, 8)) before it to read 8 steps of 8 features"):
        layer.init(jax.random.key(0), (32, 64))
    with raises(f"{layout} (32, 10): add reshape((time, features)) before it, with time * features = 10"):
        layer.init(jax.random.key(0), (32, 10))
    _, params, _ = layer.init(jax.random.key(0), (B, T, F))
    with raises(f"{layout} (3, 6, 4, 1): add reshape((6, -1)) before it"):
        layer.apply(params, {}, jnp.zeros((B, T, F, 1)))


@pytest.mark.parametrize("kind", CELLS)
def test_input_errors(kind):
    layer = CELLS[kind](H)
    _, params, _ = layer.init(jax.random.key(0), (B, T, F))
    with raises(f"{kind} expects floating-point inputs, got int32", LayerTypeError):
        layer.apply(params, {}, jnp.zeros((B, T, F), jnp.int32))
    with raises(f"{kind} expects inputs with 4 features, got 3: input shape (3, 6, 3)"):
        layer.apply(params, {}, jnp.zeros((B, T, 3)))
    with raises(f"{kind} expects a mask of shape (batch, time) = (3, 6), got (3, 5)"):
        layer.apply(params, {}, jnp.zeros((B, T, F)), mask=MASK[:, :5])


def test_param_errors():
    _, params, _ = gru(H).init(jax.random.key(0), (B, T, F))
    without_b_hn = {k: v for k, v in params.items() if k != "b_hn"}
    x = jnp.zeros((B, T, F))
    with raises("gru params do not match the layer: expected entries ['b', 'b_hn', 'u', 'w'], missing ['b_hn']"):
        gru(H).apply(without_b_hn, {}, x)
    with raises("gru param 'u' should have shape (5, 15), got (5, 5)"):
        gru(H).apply({**params, "u": params["u"][:, :H]}, {}, x)
    with raises("lstm param 'w' should have shape (4, 24), got (4, 15)"):
        lstm(6).apply(without_b_hn, {}, x)  # gru params given to an lstm


@pytest.mark.parametrize("kind", CELLS)
def test_initial_state_errors(kind):
    layer = CELLS[kind](H)
    _, params, _ = layer.init(jax.random.key(0), (B, T, F))
    x = jnp.zeros((B, T, F))
    if kind == "lstm":
        with raises("lstm expects initial_state (h, c) of shape ((3, 5), (3, 5)), got ((3, 5), (3, 4))"):
            layer.apply(params, {}, x, initial_state=(jnp.zeros((B, H)), jnp.zeros((B, 4))))
        with raises("lstm expects initial_state (h, c) of shape ((3, 5), (3, 5)), got (3, 5)"):  # h alone
            layer.apply(params, {}, x, initial_state=jnp.zeros((B, H)))
    else:
        with raises(f"{kind} expects initial_state h of shape (3, 5), got (3, 4)"):
            layer.apply(params, {}, x, initial_state=jnp.zeros((B, 4)))


def test_bidirectional_errors():
    with raises(
        "bidirectional expects a layer with one output (not return_state=True), got output shapes ((3, 5), (3, 5))"
    ):
        bidirectional(gru(H, return_state=True)).init(jax.random.key(0), (B, T, F))
    with raises("bidirectional expects a recurrent layer such as lstm(64), got <function lstm"):
        bidirectional(lstm)  # the factory, not a layer

    layer = bidirectional(simple_rnn(H))
    _, params, _ = layer.init(jax.random.key(0), (B, T, F))
    x, h = jnp.zeros((B, T, F)), jnp.zeros((B, H))
    with raises("bidirectional expects initial_state as a pair (forward carry, backward carry), got (3, 5)"):
        layer.apply(params, {}, x, initial_state=h)
    with raises("backward: simple_rnn expects initial_state h of shape (3, 5), got (3, 4)"):
        layer.apply(params, {}, x, initial_state=(h, jnp.zeros((B, 4))))
    with raises("forward: simple_rnn expects a mask of shape (batch, time) = (3, 6), got (6,)"):
        layer.apply(params, {}, x, mask=MASK[0])
    with raises(
        "backward: simple_rnn params do not match the layer: expected entries ['b', 'u', 'w'], missing ['w', 'u', 'b']"
    ):
        layer.apply({"forward": params["forward"]}, {}, x)
    with raises("bidirectional params have unexpected entries ['sideways']; its children are ['forward', 'backward']"):
        layer.apply({**params, "sideways": params["forward"]}, {}, x)
    with raises("bidirectional_0/forward: simple_rnn expects inputs of shape (batch, time, features)"):
        serial(layer).init(jax.random.key(0), (32, 64))
