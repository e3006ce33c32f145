"""``python -m analysis --results results --out reports``."""

import sys

from analysis.make_all import main

sys.exit(main())
