"""The package imports fast and without TensorFlow or Qt in the cores; the CLI answers --help."""

import subprocess
import sys


def test_cores_import_without_tensorflow_or_qt():
    code = ("import sys, xrayviewer.imaging, xrayviewer.model.backbone, xrayviewer.model.architecture, "
            "xrayviewer.results, xrayviewer.paths, xrayviewer.cli; "
            "bad=[m for m in ('tensorflow','keras','PySide6') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_help_lists_subcommands():
    proc = subprocess.run([sys.executable, "-m", "xrayviewer", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert "Research use only" in proc.stdout


def test_usage_error_exits_2():
    proc = subprocess.run([sys.executable, "-m", "xrayviewer", "--select", "x.png"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
