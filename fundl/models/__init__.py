"""Model builders for the course's families: short compositions of fundl layers.

Every builder returns an ordinary :class:`fundl.Layer`, trained by the same
:func:`fundl.train.fit` as any other model.
"""

from fundl.models._cnn import lenet as lenet
from fundl.models._mlp import mlp as mlp
