"""python -m rnnkit -> the `rnnkit` command."""

import sys

from rnnkit._entry import main

sys.exit(main())
