"""``python -m ddpm_fast train | sample | demo`` (see ddpm_fast/cli.py)."""
import sys

from .cli import main

sys.exit(main())
