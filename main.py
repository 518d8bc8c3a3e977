#!/usr/bin/env python3
"""Start XRayViewer from a source checkout: `python main.py` (same as `python -m xrayviewer`)."""

import sys

from xrayviewer.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
