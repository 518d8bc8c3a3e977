"""`python -m xrayviewer`, `python main.py` and the `xrayviewer` gui-script all start here."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from xrayviewer.cli import main as cli_main

    code = cli_main(argv)
    workers = sys.modules.get("xrayviewer.ui.workers")    # imported only when the window ran
    if workers is not None:
        workers.exit_now_if_work_lingers(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
