"""serial / named / parallel / branch / residual / fan-in, the per-layer key rule, and summary."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from layer_checks import assert_shape_agreement, random_input

import fundl as fl
from fundl import LayerError


def shapes(tree):
    return jax.tree.map(jnp.shape, tree)


def test_serial_names_children_by_kind_and_leaves_out_empty_ones(key):
    _, params, state = fl.serial(fl.dense(100), fl.tanh(), fl.dense(10)).init(key, (32, 64))
    assert shapes(params) == {"dense_0": {"w": (64, 100), "b": (100,)}, "dense_1": {"w": (100, 10), "b": (10,)}}
    assert state == {}


def test_named_layers_give_readable_param_paths(key):
    model = fl.serial(
        fl.named("encoder", fl.serial(fl.dense(8), fl.relu(), fl.dense(4), fl.batch_norm())),
        fl.named("head", fl.dense(2)),
    )
    out_shape, params, state = model.init(key, (5, 3))
    assert out_shape == (5, 2)
    assert params["encoder"]["dense_1"]["w"].shape == (8, 4)
    assert params["head"]["w"].shape == (4, 2)
    assert shapes(state) == {"encoder": {"batch_norm_0": {"mean": (4,), "var": (4,)}}}


def test_serial_applies_layers_in_order(key):
    model = fl.serial(fl.dense(4), fl.tanh(), fl.dense(2))
    _, params, state = model.init(key, (3, 5))
    x = random_input((3, 5))
    hidden = np.tanh(np.asarray(x) @ params["dense_0"]["w"] + params["dense_0"]["b"])
    expected = hidden @ np.asarray(params["dense_1"]["w"]) + np.asarray(params["dense_1"]["b"])
    np.testing.assert_allclose(model.apply(params, state, x)[0], expected, atol=1e-5)


def test_same_shaped_layers_never_share_initial_weights(key):
    _, params, _ = fl.serial(fl.dense(5), fl.dense(5), fl.dense(5)).init(key, (2, 5))
    ws = [np.asarray(params[f"dense_{i}"]["w"]) for i in range(3)]
    assert not np.array_equal(ws[0], ws[1]) and not np.array_equal(ws[1], ws[2])
    # ... also in sibling sub-models with the same inner names.
    twins = fl.branch(fl.named("a", fl.serial(fl.dense(3))), fl.named("b", fl.serial(fl.dense(3))))
    _, params, _ = twins.init(key, (2, 4))
    assert not np.array_equal(params["a"]["dense_0"]["w"], params["b"]["dense_0"]["w"])


def test_appending_a_layer_keeps_the_earlier_initial_weights(key):
    _, short, _ = fl.serial(fl.dense(5), fl.tanh(), fl.dense(3)).init(key, (2, 4))
    _, longer, _ = fl.serial(fl.dense(5), fl.tanh(), fl.dense(3), fl.relu(), fl.dense(2)).init(key, (2, 4))
    for name in short:
        jax.tree.map(np.testing.assert_array_equal, short[name], longer[name])
    # Inserting an activation does not move the weights either: keys follow names, not positions.
    _, with_activation, _ = fl.serial(fl.dense(5), fl.relu(), fl.tanh(), fl.dense(3)).init(key, (2, 4))
    jax.tree.map(np.testing.assert_array_equal, short, with_activation)


def test_initialisation_is_a_function_of_the_key():
    model = fl.serial(fl.dense(5), fl.dense(3))
    a = model.init(jax.random.key(1), (2, 4))[1]
    b = model.init(jax.random.key(1), (2, 4))[1]
    c = model.init(jax.random.key(2), (2, 4))[1]
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(a["dense_0"]["w"], c["dense_0"]["w"])


def test_stochastic_children_get_different_keys(key):
    model = fl.branch(fl.dropout(0.5), fl.dropout(0.5))
    (a, b), _ = model.apply({}, {}, jnp.ones((4, 64)), key=key, train=True)
    assert not np.array_equal(a, b)


def test_parallel_branch_and_fan_in(key):
    x1, x2 = random_input((3, 4), seed=1), random_input((3, 6), seed=2)
    par = fl.parallel(fl.dense(2), fl.dense(5))
    out_shape, params, state, (y1, y2) = assert_shape_agreement(par, ((3, 4), (3, 6)), x=(x1, x2))
    assert out_shape == ((3, 2), (3, 5))
    np.testing.assert_allclose(y2, fl.dense(5).apply(params["dense_1"], {}, x2)[0])

    concat = fl.serial(fl.branch(fl.dense(2), fl.tanh()), fl.fan_in_concat())
    out_shape, params, _, y = assert_shape_agreement(concat, (3, 4), x=x1)
    assert out_shape == (3, 6)
    np.testing.assert_allclose(y[:, 2:], np.tanh(x1), rtol=1e-6)

    summed = fl.serial(fl.fan_out(2), fl.parallel(fl.dense(4), fl.identity()), fl.fan_in_sum())
    _, params, _, y = assert_shape_agreement(summed, (3, 4), x=x1)
    np.testing.assert_allclose(y, fl.dense(4).apply(params["parallel_0"]["dense_0"], {}, x1)[0] + x1, rtol=1e-6)


def test_residual_adds_its_input(key):
    block = fl.residual(fl.dense(4), fl.relu())
    _, params, _, y = assert_shape_agreement(block, (3, 4))
    x = random_input((3, 4))
    inner = np.maximum(np.asarray(x) @ params["dense_0"]["w"] + params["dense_0"]["b"], 0)
    np.testing.assert_allclose(y, np.asarray(x) + inner, atol=1e-5)


def test_combinators_thread_state(key):
    model = fl.serial(fl.dense(3), fl.residual(fl.batch_norm()), fl.branch(fl.batch_norm(), fl.identity()))
    _, params, state, _ = assert_shape_agreement(model, (8, 2), train=True)
    assert set(state) == {"residual_0", "branch_0"}
    _, new_state = model.apply(params, state, random_input((8, 2)), train=True)
    assert not np.array_equal(
        new_state["residual_0"]["batch_norm_0"]["mean"], state["residual_0"]["batch_norm_0"]["mean"]
    )


# --- errors ----------------------------------------------------------------------------


def test_params_that_do_not_match_the_model_name_the_path(key):
    model = fl.serial(fl.named("encoder", fl.serial(fl.dense(4), fl.tanh(), fl.dense(3))), fl.dense(2))
    _, params, state = model.init(key, (2, 5))
    x = jnp.ones((2, 5))

    missing = jax.tree.map(lambda a: a, params)
    del missing["encoder"]["dense_1"]["b"]
    with pytest.raises(LayerError, match=r"encoder/dense_1: dense params do not match .* missing \['b'\]"):
        model.apply(missing, state, x)

    extra = jax.tree.map(lambda a: a, params)
    extra["encoder"]["dense_0"]["gamma"] = jnp.ones(4)
    with pytest.raises(LayerError, match=r"encoder/dense_0: .* unexpected \['gamma'\]"):
        model.apply(extra, state, x)

    wrong = jax.tree.map(lambda a: a, params)
    wrong["dense_0"]["b"] = jnp.ones(7)
    with pytest.raises(LayerError, match=r"dense_0: dense param 'b' should have shape \(2,\), got \(7,\)"):
        model.apply(wrong, state, x)

    stray = {**params, "decoder": {}}
    with pytest.raises(
        LayerError,
        match=r"serial params have unexpected entries \['decoder'\]; its children are \['encoder', 'dense_0'\]",
    ):
        model.apply(stray, state, x)

    with pytest.raises(LayerError, match=r"encoder/dense_0: dense params do not match .* missing \['w', 'b'\]"):
        model.apply({"dense_0": params["dense_0"]}, state, x)


def test_shape_errors_at_init_name_the_nested_path(key):
    model = fl.serial(fl.named("trunk", fl.serial(fl.dense(4), fl.residual(fl.dense(3)))))
    with pytest.raises(
        LayerError, match=r"trunk/residual_0: residual: the wrapped layers map inputs \(2, 4\) to \(2, 3\)"
    ):
        model.init(key, (2, 5))


def test_combinator_construction_errors():
    with pytest.raises(
        LayerError, match=r"serial: argument 1 is not a Layer .*did you forget to call it, e.g. relu\(\)"
    ):
        fl.serial(fl.dense(3), fl.relu)
    with pytest.raises(LayerError, match=r"two children share the name\(s\) \['head'\]"):
        fl.serial(fl.named("head", fl.dense(3)), fl.named("head", fl.dense(3)))
    with pytest.raises(LayerError, match="serial needs at least one layer"):
        fl.serial()
    with pytest.raises(LayerError, match="named: the name must be a non-empty string without '/'"):
        fl.named("a/b", fl.dense(3))


def test_tuple_input_errors(key):
    with pytest.raises(LayerError, match=r"parallel expects a tuple of 2 inputs, one per layer, got \(3, 4\)"):
        fl.parallel(fl.dense(2), fl.dense(2)).init(key, (3, 4))
    with pytest.raises(LayerError, match=r"fan_in_concat\(axis=-1\) expects inputs equal in every other axis"):
        fl.fan_in_concat().init(key, ((3, 4), (2, 4)))
    with pytest.raises(LayerError, match="fan_in_sum expects inputs of one shape"):
        fl.fan_in_sum().init(key, ((3, 4), (3, 5)))


# --- summary ---------------------------------------------------------------------------


def test_summary_lists_paths_shapes_and_counts():
    model = fl.serial(fl.named("encoder", fl.serial(fl.dense(100), fl.batch_norm(), fl.tanh())), fl.dense(10))
    text = fl.summary(model, (32, 64))
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "output", "shape", "params"]
    rows = {line.split()[0]: line for line in lines[2:-3]}
    assert list(rows) == ["encoder", "encoder/dense_0", "encoder/batch_norm_0", "encoder/tanh_0", "dense_0"]
    assert rows["encoder"].split()[-1] == f"{64 * 100 + 100 + 200:,}"
    assert "(32, 100)" in rows["encoder/tanh_0"] and rows["encoder/tanh_0"].split()[-1] == "0"
    assert "(32, 10)" in rows["dense_0"] and rows["dense_0"].split()[-1] == "1,010"
    assert f"total params: {6500 + 200 + 1010:,}" in text
    assert "total state: 200" in text


def test_summary_is_abstract_and_allocates_nothing():
    # 40 GB of float32 weights: only an abstract initialisation can summarise this.
    text = fl.summary(fl.serial(fl.dense(100_000), fl.dense(100_000)), (1, 1000))
    assert "total params: 10,100,200,000 (37.6 GiB)" in text
