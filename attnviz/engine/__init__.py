"""The run, one way: options -> plan -> runner -> outputs.

``options`` (torch-free, so the CLI checks a run's options before torch loads) holds what
a run was asked for; ``plan`` what it will do (the inputs to process, the settings that
key their outputs, the report to summary and manifest); ``runner`` the forward passes
with their hooks (and the thread policy); ``outputs`` what each photo leaves behind, drawn
by ``figures``. ``pipeline.run`` puts these in order for photos and folders, ``video`` for
videos; ``compare`` draws one figure of several models, ``describe`` lists a model's layers
(``attnviz layers``), ``gradcam`` is the baseline map and ``stopping`` turns Ctrl-C and
SIGTERM into a clean stop.
"""
