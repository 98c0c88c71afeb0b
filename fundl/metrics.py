"""Metrics that are not means over examples: F1, ROC AUC, a confusion matrix, exact over a whole split.

An evaluation returns each metric per batch, and fundl's one evaluator combines the
batches exactly: a plain metric (a scalar) as the mean over every example, weighted by
batch size. A metric that is not such a mean (the F1 score of a split is not the mean of
its batches' F1 scores) is returned as an :class:`Accumulated`: the batch's *sufficient
statistics* (a confusion matrix's counts, or the batch's scores and labels), which the
evaluator adds up over every batch of the split and *finishes* once, on the host, at the
end. The statistics are computed inside the jitted evaluation; only the finishing step runs
in NumPy. Every evaluation of fundl goes through it: ``fit``'s evaluation splits, a
sweep's members, a run's test splits and :func:`fundl.train.evaluate`.

Return them from a loss's evaluation (never from the training step, whose metrics are
per-step scalars), e.g. with ``classification_loss(model, metrics=("f1", "roc_auc"))``,
or in a loss of your own::

    def loss_fn(params, state, batch, key, *, train=True):
        logits, state = model.apply(params, state, batch["image"], key=key, train=train)
        loss = losses.softmax_cross_entropy(logits, batch["label"])
        metrics = {"accuracy": losses.accuracy(logits, batch["label"])}
        if not train:  # evaluation: whole-split metrics
            metrics |= precision_recall_f1(logits, batch["label"])
            metrics["confusion_matrix"] = confusion_matrix(logits, batch["label"])
        return loss, (state, metrics)

A finished metric is a float, or an array (a confusion matrix), which records keep as
nested lists and the console shows by its shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

COMBINE = ("sum", "concat")
CLASSIFICATION_METRICS = ("precision", "recall", "f1", "roc_auc", "confusion_matrix")


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Accumulated:
    """A metric given as sufficient statistics of one batch, combined over a split and finished at its end.

    Attributes:
      stats: a pytree of arrays, this batch's statistics (computed inside ``jit``).
      finish: ``finish(stats) -> float or array``, applied once to the split's combined
        statistics (NumPy arrays on the host, float64 or int64).
      combine: ``"sum"``: the batches' statistics are added (counts, sums); ``"concat"``:
        they are joined along their first (example) axis (every score, for an exact ROC AUC;
        memory grows with the split).
    """

    stats: Any
    finish: Callable[[Any], Any]
    combine: str = "sum"

    def __post_init__(self) -> None:
        if self.combine not in COMBINE:
            raise ValueError(f"Accumulated.combine must be one of {COMBINE}, got {self.combine!r}")

    def tree_flatten(self) -> tuple[tuple[Any], tuple[Callable[[Any], Any], str]]:
        return (self.stats,), (self.finish, self.combine)

    @classmethod
    def tree_unflatten(cls, aux: tuple[Callable[[Any], Any], str], children: tuple[Any]) -> Accumulated:
        return cls(children[0], *aux)


def combined(batches: Sequence[Accumulated], members: bool = False) -> Accumulated:
    """The split's statistics from each batch's (on the host): summed in float64 or int64, or concatenated.

    Args:
      batches: one :class:`Accumulated` per batch, with NumPy statistics.
      members: the statistics have a leading member axis (a population's): ``"concat"`` joins along axis 1.
    """
    first = batches[0]

    def join(*leaves: Any) -> np.ndarray:
        arrays = [np.asarray(leaf) for leaf in leaves]
        if first.combine == "concat":
            return np.concatenate(arrays, axis=1 if members else 0)
        wide = np.int64 if np.issubdtype(arrays[0].dtype, np.integer) else np.float64
        return sum((a.astype(wide) for a in arrays[1:]), arrays[0].astype(wide))

    return Accumulated(jax.tree.map(join, *[batch.stats for batch in batches]), first.finish, first.combine)


def finished(value: Any, member: int | None = None) -> Any:
    """A metric's value over the split: a finished :class:`Accumulated` (of one member, for a population), as a
    float or a NumPy array; any other value as a float."""
    if not isinstance(value, Accumulated):
        array = np.asarray(value, np.float64)
        return float(array if member is None else np.reshape(array, (-1,))[member])
    stats = value.stats if member is None else jax.tree.map(lambda leaf: np.asarray(leaf)[member], value.stats)
    result = np.asarray(value.finish(stats))
    return float(result) if result.ndim == 0 else result


# --- Classification ---------------------------------------------------------------------------------------


def _flat(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``logits (n, C)`` and ``labels (n,)`` from any leading axes (a sequence's positions count as examples)."""
    return jnp.reshape(logits, (-1, logits.shape[-1])), jnp.reshape(labels, (-1,))


def _counts(stats: np.ndarray) -> np.ndarray:
    return np.asarray(stats, np.int64)


def confusion_matrix(logits: jax.Array, labels: jax.Array) -> Accumulated:
    """``counts[i, j]``: the examples of class ``i`` that the model puts in class ``j`` (its largest logit).

    Args:
      logits: ``(batch, num_classes)`` (or ``(batch, ..., num_classes)``: every position counts).
      labels: integer classes ``(batch,)`` (or ``(batch, ...)``).

    Returns:
      An :class:`Accumulated` whose finished value is an int64 array ``(num_classes, num_classes)``.
    """
    logits, labels = _flat(logits, labels)
    classes = logits.shape[-1]
    truth = jax.nn.one_hot(labels, classes, dtype=jnp.int32)
    predicted = jax.nn.one_hot(jnp.argmax(logits, axis=-1), classes, dtype=jnp.int32)
    return Accumulated(truth.T @ predicted, _counts)


@dataclasses.dataclass(frozen=True)
class _FromCounts:
    """Finishes one of precision, recall or F1 from a confusion matrix's counts."""

    what: str
    average: str

    def __call__(self, counts: np.ndarray) -> float:
        counts = np.asarray(counts, np.float64)
        hits, predicted, actual = np.diag(counts), counts.sum(axis=0), counts.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):  # a class never predicted (or absent) scores 0
            precision = np.where(predicted > 0, hits / predicted, 0.0)
            recall = np.where(actual > 0, hits / actual, 0.0)
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        per_class = {"precision": precision, "recall": recall, "f1": f1}[self.what]
        if self.average == "weighted":
            return float(np.sum(per_class * actual) / np.sum(actual))
        present = (actual > 0) | (predicted > 0)  # as scikit-learn: classes in the labels or the predictions
        return float(np.mean(per_class[present]))


