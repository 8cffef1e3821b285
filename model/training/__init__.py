"""Training FCFI networks: the recipe (``python -m model.training.train``), its data, step and validation split, and
the fine-tuning the fit job runs (:mod:`model.training.finetune`).

Imports only downwards into the library (:mod:`model`) and sideways into :mod:`model.evaluation` (its dataset
readers, for the leak guard); nothing in the library or in evaluation imports training.
"""

from model.training.data import TrainImage
from model.training.finetune import PARTS, FineTuneConfig, fine_tune, min_object_pixels, training_image

#: What the fit job (``backend.learning.job``) and the settings use: fine-tuning a network on a few annotated images.
__all__ = ["PARTS", "FineTuneConfig", "TrainImage", "fine_tune", "min_object_pixels", "training_image"]
