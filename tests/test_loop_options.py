"""The loop's options are records that check themselves, and the compile cache is keyed by what is compiled."""

import dataclasses

import jax
import optax
import pytest

import fundl as fl
from fundl.train import Budget, Evaluation, Execution, Loss, TrainState, classification_loss, fit
from fundl.train._compiled import _CACHE, Program


@pytest.fixture(scope="module")
def setup():
    data = fl.datasets.digits(validation=0.2)
    model = fl.serial(fl.flatten(), fl.dense(16), fl.relu(), fl.dense(10))
    return data, model


def start(model, optimizer):
    _, params, state = model.init(jax.random.key(0), (32, 8, 8))
    return TrainState.create(params, state, optimizer, jax.random.key(1))


@pytest.mark.parametrize(
    "options, message",
    [
        (lambda: Budget(), "give exactly one training budget"),
        (lambda: Budget(epochs=1, steps=2), "give exactly one training budget"),
        (lambda: Budget(epochs=-1), "epochs must be a non-negative integer, got -1"),
        (lambda: Budget(epochs=1, log_every=0), "log_every must be a positive number of steps, got 0"),
        (lambda: Execution.on(1, accumulate=0), "accumulate must be a positive integer"),
        (lambda: Execution.on(1, steps_per_call="fast"), 'steps_per_call must be a positive integer or "auto"'),
        (lambda: Execution.on(1, max_in_flight=True), "max_in_flight must be a positive integer"),
        (lambda: Evaluation({"train": {}}), 'eval split name "train" is taken'),
        (lambda: Evaluation({}, batch_size=0), "eval_batch_size must be a positive integer"),
    ],
)
def test_options_check_themselves(options, message):
    with pytest.raises(ValueError, match=message):
        options()


def test_an_option_that_changes_the_compiled_step_compiles_anew_and_equal_options_compile_nothing(setup):
    """The cache key is the Program record: every field it is made of, so no option can be forgotten in it."""
    data, model = setup
    loss, optimizer = classification_loss(model), optax.sgd(0.1)
    common = dict(batch_size=32, steps=8, quiet=True)
    _CACHE.clear()
    fit(loss, optimizer, start(model, optimizer), data["train"], **common)
    assert len(_CACHE) == 1
    _, history = fit(
        classification_loss(model), optimizer, start(model, optimizer), data["train"], **common
    )  # a rebuilt, equal loss
    assert len(_CACHE) == 1 and sum(history.traces.values()) == 0
    variants = [
        dict(accumulate=2),
        dict(steps_per_call=4),
        dict(strict=True),
        dict(eval_data={"validation": data["validation"]}),
        dict(log_every=2),  # a different plan of calls: fused calls of 2 steps
    ]
    for number, variant in enumerate(variants, start=2):
        _, history = fit(loss, optimizer, start(model, optimizer), data["train"], **{**common, **variant})
        assert len(_CACHE) == number, variant
        assert history.traces["train_step"] + history.traces["fused_steps"] >= 1, variant
    _, history = fit(loss, optax.sgd(0.1), start(model, optimizer), data["train"], **common)  # an equal optimizer
    assert len(_CACHE) == len(variants) + 1 and sum(history.traces.values()) == 0
    _, history = fit(loss, optax.sgd(0.2), start(model, optimizer), data["train"], **common)  # another rate
    assert len(_CACHE) == len(variants) + 2
    names = {field.name for field in dataclasses.fields(Program)}
    assert {
        "population",
        "loss",
        "accumulate",
        "placement",
        "resident",
        "fused",
        "strict",
        "carry",
        "batch",
        "eval_data",
    } <= names


def test_a_loss_is_a_value_that_wrappers_keep_whole(setup):
    data, model = setup
    loss = classification_loss(model)
    assert loss == classification_loss(model)  # equal for the same model: the compile cache finds it again
    wrapped = fl.train.with_precision(loss, "bfloat16")
    assert wrapped.check_data == loss.check_data and wrapped.evaluate is not None
    with pytest.raises(ValueError, match=r"train data: label 10 at index 0 is outside \[0, 10\)"):
        bad = dict(data["train"], label=data["train"]["label"].copy())
        bad["label"][0] = 10
        fit(wrapped, optax.sgd(0.1), start(model, optax.sgd(0.1)), bad, batch_size=32, steps=1, quiet=True)

    def plain(params, state, batch, key):
        return loss.fn(params, state, batch, key)

    assert Loss.of(plain).evaluate is None and Loss.of(plain).check_data is None
    with pytest.raises(ValueError, match="evaluation needs either an eval_fn"):
        fit(
            plain,
            optax.sgd(0.1),
            start(model, optax.sgd(0.1)),
            data["train"],
            batch_size=32,
            steps=1,
            eval_data={"validation": data["validation"]},
            quiet=True,
        )
    with pytest.raises(TypeError, match=r"expected a loss function .* got a model"):
        fit(model, optax.sgd(0.1), start(model, optax.sgd(0.1)), data["train"], batch_size=32, steps=1, quiet=True)
