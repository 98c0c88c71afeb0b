"""Losses and metrics against hand-written NumPy formulas, and their errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fundl import losses

LOGITS = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0], [-2.0, 1.0, 1.5], [0.0, 0.0, 0.0]], np.float32)
LABELS = np.array([0, 2, 1, 1], np.int32)


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_softmax_cross_entropy_matches_numpy():
    expected = -np_log_softmax(LOGITS)[np.arange(4), LABELS].mean()
    np.testing.assert_allclose(losses.softmax_cross_entropy(LOGITS, LABELS), expected, rtol=1e-6)


def test_sequence_losses_average_over_the_mask():
    logits = jax.random.normal(jax.random.key(0), (2, 5, 7))
    labels = jax.random.randint(jax.random.key(1), (2, 5), 0, 7)
    where = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    per_token = -np.take_along_axis(np_log_softmax(logits), np.asarray(labels)[..., None], -1)[..., 0]
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, labels, where=where), per_token[where].mean(), rtol=1e-5
    )
    np.testing.assert_allclose(
        losses.perplexity(logits, labels, where=where), np.exp(per_token[where].mean()), rtol=1e-5
    )


def test_binary_cross_entropy_matches_numpy():
    logits = np.array([[-3.0, 0.0, 2.0], [10.0, -10.0, 0.5]], np.float32)
    targets = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.25]], np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    expected = -(targets * np.log(p) + (1 - targets) * np.log1p(-p)).mean()
    np.testing.assert_allclose(losses.binary_cross_entropy(logits, targets), expected, rtol=1e-5)


def test_regression_losses_match_numpy():
    pred = np.array([[1.0, 2.0], [3.0, -4.0]], np.float32)
    target = np.array([[0.5, 2.0], [1.0, 1.0]], np.float32)
    np.testing.assert_allclose(losses.mse(pred, target), ((pred - target) ** 2).mean(), rtol=1e-6)
    np.testing.assert_allclose(losses.mae(pred, target), np.abs(pred - target).mean(), rtol=1e-6)


def test_accuracy_and_perplexity():
    # Rows 0 and 1 are right; row 2 prefers class 2; the tie in row 3 picks class 0.
    assert float(losses.accuracy(LOGITS, LABELS)) == pytest.approx(0.5)
    uniform = jnp.zeros((6, 10))
    np.testing.assert_allclose(losses.perplexity(uniform, jnp.arange(6)), 10.0, rtol=1e-6)


def test_losses_work_under_jit_and_grad():
    grad = jax.jit(jax.grad(losses.softmax_cross_entropy))(jnp.asarray(LOGITS), LABELS)
    p = np.exp(np_log_softmax(LOGITS))
    np.testing.assert_allclose(grad, (p - np.eye(3)[LABELS]) / 4, atol=1e-6)


def test_labels_outside_the_classes_are_an_error():
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: labels must lie in \[0, 3\), got values from 0 to 3"):
        losses.softmax_cross_entropy(LOGITS, np.array([0, 3, 1, 1]))
    with pytest.raises(ValueError, match=r"accuracy: labels must lie in \[0, 3\), got values from -1 to 2"):
        losses.accuracy(LOGITS, np.array([0, -1, 1, 2]))


def test_label_shape_and_dtype_errors():
    with pytest.raises(
        ValueError, match=r"expects labels of shape \(4,\) for logits of shape \(4, 3\).*got labels of shape \(4, 1\)"
    ):
        losses.softmax_cross_entropy(LOGITS, LABELS[:, None])
    with pytest.raises(TypeError, match="softmax_cross_entropy expects integer class labels, got float32"):
        losses.softmax_cross_entropy(LOGITS, LABELS.astype(np.float32))
    with pytest.raises(ValueError, match=r"mse expects targets of shape \(4, 3\), got \(4,\)"):
        losses.mse(LOGITS, LABELS.astype(np.float32))
    with pytest.raises(ValueError, match=r"`where` must have the shape of the targets \(4,\), got \(3,\)"):
        losses.softmax_cross_entropy(LOGITS, LABELS, where=np.ones(3, bool))
