"""Tests for kdcore.data.augment: shifts (and CIFAR's mirrors) checked against every allowed view built by
padding and slicing, point jitter, seeded reproducibility."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from kdcore.data import DatasetInfo, augment, load_dataset, view_count


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


def test_cifar_gets_the_standard_crop_of_the_padded_image_and_flip():
    """torchvision's RandomCrop(32, padding=4) then RandomHorizontalFlip() on pixels in [0, 1], padding black,
    here on normalised images: every output is one of the 9 x 9 crops of the padded image or its mirror."""
    pixels = torch.rand(64, 3, 32, 32)
    mean, std = torch.tensor([0.51, 0.49, 0.44]).view(3, 1, 1), torch.tensor([0.27, 0.26, 0.28]).view(3, 1, 1)
    black = tuple((-mean / std).flatten().tolist())
    cifar = DatasetInfo("cifar100", "", (3, 32, 32), 100, "image", True, None)
    assert view_count(cifar) == view_count(dataclasses.replace(cifar, name="cifar10")) == 9 * 9 * 2
    out = augment((pixels - mean) / std, cifar, seeded(0), fill=black) * std + mean  # back to pixels
    matches = []
    for image, result in zip(pixels, out):
        padded = F.pad(torch.stack([image, image.flip(-1)]), [4] * 4, value=0.0)  # [2, 3, 40, 40]
        versions = torch.stack([padded[:, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)], dim=1)
        distance = (versions.reshape(162, -1) - result.reshape(1, -1)).abs().amax(dim=1)  # [mirror * 81 + shift]
        assert distance.min() < 1e-5
        matches.append(int(distance.argmin()))
    assert 10 < sum(m >= 81 for m in matches) < 54, "about half of the images are mirrored"
    assert len({m % 81 for m in matches}) > 30 and {m % 81 for m in matches} & {0, 8, 72, 80}, "shifts reach 4 px"


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
