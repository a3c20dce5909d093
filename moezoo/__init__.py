"""moezoo: a PyTorch Lightning zoo of Mixture-of-Experts models."""

__version__ = "0.1.0"


def create_model(name: str, pretrained: bool = True):
    """The task model of the registered weights ``name`` (see ``moezoo weights``), as timm's ``create_model``: with
    ``pretrained`` its weights, downloaded into the Hugging Face cache and checked by sha256; without, the same
    architecture freshly initialised. ``moezoo.weights`` holds the registry."""
    from moezoo.weights import create_model as create

    return create(name, pretrained=pretrained)
