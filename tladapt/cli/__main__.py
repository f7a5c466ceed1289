"""``python -m tladapt.cli``: the ``tladapt`` command."""

import sys

from tladapt.cli import main

sys.exit(main())
