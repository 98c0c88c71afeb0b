"""Shared fixtures."""

import jax
import pytest

from fundl.train import _compiled


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture(autouse=True)
def fresh_compile_cache():
    """Each test starts with fit's compile cache empty: equal definitions share compiled programs across calls (a
    rebuilt optax.sgd(0.1) included), so a test counting compilations must not find another test's."""
    _compiled._CACHE.clear()
    yield
