"""Offline sample-quality metrics (no download): a small CNN classifier trained on the real
16x16 digits; Fréchet distance in its feature space and mean max-class confidence."""
from .digits import DigitsClassifier, DigitsMetric, digits_quality, train_digits_classifier
from .frechet import frechet_distance, gaussian_stats

__all__ = ["DigitsClassifier", "DigitsMetric", "train_digits_classifier", "digits_quality",
           "frechet_distance", "gaussian_stats"]
