"""The one base error type; each layer derives its own, and the CLI turns any of them
into a single line on stderr and a non-zero exit."""


class StemlinkError(Exception):
    """A failure the user can act on; its message is the whole explanation."""


class AudioFileError(StemlinkError):
    """An audio file could not be read or written."""
