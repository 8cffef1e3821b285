"""FCFI interactive segmentation: networks, checkpoints and the click predictor.

This package knows nothing of Label Studio.

>>> from model import build_model, FCFIPredictor, Click
>>> predictor = FCFIPredictor(build_model("lite0"))
>>> predictor.set_image(rgb)                       # HxWx3 uint8
>>> probs, state = predictor.predict([Click(120, 80, True)])
>>> probs, state = predictor.predict([Click(120, 80, True), Click(40, 60, False)], state)
"""

from model.builder import ARCHS, build_model
from model.checkpoint import CheckpointError, default_checkpoint_path, load_checkpoint, save_checkpoint
from model.clicks import Click
from model.predictor import FCFIPredictor, PredictorOptions, PredictorState

__all__ = [
    "ARCHS",
    "CheckpointError",
    "Click",
    "FCFIPredictor",
    "PredictorOptions",
    "PredictorState",
    "build_model",
    "default_checkpoint_path",
    "load_checkpoint",
    "save_checkpoint",
]
