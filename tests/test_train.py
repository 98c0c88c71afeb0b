"""The training loop: an oracle against a hand-written JAX loop, exact evaluation, hooks, errors."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fundl as fl
from fundl import losses
from fundl.train import (
    BestParams,
    RetraceError,
    RetraceWarning,
    TrainState,
    classification_loss,
    early_stopping,
    fit,
    log_learning_rate,
    params_fingerprint,
)

MODEL = fl.serial(fl.dense(32), fl.relu(), fl.dropout(0.2), fl.dense(10))
LOSS = classification_loss(MODEL)


@functools.cache
def digits():
    data = fl.datasets.digits()
    flat = lambda split: {"image": split["image"].reshape(-1, 64), "label": split["label"]}  # noqa: E731
    return flat(data["train"]), flat(data["test"])


def fresh(optimizer, model=MODEL, seed=0):
    _, params, state = model.init(jax.random.key(seed), (32, 64))
    return TrainState.create(params, state, optimizer, jax.random.key(seed + 1))


def test_fit_reproduces_a_hand_written_loop_bit_for_bit():
    train, _ = digits()
    optimizer = optax.adam(1e-3)
    trained, history = fit(LOSS, optimizer, fresh(optimizer), train, batch_size=32, epochs=3, data_seed=3, quiet=True)
    assert history.steps_per_call > 1  # the fused path is the one compared

    # The same training written out by hand, following the documented rules: the order of
    # epoch e is default_rng([seed, e]).permutation(n); step s uses fold_in(key, s).
    @jax.jit
    def step(params, opt_state, state, s, batch):
        key = jax.random.fold_in(jax.random.key(1), s)
        (_, (state, _)), grads = jax.value_and_grad(LOSS, has_aux=True)(params, state, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, state

    _, params, state = MODEL.init(jax.random.key(0), (32, 64))
    opt_state, s = optimizer.init(params), 0
    for epoch in range(3):
        order = np.random.default_rng([3, epoch]).permutation(len(train["label"]))
        for b in range(len(order) // 32):
            rows = order[b * 32 : (b + 1) * 32]
            params, opt_state, state = step(params, opt_state, state, s, jax.tree.map(lambda a: a[rows], train))
            s += 1
    assert int(trained.step) == s == 141
    jax.tree.map(np.testing.assert_array_equal, trained.params, params)
    jax.tree.map(np.testing.assert_array_equal, trained.opt_state, opt_state)


def test_fused_and_single_steps_give_identical_params():
    train, _ = digits()
    optimizer = optax.sgd(0.1, momentum=0.9)
    prints = {}
    for steps_per_call in ("auto", 1, 5):
        trained, history = fit(
            LOSS, optimizer, fresh(optimizer), train, batch_size=32, epochs=2, steps_per_call=steps_per_call, quiet=True
        )
        prints[steps_per_call] = params_fingerprint(trained.params)
        assert history.steps == 94
    assert history.traces == {"train_step": 1, "fused_steps": 1, "eval_step": 0}  # 5-step calls, then single steps
    assert len(set(prints.values())) == 1, prints


def test_continuing_from_a_returned_train_state_is_identical_to_one_run():
    train, _ = digits()
    optimizer = optax.adam(1e-3)
    straight, _ = fit(LOSS, optimizer, fresh(optimizer), train, batch_size=32, epochs=3, quiet=True)
    first, _ = fit(LOSS, optimizer, fresh(optimizer), train, batch_size=32, steps=60, quiet=True)
    resumed, history = fit(LOSS, optimizer, first, train, batch_size=32, epochs=3, quiet=True)
    assert history.records[0].step == 94  # the first log after resuming is at the epoch end
    assert params_fingerprint(resumed.params) == params_fingerprint(straight.params)


@pytest.mark.parametrize("eval_batch_size", [32, 7, 270])
def test_evaluation_metrics_are_exact_means_over_the_split(eval_batch_size):
    train, test = digits()  # 270 test examples: not a multiple of 32 or 7
    optimizer = optax.sgd(0.1)
    trained, history = fit(
        LOSS,
        optimizer,
        fresh(optimizer),
        train,
        batch_size=32,
        steps=20,
        eval_data={"test": test},
        eval_batch_size=eval_batch_size,
        quiet=True,
    )
    logits, _ = MODEL.apply(trained.params, trained.state, test["image"])
    final = history.records[-1]
    assert final.split == "test" and final.step == 20
    np.testing.assert_allclose(final.metrics["accuracy"], float(losses.accuracy(logits, test["label"])), rtol=1e-6)
    np.testing.assert_allclose(
        final.metrics["loss"], float(losses.softmax_cross_entropy(logits, test["label"])), rtol=1e-5
    )


def test_logs_written_when_the_metrics_come_back_equal_the_logs_of_a_synced_loop():
    # Without hooks, fit does not wait for the device at a boundary that needs no state (logs,
    # epoch ends): the log is written when its call's metrics are read back, a few calls later.
    train, _ = digits()
    optimizer = optax.adam(1e-3)

    def run(hooks):
        return fit(
            LOSS,
            optimizer,
            fresh(optimizer),
            train,
            batch_size=32,
            epochs=3,
            log_every=10,
            steps_per_call=5,
            hooks=hooks,
            quiet=True,
        )

    unsynced, quick = run(())
    synced, slow = run([lambda event: None])  # a hook may look at the state at every log: fit waits there
    assert [r.step for r in quick.records] == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 141]
    assert quick.records == slow.records
    jax.tree.map(np.testing.assert_array_equal, unsynced.params, synced.params)


def test_history_logs_and_evaluations_follow_the_schedule():
    train, test = digits()
    optimizer = optax.sgd(0.1)
    _, history = fit(
        LOSS,
        optimizer,
        fresh(optimizer),
        train,
        batch_size=32,
        steps=100,
        eval_data={"test": test},
        eval_every=40,
        log_every=25,
        quiet=True,
    )
    logs = [r.step for r in history.records if r.split == "train"]
    evals = [r.step for r in history.records if r.split == "test"]
    assert logs == [25, 50, 75, 100] and evals == [40, 80, 100]
    assert history.records[0].epoch == pytest.approx(25 / 47)
    assert set(history.records[0].metrics) == {"loss", "accuracy"}


def test_hooks_see_every_step_and_epoch_and_can_add_to_records():
    train, test = digits()
    schedule = optax.linear_schedule(0.1, 0.0, 94)
    optimizer = optax.sgd(schedule)
    events, params_at = [], {}

    def record(event):
        events.append((event.kind, event.record.step))
        if event.kind == "eval":
            params_at[event.record.step] = jax.device_get(event.train_state.params)

    best = BestParams("test", "accuracy", mode="max")
    trained, history = fit(
        LOSS,
        optimizer,
        fresh(optimizer),
        train,
        batch_size=32,
        epochs=3,
        eval_data={"test": test},
        hooks=[record, best, log_learning_rate(schedule)],
        quiet=True,
    )
    assert [s for kind, s in events if kind == "step"] == list(range(1, 142))
    assert [s for kind, s in events if kind == "epoch_end"] == [47, 94, 141]
    assert events[-1] == ("end", 141) and [kind for kind, _ in events].count("end") == 1
    logs = [r for r in history.records if r.split == "train"]
    assert [r.metrics["learning_rate"] for r in logs] == pytest.approx([float(schedule(s)) for s in (46, 93, 140)])
    evals = [r for r in history.records if r.split == "test"]
    best_eval = max(evals, key=lambda r: r.metrics["accuracy"])  # the first of equals, as BestParams keeps
    assert best.value == best_eval.metrics["accuracy"] and best.step == best_eval.step
    jax.tree.map(np.testing.assert_array_equal, best.params, params_at[best.step])
    assert not np.array_equal(params_at[47]["dense_0"]["w"], params_at[141]["dense_0"]["w"])


def test_early_stopping_stops_and_says_why():
    train, test = digits()
    optimizer = optax.sgd(0.0)  # nothing improves
    _, history = fit(
        LOSS,
        optimizer,
        fresh(optimizer),
        train,
        batch_size=32,
        epochs=20,
        eval_data={"test": test},
        hooks=[early_stopping("test", "loss", patience=2)],
        quiet=True,
    )
    assert history.steps == 3 * 47
    assert history.stop_reason.startswith("early stopping: test loss has not improved on")


@pytest.mark.parametrize("steps_per_call", [1, "auto"])
def test_a_nan_loss_stops_training_and_names_the_step_and_metric(steps_per_call):
    train, _ = digits()
    train = jax.tree.map(np.copy, train)
    train["image"][100] = -1.0  # finite, so fit's data check lets it pass; its loss below is NaN
    # By the documented order rule, example 100 is in batch (position of 100) // 32 of epoch 0.
    position = int(np.flatnonzero(np.random.default_rng([0, 0]).permutation(1527) == 100)[0])
    bad_step = position // 32 + 1

    def poisoned(params, state, batch, key, *, train=True):
        loss, aux = LOSS(params, state, batch, key, train=train)
        return loss + 0.0 * jnp.sum(jnp.log1p(batch["image"])), aux  # log1p(-1) = -inf; 0 * -inf = NaN

    optimizer = optax.sgd(0.1)
    trained, history = fit(
        poisoned, optimizer, fresh(optimizer), train, batch_size=32, epochs=5, steps_per_call=steps_per_call, quiet=True
    )
    assert history.stop_reason == f"loss became nan at step {bad_step}"  # the exact step, inside a fused call too
    assert history.nonfinite and history.steps < 5 * 47


def test_data_with_a_nan_is_refused_before_training():
    train, _ = digits()
    train = jax.tree.map(np.copy, train)
    train["image"][100, 5] = np.nan
    optimizer = optax.sgd(0.1)
    with pytest.raises(ValueError, match=r"train data: .*non-finite value nan at index 100"):
        fit(LOSS, optimizer, fresh(optimizer), train, batch_size=32, epochs=1, quiet=True)


def test_retracing_warns_with_the_argument_that_changed_and_strict_raises():
    train, _ = digits()
    model = fl.serial(fl.dense(10))

    def loss_fn(params, state, batch, key):
        logits, _ = model.apply(params, {}, batch["image"])
        # The count starts weakly typed and comes back strongly typed: a retrace.
        return losses.softmax_cross_entropy(logits, batch["label"]), ({"count": state["count"] + jnp.float32(1)}, {})

    optimizer = optax.sgd(0.1)
    _, params, _ = model.init(jax.random.key(0), (32, 64))
    start = lambda: TrainState.create(params, {"count": jnp.asarray(0.0)}, optimizer, jax.random.key(1))  # noqa: E731
    with pytest.warns(
        RetraceWarning,
        match=r"train_step was traced and compiled again .*\.state\['count'\] changed from ~float32\[\] to float32\[\]",
    ):
        _, history = fit(loss_fn, optimizer, start(), train, batch_size=32, steps=3, steps_per_call=1, quiet=True)
    assert history.traces["train_step"] == 2
    with pytest.raises(RetraceError, match=r"state\['count'\] changed"):
        fit(loss_fn, optimizer, start(), train, batch_size=32, steps=3, steps_per_call=1, quiet=True, strict=True)


def test_a_clean_run_compiles_each_function_once():
    train, test = digits()
    optimizer = optax.adam(1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RetraceWarning)
        _, history = fit(
            LOSS, optimizer, fresh(optimizer), train, batch_size=32, epochs=2, eval_data={"test": test}, quiet=True
        )
    assert history.traces == {
        "train_step": 0,
        "fused_steps": 1,
        "eval_step": 1,
    }  # eval: the whole small test split at once
    assert 0 < history.compile_s < history.wall_s


def test_quiet_prints_nothing_and_progress_prints_lines(capfd):
    train, test = digits()
    optimizer = optax.sgd(0.1)
    fit(LOSS, optimizer, fresh(optimizer), train, batch_size=32, epochs=1, eval_data={"test": test}, quiet=True)
    assert capfd.readouterr() == ("", "")
    fit(LOSS, optimizer, fresh(optimizer), train, batch_size=32, epochs=1, eval_data={"test": test})
    out, err = capfd.readouterr()
    assert out.startswith("step     47  epoch   1.00  train: loss ") and "  test: loss " in out  # results: stdout
    assert "training 47 steps" in err and "compiling" in err  # diagnostics: stderr


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch size for train data must be a positive integer, got 0"),
        ({"batch_size": -2}, "must be a positive integer, got -2"),
        ({"batch_size": 2000}, "batch size 2000 is larger than train data, which has 1527 examples"),
        ({"batch_size": 32, "epochs": 1, "steps": 5}, "give exactly one training budget, epochs or steps"),
        ({"batch_size": 32, "eval_data": {"train": None}}, 'eval split name "train" is taken'),
        ({"batch_size": 32, "steps_per_call": 0}, 'steps_per_call must be a positive integer or "auto"'),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    train, _ = digits()
    optimizer = optax.sgd(0.1)
    kwargs = {"epochs": 1, **kwargs} if "steps" not in kwargs else kwargs
    with pytest.raises(ValueError, match=match):
        fit(LOSS, optimizer, fresh(optimizer), train, quiet=True, **kwargs)


def test_empty_or_ragged_data_is_an_error():
    optimizer = optax.sgd(0.1)
    with pytest.raises(ValueError, match="train data is empty: it has 0 examples"):
        fit(
            LOSS,
            optimizer,
            fresh(optimizer),
            {"image": np.zeros((0, 64)), "label": np.zeros(0, int)},
            batch_size=1,
            epochs=1,
        )
    with pytest.raises(ValueError, match="every array needs the same leading"):
        fit(
            LOSS,
            optimizer,
            fresh(optimizer),
            {"image": np.zeros((5, 64)), "label": np.zeros(4, int)},
            batch_size=1,
            epochs=1,
        )


def _run_with_loss(loss_fn, **kwargs):
    train, _ = digits()
    optimizer = optax.sgd(0.1)
    return fit(loss_fn, optimizer, fresh(optimizer), train, batch_size=32, steps=1, quiet=True, **kwargs)


def test_a_loss_function_with_the_wrong_output_is_a_clear_error():
    def per_example(params, state, batch, key):
        logits, state = MODEL.apply(params, state, batch["image"])
        return optax.losses.softmax_cross_entropy_with_integer_labels(logits, batch["label"]), (state, {})

    with pytest.raises(
        ValueError, match=r"float scalar loss; the loss returned was float32\[32\]: average the per-example losses"
    ):
        _run_with_loss(per_example)
    with pytest.raises(ValueError, match=r"must return \(loss, \(new_state, metrics\)\); it returned float32\[\]"):
        _run_with_loss(lambda p, s, b, k: jnp.mean(MODEL.apply(p, s, b["image"])[0]))
    with pytest.raises(ValueError, match="where metrics is a dict of scalars"):
        _run_with_loss(lambda p, s, b, k: (jnp.mean(MODEL.apply(p, s, b["image"])[0]), (s, {"acc": jnp.ones(3)})))
    with pytest.raises(ValueError, match="where new_state has the structure of the model state"):
        _run_with_loss(lambda p, s, b, k: (jnp.mean(MODEL.apply(p, s, b["image"])[0]), ({"extra": jnp.ones(1)}, {})))


def test_evaluation_without_a_way_to_evaluate_is_an_error():
    _, test = digits()

    def loss_fn(params, state, batch, key):  # no `train` keyword
        return LOSS(params, state, batch, key)

    with pytest.raises(ValueError, match=r"evaluation needs either an eval_fn\(params, state, batch\)"):
        _run_with_loss(loss_fn, eval_data={"test": test})


def test_a_second_fit_with_the_same_pieces_compiles_nothing():
    train, test = digits()
    optimizer = optax.sgd(0.1)
    _, first = fit(
        LOSS, optimizer, fresh(optimizer), train, batch_size=32, epochs=1, eval_data={"test": test}, quiet=True
    )
    assert first.traces["fused_steps"] == 1 and first.traces["eval_step"] >= 1
    _, again = fit(
        LOSS, optimizer, fresh(optimizer), train, batch_size=32, epochs=1, eval_data={"test": test}, quiet=True
    )
    assert again.traces == {"train_step": 0, "fused_steps": 0, "eval_step": 0}
    assert again.compile_s < first.compile_s
    _, other = fit(
        LOSS, optimizer, fresh(optimizer), train, batch_size=16, epochs=1, quiet=True
    )  # a new shape: compiled anew
    assert other.traces["fused_steps"] == 1


@pytest.mark.parametrize(
    "per_epoch, eval_every, log_every, fused, checkpoint_every, total",
    [
        (47, 47, 47, 47, None, 141),
        (47, 10, 47, 10, None, 100),
        (47, 47, 20, 20, 15, 94),
        (5, 5, 5, 1, None, 12),
    ],
)
def test_the_plan_of_calls_never_crosses_a_boundary_and_fuses_where_it_can(
    per_epoch, eval_every, log_every, fused, checkpoint_every, total
):
    from fundl.train._plan import CallPlan

    every_checkpoint = (lambda step: step + checkpoint_every - step % checkpoint_every) if checkpoint_every else None
    plan = CallPlan(total, per_epoch, eval_every, log_every, fused, every_checkpoint)
    boundaries = {
        s
        for s in range(1, total + 1)
        if s == total or any(s % e == 0 for e in (per_epoch, eval_every, log_every, checkpoint_every or total + 1))
    }
    assert {s for s in range(1, total + 1) if plan.is_boundary(s)} == boundaries
    step, sizes = 0, []
    while step < total:
        n = plan.call_size(step)
        assert not any(step < b < step + n for b in boundaries)  # no call crosses a boundary ...
        next_boundary = min(b for b in boundaries if b > step)
        assert n == (fused if next_boundary - step >= fused else 1)  # ... and calls are fused wherever they fit
        sizes.append(n)
        step += n
    assert step == total
