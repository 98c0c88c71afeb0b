"""The pieces of ``fit``'s loop, each alone: calls in flight, the recorder, saves, boundaries, the batch feed."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from fundl.distributed._placement import Placement
from fundl.train._data import Shuffled
from fundl.train._loop import BatchFeed, Evaluation, record_boundary
from fundl.train._plan import CallPlan
from fundl.train._progress import ProgressReport
from fundl.train._records import CheckpointSaves, InFlight, Recorder


def recorder(hooks=(), per_epoch=10, **kwargs) -> Recorder:
    return Recorder(hooks, ProgressReport(100, 10, quiet=True), per_epoch, **kwargs)


def test_in_flight_reads_back_oldest_first_and_keeps_at_most_keep():
    seen = []
    calls = InFlight(lambda first, metrics: seen.append((first, metrics["loss"].tolist())))
    calls.add(0, 3, {"loss": jnp.array([3.0, 2.0, 1.0])})
    calls.add(3, 1, {"loss": jnp.array(0.5)})  # a single step's scalar metrics become (1,) arrays
    calls.add(4, 2, {"loss": jnp.array([0.25, 0.125])})
    calls.drain(keep=1)
    assert seen == [(0, [3.0, 2.0, 1.0]), (3, [0.5])] and len(calls) == 1
    calls.drain()
    assert seen[-1] == (4, [0.25, 0.125]) and len(calls) == 0


def test_a_log_due_after_a_call_is_written_once_its_metrics_are_back():
    events = []
    calls = InFlight(lambda first, metrics: events.append(("steps", first)), on_log=lambda step: events.append(("log", step)))
    calls.add(0, 5, {"loss": jnp.ones(5)}, log_after=True)
    calls.add(5, 5, {"loss": jnp.ones(5)})
    assert events == []  # nothing waits for the device when the calls are added
    calls.drain()
    assert events == [("steps", 0), ("log", 5), ("steps", 5)]


def test_the_log_is_the_mean_over_every_step_since_the_last_one_with_step_events_for_hooks():
    events = []
    r = recorder(hooks=[lambda event: events.append((event.kind, event.record["step"]))])
    r.steps_done(0, {"loss": np.array([1.0, 2.0, 3.0])})
    r.steps_done(3, {"loss": np.array([6.0])})
    r.log(4, train_state=None)
    assert r.records == [{"step": 4, "epoch": 0.4, "split": "train", "loss": 3.0}]
    assert events == [("step", 1), ("step", 2), ("step", 3), ("step", 4), ("log", 4)]
    r.log(5, train_state=None)  # nothing new since the last log: no record
    assert len(r.records) == 1


def test_a_non_finite_step_stops_with_its_step_and_the_first_reason_wins():
    r = recorder()
    r.steps_done(10, {"loss": np.array([0.5, math.nan, 0.2]), "accuracy": np.array([0.1, 0.2, math.inf])})
    assert r.nonfinite and r.stop_reason == "loss became nan at step 12"
    r.stop("a hook's reason")
    assert r.stop_reason == "loss became nan at step 12"
    quiet = recorder(stop_on_nan=False)
    quiet.steps_done(0, {"loss": np.array([math.nan])})
    assert not quiet.nonfinite and quiet.stop_reason is None


def test_a_hook_can_stop_training_and_add_to_a_record():
    def hook(event):
        if event.kind == "eval":
            event.record["twice"] = 2 * event.record["accuracy"]
            return "good enough"
        return None

    r = recorder(hooks=[hook])
    r.evaluation(20, "validation", {"accuracy": 0.25}, train_state=None)
    assert r.records == [{"step": 20, "epoch": 2.0, "split": "validation", "accuracy": 0.25, "twice": 0.5}]
    assert r.stop_reason == "good enough" and r.latest() == {"validation/accuracy": 0.25, "validation/twice": 0.5}


class FakeCheckpointer:
    def __init__(self):
        self.saved = []

    def save(self, step, train_state, hook_states, metrics):
        self.saved.append((step, train_state, hook_states, metrics))


class StatefulHook:
    def __call__(self, event):
        return None

    def state_dict(self):
        return {"waited": 3}


def test_saves_carry_the_hooks_state_and_latest_metrics_never_twice_and_never_after_a_nan():
    checkpointer = FakeCheckpointer()
    r = recorder(hooks=[StatefulHook(), lambda event: None])
    save = CheckpointSaves(checkpointer, r)
    r.evaluation(10, "validation", {"loss": 0.5}, train_state=None)
    save(10, "state@10")
    save(10, "state@10")
    assert checkpointer.saved == [(10, "state@10", [{"waited": 3}, None], {"validation/loss": 0.5})]
    r.steps_done(10, {"loss": np.array([math.nan])})
    save(11, "state@11")
    assert len(checkpointer.saved) == 1  # a state that went non-finite is never saved
    CheckpointSaves(None, r)(12, "state@12")  # no checkpointer: nothing to do


@pytest.mark.parametrize("stop, interrupted, expected", [
    (None, False, [("train", 15)]),  # a log is due at 15, no evaluation
    ("early stopping", False, [("train", 15), ("validation", 15)]),  # stopping early evaluates where it stops
    ("SIGTERM", True, [("train", 15)]),  # an interruption does not: the resumed run evaluates on schedule
])
def test_a_boundary_logs_and_evaluates_what_is_due(stop, interrupted, expected):
    r = recorder()
    r.steps_done(10, {"loss": np.ones(5)})
    r.stop(stop)
    plan = CallPlan(total=40, per_epoch=10, eval_every=20, log_every=5, fused=5)
    evaluate = lambda state: {"validation": {"accuracy": 0.9}}  # noqa: E731
    record_boundary(r, plan, evaluate, 15, train_state=None, interrupted=interrupted)
    assert [(rec["split"], rec["step"]) for rec in r.records] == expected


def test_evaluation_weighs_each_batch_by_its_size():
    data = {"x": np.arange(10, dtype=np.float32)}
    evaluate = Evaluation(lambda params, state, batch: {"mean": jnp.mean(batch["x"])}, {"a": data}, Placement(None), {"a": 4})

    class State:
        params = state = None

    assert evaluate(State())["a"]["mean"] == pytest.approx(4.5)  # batches of 4, 4 and 2: the exact mean
    assert Evaluation(None, {"a": data}, Placement(None), {"a": 4})(State()) == {}


def test_a_small_split_is_evaluated_whole_and_a_large_one_in_training_batches():
    from fundl.train._data import WHOLE_SPLIT_BYTES, eval_batch_size_for

    small, large = np.zeros((300, 64), np.float32), np.zeros((WHOLE_SPLIT_BYTES // 256 + 1, 64), np.float32)
    assert eval_batch_size_for({"x": small}, None, 32) == 300
    assert eval_batch_size_for({"x": large}, None, 32) == 32
    assert eval_batch_size_for({"x": small}, 50, 32) == 50  # as given


def test_the_batch_feed_gives_index_arrays_of_the_epochs_order():
    n, batch_size = 40, 4
    data = {"x": np.arange(n, dtype=np.float32)}
    train = Shuffled(data, batch_size, seed=3)
    plan = CallPlan(total=20, per_epoch=10, eval_every=10, log_every=10, fused=5)
    feed = BatchFeed(train, Placement(None), plan, batch_size, slice(0, batch_size), resident=data)
    size, indices = feed.call(10)  # the first call of epoch 1: 5 fused steps
    order = np.random.default_rng([3, 1]).permutation(n)
    assert size == 5 and np.asarray(indices).shape == (5, 4)
    np.testing.assert_array_equal(np.asarray(indices).ravel(), order[:20])
    sent = BatchFeed(train, Placement(None), plan, batch_size, slice(0, batch_size), resident=None)
    size, batches = sent.call(10)  # data too large to keep on the device: the batches themselves
    np.testing.assert_array_equal(np.asarray(batches["x"]).ravel(), order[:20])
