"""The one path from image bytes to answers, shared by evaluation and the service.

Nothing in this package imports Lightning, the data pipeline or training code.
"""

from mtdefect.inference.decode import DecodeError, DecodeLimits, decode_image
from mtdefect.inference.postprocess import Prediction, Region, postprocess
from mtdefect.inference.predictor import Predictor
from mtdefect.inference.settings import ModelSettings, PostprocessSettings, PreprocessSettings

__all__ = [
    "DecodeError",
    "DecodeLimits",
    "decode_image",
    "ModelSettings",
    "PostprocessSettings",
    "PreprocessSettings",
    "Prediction",
    "Predictor",
    "Region",
    "postprocess",
]
