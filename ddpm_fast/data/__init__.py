"""Training data: an embedded default (scikit-learn's digits, no download), image folders and
MNIST-style IDX files, all as :class:`ImageData` — images in memory, batches in [-1, 1].

Batch positions are a pure function of (seed, step) (:func:`batch_indices`), so a resumed or
multi-process run draws exactly the batches of an uninterrupted single-process run.
"""
from .datasets import ImageData, digits, image_folder, load_dataset, mnist_idx
from .idx import read_idx
from .indices import batch_indices

__all__ = ["ImageData", "digits", "image_folder", "mnist_idx", "load_dataset", "read_idx",
           "batch_indices"]