def precision_recall_f1(logits: jax.Array, labels: jax.Array, *, average: str = "macro") -> dict[str, Accumulated]:
    """``{"precision", "recall", "f1"}`` over a split, from its confusion matrix.

    Args:
      logits: ``(batch, num_classes)``; the predicted class is the largest logit.
      labels: integer classes ``(batch,)``.
      average: ``"macro"``: the unweighted mean over the classes present in the labels or
        the predictions (scikit-learn's ``average="macro"``); ``"weighted"``: weighted by
        each class's number of examples.

    Returns:
      Three :class:`Accumulated` metrics (a class never predicted has precision 0, as
      scikit-learn's ``zero_division=0``).
    """
    if average not in ("macro", "weighted"):
        raise ValueError(f"average must be 'macro' or 'weighted', got {average!r}")
    counts = confusion_matrix(logits, labels).stats
    return {what: Accumulated(counts, _FromCounts(what, average)) for what in ("precision", "recall", "f1")}


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), np.float64)
    ranks[order] = ((starts + ends + 1) / 2)[group]
    return ranks


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The ROC AUC of ``scores (n,)`` for the boolean ``positive (n,)``: the chance that a positive scores above a
    negative, ties counting half (the Mann-Whitney statistic); NaN without positives or negatives."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = _average_ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _auc(stats: dict[str, np.ndarray]) -> float:
    scores, labels = np.asarray(stats["scores"]), np.asarray(stats["labels"])
    if scores.ndim == 1:
        return binary_auc(scores, labels == 1)
    per_class = [binary_auc(scores[:, c], labels == c) for c in range(scores.shape[1])]
    return float(np.nanmean(per_class))  # one against the rest, unweighted mean over the classes


def roc_auc(scores: jax.Array, labels: jax.Array) -> Accumulated:
    """The ROC AUC over a split, exact: every example's score and label are kept to the end.

    Args:
      scores: ``(batch,)`` the positive class's score (a probability or a logit) for binary
        labels in ``{0, 1}``; or ``(batch, num_classes)`` probabilities (e.g.
        ``jax.nn.softmax(logits)``), scored one class against the rest and averaged over
        the classes (scikit-learn's ``multi_class="ovr", average="macro"``).
      labels: integer classes ``(batch,)``.

    Returns:
      An :class:`Accumulated` that concatenates the split's scores (memory grows with the split).
    """
    if scores.ndim == 1:
        stats = {"scores": scores, "labels": jnp.reshape(labels, (-1,))}
    else:
        flat_scores, flat_labels = _flat(scores, labels)
        stats = {"scores": flat_scores, "labels": flat_labels}
    return Accumulated(stats, _auc, "concat")


def classification_metrics(logits: jax.Array, labels: jax.Array, names: Sequence[str]) -> dict[str, Accumulated]:
    """The split metrics ``names`` (of :data:`CLASSIFICATION_METRICS`) of a classifier's logits and labels."""
    unknown = sorted(set(names) - set(CLASSIFICATION_METRICS))
    if unknown:
        raise ValueError(f"unknown classification metric(s) {unknown}; available: {', '.join(CLASSIFICATION_METRICS)}")
    metrics: dict[str, Accumulated] = {}
    if {"precision", "recall", "f1"} & set(names):
        chosen = precision_recall_f1(logits, labels)
        metrics.update({name: chosen[name] for name in ("precision", "recall", "f1") if name in names})
    if "roc_auc" in names:
        metrics["roc_auc"] = roc_auc(jax.nn.softmax(logits, axis=-1), labels)
    if "confusion_matrix" in names:
        metrics["confusion_matrix"] = confusion_matrix(logits, labels)
    return metrics
