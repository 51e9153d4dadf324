"""Scoring maps against object boxes (``attnviz eval``): the scores themselves in
``localization`` (numpy and OpenCV only), the run over a boxed folder in ``evaluate``."""
