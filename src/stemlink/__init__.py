"""stemlink: real-time music stem separation on a LAN."""

__version__ = "0.1.0"
