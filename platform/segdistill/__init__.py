"""segdistill: knowledge distillation for semantic segmentation, built around HWD.

The core (``config``, ``losses``, ``models``, ``data``, ``metrics``, ``train``) is plain PyTorch and
never imports Ray; ``segdistill.study`` wraps it for Ray Train / Tune.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``from segdistill import METHODS``: the distillation-method registry, imported on first use
    so that ``import segdistill`` stays light (PEP 562)."""
    if name == "METHODS":
        from .losses import METHODS

        return METHODS
    raise AttributeError(f"module 'segdistill' has no attribute {name!r}")
