"""Datasets on disk: ArrayRecord shards with checked metadata, read lazily as a source that trains like memory."""

import json
import pickle
import shutil

import jax
import numpy as np
import optax
import pytest

import fundl as fl
from fundl import runs
from fundl.datasets import RecordsError, records, write_records
from fundl.train import TrainState, classification_loss, evaluate, fit, params_fingerprint

QUIET = {"quiet": True, "echo": lambda _: None}


@pytest.fixture(scope="module")
def digits():
    return fl.datasets.digits(validation=0.2)


def test_records_round_trip_every_form_of_data(tmp_path, digits):
    train = digits["train"]
    meta = write_records(tmp_path / "dict", train, shards=3)
    assert meta["count"] == 1222 and [s["count"] for s in meta["shards"]] == [408, 408, 406]
    source = records(tmp_path / "dict")
    assert len(source) == 1222 and source.element_spec == {"image": ((8, 8), np.float32), "label": ((), np.int32)}
    for i in (0, 407, 408, 1221, -1):
        example = source[i]
        np.testing.assert_array_equal(example["image"], train["image"][i])
        assert example["label"] == train["label"][i]
    rows = np.array([[5, 1000], [408, 0]])
    batch = source.read(rows)
    np.testing.assert_array_equal(batch["image"], train["image"][rows])
    np.testing.assert_array_equal(batch["label"], train["label"][rows])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(source))[7]["image"], train["image"][7])  # for workers
    # a tuple (x, y), and an iterable of examples without a length, streamed with its count
    write_records(tmp_path / "tuple", (train["image"][:10], train["label"][:10]))
    x, y = records(tmp_path / "tuple")[3]
    np.testing.assert_array_equal(x, train["image"][3])
    stream = ({"a": np.full((2,), i, np.int16)} for i in range(7))
    write_records(tmp_path / "stream", stream, shards=2, count=7)
    np.testing.assert_array_equal(records(tmp_path / "stream").read(np.arange(7))["a"][:, 0], np.arange(7))
    with pytest.raises(IndexError, match="index 1222 is out of range"):
        source[1222]


