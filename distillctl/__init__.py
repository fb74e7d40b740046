"""distillctl: knowledge distillation and compression of image classifiers, driven by Hydra recipes."""

__version__ = "0.1.0"
