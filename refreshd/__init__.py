"""refreshd: a per-user OpenPGP key manager for email."""

__all__: list[str] = []

__version__ = "0.1.0"
