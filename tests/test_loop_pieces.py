"""The pieces of the loop, each alone: calls in flight, the recorder and its lanes, saves, boundaries, the
evaluator, the batch feed, and what a population of members does differently from one run."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fundl.distributed import Placement, data_mesh
from fundl.train import MemberEnd, Record
from fundl.train._data import Shuffled
from fundl.train._evaluate import Evaluator, exact_means
from fundl.train._feed import BatchFeed
from fundl.train._loop import record_boundary
from fundl.train._plan import CallPlan
from fundl.train._population import Members, OneRun
from fundl.train._progress import ProgressReport
from fundl.train._records import CheckpointSaves, InFlight, Recorder

ONE_DEVICE = Placement(data_mesh(1))


def recorder(hooks=(), per_epoch=10, lanes=None, **kwargs) -> Recorder:
    lane_hooks = [list(hooks)] if lanes is None else [list(hooks) for _ in range(lanes)]
    return Recorder(lane_hooks, ProgressReport(100, 10, 0), per_epoch, members=lanes is not None, **kwargs)


def no_state(lane):
    return None


def test_in_flight_reads_back_oldest_first_and_keeps_at_most_keep():
    seen = []
    calls = InFlight(
        lambda first, steps, outputs: seen.append((first, steps, np.reshape(outputs["loss"], (steps,)).tolist()))
    )
    calls.add(0, 3, {"loss": jnp.array([3.0, 2.0, 1.0])})
    calls.add(3, 1, {"loss": jnp.array(0.5)})
    calls.add(4, 2, {"loss": jnp.array([0.25, 0.125])})
    calls.drain(keep=1)
    assert seen == [(0, 3, [3.0, 2.0, 1.0]), (3, 1, [0.5])] and len(calls) == 1
    calls.drain()
    assert seen[-1] == (4, 2, [0.25, 0.125]) and len(calls) == 0


def test_a_log_due_after_a_call_is_written_once_its_metrics_are_back():
    events = []
    calls = InFlight(
        lambda first, steps, outputs: events.append(("steps", first)), on_log=lambda step: events.append(("log", step))
    )
    calls.add(0, 5, {"loss": jnp.ones(5)}, log_after=True)
    calls.add(5, 5, {"loss": jnp.ones(5)})
    assert events == []  # nothing waits for the device when the calls are added
    calls.drain()
    assert events == [("steps", 0), ("log", 5), ("steps", 5)]


def test_the_log_is_the_mean_over_every_step_since_the_last_one_with_step_events_for_hooks():
    events = []
    r = recorder(hooks=[lambda event: events.append((event.kind, event.record.step))])
    r.steps_done(0, [{"loss": np.array([1.0, 2.0, 3.0])}])
    r.steps_done(3, [{"loss": np.array([6.0])}])
    r.log(4, no_state)
    assert r.records == [Record(4, 0.4, "train", {"loss": 3.0})]
    assert events == [("step", 1), ("step", 2), ("step", 3), ("step", 4), ("log", 4)]
    r.log(5, no_state)  # nothing new since the last log: no record
    assert len(r.records) == 1


def test_a_non_finite_step_stops_with_its_step_and_the_first_reason_wins():
    r = recorder()
    r.steps_done(10, [{"loss": np.array([0.5, math.nan, 0.2]), "accuracy": np.array([0.1, 0.2, math.inf])}])
    assert r.nonfinite and r.stop_reason == "loss became nan at step 12"
    r.stop("a hook's reason")
    assert r.stop_reason == "loss became nan at step 12"
    quiet = recorder(stop_on_nan=False)
    quiet.steps_done(0, [{"loss": np.array([math.nan])}])
    assert not quiet.nonfinite and quiet.stop_reason is None


def test_a_hook_can_stop_training_and_add_to_a_record():
    def hook(event):
        if event.kind == "eval":
            event.record.metrics["twice"] = 2 * event.record.metrics["accuracy"]
            return "good enough"
        return None

    r = recorder(hooks=[hook])
    r.evaluation(20, "validation", [{"accuracy": 0.25}], no_state)
    assert r.records == [Record(20, 2.0, "validation", {"accuracy": 0.25, "twice": 0.5})]
    assert r.stop_reason == "good enough" and r.latest() == {"validation/accuracy": 0.25, "validation/twice": 0.5}


def test_a_member_that_stops_stops_alone_until_every_member_has():
    def stop_member_1(event):
        return "enough" if event.kind == "eval" and event.record.member == 1 else None

    r = recorder(hooks=[stop_member_1], lanes=3)
    r.evaluation(10, "validation", [{"loss": 1.0}, {"loss": 2.0}, {"loss": 3.0}], no_state)
    assert (
        r.stop_reason is None
        and r.stopped_lanes() == [1]
        and [e.stop_reason for e in r.ends()] == [None, "enough", None]
    )
    r.evaluation(20, "validation", [{"loss": 1.0}, {"loss": 2.0}, {"loss": 3.0}], no_state)
    assert [rec.member for rec in r.records] == [0, 1, 2, 0, 2]  # a stopped member is no longer evaluated
    # a member frozen on the device (its loss went NaN at the 2nd step of a call) is stopped with the step
    r.steps_done(
        20, [{"loss": np.array([0.5, 0.4])}, None, {"loss": np.array([0.5, math.nan])}], frozen=[None, None, 1]
    )
    assert r.ends()[2] == MemberEnd("loss became nan at step 22: frozen at its last good state", True)
    assert r.stop_reason is None and r.lanes[0].live
    r.log(22, no_state)
    logs = [rec for rec in r.records if rec.split == "train"]
    assert [(rec.member, rec.metrics["loss"]) for rec in logs] == [(0, 0.45)]  # a stopped member logs no more
    r.stop_lane(r.lanes[0], "done")
    assert r.stop_reason == "every member stopped" and not r.nonfinite  # not every member went non-finite


class FakeCheckpointer:
    def __init__(self):
        self.saved = []

    def save(self, step, train_state, extra, metrics):
        self.saved.append((step, train_state, extra, metrics))


class StatefulHook:
    def __call__(self, event):
        return None

    def state_dict(self):
        return {"waited": 3}


def test_saves_carry_the_hooks_state_and_latest_metrics_never_twice_and_never_after_a_nan():
    checkpointer = FakeCheckpointer()
    r = recorder(hooks=[StatefulHook(), lambda event: None])
    save = CheckpointSaves(checkpointer, r)
    r.evaluation(10, "validation", [{"loss": 0.5}], no_state)
    save(10, "state@10")
    save(10, "state@10")
    assert checkpointer.saved == [
        (10, "state@10", {"hooks": [[{"waited": 3}, None]], "members": [[None, False]]}, {"validation/loss": 0.5})
    ]
    r.steps_done(10, [{"loss": np.array([math.nan])}])
    save(11, "state@11")
    assert len(checkpointer.saved) == 1  # a state that went non-finite is never saved
    CheckpointSaves(None, r)(12, "state@12")  # no checkpointer: nothing to do


@pytest.mark.parametrize(
    "stop, interrupted, expected",
    [
        (None, False, [("train", 15)]),  # a log is due at 15, no evaluation
        ("early stopping", False, [("train", 15), ("validation", 15)]),  # stopping early evaluates where it stops
        ("SIGTERM", True, [("train", 15)]),  # an interruption does not: the resumed run evaluates on schedule
    ],
)
def test_a_boundary_logs_and_evaluates_what_is_due(stop, interrupted, expected):
    r = recorder()
    r.steps_done(10, [{"loss": np.ones(5)}])
    if interrupted:
        r.interrupt(stop)
    else:
        r.stop(stop)
    plan = CallPlan(total=40, per_epoch=10, eval_every=20, log_every=5, fused=5)
    evaluate = lambda carry: {"validation": [{"accuracy": 0.9}]}  # noqa: E731
    record_boundary(r, plan, evaluate, 15, None, no_state)
    assert [(rec.split, rec.step) for rec in r.records] == expected


class Carry:
    params = state = None


def test_evaluation_weighs_each_batch_by_its_size():
    data = {"x": np.arange(10, dtype=np.float32)}
    call = lambda params, state, batch: {"mean": jnp.mean(batch["x"])}  # noqa: E731
    evaluate = Evaluator(call, OneRun(optax.sgd(0.1)), ONE_DEVICE, {"a": data}, {"a": 4})
    assert evaluate(Carry())["a"][0]["mean"] == pytest.approx(4.5)  # batches of 4, 4 and 2: the exact mean
    assert Evaluator(None, OneRun(optax.sgd(0.1)), ONE_DEVICE, {"a": data}, {"a": 4})(Carry()) == {}
    # a population's metrics are one per member, each an exact mean
    means = exact_means(
        lambda p, s, batch: {"m": jnp.stack([jnp.mean(batch["x"]), jnp.max(batch["x"])])},
        None,
        None,
        ONE_DEVICE.eval_batches(data, 3),
    )
    np.testing.assert_allclose(means["m"], [4.5, (2 * 3 + 5 * 3 + 8 * 3 + 9) / 10])


def test_a_small_split_is_evaluated_whole_and_a_large_one_in_training_batches():
    from fundl._data import WHOLE_SPLIT_BYTES, eval_batch_size_for

    small, large = np.zeros((300, 64), np.float32), np.zeros((WHOLE_SPLIT_BYTES // 256 + 1, 64), np.float32)
    assert eval_batch_size_for({"x": small}, None, 32) == 300
    assert eval_batch_size_for({"x": large}, None, 32) == 32
    assert eval_batch_size_for({"x": small}, 50, 32) == 50  # as given


def test_the_batch_feed_gives_index_arrays_of_the_epochs_order():
    n, batch_size = 40, 4
    data = {"x": np.arange(n, dtype=np.float32)}
    train = Shuffled(data, batch_size, seed=3)
    plan = CallPlan(total=20, per_epoch=10, eval_every=10, log_every=10, fused=5)
    feed = BatchFeed([train], ONE_DEVICE, plan, batch_size, slice(0, batch_size), resident=data)
    size, indices = feed.call(10)  # the first call of epoch 1: 5 fused steps
    order = np.random.default_rng([3, 1]).permutation(n)
    assert size == 5 and np.asarray(indices).shape == (5, 4)
    np.testing.assert_array_equal(np.asarray(indices).ravel(), order[:20])
    sent = BatchFeed([train], ONE_DEVICE, plan, batch_size, slice(0, batch_size), resident=None)
    size, batches = sent.call(10)  # data too large to keep on the device: the batches themselves
    np.testing.assert_array_equal(np.asarray(batches["x"]).ravel(), order[:20])


def test_a_populations_feed_stacks_each_members_own_order_after_the_steps():
    n, batch_size = 40, 4
    data = {"x": np.arange(n, dtype=np.float32)}
    members = Members(lambda hyper: optax.sgd(0.1), 2)
    orders = members.orders(data, batch_size, [3, 7])
    plan = CallPlan(total=20, per_epoch=10, eval_every=10, log_every=10, fused=5)
    size, indices = BatchFeed(
        orders, ONE_DEVICE, plan, batch_size, slice(0, batch_size), resident=data, members=True
    ).call(0)
    assert size == 5 and np.asarray(indices).shape == (5, 2, 4)  # (steps, members, batch)
    for member, seed in enumerate((3, 7)):
        np.testing.assert_array_equal(
            np.asarray(indices)[:, member].ravel(), np.random.default_rng([seed, 0]).permutation(n)[:20]
        )
    with pytest.raises(ValueError, match="a population of 2 members needs 2 data seeds, got 1"):
        members.orders(data, batch_size, [3])


def test_a_members_metrics_stop_at_the_step_that_froze_it_and_freezing_keeps_the_layout():
    members = Members(lambda hyper: optax.sgd(0.1), 3)
    metrics = {"loss": np.array([[1.0, 2.0, 3.0], [1.5, np.nan, 3.5]])}  # (steps, members)
    kept = np.array([[True, True, True], [True, False, True]])
    lanes, frozen = members.lane_metrics((metrics, kept), 2)
    assert frozen == [None, 1, None]
    np.testing.assert_array_equal(lanes[1]["loss"], [2.0, np.nan])  # up to and including the step that froze it
    carry = members_carry(3)
    frozen_carry = members.freeze(carry, [0, 2])
    np.testing.assert_array_equal(np.asarray(frozen_carry.alive), [False, True, False])
    assert frozen_carry.alive.sharding == carry.alive.sharding


def members_carry(size):
    from fundl.train import MemberStates, TrainState

    states = TrainState(
        jnp.zeros((size,), jnp.int32), {"w": jnp.zeros((size, 2))}, {}, (), jax.random.split(jax.random.key(0), size)
    )
    return MemberStates.of(states, {"lr": np.arange(size)})
