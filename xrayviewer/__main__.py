"""`python -m xrayviewer`, `python main.py` and the `xrayviewer` gui-script all start here."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from xrayviewer.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
