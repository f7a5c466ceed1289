"""``python -m tladapt``: the ``tladapt`` command (also what ``torchrun -m tladapt run ...`` starts)."""

import sys

from tladapt.cli import main

sys.exit(main())
