"""Batched, on-device training augmentation: random shifts, CIFAR's standard crop and flip, point jitter."""

from __future__ import annotations

import torch
from torch import Tensor

from kdcore.dataset_names import CROP_PADDING, DatasetInfo

POINT_JITTER = 0.05  # in standardised units: nudges points without crossing class boundaries
FLIP_PREFIX = "cifar"  # photos look the same mirrored; digits, letters and clothes labels may not


def augment(x: Tensor, info: DatasetInfo, generator: torch.Generator | None = None,
            fill: tuple[float, ...] | None = None) -> Tensor:
    """A randomly augmented copy of the batch `x`; `x` itself is left unchanged.

    Images (N, C, H, W): each is shifted by up to ~7% of its side (2 px at 28 px, 1 px at 8x8),
    edges repeating the border pixels. CIFAR images get the standard CIFAR augmentation instead
    (torchvision's `RandomCrop(32, padding=4)` then `RandomHorizontalFlip()`): a random 32x32 crop
    of the image padded with CROP_PADDING pixels of `fill`, mirrored with probability 1/2.
    fill: the padding per channel in x's units, i.e. black once normalised (`Splits.black`); None: 0.
    Points (N, F): Gaussian jitter of std POINT_JITTER.
    The same seeded `generator` gives the same result; the work stays on x's device.
    """
    if info.kind == "text":
        raise ValueError("text is not augmented per batch; use transfer=augment:N")
    if info.kind == "points":
        noise = torch.randn(x.shape, generator=generator, device=_draw_device(x, generator))
        return x + POINT_JITTER * noise.to(device=x.device, dtype=x.dtype)
    return apply_views(x, info, random_views(len(x), info, generator, x.device), fill)


def view_count(info: DatasetInfo) -> int:
    """How many distinct augmentations an image can get (0 for points, whose jitter is continuous).

    Image augmentation is a choice among finitely many views (a shift, maybe a mirror), so a frozen
    teacher's outputs on every view of the training set can be computed once and looked up.
    """
    if info.kind != "image":  # points jitter continuously; text is not augmented here (`transfer=augment:N`)
        return 0
    side = 2 * _max_shift(info) + 1
    return side * side * (2 if _flips(info) else 1)


def random_views(n: int, info: DatasetInfo, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> Tensor:
    """One random view id in [0, view_count) per image, drawn with `generator`."""
    draw_on = generator.device if generator is not None else torch.device(device)
    return torch.randint(0, view_count(info), (n,), generator=generator, device=draw_on).to(device)


def apply_views(x: Tensor, info: DatasetInfo, views: Tensor, fill: tuple[float, ...] | None = None) -> Tensor:
    """Images `x` (N, C, H, W) each transformed by its view id: a shift (dy, dx) and maybe a mirror.

    Pixels shifted in from outside the image repeat the border, or take `fill` (0 when None) for the
    datasets that pad (CROP_PADDING)."""
    if x.dim() != 4:
        raise ValueError(f"augment expects images as (N, C, H, W), got shape {tuple(x.shape)}")
    n, channels, height, width = x.shape
    max_shift = _max_shift(info)
    side = 2 * max_shift + 1
    views = views.to(x.device)
    shift, mirrored = views % (side * side), views // (side * side)
    dy, dx = shift // side - max_shift, shift % side - max_shift
    columns = torch.arange(width, device=x.device).expand(n, width)
    columns = torch.where(mirrored.view(n, 1) == 1, width - 1 - columns, columns)
    # output pixel (i, j) reads source pixel (i + dy, j + dx); clamping the source index
    # to the image repeats the border, like replicate padding
    rows = torch.arange(height, device=x.device) + dy.view(n, 1)
    columns = columns + dx.view(n, 1)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channel = torch.arange(channels, device=x.device).view(1, channels, 1, 1)
    out = x[batch, channel, rows.view(n, 1, height, 1).clamp(0, height - 1), columns.view(n, 1, 1, width).clamp(0, width - 1)]
    if info.name not in CROP_PADDING:
        return out
    inside = ((rows >= 0) & (rows < height)).view(n, 1, height, 1) & ((columns >= 0) & (columns < width)).view(n, 1, 1, width)
    padding = torch.tensor(fill if fill is not None else [0.0] * channels, device=x.device, dtype=x.dtype)
    return torch.where(inside, out, padding.view(1, channels, 1, 1))


def _max_shift(info: DatasetInfo) -> int:
    if info.name in CROP_PADDING:
        return CROP_PADDING[info.name]
    return max(1, round(min(info.input_shape[-2:]) / 14))


def _flips(info: DatasetInfo) -> bool:
    return info.name.startswith(FLIP_PREFIX)


def _draw_device(x: Tensor, generator: torch.Generator | None) -> torch.device:
    """Random numbers must be drawn on the generator's device, which may differ from x's."""
    return generator.device if generator is not None else x.device
