from stemlink.errors import StemlinkError


class EngineError(StemlinkError):
    """The model, its card or an inference backend cannot be used."""


class ModelCardError(EngineError):
    """A model folder is missing, incomplete, corrupt or inconsistent with its card."""
