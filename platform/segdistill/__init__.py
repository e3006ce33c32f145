"""segdistill: knowledge distillation for semantic segmentation, built around HWD.

The core (``config``, ``losses``, ``models``, ``data``, ``metrics``, ``train``) is plain PyTorch and
never imports Ray; ``segdistill.study`` wraps it for Ray Train / Tune.
"""

__version__ = "0.1.0"
