"""The peer libraries' versions of ``bench.py``'s workloads, each written as its users write it.

``peer_run(name, workload, data, lr)`` returns ``epoch_fn(epochs)`` (trains that many epochs
over the workload's pre-sliced host NumPy batches and blocks until done), or a string saying
why the peer is skipped (its library is not importable, or the workload is not written for it).
Every model has the same layer sizes as fundl's; initialisations are each library's defaults.
Install the peers with ``pip install -e .[bench]``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

EpochFn = Callable[[int], None]


def peer_run(name: str, w: Any, data: dict[str, np.ndarray], lr: float) -> EpochFn | str:
    """The peer ``name``'s training of workload ``w`` on ``data``, or why it is skipped."""
    if name == "keras":
        os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is first imported
    module = {"flax_nnx": "flax.nnx", "flax_linen": "flax.linen", "equinox": "equinox", "keras": "keras"}[name]
    try:
        importlib.import_module(module)
    except ImportError as error:
        return f"{module} is not importable ({error}); pip install -e .[bench]"
    if name == "keras" and __import__("keras").backend.backend() != "jax":
        return "keras runs on another backend: set KERAS_BACKEND=jax"
    batches = [{k: v[i : i + w.batch] for k, v in data.items()} for i in range(0, len(data["image"]), w.batch)]
    return {"flax_nnx": _nnx, "flax_linen": _linen, "equinox": _equinox, "keras": _keras}[name](w, batches, lr)


def _nll(logits: jax.Array, x: jax.Array) -> jax.Array:
    """Bernoulli negative log-likelihood of ``x`` under ``logits``, summed per example."""
    return optax.sigmoid_binary_cross_entropy(logits, x).reshape(x.shape[0], -1).sum(-1)


def _kl(mean: jax.Array, log_var: jax.Array) -> jax.Array:
    return 0.5 * jnp.sum(jnp.exp(log_var) + mean**2 - 1 - log_var, axis=-1)


def _xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


# --- Flax NNX ---------------------------------------------------------------------------


def _nnx(w: Any, batches: list[dict], lr: float) -> EpochFn:  # noqa: C901  (one model per workload, side by side)
    from flax import nnx

    rngs = nnx.Rngs(0, noise=1)
    n_in = int(np.prod(w.input_shape))
    if w.kind == "mlp":
        sizes = [n_in, *w.hidden]
        layers = [m for a, b in zip(sizes, sizes[1:]) for m in (nnx.Linear(a, b, rngs=rngs), nnx.relu)]
        model = nnx.Sequential(*layers, nnx.Linear(sizes[-1], w.classes, rngs=rngs))
    elif w.kind == "cnn":
        c1, c2, d = w.hidden
        pool = lambda x: nnx.max_pool(x, (2, 2), strides=(2, 2))  # noqa: E731
        model = nnx.Sequential(
            nnx.Conv(1, c1, (3, 3), rngs=rngs),
            nnx.relu,
            pool,
            nnx.Conv(c1, c2, (3, 3), rngs=rngs),
            nnx.relu,
            pool,
            lambda x: x.reshape(x.shape[0], -1),
            nnx.Linear(7 * 7 * c2, d, rngs=rngs),
            nnx.relu,
            nnx.Linear(d, w.classes, rngs=rngs),
        )
    elif w.kind == "gpt":
        model = _nnx_gpt(w, rngs)
    elif w.kind == "lstm":

        class Classifier(nnx.Module):
            def __init__(self, rngs: nnx.Rngs):
                self.rnn = nnx.RNN(nnx.LSTMCell(w.input_shape[-1], w.hidden[0], rngs=rngs))
                self.head = nnx.Linear(w.hidden[0], w.classes, rngs=rngs)

            def __call__(self, x):
                return self.head(self.rnn(x)[:, -1])

        model = Classifier(rngs)
    else:
        hidden, latent = w.hidden

        class VAE(nnx.Module):
            def __init__(self, rngs: nnx.Rngs):
                self.enc = nnx.Linear(n_in, hidden, rngs=rngs)
                self.mean = nnx.Linear(hidden, latent, rngs=rngs)
                self.log_var = nnx.Linear(hidden, latent, rngs=rngs)
                self.dec1 = nnx.Linear(latent, hidden, rngs=rngs)
                self.dec2 = nnx.Linear(hidden, n_in, rngs=rngs)
                self.rngs = rngs

            def __call__(self, x):
                h = nnx.relu(self.enc(x))
                mean, log_var = self.mean(h), self.log_var(h)
                z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(self.rngs.noise(), mean.shape)
                return self.dec2(nnx.relu(self.dec1(z))), mean, log_var

        model = VAE(rngs)
    optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)

    def loss_fn(model, batch):
        if w.kind == "vae":
            logits, mean, log_var = model(batch["image"])
            return jnp.mean(_nll(logits, batch["image"]) + _kl(mean, log_var))
        return _xent(model(batch["image"]), batch["label"])

    @nnx.jit
    def train_step(model, optimizer, batch):
        loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
        optimizer.update(model, grads)
        return loss

    def epochs(n: int) -> None:
        for _ in range(n):
            for batch in batches:
                loss = train_step(model, optimizer, batch)
        jax.block_until_ready((loss, nnx.state(model)))

    return epochs


