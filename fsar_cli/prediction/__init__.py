"""Prediction on new videos: support examples (or enrolled ``.fsarc`` classes) -> labels.

:func:`.predictor.predict` (also ``fsar_cli.predict``) is the library verb behind ``fsar predict``;
:mod:`.classes_file` is the enrolled-classes format, :mod:`.spotting` the sliding windows. The
package is not named ``predict`` so that ``fsar_cli.predict`` stays the function.
"""
