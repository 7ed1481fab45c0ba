"""`python -m refreshd` is the `refreshd` command."""

import sys

from refreshd.cli import main

__all__: list[str] = []

sys.exit(main())
