"""scikit-learn's handwritten digits with two fixed, seeded augmentations of every image (contrastive views).

Provenance. ``sklearn.datasets.load_digits``: 1,797 grey-scale images of 8 x 8 pixels (values 0 to 16) of
the digits 0-9, the test part of the UCI "Optical Recognition of Handwritten Digits" data (Alpaydin and
Kaynak 1998), shipped inside the scikit-learn package (no download). Licence: CC BY 4.0 (UCI Machine
Learning Repository).

Views. Each image gets two augmentations drawn once from a seeded generator: a shift by -1, 0 or +1 pixel
along each axis (zero fill), Gaussian pixel noise (standard deviation ``noise`` on the 0-16 scale) and
dropping each pixel with probability ``drop``. The views are features, not parameters: every mask and every
refit sees the same two views of each image.

Features. Pixels are scaled to [0, 1], centred with the training images' mean and projected on the first
``n_components`` principal axes of the (clean) training images, then divided by the root mean variance of
the kept components, so that a feature has variance about 1. The projection is fitted on the training
images only; held-out images and all views use it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ._files import check_seed

__all__ = ["ContrastiveDigits", "augment", "contrastive_digits"]


@dataclass(frozen=True)
class ContrastiveDigits:
    """Two views per image, split into training and held-out images.

    Attributes:
        train_views: (2, n_train, n_components) float64; ``train_views[v, i]`` is view ``v`` of image ``i``.
        test_views: (2, n_test, n_components) float64, the held-out images' views.
        train_clean, test_clean: (n, n_components) the un-augmented images' features.
        train_labels, test_labels: (n,) int64 digit labels (never used in training).
        train_index, test_index: (n,) int64 rows of ``load_digits()`` (provenance of each image).
    """

    train_views: torch.Tensor
    test_views: torch.Tensor
    train_clean: torch.Tensor
    test_clean: torch.Tensor
    train_labels: torch.Tensor
    test_labels: torch.Tensor
    train_index: torch.Tensor
    test_index: torch.Tensor


def augment(images: np.ndarray, rng: np.random.Generator, *, noise: float, drop: float) -> np.ndarray:
    """One random augmentation of each image.

    Args:
        images: (n, 8, 8) pixel values on the 0-16 scale.
        rng: numpy generator (consumed in a fixed order: shifts, noise, drops).
        noise: standard deviation of the additive Gaussian noise.
        drop: probability of setting a pixel to 0.

    Returns:
        (n, 8, 8) augmented images, clipped to [0, 16].
    """
    n = images.shape[0]
    shifts = rng.integers(-1, 2, size=(n, 2))
    shifted = np.zeros_like(images)
    for row, (dy, dx) in enumerate(shifts):
        source = images[row, max(0, -dy):8 - max(0, dy), max(0, -dx):8 - max(0, dx)]
        shifted[row, max(0, dy):8 - max(0, -dy), max(0, dx):8 - max(0, -dx)] = source
    noisy = shifted + noise * rng.standard_normal(images.shape)
    kept = rng.random(images.shape) >= drop
    return np.clip(noisy * kept, 0.0, 16.0)


def contrastive_digits(*, n_train: int = 250, n_test: int = 100, n_components: int = 16, seed: int = 0,
                       noise: float = 1.0, drop: float = 0.1) -> ContrastiveDigits:
    """Seeded training and held-out subsets of the digits with two augmented views each (see the module doc).

    Args:
        n_train: training images (the units of the contrastive task).
        n_test: held-out images (the targets).
        n_components: principal components kept (the encoder's input dimension).
        seed: seed of the subset and of the augmentations.
        noise: pixel noise standard deviation (0-16 scale).
        drop: pixel drop probability.

    Returns:
        :class:`ContrastiveDigits`.

    Raises:
        InputError: sizes that are not positive or exceed the 1,797 images, ``n_components`` above 64, or
            ``drop`` outside [0, 1).
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    total = len(data.target)
    for name, value in (("n_train", n_train), ("n_test", n_test), ("n_components", n_components)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}.")
    if n_train + n_test > total:
        raise InputError(f"n_train + n_test = {n_train + n_test} exceeds the {total} digits images.")
    if n_components > 64 or n_components > n_train:
        raise InputError(f"n_components must be at most 64 and at most n_train, got {n_components}.")
    if not 0.0 <= drop < 1.0 or not noise >= 0.0:
        raise InputError(f"drop must lie in [0, 1) and noise be non-negative, got drop={drop!r}, noise={noise!r}.")
    rng = np.random.default_rng(check_seed(seed))
    order = rng.permutation(total)
    train, test = order[:n_train], order[n_train:n_train + n_test]
    images = data.images.astype(np.float64)
    views = [augment(images[np.concatenate([train, test])], rng, noise=noise, drop=drop) for _ in range(2)]
    mean = images[train].reshape(n_train, -1).mean(0) / 16.0
    _, singular, axes = np.linalg.svd(images[train].reshape(n_train, -1) / 16.0 - mean, full_matrices=False)
    scale = np.sqrt((singular[:n_components] ** 2).mean() / n_train)

    def features(pixels: np.ndarray) -> torch.Tensor:
        flat = pixels.reshape(len(pixels), -1) / 16.0 - mean
        return torch.as_tensor(flat @ axes[:n_components].T / scale, dtype=torch.float64)

    stacked = torch.stack([features(view) for view in views])
    labels = torch.as_tensor(data.target, dtype=torch.int64)
    return ContrastiveDigits(stacked[:, :n_train], stacked[:, n_train:], features(images[train]),
                             features(images[test]), labels[train], labels[test],
                             torch.as_tensor(train, dtype=torch.int64), torch.as_tensor(test, dtype=torch.int64))
