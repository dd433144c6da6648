from stemlink.errors import StemlinkError


class ExportError(StemlinkError):
    """The model could not be exported or failed its verification."""
