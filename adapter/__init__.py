"""userli-postfix-adapter: Postfix lookup tables served from the userli account API."""

__version__ = "0.1.0"
