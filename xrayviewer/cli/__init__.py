"""Command line: `python -m xrayviewer [SUBCOMMAND] ...`. No subcommand opens the window.

Each subcommand lives in its own module exposing `add_parser(subparsers)` and `run(args) -> int`, imported only when
used, so `--help` and the GUI start fast. Exit codes: 0 fine, 1 some inputs failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from xrayviewer import APP_NAME, DISCLAIMER, __version__

SUBCOMMANDS = {
    "predict": ("xrayviewer.cli.predict", "classify images; one CSV row per file"),
    "train": ("xrayviewer.cli.train", "fine-tune a classifier head on a folder-per-class dataset"),
    "report": ("xrayviewer.cli.report", "one-page case report (PDF/PNG) for an image"),
    "lungs": ("xrayviewer.cli.lungs", "write the lung-field mask of an image"),
    "audit": ("xrayviewer.cli.audit", "shortcut audit of a model on a dataset"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors: exit 2 with a short message, no traceback
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xrayviewer", description=f"{APP_NAME} {__version__}: chest radiographs beside a model's "
                     f"prediction and Grad-CAM heatmap. {DISCLAIMER}")
    parser.add_argument("--version", action="version", version=f"{APP_NAME} {__version__}")
    parser.add_argument("--open", metavar="PATH", help="open this folder or file in the window")
    parser.add_argument("--select", metavar="FILE", help="with --open: select this file")
    parser.add_argument("--model", metavar="DIR", help="model bundle to use in the window (default: models/default)")
    parser.add_argument("--screenshot", metavar="OUT.png",
                        help="with --open: wait for the prediction and heatmap, save a screenshot of the window, exit")
    parser.add_argument("--install-desktop-entry", action="store_true",
                        help="install a .desktop launcher so the app starts by double-click (Linux)")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=_Parser)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue  # subcommand not built yet
        module.add_parser(sub, name, help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.install_desktop_entry:
        from xrayviewer.desktop_entry import install_desktop_entry

        return install_desktop_entry()
    if args.command:
        module = importlib.import_module(SUBCOMMANDS[args.command][0])
        try:
            return int(module.run(args) or 0)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    if (args.select or args.screenshot) and not args.open:
        parser.error("--select and --screenshot need --open PATH")
    from xrayviewer.ui.app import run_app

    return run_app(args)
