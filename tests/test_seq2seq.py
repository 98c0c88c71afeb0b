"""Number translation: the data generator, the encoder-decoder, greedy and beam decoding, the example."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fundl as fl
from fundl import runs
from fundl.datasets import TokenVocabulary, number_translation, number_words
from fundl.datasets._seq2seq import MAX_WORDS, encode_pairs
from fundl.models import beam_decode, greedy_decode, seq2seq

KNOWN = {
    312005: "three hundred and twelve thousand and five",
    1: "one",
    999999: "nine hundred and ninety nine thousand nine hundred and ninety nine",
    100: "one hundred",
    1000: "one thousand",
    101000: "one hundred and one thousand",
}


# --- data ---------------------------------------------------------------------------------


def test_data_is_deterministic_and_the_splits_are_disjoint():
    a, b = number_translation(500, 100, 200, seed=3), number_translation(500, 100, 200, seed=3)
    for split in ("train", "validation", "test"):
        for name in ("source", "inputs", "targets", "number"):
            np.testing.assert_array_equal(getattr(a, split)[name], getattr(b, split)[name])
    numbers = [set(getattr(a, split)["number"].tolist()) for split in ("train", "validation", "test")]
    assert [len(n) for n in numbers] == [500, 100, 200]  # distinct within a split, too
    assert not (numbers[0] & numbers[1] or numbers[0] & numbers[2] or numbers[1] & numbers[2])
    assert all(1 <= n <= 999_999 for n in set.union(*numbers))
    assert not np.array_equal(number_translation(500, 100, 200, seed=4).train["number"], a.train["number"])


@pytest.mark.parametrize("direction", ["to_digits", "to_words"])
def test_known_numbers_round_trip(direction):
    pairs = encode_pairs(list(KNOWN), direction)
    source, target = number_translation(1, 1, 1, direction=direction)[3:]
    for i, (n, words) in enumerate(KNOWN.items()):
        phrase, digits = (words, str(n))
        src, tgt = (phrase, digits) if direction == "to_digits" else (digits, phrase)
        assert source.decode(pairs["source"][i]) == src
        assert target.decode(pairs["targets"][i]) == tgt
        # The decoder reads the target shifted right: <bos> y_1 .. y_n, and predicts y_1 .. y_n <eos>.
        assert pairs["inputs"][i, 0] == TokenVocabulary.bos_id
        n_tokens = len(target.split(tgt))
        np.testing.assert_array_equal(pairs["inputs"][i, 1 : n_tokens + 1], pairs["targets"][i, :n_tokens])
        assert pairs["targets"][i, n_tokens] == TokenVocabulary.eos_id
        assert (pairs["targets"][i, n_tokens + 1 :] == TokenVocabulary.pad_id).all()
        np.testing.assert_array_equal(source.encode_text(src, pairs["source"].shape[1])[0], pairs["source"][i])


def test_shapes_cover_the_longest_phrase_and_errors_are_clear():
    assert len(number_words(777_777).split()) == MAX_WORDS
    data = number_translation(10, 10, 10)
    assert data.train["source"].shape == (10, MAX_WORDS) and data.train["targets"].shape == (10, 7)
    with pytest.raises(ValueError, match=r"prompt: unknown tokens \['twelf'\]; the vocabulary is: .*twelve"):
        data.source.encode_text("three hundred and twelf", MAX_WORDS, where="prompt")
    with pytest.raises(ValueError, match="data.direction must be one of to_digits, to_words; got 'sideways'"):
        number_translation(10, 10, 10, direction="sideways")
    with pytest.raises(ValueError, match="`test` must be a positive number of examples, got 0"):
        number_translation(10, 10, 0)


# --- model and decoders -------------------------------------------------------------------


@functools.cache  # the same model object across tests: its decoders compile once
def untrained(attention=True, hidden=16):
    data = number_translation(64, 8, 8, seed=1)
    s2s = seq2seq(len(data.source), len(data.target), embed=8, hidden=hidden, attention=attention)
    shape, params, _ = s2s.model.init(jax.random.key(0), ((4, MAX_WORDS), (4, 7)))
    return data, s2s, shape, params


@pytest.mark.parametrize("attention", [True, False])
def test_model_shapes_and_params(attention):
    data, s2s, shape, params = untrained(attention)
    assert shape == (4, 7, len(data.target))
    expected = {"source_embed", "encoder", "target_embed", "decoder", "head"} | (
        {"score", "combine"} if attention else set()
    )
    assert set(params) == expected
    apply = jax.jit(s2s.model.apply)
    logits, _ = apply(params, {}, (data.train["source"], data.train["inputs"]))
    assert logits.shape == (64, 7, len(data.target)) and bool(jnp.isfinite(logits).all())
    # Padding in the source changes nothing: the same phrase with one more <pad> column.
    padded = jnp.pad(data.train["source"], ((0, 0), (0, 1)))
    logits_padded, _ = apply(params, {}, (padded, data.train["inputs"]))
    np.testing.assert_allclose(logits_padded, logits, atol=1e-5)
    with pytest.raises(fl.LayerError, match=r"seq2seq expects a pair \(source \(batch, S\), inputs \(batch, T\)\)"):
        s2s.model.init(jax.random.key(0), (4, MAX_WORDS))


@pytest.mark.parametrize("attention", [True, False])
def test_greedy_decoding_is_the_argmax_of_teacher_forcing_on_its_own_output(attention):
    data, s2s, _, params = untrained(attention)
    source = data.train["source"]
    tokens, score = greedy_decode(s2s, params, source, 7)
    inputs = jnp.concatenate([jnp.full((64, 1), TokenVocabulary.bos_id), tokens[:, :-1]], axis=1)
    logits, _ = jax.jit(s2s.model.apply)(params, {}, (source, inputs))
    # Up to and including the first <eos>, each greedy token is the argmax given the ones before it.
    live = jnp.cumsum(tokens == TokenVocabulary.eos_id, axis=1) - (tokens == TokenVocabulary.eos_id) == 0
    np.testing.assert_array_equal(jnp.where(live, jnp.argmax(logits, -1), -1), jnp.where(live, tokens, -1))
    assert bool((tokens[~live] == TokenVocabulary.pad_id).all())
    log_p = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(score, jnp.sum(jnp.where(live, log_p, 0), axis=1), rtol=1e-5)


def test_beam_width_one_is_greedy_and_wider_beams_score_higher():
    data, s2s, _, params = untrained(True)
    source = data.train["source"]
    greedy, greedy_score = greedy_decode(s2s, params, source, 7)
    beam, beam_score = beam_decode(s2s, params, source, 7, 1)
    np.testing.assert_array_equal(beam, greedy)
    np.testing.assert_allclose(beam_score, greedy_score, rtol=1e-6)
    wide, wide_score = beam_decode(s2s, params, source, 7, 5)
    assert wide.shape == (64, 7)
    assert bool((wide_score >= greedy_score - 1e-5).all())
    assert float(jnp.mean(wide_score)) > float(jnp.mean(greedy_score))  # an untrained model: search helps
    with pytest.raises(ValueError, match="beam_width must be between 1 and the target vocabulary size 13, got 14"):
        beam_decode(s2s, params, source, 7, 14)


# --- the example --------------------------------------------------------------------------

TINY = [
    ("data.train", 4000),
    ("data.validation", 200),
    ("data.test", 400),
    ("model.hidden", 64),
    ("train.epochs", 2),
    ("train.batch_size", 32),
    ("train.log_every", 25),
    ("train.eval_batch_size", 200),
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return runs.run(
        "seq2seq_numbers", TINY, out=str(tmp_path_factory.mktemp("s2s") / "r"), quiet=True, echo=lambda _: None
    )


def test_a_short_run_learns_and_decodes(tiny_run):
    records = [json.loads(line) for line in (tiny_run.directory / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert len(train) >= 4 and all(np.isfinite(r["loss"]) for r in train)
    assert train[-1]["loss"] < 0.5 * train[0]["loss"]
    test = tiny_run.summary["metrics"]["test"]
    assert set(test) >= {"loss", "accuracy", "exact_match", "beam_exact_match"}
    decoded = json.loads((tiny_run.directory / "decode.json").read_text())
    assert decoded["examples"] == 400 and decoded["beam_width"] == 4 and len(decoded["samples"]) == 10
    # report() decodes the whole test split at once; the test scoring did it in batches of 200.
    assert decoded["greedy_exact_match"] == pytest.approx(test["exact_match"], abs=1e-6)
    assert decoded["beam_exact_match"] >= decoded["greedy_exact_match"] > 0.8


def test_beam_search_is_never_below_greedy_on_a_trained_model(tiny_run):
    config, params = tiny_run.config, tiny_run.train_state.params
    data = number_translation(4000, 200, 400, seed=config["data"]["seed"])
    s2s = seq2seq(len(data.source), len(data.target), embed=32, hidden=64, attention=True)  # the run's sizes
    greedy, greedy_score = greedy_decode(s2s, params, data.test["source"], 7)
    beam, beam_score = beam_decode(s2s, params, data.test["source"], 7, 4)
    assert bool((beam_score >= greedy_score - 1e-5).all())
    exact = lambda t: float(jnp.mean(jnp.all(t == data.test["targets"], axis=1)))  # noqa: E731
    assert exact(beam) >= exact(greedy)


def test_sample_translates_a_prompt(tiny_run):
    directory = str(tiny_run.directory)
    text = runs.sample(directory, "three hundred and twelve thousand and five", seed=0)
    assert text.startswith(" -> ") and text[4:].isdigit() and 1 <= len(text[4:]) <= 6
    assert runs.sample(directory, "three hundred and twelve thousand and five", seed=7, temperature=0.3) == text
    with pytest.raises(ValueError, match=r"unknown tokens \['zwölf'\]; the vocabulary is: and eight eighteen"):
        runs.sample(directory, "zwölf")
