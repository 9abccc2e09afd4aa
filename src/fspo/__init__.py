"""fspo: Few-Shot Preference Optimization (arXiv 2502.19312) for personalizing language models."""

__version__ = "0.1.0"
