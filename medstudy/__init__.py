"""medstudy: does self-supervised pretraining beat supervised natural-image pretraining and
training from scratch for medical image classification?

The package is small and shared by the notebooks in ``notebooks/``; see ``README.md``.
"""

__version__ = "0.1.0"
