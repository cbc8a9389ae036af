"""``python -m ntkcli ...`` is ``ntk ...``."""

import sys

from .main import main

sys.exit(main())