def _nnx_gpt(w: Any, rngs: Any) -> Any:
    """Pre-norm blocks (RMS norm, causal attention without biases, GELU MLP), learned positions."""
    from flax import nnx

    depth, heads, width = w.hidden
    time = w.input_shape[0]

    class Block(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.norm1, self.norm2 = nnx.RMSNorm(width, rngs=rngs), nnx.RMSNorm(width, rngs=rngs)
            self.attention = nnx.MultiHeadAttention(heads, width, use_bias=False, decode=False, rngs=rngs)
            self.up, self.down = nnx.Linear(width, 4 * width, rngs=rngs), nnx.Linear(4 * width, width, rngs=rngs)

        def __call__(self, x, mask):
            x = x + self.attention(self.norm1(x), mask=mask)
            return x + self.down(nnx.gelu(self.up(self.norm2(x))))

    class GPT(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.embed = nnx.Embed(w.classes, width, rngs=rngs)
            self.positions = nnx.Param(0.02 * jax.random.normal(rngs.params(), (time, width)))
            self.blocks = nnx.List([Block(rngs) for _ in range(depth)])
            self.norm, self.head = nnx.RMSNorm(width, rngs=rngs), nnx.Linear(width, w.classes, rngs=rngs)

        def __call__(self, ids):
            x = self.embed(ids) + self.positions[...]
            mask = nnx.make_causal_mask(ids)
            for block in self.blocks:
                x = block(x, mask)
            return self.head(self.norm(x))

    return GPT(rngs)


# --- Flax Linen ---------------------------------------------------------------------------


def _linen(w: Any, batches: list[dict], lr: float) -> EpochFn:  # noqa: C901  (one model per workload, side by side)
    import flax.linen as nn
    from flax.training import train_state

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            for h in w.hidden:
                x = nn.relu(nn.Dense(h)(x))
            return nn.Dense(w.classes)(x)

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            c1, c2, d = w.hidden
            for c in (c1, c2):
                x = nn.max_pool(nn.relu(nn.Conv(c, (3, 3))(x)), (2, 2), strides=(2, 2))
            x = nn.relu(nn.Dense(d)(x.reshape(x.shape[0], -1)))
            return nn.Dense(w.classes)(x)

    class LSTM(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(w.classes)(nn.RNN(nn.LSTMCell(w.hidden[0]))(x)[:, -1])

    class VAE(nn.Module):
        @nn.compact
        def __call__(self, x):
            hidden, latent = w.hidden
            h = nn.relu(nn.Dense(hidden)(x))
            mean, log_var = nn.Dense(latent)(h), nn.Dense(latent)(h)
            z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(self.make_rng("noise"), mean.shape)
            return nn.Dense(x.shape[-1])(nn.relu(nn.Dense(hidden)(z))), mean, log_var

    class GPT(nn.Module):
        @nn.compact
        def __call__(self, ids):
            depth, heads, width = w.hidden
            positions = self.param("positions", nn.initializers.normal(0.02), (ids.shape[1], width))
            x = nn.Embed(w.classes, width)(ids) + positions
            mask = nn.make_causal_mask(ids)
            for _ in range(depth):
                x = x + nn.MultiHeadDotProductAttention(heads, use_bias=False)(nn.RMSNorm()(x), mask=mask)
                x = x + nn.Dense(width)(nn.gelu(nn.Dense(4 * width)(nn.RMSNorm()(x))))
            return nn.Dense(w.classes)(nn.RMSNorm()(x))

    model = {"mlp": MLP, "cnn": CNN, "lstm": LSTM, "vae": VAE, "gpt": GPT}[w.kind]()
    key = jax.random.key(0)
    params = model.init({"params": key, "noise": key}, jnp.asarray(batches[0]["image"]))["params"]
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(lr))

    @jax.jit
    def train_step(state, batch):
        def loss_fn(params):
            if w.kind == "vae":
                noise = jax.random.fold_in(jax.random.key(1), state.step)
                logits, mean, log_var = state.apply_fn({"params": params}, batch["image"], rngs={"noise": noise})
                return jnp.mean(_nll(logits, batch["image"]) + _kl(mean, log_var))
            return _xent(state.apply_fn({"params": params}, batch["image"]), batch["label"])

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    def epochs(n: int) -> None:
        nonlocal state
        for _ in range(n):
            for batch in batches:
                state, loss = train_step(state, batch)
        jax.block_until_ready(state)

    return epochs


# --- Equinox ---------------------------------------------------------------------------


def _equinox(w: Any, batches: list[dict], lr: float) -> EpochFn:  # noqa: C901  (one branch per workload kind)
    import equinox as eqx

    keys = iter(jax.random.split(jax.random.key(0), 8))
    if w.kind == "mlp":
        model = eqx.nn.MLP(w.input_shape[0], w.classes, w.hidden[0], len(w.hidden), jax.nn.relu, key=next(keys))
    elif w.kind == "cnn":  # equinox convolutions read one channels-first example: (1, 28, 28)
        c1, c2, d = w.hidden
        batches = [{**b, "image": np.moveaxis(b["image"], -1, 1)} for b in batches]
        model = eqx.nn.Sequential(
            [
                eqx.nn.Conv2d(1, c1, 3, padding=1, key=next(keys)),
                eqx.nn.Lambda(jax.nn.relu),
                eqx.nn.MaxPool2d(2, 2),
                eqx.nn.Conv2d(c1, c2, 3, padding=1, key=next(keys)),
                eqx.nn.Lambda(jax.nn.relu),
                eqx.nn.MaxPool2d(2, 2),
                eqx.nn.Lambda(jnp.ravel),
                eqx.nn.Linear(7 * 7 * c2, d, key=next(keys)),
                eqx.nn.Lambda(jax.nn.relu),
                eqx.nn.Linear(d, w.classes, key=next(keys)),
            ]
        )
    elif w.kind == "gpt":
        model = _equinox_gpt(w, keys)
    elif w.kind == "lstm":

        class Classifier(eqx.Module):
            cell: eqx.nn.LSTMCell
            head: eqx.nn.Linear

            def __call__(self, xs):  # one sequence (time, features)
                zeros = jnp.zeros(self.cell.hidden_size)
                (h, _), _ = jax.lax.scan(lambda carry, x: (self.cell(x, carry), None), (zeros, zeros), xs)
                return self.head(h)

        model = Classifier(
            eqx.nn.LSTMCell(w.input_shape[-1], w.hidden[0], key=next(keys)),
            eqx.nn.Linear(w.hidden[0], w.classes, key=next(keys)),
        )
    else:
        hidden, latent = w.hidden

        class VAE(eqx.Module):
            enc: eqx.nn.Linear
            mean: eqx.nn.Linear
            log_var: eqx.nn.Linear
            dec1: eqx.nn.Linear
            dec2: eqx.nn.Linear

            def __call__(self, x, key):  # one example (784,)
                h = jax.nn.relu(self.enc(x))
                mean, log_var = self.mean(h), self.log_var(h)
                z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(key, mean.shape)
                return self.dec2(jax.nn.relu(self.dec1(z))), mean, log_var

        n = w.input_shape[0]
        model = VAE(
            *(
                eqx.nn.Linear(a, b, key=next(keys))
                for a, b in [(n, hidden), (hidden, latent), (hidden, latent), (latent, hidden), (hidden, n)]
            )
        )
    optimizer = optax.adam(lr)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))

    def loss_fn(model, batch, key):
        x = batch["image"]
        if w.kind == "vae":
            logits, mean, log_var = jax.vmap(model)(x, jax.random.split(key, x.shape[0]))
            return jnp.mean(_nll(logits, x) + _kl(mean, log_var))
        return _xent(jax.vmap(model)(x), batch["label"])

    @eqx.filter_jit
    def train_step(model, opt_state, batch, key):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    key = jax.random.key(1)

    def epochs(n: int) -> None:
        nonlocal model, opt_state, key
        for _ in range(n):
            for batch in batches:
                key, step_key = jax.random.split(key)
                model, opt_state, loss = train_step(model, opt_state, batch, step_key)
        jax.block_until_ready((model, opt_state))

    return epochs


