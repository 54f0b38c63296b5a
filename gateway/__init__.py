"""OAuth 2.0 resource-server gateway."""

__version__ = "0.1.0"
