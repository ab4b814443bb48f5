"""`python -m clipseg_drywall.report PHOTOS... --model M --output REPORT_DIR` (see `command`)."""

import sys

from .command import main

sys.exit(main())
