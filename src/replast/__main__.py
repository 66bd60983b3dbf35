"""`python -m replast ...` is the `replast` command."""

import sys

from replast.cli import main

sys.exit(main())
