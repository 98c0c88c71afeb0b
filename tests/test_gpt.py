"""The GPT family: the model, cached generation against full forward passes, sampling, and gpt_chars run tiny."""

import json
import sysconfig

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from layer_checks import quick_init

import fundl as fl
from fundl import runs
from fundl.datasets import Vocabulary, stdlib_text
from fundl.models import gpt, gpt_generate, next_token


def shapes_of(model, input_shape):
    """``init``'s output shape and the shapes of its params and state, computed without running it."""
    out_shape = []

    def init(key):
        shape, params, state = model.init(key, input_shape)
        out_shape.append(shape)
        return params, state

    params, state = jax.eval_shape(init, jax.random.key(0))
    return out_shape[0], jax.tree.map(lambda a: a.shape, params), state


def test_gpt_builds_the_documented_params():
    out_shape, params, state = shapes_of(gpt(11, 2, 4, 16, 8, num_kv_heads=2).model, (3, 8))
    assert out_shape == (3, 8, 11) and state == {}
    assert set(params) == {"embed", "transformer", "head"}  # rotary positions: no params
    assert set(params["transformer"]) == {"block_0", "block_1", "norm"}
    assert params["transformer"]["block_0"]["attention"]["key"]["w"] == (16, 8)  # 2 kv heads of 4
    assert shapes_of(gpt(11, 2, 4, 16, 8, num_kv_heads=2, positions="sinusoidal").model, (3, 8))[1] == params
    assert shapes_of(gpt(11, 1, 2, 8, 8, positions="learned").model, (1, 8))[1]["positions"]["table"] == (8, 8)
    with pytest.raises(fl.LayerError, match="gpt: unknown positions 'alibi'; available: rotary, learned, sinusoidal"):
        gpt(11, 1, 2, 8, 8, positions="alibi")


def full_pass_logits(lm, params, text, start, length):
    """The logits a full forward pass gives after each prefix, over the window gpt_generate reads.

    The window grows to ``context`` tokens; then it restarts from its last ``context // 2``.
    Each window is padded to ``context`` tokens at its end (the model is causal: padding after
    the last token changes nothing before it), so that the pass compiles once.
    """
    apply = jax.jit(lm.model.apply)
    window_start, filled, logits = max(0, start - lm.context), min(start, lm.context), []
    for i in range(length):
        window = text[window_start : start + i]
        padded = np.zeros((1, lm.context), np.int32)
        padded[0, : len(window)] = window
        out, _ = apply(params, {}, jnp.asarray(padded))
        logits.append(out[0, len(window) - 1])
        if filled < lm.context:
            filled += 1
        else:
            filled, window_start = lm.context // 2, start + i + 1 - lm.context // 2
    return np.stack(logits)


@pytest.mark.parametrize("positions, context, prompt_length", [("learned", 64, 5), ("rotary", 16, 20)])
def test_greedy_cached_decoding_equals_full_forward_passes(positions, context, prompt_length):
    """50 greedy tokens for two prompts: within the context, and past it, where the cache restarts (twice here)."""
    lm = gpt(13, 2, 4, 16, context, positions=positions, num_kv_heads=2)
    _, params, _ = quick_init(lm.model, (1, context))
    prompts = jnp.asarray(np.random.default_rng(0).integers(0, 13, (2, prompt_length)))
    tokens, logits = gpt_generate(lm, params, prompts, jax.random.key(0), 50, temperature=0.0, return_logits=True)
    assert tokens.shape == (2, 50) and logits.shape == (2, 50, 13)
    for row in range(2):
        text = np.concatenate([np.asarray(prompts[row]), np.asarray(tokens[row])])
        expected = full_pass_logits(lm, params, text, prompt_length, 50)
        np.testing.assert_allclose(logits[row], expected, atol=1e-5, rtol=0)
        top2 = np.sort(expected, axis=-1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 1e-4  # greedy: the most likely token, where it is clear
        np.testing.assert_array_equal(np.asarray(tokens[row])[clear], np.argmax(expected, axis=-1)[clear])
    # Sampling: the same key gives the same text, another key another (one compiled program: temperature is traced).
    drawn = [
        gpt_generate(lm, params, prompts, jax.random.key(k), 50, temperature=1.0, return_logits=True)[0]
        for k in (1, 1, 2)
    ]
    np.testing.assert_array_equal(drawn[0], drawn[1])
    assert not np.array_equal(drawn[0], drawn[2]) and not np.array_equal(drawn[0], tokens)


def test_next_token_greedy_temperature_and_top_k():
    logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]]))
    np.testing.assert_array_equal(next_token(logits, jax.random.key(0), temperature=0.0), [3, 0])
    np.testing.assert_array_equal(next_token(logits, jax.random.key(0), top_k=1), [3, 0])
    draws = jax.vmap(lambda k: next_token(logits, k, top_k=2))(jax.random.split(jax.random.key(1), 2000))
    assert set(np.unique(draws[:, 0])) == {2, 3} and abs(float(jnp.mean(draws[:, 0] == 3)) - 4 / 7) < 0.05
    cold = jax.vmap(lambda k: next_token(logits, k, temperature=0.25))(jax.random.split(jax.random.key(2), 2000))
    assert float(jnp.mean(cold[:, 0] == 3)) > 0.6  # sharper than the distribution's 0.4
    same = [next_token(logits, jax.random.key(5), temperature=1.5) for _ in range(2)]
    np.testing.assert_array_equal(*same)


