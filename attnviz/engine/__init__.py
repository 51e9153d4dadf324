"""The run: options -> plan -> decode -> model + hooks -> figures -> atomic writes + manifest.

``options`` is torch-free, so the CLI checks a run's options before torch loads; the
other modules do the work (``pipeline`` for photos and folders, ``video`` for videos,
``compare`` for one figure of several models, ``describe`` for ``attnviz layers``).
"""
