"""Augmentations of single examples as they are read: picklable objects, so worker processes can run them.

An augmentation is ``augment(example, rng) -> example``, called on each training example
with its own generator (see :class:`fundl.train.Input`): the same example in the same
epoch is changed the same way whoever reads it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class RandomShift:
    """Shifts an image by up to ``pixels`` rows and columns each way, filling with zeros.

    Attributes:
      pixels: the largest shift.
      field: the example's image field, ``(height, width)`` or ``(height, width, channels)``.

    Example:
      >>> fit(..., augment=RandomShift(1), workers=2)
    """

    pixels: int = 1
    field: str = "image"

    def __post_init__(self) -> None:
        if isinstance(self.pixels, bool) or not isinstance(self.pixels, int) or self.pixels < 0:
            raise ValueError(f"RandomShift: pixels must be a non-negative integer, got {self.pixels!r}")

    def __call__(self, example: Any, rng: np.random.Generator) -> Any:
        image = np.asarray(example[self.field])
        dy, dx = (int(d) for d in rng.integers(-self.pixels, self.pixels + 1, size=2))
        shifted = np.zeros_like(image)
        height, width = image.shape[:2]
        shifted[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = image[
            max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
        ]
        return {**example, self.field: shifted}
