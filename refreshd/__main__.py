"""`python -m refreshd` is the `refreshd` command."""

import sys

from refreshd.cli import main

sys.exit(main())
