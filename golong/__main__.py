"""`python -m golong ...` (what torchrun runs) is the `golong` command."""
import sys

from golong.cli import main

sys.exit(main())
