"""Ready-made loss functions in the form ``fit`` takes, for the common tasks."""

from __future__ import annotations

from fundl import losses
from fundl._core import Layer
from fundl.train._step import LossFn


def classification_loss(model: Layer, *, inputs: str = "image", labels: str = "label") -> LossFn:
    """Softmax cross-entropy of ``model``'s logits, with accuracy as a metric.

    The batch is a dict with ``batch[inputs]`` (the model's input) and ``batch[labels]``
    (integer classes). The returned function takes a ``train`` keyword, so ``fit`` can
    evaluate with it too.

    Example:
      >>> loss_fn = classification_loss(fl.serial(fl.flatten(), fl.dense(10)))
      >>> loss, (state, metrics) = loss_fn(params, state, batch, key)
    """

    def loss_fn(params, state, batch, key, *, train=True):
        logits, new_state = model.apply(params, state, batch[inputs], key=key, train=train)
        loss = losses.softmax_cross_entropy(logits, batch[labels])
        return loss, (new_state, {"accuracy": losses.accuracy(logits, batch[labels])})

    return loss_fn
