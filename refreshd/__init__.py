"""refreshd: a per-user OpenPGP key manager for email."""

__version__ = "0.1.0"
