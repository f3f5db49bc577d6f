"""Tests for kdcore.data.augment: shifts (and CIFAR's mirrors) checked against every allowed view built by
padding and slicing, point jitter, seeded reproducibility."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdcore.data import DatasetInfo, augment, load_dataset


def shifted_versions(image: torch.Tensor, max_shift: int, flips: bool) -> list[torch.Tensor]:
    """Every allowed augmentation of one (C, H, W) image, built by padding and slicing."""
    _, height, width = image.shape
    versions = []
    for source in ([image, image.flip(-1)] if flips else [image]):
        padded = F.pad(source[None], [max_shift] * 4, mode="replicate")[0]
        for dy in range(2 * max_shift + 1):
            for dx in range(2 * max_shift + 1):
                versions.append(padded[:, dy:dy + height, dx:dx + width])
    return versions


def matches_one_of(output: torch.Tensor, versions: list[torch.Tensor]) -> list[int]:
    return [i for i, version in enumerate(versions) if torch.equal(output, version)]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name, max_shift", [("mnist-5k", 2), ("digits", 1)])
def test_augment_shifts_images(name, max_shift):
    splits = load_dataset(name)
    x = splits.train_x[:64]
    before = x.clone()
    out = augment(x, splits.info, seeded(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(x, before), "input must not be modified"
    assert not torch.equal(out, x)
    assert torch.equal(out, augment(x, splits.info, seeded(0)))
    assert not torch.equal(out, augment(x, splits.info, seeded(1)))
    for image, result in zip(x, out):
        assert matches_one_of(result, shifted_versions(image, max_shift, flips=False))


def test_augment_flips_only_cifar():
    x = torch.randn(64, 3, 32, 32)
    cifar = DatasetInfo("cifar10", "", (3, 32, 32), 10, "image", True, None)
    out = augment(x, cifar, seeded(0))
    flipped = 0
    for image, result in zip(x, out):
        matches = matches_one_of(result, shifted_versions(image, 2, flips=True))
        assert matches
        flipped += matches[0] >= 25
    assert 10 < flipped < 54, "about half of the images are mirrored"


def test_augment_jitters_points():
    splits = load_dataset("moons")
    x = splits.train_x
    before = x.clone()
    out = augment(x, splits.info, seeded(0))
    assert out.shape == x.shape and torch.equal(x, before)
    assert (out - x).std().item() == pytest.approx(0.05, rel=0.1)
    assert torch.equal(out, augment(x, splits.info, seeded(0)))
    assert augment(x, splits.info).shape == x.shape  # the global generator works too


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_augment_on_gpu_matches_cpu():
    splits = load_dataset("mnist-5k")
    info = DatasetInfo("cifar10", "", (1, 28, 28), 10, "image", True, None)  # shifts and flips
    x = splits.train_x[:256]
    on_gpu = augment(x.cuda(), info, seeded(7))
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), augment(x, info, seeded(7)))
    cuda_generator = torch.Generator(device="cuda").manual_seed(7)
    assert augment(x.cuda(), info, cuda_generator).device.type == "cuda"
