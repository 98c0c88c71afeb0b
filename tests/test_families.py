"""The model families (CNN, RNN, character LM) train through the one loop; each example runs tiny."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from run_files import RUN_FILES

import fundl as fl
from fundl import losses, runs
from fundl.cli import main
from fundl.datasets import Vocabulary, number_words, numbers_text, sequences
from fundl.models import char_lm, generate, lenet, mlp, rnn_classifier
from fundl.train import TrainState, classification_loss, fit


def quiet_run(example, settings, out):
    return runs.run(example, settings, out=str(out), quiet=True, echo=lambda _: None)


def files(directory):
    return {p.name for p in directory.iterdir()}


# --- builders ----------------------------------------------------------------------------


def test_builders_shapes():
    assert fl.summary(mlp([100, 10], activation=fl.tanh), (32, 64)).count("dense_") == 2
    assert lenet(10).init(jax.random.key(0), (4, 8, 8, 1))[0] == (4, 10)
    assert rnn_classifier(10, hidden=16).init(jax.random.key(0), (4, 8, 8))[0] == (4, 10)
    _, params, _ = rnn_classifier(10, hidden=16, cell="gru", bidirectional=True).init(jax.random.key(0), (4, 8, 8))
    assert params["head"]["w"].shape == (32, 10)
    lm = char_lm(19, embed=8, hidden=16)
    assert lm.model.init(jax.random.key(0), (4, 12))[0] == (4, 12, 19)
    with pytest.raises(fl.LayerError, match="unknown recurrent cell 'rnn'; available: lstm, gru, simple_rnn"):
        char_lm(19, cell="rnn")


def test_cnn_with_batch_norm_trains_and_evaluates_with_running_statistics():
    data = fl.datasets.digits()
    train = {"image": data["train"]["image"][..., None], "label": data["train"]["label"]}
    test = {"image": data["test"]["image"][..., None], "label": data["test"]["label"]}
    model = lenet(10, use_batch_norm=True)
    optimizer = optax.adam(3e-3)
    _, params, state = model.init(jax.random.key(0), (32, 8, 8, 1))
    start = TrainState.create(params, state, optimizer, jax.random.key(1))
    trained, history = fit(
        classification_loss(model),
        optimizer,
        start,
        train,
        batch_size=32,
        epochs=3,
        eval_data={"test": test},
        quiet=True,
    )
    assert history.steps_per_call == 1  # convolutions on the CPU: one step per call
    # The running statistics moved away from their initial values (mean 0, var 1) ...
    bn = trained.state["batch_norm_0"]
    assert float(jnp.abs(bn["mean"]).max()) > 0.01 and float(jnp.abs(bn["var"] - 1).max()) > 0.01
    # ... and evaluation used them: fit's test metrics equal apply(train=False) with the final state.
    logits, _ = model.apply(trained.params, trained.state, test["image"], train=False)
    final = history.records[-1]
    np.testing.assert_allclose(final.metrics["accuracy"], float(losses.accuracy(logits, test["label"])), rtol=1e-6)
    batch_logits, _ = model.apply(trained.params, trained.state, test["image"], train=True)
    assert not np.allclose(logits, batch_logits, atol=1e-3)  # batch statistics give other outputs
    assert final.metrics["accuracy"] > 0.85


def test_generation_is_deterministic_for_a_key():
    lm = char_lm(5, embed=4, hidden=8)
    _, params, _ = lm.model.init(jax.random.key(0), (1, 3))
    prompt = jnp.array([0, 1, 2])
    a = generate(lm, params, prompt, jax.random.key(1), 1.0, 20)
    b = generate(lm, params, prompt, jax.random.key(1), 1.0, 20)
    c = generate(lm, params, prompt, jax.random.key(2), 1.0, 20)
    assert a.shape == (20,) and int(a.min()) >= 0 and int(a.max()) < 5
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_generation_continues_the_model_it_was_given():
    """Greedy-ish sampling (tiny temperature) picks the argmax of the model's next-character logits."""
    lm = char_lm(6, embed=4, hidden=8)
    _, params, _ = lm.model.init(jax.random.key(3), (1, 4))
    prompt = jnp.array([1, 4, 2, 0])
    tokens = generate(lm, params, prompt, jax.random.key(0), 1e-4, 3)
    sequence = list(np.asarray(prompt))
    for token in np.asarray(tokens):
        logits, _ = lm.model.apply(params, {}, jnp.array([sequence]))
        assert token == int(jnp.argmax(logits[0, -1]))
        sequence.append(int(token))


# --- text data -----------------------------------------------------------------------------


