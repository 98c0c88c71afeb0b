"""Cached generation against recomputing the prefix for each new token, for a small GPT.

Both generate ``--length`` tokens from the same prompt inside one jitted ``lax.scan``:

* ``cached``: ``fundl.models.gpt_generate`` (the prompt read once, then one token at a time
  through the key/value cache; a full cache restarts from its last ``context // 2`` tokens);
* ``recompute``: each step runs the whole model over the last ``context`` tokens (padded to
  ``context``, so that it compiles once) and keeps the last real position's logits: what a
  language model without a cache does.

Method: both compile once (not timed), then ``--repeats`` calls each, alternating; the
medians are reported, and their ratio. The greedy tokens of the two agree until the text
outgrows the context (where their windows differ). Run::

    python benchmarks/generate_speed.py                  # the gpt_chars model: ~1 min on 2 vCPUs
    python benchmarks/generate_speed.py --context 64 --length 200
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fundl.models import GPT, gpt, gpt_generate, next_token


@functools.partial(jax.jit, static_argnames=("lm", "length"))
def recompute_generate(lm: GPT, params, prompt, key, length: int, temperature=1.0):
    """Like ``gpt_generate`` without a cache: every token costs a forward pass over ``context`` tokens."""
    start, context = prompt.shape[0], lm.context
    text = jnp.zeros((max(start + length, context),), prompt.dtype).at[:start].set(prompt)

    def step(text, i):
        n = start + i  # tokens so far
        first = jnp.maximum(n - context, 0)
        logits, _ = lm.model.apply(params, {}, lax.dynamic_slice_in_dim(text, first, context)[None])
        token = next_token(logits[:, n - 1 - first], jax.random.fold_in(key, i), temperature=temperature)[0]
        return text.at[n].set(token), token

    return lax.scan(step, text, jnp.arange(length))[1]


def seconds(fn) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=166)
    parser.add_argument("--length", type=int, default=200, help="tokens to generate")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    lm = gpt(args.vocab, args.layers, args.heads, args.width, args.context)
    _, params, _ = jax.jit(lambda key: lm.model.init(key, (1, args.context)))(jax.random.key(0))
    prompt = jnp.asarray(np.random.default_rng(0).integers(0, args.vocab, 4), jnp.int32)
    key = jax.random.key(1)

    def cached(temperature=1.0):
        return gpt_generate(lm, params, prompt, key, args.length, temperature=temperature)

    def recompute(temperature=1.0):
        return recompute_generate(lm, params, prompt, key, args.length, temperature)

    agree = args.context - len(prompt)  # greedy tokens before the text outgrows the context
    a, b = np.asarray(cached(0.0)), np.asarray(recompute(0.0))  # compiles both (temperature is traced)
    same = int(np.cumprod(a[:agree] == b[:agree]).sum())
    print(
        f"jax {jax.__version__} {jax.default_backend()}; GPT {args.layers}x{args.width}, {args.heads} heads, "
        f"context {args.context}, vocab {args.vocab}; {args.length} tokens from a {len(prompt)}-token prompt"
    )
    print(f"greedy tokens equal for the first {same} of {agree} (until the text outgrows the context)", flush=True)
    times: dict[str, list[float]] = {"cached": [], "recompute": []}
    for _ in range(args.repeats):
        for name, fn in (("cached", cached), ("recompute", recompute)):
            times[name].append(seconds(fn))
    for name, spent in times.items():
        median = statistics.median(spent)
        print(f"{name:<10} {median * 1000:8.1f} ms  {args.length / median:8.0f} tokens/s")
    ratio = statistics.median(times["recompute"]) / statistics.median(times["cached"])
    print(f"cached generation is {ratio:.1f}x faster than recomputing the prefix")


if __name__ == "__main__":
    main()