def test_damaged_foreign_or_mismatched_records_are_errors_naming_the_file(tmp_path, digits):
    write_records(tmp_path / "a", digits["train"], shards=2)
    write_records(tmp_path / "b", digits["validation"], shards=2)
    shard = sorted((tmp_path / "a").glob("*.array_record"))[1]

    def fresh(name):
        shutil.rmtree(tmp_path / name, ignore_errors=True)
        shutil.copytree(tmp_path / "a", tmp_path / name)
        return tmp_path / name

    corrupted = fresh("corrupted")
    data = bytearray((corrupted / shard.name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (corrupted / shard.name).write_bytes(bytes(data))
    with pytest.raises(RecordsError, match=rf"{shard.name} is not the shard metadata.json describes .*corrupted"):
        records(corrupted)
    truncated = fresh("truncated")
    (truncated / shard.name).write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(RecordsError, match=rf"{shard.name} has \d+ bytes, metadata.json records \d+: truncated"):
        records(truncated)
    foreign = fresh("foreign")  # a shard of another dataset, renamed into place
    shutil.copy(sorted((tmp_path / "b").glob("*.array_record"))[1], foreign / shard.name)
    with pytest.raises(RecordsError, match=rf"{shard.name} (has \d+ bytes|is not the shard).*"):
        records(foreign)
    missing = fresh("missing")
    (missing / shard.name).unlink()
    with pytest.raises(RecordsError, match=rf"{shard.name} is missing"):
        records(missing)
    (fresh("nometa") / "metadata.json").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"metadata.json is missing: .* was not written by fundl.datasets.write_records"
    ):
        records(tmp_path / "nometa")
    reshaped = fresh("reshaped")  # a record whose shape differs from the metadata
    meta = json.loads((reshaped / "metadata.json").read_text())
    meta["fields"][0]["shape"] = [8, 9]
    (reshaped / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(
        RecordsError, match=r"shard-00000-of-00002.array_record: its records .* the shard does not match"
    ):
        records(reshaped)


def test_a_source_trains_and_evaluates_exactly_as_the_same_data_in_memory(tmp_path, digits):
    for name in ("train", "validation"):
        write_records(tmp_path / name, digits[name], shards=2)
    model = fl.serial(fl.flatten(), fl.dense(32), fl.relu(), fl.dropout(0.1), fl.dense(10))
    loss, optimizer = classification_loss(model), optax.adam(1e-3)
    _, params, state = model.init(jax.random.key(0), (32, 8, 8))
    start = TrainState.create(params, state, optimizer, jax.random.key(1))
    common = dict(batch_size=32, epochs=2, quiet=True, data_seed=3)
    memory, memory_history = fit(
        loss, optimizer, start, digits["train"], eval_data={"v": digits["validation"]}, **common
    )
    source = records(tmp_path / "train")
    disk, disk_history = fit(
        loss, optimizer, start, source, eval_data={"v": records(tmp_path / "validation")}, **common
    )
    assert params_fingerprint(disk.params) == params_fingerprint(memory.params)
    assert disk_history.records == memory_history.records
    assert evaluate(loss, disk.params, disk.state, records(tmp_path / "validation"), batch_size=50) == evaluate(
        loss, memory.params, memory.state, digits["validation"], batch_size=50
    )


def _shift(example, rng):
    """Moves the digit by up to one pixel: an augmentation drawn from the example's own generator."""
    dx, dy = rng.integers(-1, 2, size=2)
    return {**example, "image": np.roll(example["image"], (int(dy), int(dx)), axis=(0, 1))}


def test_augmentation_is_per_example_and_the_same_on_a_thread_and_in_worker_processes(tmp_path, digits):
    write_records(tmp_path / "train", digits["train"])
    model = fl.serial(fl.flatten(), fl.dense(16), fl.relu(), fl.dense(10))
    loss, optimizer = classification_loss(model), optax.sgd(0.1)
    _, params, state = model.init(jax.random.key(0), (32, 8, 8))
    start = TrainState.create(params, state, optimizer, jax.random.key(1))
    common = dict(batch_size=32, steps=50, quiet=True, augment=_shift)
    plain, _ = fit(loss, optimizer, start, records(tmp_path / "train"), batch_size=32, steps=50, quiet=True)
    thread, _ = fit(loss, optimizer, start, records(tmp_path / "train"), **common)
    memory, _ = fit(loss, optimizer, start, digits["train"], **common)  # augmented data is read on the host too
    workers, _ = fit(loss, optimizer, start, records(tmp_path / "train"), workers=2, **common)
    assert params_fingerprint(thread.params) == params_fingerprint(memory.params) == params_fingerprint(workers.params)
    assert params_fingerprint(thread.params) != params_fingerprint(plain.params)  # the augmentation did something


@pytest.mark.parametrize("example", ["mlp_digits", "cnn_digits"])
def test_an_example_fed_from_packed_records_ends_as_the_one_in_memory(tmp_path, example):
    settings = [("train.epochs", 2)]
    runs.pack(example, settings, str(tmp_path / "records"), shards=2)
    memory = runs.run(example, settings, out=str(tmp_path / "memory"), **QUIET)
    disk = runs.run(
        example, [*settings, ("data.records", str(tmp_path / "records"))], out=str(tmp_path / "disk"), **QUIET
    )
    assert disk.summary["params_fingerprint"] == memory.summary["params_fingerprint"]
    assert disk.summary["metrics"] == memory.summary["metrics"]
    if example == "cnn_digits":  # its images are (8, 8, 1): mlp_digits' records (8, 8) do not fit it
        runs.pack("mlp_digits", settings, str(tmp_path / "mlp"))
        with pytest.raises(
            runs.ConfigError,
            match=r"train holds 1222 examples of 'image' float32\[64\], 'label' int32\[\], "
            r"the example's 'train' split 1222 of 'image' float32\[8, 8, 1\].* packed from another",
        ):
            runs.run(example, [("data.records", str(tmp_path / "mlp"))], out=str(tmp_path / "x"), **QUIET)
        assert not (tmp_path / "x").exists()


def test_mnist_records_packs_once_trains_with_shifts_in_workers_and_resumes_exactly(tmp_path):
    import subprocess
    import sys

    cli = [sys.executable, "-m", "fundl.cli"]
    common = ["--set", f"data.dir={tmp_path / 'data'}", "--set", "train.epochs=2", "--quiet"]
    whole = subprocess.run(
        [*cli, "run", "mnist_records", *common, "--out", str(tmp_path / "whole")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert whole.returncode == 0, whole.stderr
    packed = tmp_path / "data" / "digits-4-shards"
    assert sorted(p.name for p in packed.iterdir()) == ["test", "train", "validation"]
    assert len(list((packed / "train").glob("*.array_record"))) == 4
    stopped = subprocess.run(
        [*cli, "run", "mnist_records", *common, "--out", str(tmp_path / "s"), "--stop-after-steps", "50"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert stopped.returncode == 75, stopped.stderr
    resumed = subprocess.run(
        [*cli, "resume", str(tmp_path / "s"), "--quiet"], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    summary = lambda d: json.loads((tmp_path / d / "summary.json").read_text())  # noqa: E731
    assert summary("s")["params_fingerprint"] == summary("whole")["params_fingerprint"]
    assert summary("whole")["metrics"]["test"]["accuracy"] > 0.5  # two epochs of shifted digits: it learns


def test_fundl_data_pack_writes_an_idx_pair_and_an_examples_splits(tmp_path, capsys):
    from fundl.cli import main
    from fundl.datasets import write_idx

    images = np.random.default_rng(0).integers(0, 255, (50, 6, 6)).astype(np.uint8)
    labels = np.arange(50, dtype=np.uint8) % 10
    write_idx(tmp_path / "images.idx", images)
    write_idx(tmp_path / "labels.idx", labels)
    assert (
        main(
            [
                "data",
                "pack",
                str(tmp_path / "images.idx"),
                str(tmp_path / "pair"),
                "--labels",
                str(tmp_path / "labels.idx"),
                "--shards",
                "2",
            ]
        )
        == 0
    )
    assert "wrote 50 examples" in capsys.readouterr().out
    pair = records(tmp_path / "pair")
    np.testing.assert_array_equal(pair.read(np.arange(50))["image"], images)
    np.testing.assert_array_equal(pair.read(np.arange(50))["label"], labels)
    assert main(["data", "pack", "mlp_digits", str(tmp_path / "digits"), "--set", "hidden=8"]) == 0
    out = capsys.readouterr().out
    assert "wrote train 1222, validation 305, test 270 examples" in out and "--set data.records=" in out
    assert main(["data", "pack", "mlp_digits", str(tmp_path / "digits")]) == 2  # not empty: never overwritten
    assert "is not empty" in capsys.readouterr().err
