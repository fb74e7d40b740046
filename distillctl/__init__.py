"""distillctl: knowledge distillation and compression of image classifiers, driven by Hydra recipes."""

__version__ = "0.1.0"

import time as _time

# Process start, near enough: the package is imported first thing. Training reports its start-up against it.
STARTED = _time.perf_counter()