def _equinox_gpt(w: Any, keys: Any) -> Any:
    """The same GPT as equinox users write it: modules over one sequence, vmapped over the batch."""
    import equinox as eqx

    depth, heads, width = w.hidden
    time = w.input_shape[0]

    class Block(eqx.Module):
        norm1: eqx.nn.RMSNorm
        attention: eqx.nn.MultiheadAttention
        norm2: eqx.nn.RMSNorm
        up: eqx.nn.Linear
        down: eqx.nn.Linear

        def __call__(self, x):  # (time, width)
            h = jax.vmap(self.norm1)(x)
            x = x + self.attention(h, h, h, mask=jnp.tril(jnp.ones((time, time), bool)))
            return x + jax.vmap(lambda v: self.down(jax.nn.gelu(self.up(self.norm2(v)))))(x)

    class GPT(eqx.Module):
        embed: eqx.nn.Embedding
        positions: jax.Array
        blocks: list
        norm: eqx.nn.RMSNorm
        head: eqx.nn.Linear

        def __call__(self, ids):  # (time,)
            x = jax.vmap(self.embed)(ids) + self.positions
            for block in self.blocks:
                x = block(x)
            return jax.vmap(lambda v: self.head(self.norm(v)))(x)

    def block(key):
        k1, k2, k3 = jax.random.split(key, 3)
        return Block(
            eqx.nn.RMSNorm(width, use_bias=False),
            eqx.nn.MultiheadAttention(heads, width, key=k1),
            eqx.nn.RMSNorm(width, use_bias=False),
            eqx.nn.Linear(width, 4 * width, key=k2),
            eqx.nn.Linear(4 * width, width, key=k3),
        )

    return GPT(
        eqx.nn.Embedding(w.classes, width, key=next(keys)),
        0.02 * jax.random.normal(next(keys), (time, width)),
        [block(next(keys)) for _ in range(depth)],
        eqx.nn.RMSNorm(width, use_bias=False),
        eqx.nn.Linear(width, w.classes, key=next(keys)),
    )


# --- Keras 3 (JAX backend) ---------------------------------------------------------------


def _keras(w: Any, batches: list[dict], lr: float) -> EpochFn | str:
    import keras
    from keras import layers

    if w.kind == "vae":
        return "the VAE needs a custom train_step in Keras; not written here"
    if w.kind == "gpt":
        return "the GPT is not written for Keras here"
    if w.kind == "mlp":
        body = [layers.Dense(h, activation="relu") for h in w.hidden]
    elif w.kind == "cnn":
        c1, c2, d = w.hidden
        body = [
            layers.Conv2D(c1, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(c2, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(d, activation="relu"),
        ]
    else:
        body = [layers.LSTM(w.hidden[0])]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(w.input_shape), *body, layers.Dense(w.classes)])
    model.compile(
        optimizer=keras.optimizers.Adam(lr), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    x = np.concatenate([b["image"] for b in batches])
    y = np.concatenate([b["label"] for b in batches])

    def epochs(n: int) -> None:
        model.fit(x, y, batch_size=w.batch, epochs=n, shuffle=False, verbose=0)

    return epochs
