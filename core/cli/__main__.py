"""`python -m pupick.core.cli` runs the `pupick` command."""
from . import main

main()
