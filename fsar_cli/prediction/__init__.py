"""Prediction on new videos: support examples (or enrolled ``.fsarc`` classes) -> labels.

:func:`predict` (also ``fsar_cli.predict``) is the library verb behind ``fsar predict``
(:mod:`.predictor`). The package is not named ``predict`` so that ``fsar_cli.predict`` stays the
function.
"""

from .classes_file import EnrolledClasses, load_classes
from .predictor import PREDICT_COLUMNS, Predictor, enroll, predict

__all__ = ["predict", "enroll", "Predictor", "EnrolledClasses", "load_classes", "PREDICT_COLUMNS"]
