"""A dataset's arrays as read from disk or generated, before splitting and normalising."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RawData:
    """Examples and labels in their stored form; `kdcore.data.splits` turns them into Splits."""

    x: np.ndarray  # (N, C, H, W) images or (N, F) points, any numeric dtype
    y: np.ndarray  # (N,) int64 class indices
    class_names: tuple[str, ...]
    scale: float = 1.0  # x / scale lies in [0, 1] for images: 255 for bytes, 16 for sklearn digits
    test_x: np.ndarray | None = None  # the official test split, for datasets that have one
    test_y: np.ndarray | None = None


def readonly(array: np.ndarray) -> np.ndarray:
    """Freeze an array that is cached for the whole process, so no caller can change it."""
    array.flags.writeable = False
    return array
