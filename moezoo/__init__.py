"""moezoo: a PyTorch Lightning zoo of Mixture-of-Experts models."""

__version__ = "0.1.0"