def test_number_words_and_corpus():
    assert number_words(0) == "zero"
    assert number_words(342) == "three hundred and forty two"
    assert number_words(200017) == "two hundred thousand and seventeen"
    assert number_words(999999) == "nine hundred and ninety nine thousand nine hundred and ninety nine"
    assert numbers_text(50, seed=1) == numbers_text(50, seed=1) != numbers_text(50, seed=2)
    vocabulary = Vocabulary("abca")
    assert vocabulary.decode(vocabulary.encode("cab")) == "cab" and len(vocabulary) == 3
    with pytest.raises(ValueError, match=r"characters \['z'\] are not in the vocabulary of this model; it knows 'abc'"):
        vocabulary.encode("caz")
    pairs = sequences(np.arange(10), 4)
    np.testing.assert_array_equal(pairs["inputs"], [[0, 1, 2, 3], [4, 5, 6, 7]])
    np.testing.assert_array_equal(pairs["targets"], [[1, 2, 3, 4], [5, 6, 7, 8]])


# --- every example, tiny, through the real `fundl run` path -------------------------------


def test_cnn_digits_runs(tmp_path):
    done = quiet_run("cnn_digits", [("train.steps", 20), ("train.eval_batch_size", 270)], tmp_path / "run")
    assert files(tmp_path / "run") == RUN_FILES
    assert done.summary["steps"] == 20 and "accuracy" in done.summary["metrics"]["test"]
    assert set(done.train_state.state) == {"batch_norm_0", "batch_norm_1"}


def test_rnn_digits_runs_and_learns(tmp_path):
    done = quiet_run("rnn_digits", [("train.epochs", 4)], tmp_path / "run")
    assert files(tmp_path / "run") == RUN_FILES
    assert done.summary["metrics"]["test"]["accuracy"] > 0.85


def test_charlm_untrained_perplexity_is_about_the_vocabulary_size(tmp_path):
    done = quiet_run("charlm", [("train.steps", 0), ("data.numbers", 300)], tmp_path / "run")
    vocabulary = Vocabulary(numbers_text(300))  # the run's corpus: data.seed 0
    perplexity = done.summary["metrics"]["test"]["perplexity"]
    assert 0.75 * len(vocabulary) < perplexity < 1.25 * len(vocabulary)


def test_charlm_trains_reports_perplexity_and_samples(tmp_path, capsys):
    out = tmp_path / "run"
    settings = ["--set", "data.numbers=400", "--set", "train.epochs=3", "--set", "model.hidden=32"]
    assert main(["run", "charlm", "--out", str(out), "--quiet", *settings]) == 0
    assert files(out) == RUN_FILES
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    held_out = [r for r in records if r["split"] in ("validation", "test")]
    assert [r["split"] for r in held_out] == ["validation"] * 3 + ["test"]
    assert all(r["perplexity"] == pytest.approx(np.exp(r["loss"])) for r in held_out)  # from the exact mean loss
    assert held_out[-1]["perplexity"] < 0.8 * held_out[0]["perplexity"]  # it learns
    capsys.readouterr()
    assert main(["sample", str(out), "--prompt", "one hundred", "--length", "30", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert (
        first.startswith("one hundred") and len(first[:-1]) == len("one hundred") + 30
    )  # the prompt, 30 characters, a newline
    assert main(["sample", str(out), "--prompt", "one hundred", "--length", "30", "--seed", "1"]) == 0
    assert capsys.readouterr().out == first  # the same seed gives the same text
    assert main(["sample", str(out), "--prompt", "One"]) == 2
    assert "characters ['O'] are not in the vocabulary of this model" in capsys.readouterr().err


def test_charlm_corpus_errors(tmp_path, capsys):
    assert main(["run", "charlm", "--set", f"data.path={tmp_path / 'missing.txt'}", "--out", str(tmp_path / "a")]) == 2
    assert "text corpus" in capsys.readouterr().err and not (tmp_path / "a").exists()
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert main(["run", "charlm", "--set", f"data.path={empty}", "--out", str(tmp_path / "b")]) == 2
    assert f"text corpus {empty} is empty" in capsys.readouterr().err


def test_charlm_trains_on_a_text_file(tmp_path):
    text = tmp_path / "poem.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 40)
    done = quiet_run(
        "charlm",
        [("data.path", str(text)), ("data.length", 16), ("train.epochs", 2), ("model.hidden", 16)],
        tmp_path / "run",
    )
    assert done.summary["metrics"]["test"]["perplexity"] < 28  # 28 characters in its vocabulary


def test_sampling_an_example_that_cannot_sample_is_an_error(tmp_path, capsys):
    quiet_run("mlp_digits", [("train.steps", 1)], tmp_path / "run")
    assert main(["sample", str(tmp_path / "run")]) == 2
    assert "example 'mlp_digits' cannot sample" in capsys.readouterr().err


def test_images_with_the_wrong_channel_count_name_the_first_conv_layer():
    model = lenet(10)
    _, params, state = model.init(jax.random.key(0), (2, 8, 8, 1))
    with pytest.raises(
        fl.LayerError, match=r"conv2d_0: conv2d expects inputs with 1 channels, got 3: input shape \(2, 8, 8, 3\)"
    ):
        model.apply(params, state, jnp.zeros((2, 8, 8, 3)))
