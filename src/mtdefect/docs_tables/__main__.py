"""``python -m mtdefect.docs_tables README.md``: see the package docstring."""

import sys

from mtdefect.docs_tables import main

sys.exit(main())
