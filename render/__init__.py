"""Domain-randomized synthetic training data: offscreen rendering (pyrender + EGL), TFRecord shards, reader, preview.

Importing this package selects EGL for PyOpenGL (``os.environ.setdefault``) so offscreen rendering works headless
without the user setting ``PYOPENGL_PLATFORM``. Nothing here imports TensorFlow at import time: render workers never
load TF (a process holding both an EGL context and TF can abort at exit).
"""

import os

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
