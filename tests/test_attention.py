"""Multi-head attention, positions and the key/value cache.

Attention is checked against an independent float64 NumPy reference and against
flax.linen.MultiHeadDotProductAttention with the same weights; gradients against finite
differences; causality, rotary positions and grouped-query heads as properties; the cache
against full forward passes; bad input against its error message.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from layer_checks import as_shapes, normal, quick_init

import fundl as fl
from fundl import LayerError
from fundl.layers._attention import _attend, _attend_written_out


def inputs_like(shapes, dtype=np.float32):
    """Random inputs of ``shapes``: a shape, or a pair of shapes for cross-attention."""
    if all(isinstance(d, int) for d in shapes):
        return normal(shapes, dtype)
    return tuple(normal(shape, dtype, seed=i + 1) for i, shape in enumerate(shapes))


def jitted(layer):
    """The layer with its apply compiled once per shape (eager calls compile every operation apart: slow)."""
    return layer._replace(apply=jax.jit(layer.apply, static_argnames="train"))


# --- an independent reference ----------------------------------------------------------


def reference(params, x, context=None, *, heads, kv_heads=None, causal=False, mask=None, rotary=False):
    """Attention in float64 NumPy, head by head, from the equations."""
    kv_heads = kv_heads or heads
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x = np.asarray(x, np.float64)
    c = x if context is None else np.asarray(context, np.float64)

    def proj(name, v):
        return v @ p[name]["w"] + p[name].get("b", 0.0)

    q, k, v = proj("query", x), proj("key", c), proj("value", c)
    batch, t_len, s_len = x.shape[0], x.shape[1], c.shape[1]
    size = q.shape[-1] // heads
    q = q.reshape(batch, t_len, heads, size)
    k, v = k.reshape(batch, s_len, kv_heads, size), v.reshape(batch, s_len, kv_heads, size)
    if rotary:
        q, k = rotate(q), rotate(k)
    allowed = np.ones((batch, t_len, s_len), bool)
    if causal:
        allowed &= np.tril(np.ones((t_len, s_len), bool))
    if mask is not None:
        allowed &= np.asarray(mask, bool)[:, None, :] if np.ndim(mask) == 2 else np.asarray(mask, bool)
    out = np.zeros((batch, t_len, heads, size))
    for b in range(batch):
        for n in range(heads):
            m = n // (heads // kv_heads)  # the key/value head of query head n
            scores = q[b, :, n] @ k[b, :, m].T / np.sqrt(size)
            scores = np.where(allowed[b], scores, -np.inf)
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            out[b, :, n] = (weights / weights.sum(-1, keepdims=True)) @ v[b, :, m]
    return proj("out", out.reshape(batch, t_len, heads * size))


def rotate(x):
    """RoPE in NumPy: pair (i, i + half) of position t turns by t * 10000**(-i / half)."""
    time, half = x.shape[1], x.shape[-1] // 2
    angle = np.arange(time)[:, None] * 10000.0 ** (-np.arange(half) / half)
    cos, sin = np.cos(angle)[None, :, None], np.sin(angle)[None, :, None]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def with_biases(params, seed=10):
    """Non-zero biases for every projection, so that they are checked too."""
    return {name: {**p, "b": normal(p["w"].shape[-1:], seed=seed + i)} for i, (name, p) in enumerate(params.items())}


CASES = {  # name: (layer options, x shape, context shape or None, mask kind)
    "one head": ({"num_heads": 1}, (2, 5, 8), None, None),
    "two heads causal": ({"num_heads": 2, "causal": True}, (2, 6, 8), None, None),
    "four heads padded": ({"num_heads": 4}, (3, 7, 16), None, "keys"),
    "gqa 4/2 causal padded": ({"num_heads": 4, "num_kv_heads": 2, "causal": True}, (2, 6, 16), None, "keys"),
    "multi-query 4/1": ({"num_heads": 4, "num_kv_heads": 1}, (2, 5, 8), None, None),
    "cross padded": ({"num_heads": 2}, (2, 4, 8), (2, 9, 6), "keys"),
    "cross gqa full mask": (
        {"num_heads": 4, "num_kv_heads": 2, "head_dim": 3, "out_features": 5},
        (2, 4, 8),
        (2, 3, 6),
        "full",
    ),
    "rotary causal": ({"num_heads": 2, "causal": True, "rotary": True}, (2, 6, 8), None, None),
    "biases": ({"num_heads": 2, "use_bias": True}, (2, 5, 8), None, None),
}


def case_inputs(x_shape, context_shape, mask_kind, seed=1):
    x = normal(x_shape, seed=seed)
    context = None if context_shape is None else normal(context_shape, seed=seed + 1)
    s_len = x_shape[1] if context_shape is None else context_shape[1]
    rng = np.random.default_rng(seed)
    if mask_kind == "keys":  # right padding: every row keeps at least one key
        lengths = rng.integers(1, s_len + 1, x_shape[0])
        mask = np.arange(s_len)[None, :] < lengths[:, None]
    elif mask_kind == "full":
        mask = rng.random((x_shape[0], x_shape[1], s_len)) < 0.6
        mask[..., 0] = True
    else:
        mask = None
    return x, context, mask


@pytest.mark.parametrize("name", CASES)
def test_attention_matches_the_numpy_reference(name):
    options, x_shape, context_shape, mask_kind = CASES[name]
    layer = jitted(fl.multi_head_attention(**options))
    x, context, mask = case_inputs(x_shape, context_shape, mask_kind)
    inputs = x if context is None else (x, context)
    out_shape, params, state = quick_init(layer, jax.tree.map(jnp.shape, inputs, is_leaf=lambda a: hasattr(a, "shape")))
    if options.get("use_bias"):
        params = with_biases(params)
    y, _ = layer.apply(params, state, inputs, mask=mask)
    assert y.shape == out_shape
    ref = reference(
        params,
        x,
        context,
        heads=options["num_heads"],
        kv_heads=options.get("num_kv_heads"),
        causal=options.get("causal", False),
        mask=mask,
        rotary=options.get("rotary", False),
    )
    np.testing.assert_allclose(y, ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("causal, cross", [(False, False), (True, False), (False, True)])
def test_attention_matches_flax_with_the_same_weights(causal, cross):
    heads, size = 4, 3
    layer = fl.multi_head_attention(heads, head_dim=size, out_features=7, causal=causal, use_bias=True)
    x, context, mask = case_inputs((2, 5, 8), (2, 6, 10) if cross else None, "keys")
    inputs = (x, context) if cross else x
    _, params, state = quick_init(layer, ((2, 5, 8), (2, 6, 10)) if cross else (2, 5, 8))
    params = with_biases(params)
    y, _ = layer.apply(params, state, inputs, mask=mask)

    def to_flax(name):  # fundl's dense w (in, heads*size) is flax's DenseGeneral kernel (in, heads, size)
        p = params[name]
        if name == "out":
            return {"kernel": p["w"].reshape(heads, size, -1), "bias": p["b"]}
        return {"kernel": p["w"].reshape(-1, heads, size), "bias": p["b"].reshape(heads, size)}

    flax_params = {name: to_flax(name) for name in ("query", "key", "value", "out")}
    module = nn.MultiHeadDotProductAttention(num_heads=heads, qkv_features=heads * size, out_features=7)
    flax_mask = jnp.asarray(mask)[:, None, None, :]  # (batch, heads, T, S)
    if causal:
        flax_mask = nn.combine_masks(flax_mask, nn.make_causal_mask(jnp.ones((2, 5))))
    source = context if cross else x
    y_flax = module.apply({"params": flax_params}, x, source, source, mask=flax_mask)
    np.testing.assert_allclose(y, y_flax, atol=1e-5)


# --- gradients -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer, shapes, mask, train",
    [
        (fl.multi_head_attention(2, causal=True, rotary=True), (2, 4, 8), None, False),
        (fl.multi_head_attention(4, num_kv_heads=2, use_bias=True), (2, 3, 8), np.array([[1, 1, 0], [1, 0, 0]]), False),
        (fl.multi_head_attention(2, head_dim=3), ((2, 3, 4), (2, 5, 6)), np.array([[1, 1, 1, 0, 0]] * 2), False),
    ],
)
def test_attention_gradients_match_finite_differences(layer, shapes, mask, train):
    with jax.enable_x64(True):
        _, params, state = quick_init(layer, shapes)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        apply = jax.jit(lambda p, x: layer.apply(p, state, x, key=jax.random.key(3), train=train, mask=mask)[0])
        x = inputs_like(shapes, np.float64)
        check_grads(apply, (params, x), order=1, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_fused_and_written_out_attention_agree_with_their_gradients(causal):
    q, k, v = normal((2, 6, 4, 8)), normal((2, 6, 2, 8), seed=2), normal((2, 6, 2, 8), seed=3)
    mask = jnp.asarray(np.arange(6)[None, :] < np.array([[6], [4]]))[:, None, None, :]

    def f(q, k, v, written_out):
        if written_out:
            return jnp.sum(jnp.sin(_attend_written_out(q, k, v, mask, causal, rate=0.0, key=None)))
        return jnp.sum(jnp.sin(_attend(q, k, v, mask, causal, rate=0.0, key=None, implementation=None)))  # fused

    value_and_grad = jax.jit(jax.value_and_grad(f, (0, 1, 2)), static_argnums=3)
    fused, written_out = value_and_grad(q, k, v, False), value_and_grad(q, k, v, True)
    np.testing.assert_allclose(fused[0], written_out[0], rtol=1e-5)
    for g_fused, g_written in zip(fused[1], written_out[1]):
        np.testing.assert_allclose(g_fused, g_written, atol=1e-5)


# --- properties ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer",
    [
        fl.multi_head_attention(2, causal=True, rotary=True),
        fl.serial(fl.learned_positions(10), fl.transformer(2, 2, causal=True, num_kv_heads=1)),
    ],
)
def test_causal_outputs_do_not_depend_on_later_inputs(layer):
    layer = jitted(layer)
    _, params, state = quick_init(layer, (2, 10, 8))
    x = normal((2, 10, 8))
    y, _ = layer.apply(params, state, x)
    for seed, t in enumerate([0, 3, 8]):
        changed = x.at[:, t + 1 :].set(normal((2, 9 - t, 8), seed=seed + 5))
        y2, _ = layer.apply(params, state, changed)
        np.testing.assert_allclose(y2[:, : t + 1], y[:, : t + 1], atol=1e-6)
        assert not np.allclose(y2[:, t + 1 :], y[:, t + 1 :], atol=1e-3)  # later outputs do change


def test_non_causal_attention_sees_the_future():
    layer = jitted(fl.multi_head_attention(2))
    _, params, state = quick_init(layer, (1, 6, 8))
    x = normal((1, 6, 8))
    y, _ = layer.apply(params, state, x)
    y2, _ = layer.apply(params, state, x.at[:, 5].set(1.0))
    assert not np.allclose(y[:, 0], y2[:, 0], atol=1e-4)


def test_rotary_scores_depend_on_relative_position_only():
    q, k = normal((1, 12, 2, 8)), normal((1, 12, 2, 8), seed=2)

    def scores(q_shift, k_shift):
        rq = fl.rotary_embedding(q, jnp.arange(12) + q_shift)
        rk = fl.rotary_embedding(k, jnp.arange(12) + k_shift)
        return np.asarray(jnp.einsum("btnh,bsnh->bnts", rq, rk))

    base = scores(0, 0)
    for shift in (1, 5, 100):
        np.testing.assert_allclose(scores(shift, shift), base, atol=2e-4)
    assert not np.allclose(scores(3, 0), base, atol=1e-2)  # moving only the queries changes the scores
    plain = np.asarray(jnp.einsum("btnh,bsnh->bnts", q, k))
    assert not np.allclose(base, plain, atol=1e-2)  # and rotation does something
    diagonal = np.einsum("btnh,btnh->bnt", np.asarray(q), np.asarray(k))
    np.testing.assert_allclose(np.einsum("bntt->bnt", base), diagonal, atol=2e-5)  # at distance 0 nothing turns


def test_grouped_query_attention_equals_full_attention_with_repeated_kv_heads():
    gqa = jitted(fl.multi_head_attention(6, num_kv_heads=2, causal=True, rotary=True))
    mha = jitted(fl.multi_head_attention(6, causal=True, rotary=True))
    _, params, state = quick_init(gqa, (2, 5, 12))
    x = normal((2, 5, 12))

    def repeat(w):  # (in, 2 * 2) -> (in, 6 * 2): each key/value head serves 3 consecutive query heads
        return jnp.repeat(w.reshape(12, 2, 2), 3, axis=1).reshape(12, 12)

    full = {**params, "key": {"w": repeat(params["key"]["w"])}, "value": {"w": repeat(params["value"]["w"])}}
    np.testing.assert_allclose(gqa.apply(params, state, x)[0], mha.apply(full, state, x)[0], atol=1e-6)


def test_attention_dropout():
    layer = jitted(fl.multi_head_attention(2, dropout=0.5))
    _, params, state = quick_init(layer, (2, 6, 8))
    x = normal((2, 6, 8))
    evaluated, _ = layer.apply(params, state, x)
    trained = [layer.apply(params, state, x, key=jax.random.key(k), train=True)[0] for k in (1, 1, 2)]
    np.testing.assert_array_equal(trained[0], trained[1])  # the same key drops the same weights
    assert trained[0].shape == evaluated.shape and not np.allclose(trained[0], trained[2])
    assert not np.allclose(trained[0], evaluated)
    in_evaluation, _ = layer.apply(params, state, x, key=jax.random.key(1))  # no dropout, even with a key
    np.testing.assert_array_equal(in_evaluation, evaluated)


def test_bfloat16_inputs_take_the_softmax_in_float32():
    q, k = normal((2, 6, 4, 8)).astype(jnp.bfloat16), normal((2, 6, 2, 8), seed=2).astype(jnp.bfloat16)
    fused = functools.partial(_attend, rate=0.0, key=None, implementation=None)
    written_out = functools.partial(_attend_written_out, rate=0.1, key=jax.random.key(0))
    for attend in (fused, written_out):
        jaxpr = jax.make_jaxpr(lambda q, k: attend(q, k, k, None, True))(q, k)
        exps = [eqn for top in jaxpr.eqns for eqn in _all_eqns(top) if eqn.primitive.name == "exp"]
        assert exps and all(eqn.outvars[0].aval.dtype == jnp.float32 for eqn in exps)
        assert jaxpr.out_avals[0].dtype == jnp.bfloat16
    layer = jitted(fl.multi_head_attention(2, causal=True))
    _, params, state = quick_init(layer, (2, 6, 8))
    x = normal((2, 6, 8))
    y = layer.apply(jax.tree.map(lambda a: a.astype(jnp.bfloat16), params), state, x.astype(jnp.bfloat16))[0]
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), layer.apply(params, state, x)[0], atol=0.05)


def _all_eqns(eqn):
    """``eqn`` and the equations of the jaxprs inside it (jit, custom_jvp, ...)."""
    yield eqn
    for value in eqn.params.values():
        inner = getattr(value, "jaxpr", value)
        for sub in getattr(inner, "eqns", []):
            yield from _all_eqns(sub)


# --- shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer, input_shape, expected",
    [
        (fl.multi_head_attention(4), (2, 5, 16), (2, 5, 16)),
        (fl.multi_head_attention(4, num_kv_heads=2, head_dim=3, out_features=7), (2, 5, 16), (2, 5, 7)),
        (fl.multi_head_attention(2), ((2, 5, 8), (2, 9, 3)), (2, 5, 8)),
        (fl.learned_positions(8), (2, 5, 6), (2, 5, 6)),
        (fl.sinusoidal_positions(), (2, 5, 7), (2, 5, 7)),
        (fl.rms_norm(), (2, 5, 6), (2, 5, 6)),
        (fl.feed_forward(2), (2, 5, 6), (2, 5, 6)),
        (fl.transformer_block(2, causal=True), (2, 5, 8), (2, 5, 8)),
        (fl.transformer(2, 2, rotary=True), (2, 5, 8), (2, 5, 8)),
    ],
)
def test_shapes_agree(layer, input_shape, expected, train=False):
    """The shape init predicts is the shape apply gives, in training and evaluation."""
    out_shape, params, state = quick_init(layer, input_shape)
    y, new_state = jitted(layer).apply(params, state, inputs_like(input_shape), key=jax.random.key(2), train=train)
    assert as_shapes(out_shape) == jax.tree.map(jnp.shape, y) == expected
    assert jax.tree.map(jnp.shape, new_state) == jax.tree.map(jnp.shape, state)


def test_sinusoids_are_the_papers():
    table = np.asarray(fl.sinusoids(jnp.arange(5), 6))
    angle = np.arange(5)[:, None] / 10000.0 ** (np.arange(0, 6, 2) / 6)
    np.testing.assert_allclose(table[:, 0::2], np.sin(angle), atol=1e-6)
    np.testing.assert_allclose(table[:, 1::2], np.cos(angle), atol=1e-6)


# --- the cache ---------------------------------------------------------------------------


def test_cached_decoding_equals_the_full_pass():
    """A composition decodes through its state: a prompt, tokens alone, then a few (rotary and GPTs: test_gpt.py)."""
    layer = fl.serial(fl.sinusoidal_positions(), fl.transformer(2, 2, causal=True, num_kv_heads=1))
    _, params, state = quick_init(layer, (2, 12, 8))
    x = normal((2, 12, 8))
    full, _ = layer.apply(params, state, x)
    cache = fl.init_cache(layer, (2, 12, 8))
    step = jax.jit(layer.apply)
    outputs = []
    for start, stop in [(0, 5), (5, 6), (6, 7), (7, 12)]:
        y, cache = step(params, cache, x[:, start:stop])
        outputs.append(y)
    np.testing.assert_allclose(jnp.concatenate(outputs, axis=1), full, atol=1e-5)
    indices = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(cache) if path[-1].key == "index"]
    assert indices and all(int(i) == 12 for i in indices)


def test_training_state_holds_no_cache():
    layer = fl.serial(fl.learned_positions(8), fl.transformer(1, 2, causal=True))
    assert quick_init(layer, (2, 8, 4))[2] == {}
    cache = fl.init_cache(layer, (2, 8, 4), dtype=jnp.bfloat16)
    assert cache["transformer_0"]["block_0"]["attention"]["k"].dtype == jnp.bfloat16
    assert cache["transformer_0"]["block_0"]["attention"]["k"].shape == (2, 8, 2, 2)
    non_causal = fl.transformer(1, 2)
    assert fl.init_cache(non_causal, (2, 8, 4)) == {}  # nothing to cache: every step sees the whole input


def test_a_full_cache_is_an_error():
    layer = fl.multi_head_attention(2, causal=True)
    _, params, _ = quick_init(layer, (1, 4, 4))
    cache = {**fl.init_cache(layer, (1, 4, 4)), "index": jnp.array(3)}  # as after 3 tokens
    with pytest.raises(LayerError, match=r"the cache holds 4 positions, 3 are used and 2 more were given"):
        layer.apply(params, cache, normal((1, 2, 4)))


# --- errors ------------------------------------------------------------------------------


def test_errors_name_the_layer_and_what_was_expected():
    model = fl.serial(fl.named("attend", fl.multi_head_attention(4)))
    rank = r"attend: multi_head_attention expects x of shape \(batch, time, features\) \(rank 3\), got \(4, 16\)"
    with pytest.raises(LayerError, match=rank):
        model.init(jax.random.key(0), (4, 16))
    with pytest.raises(LayerError, match=r"attend: multi_head_attention: num_heads \(4\) must divide the input's"):
        model.init(jax.random.key(0), (2, 5, 10))
    with pytest.raises(LayerError, match=r"num_kv_heads \(3\) must divide num_heads \(4\), e.g. num_kv_heads=2"):
        fl.multi_head_attention(4, num_kv_heads=3)
    with pytest.raises(LayerError, match=r"`dropout` is the probability of dropping and must be in \[0, 1\), got 1.5"):
        fl.multi_head_attention(4, dropout=1.5)
    with pytest.raises(LayerError, match=r"`implementation` must be one of \(None, 'xla', 'cudnn'\), got 'flash'"):
        fl.multi_head_attention(4, implementation="flash")
    with pytest.raises(LayerError, match=r"rotary positions need an even head_dim, got 3"):
        fl.multi_head_attention(2, rotary=True).init(jax.random.key(0), (2, 5, 6))
    with pytest.raises(LayerError, match=r"rotary positions are for self-attention; this input is a pair \(x, context"):
        fl.multi_head_attention(2, rotary=True).init(jax.random.key(0), ((2, 5, 8), (2, 3, 8)))
    with pytest.raises(LayerError, match=r"a causal mask is for self-attention"):
        fl.multi_head_attention(2, causal=True).init(jax.random.key(0), ((2, 5, 8), (2, 3, 8)))
    with pytest.raises(LayerError, match=r"x and context with one batch size, got \(2, 5, 8\) and \(3, 3, 8\)"):
        fl.multi_head_attention(2).init(jax.random.key(0), ((2, 5, 8), (3, 3, 8)))


def test_apply_errors_name_the_path():
    model = fl.transformer(2, 2, causal=True, dropout=0.1)
    params, state = jax.eval_shape(lambda key: model.init(key, (2, 5, 8))[1:], jax.random.key(0))  # nothing compiles

    def apply(layer, params, x, **kwargs):  # traced, never run: the errors are raised while tracing
        return jax.eval_shape(lambda p, x: layer.apply(p, state, x, **kwargs), params, x)

    x = jax.ShapeDtypeStruct((2, 5, 8), jnp.float32)
    with pytest.raises(LayerError, match=r"block_0/attention: multi_head_attention needs a random key for attention"):
        apply(model, params, x, train=True)
    expected = (
        r"block_0/attention: multi_head_attention expects a mask of shape \(batch, S\) = \(2, 5\) "
        r"or \(batch, T, S\) = \(2, 5, 5\), got \(2, 4\)"
    )
    with pytest.raises(LayerError, match=expected):
        apply(model, params, x, mask=np.ones((2, 4), bool))
    narrow = jax.ShapeDtypeStruct((2, 5, 6), jnp.float32)
    with pytest.raises(LayerError, match=r"block_0/attention_norm: rms_norm expects inputs with 8 features"):
        apply(model, params, narrow)
    attention = params["block_0"]["attention"]
    with pytest.raises(LayerError, match=r"^query: dense expects inputs of shape \(\.\.\., 8\), got \(2, 5, 6\)"):
        apply(fl.multi_head_attention(2), attention, narrow)
    with pytest.raises(fl.LayerTypeError, match=r"multi_head_attention expects floating-point inputs, got int32"):
        apply(fl.multi_head_attention(2), attention, jax.ShapeDtypeStruct((2, 5, 8), jnp.int32))
    with pytest.raises(LayerError, match=r"learned_positions has 4 positions \(max_len\), got sequences of 5"):
        fl.learned_positions(4).init(jax.random.key(0), (2, 5, 8))
    with pytest.raises(LayerError, match=r"transformer_block expects inputs of shape \(batch, time, width\) \(self"):
        fl.transformer_block(2).init(jax.random.key(0), ((2, 5, 8), (2, 3, 8)))
    with pytest.raises(LayerError, match=r"the residual stream needs them to keep the width"):
        fl.transformer_block(2, out_features=4).init(jax.random.key(0), (2, 5, 8))