def test_a_prompt_needs_a_token():
    with pytest.raises(ValueError, match="at least one token"):  # raised before the params are read
        gpt_generate(gpt(7, 1, 2, 8, 8), {}, jnp.zeros((0,), jnp.int32), jax.random.key(1), 3)


def test_stdlib_corpus_is_the_sorted_top_level_modules():
    corpus = stdlib_text()
    folder = sysconfig.get_paths()["stdlib"]
    first = sorted(p for p in __import__("os").listdir(folder) if p.endswith(".py"))[0]
    with open(f"{folder}/{first}", encoding="utf-8") as f:
        assert corpus.text.startswith(f.read())
    assert len(corpus.text) > 1_000_000 and len(corpus.sha256) == 64 and corpus == stdlib_text()
    assert corpus.record()["python"].count(".") == 2


def test_gpt_chars_trains_and_samples_with_the_cache(tmp_path):
    settings = [
        ("train.epochs", None),
        ("train.steps", 50),
        ("train.batch_size", 16),
        ("data.length", 16),
        ("data.held_out", 0.004),
        ("train.eval_batch_size", 1024),
        ("model.layers", 1),
        ("model.width", 32),
        ("model.heads", 2),
        ("optimizer.warmup_steps", 5),
        ("optimizer.learning_rate", 0.01),
    ]
    done = runs.run("gpt_chars", settings, out=str(tmp_path / "run"), quiet=True, echo=lambda _: None)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert train[-1]["loss"] < 0.75 * np.log(len(Vocabulary(stdlib_text().text)))  # below an untrained model's
    assert done.summary["metrics"]["test"]["perplexity"] < 40
    corpus = json.loads((tmp_path / "run" / "environment.json").read_text())["data"]
    assert corpus["corpus_sha256"] == stdlib_text().sha256 and corpus["python"]
    text = runs.sample(tmp_path / "run", "def ", temperature=0.8, length=40, seed=3)
    assert isinstance(text, str) and len(text) == 40


def test_charlm_reads_the_stdlib_corpus(tmp_path):
    charlm = runs.load_example("charlm")
    experiment = charlm.experiment(runs.resolve_config(charlm, [("data.corpus", "stdlib")]))
    corpus = stdlib_text()
    windows = int(len(corpus.text) * 0.9) // 64  # data.held_out 0.1, data.length 64
    assert experiment.train_data["inputs"].shape == (windows, 64)
    assert shapes_of(experiment.model, (2, 64))[0] == (2, 64, len(Vocabulary(corpus.text)))
    assert experiment.data_record["corpus_sha256"] == corpus.sha256  # what `fundl run` writes to environment.json
    assert charlm.experiment(runs.resolve_config(charlm, [])).data_record is None  # generated: its config says it all
    with pytest.raises(runs.ConfigError, match="data.corpus must be one of numbers, stdlib, got 'python'"):
        charlm.experiment(runs.resolve_config(charlm, [("data.corpus", "python")]))
