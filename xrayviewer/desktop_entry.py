"""`python -m xrayviewer --install-desktop-entry`: a launcher in the desktop's application menu (Linux, per user).

Writes $XDG_DATA_HOME/applications/xrayviewer.desktop from resources/xrayviewer.desktop, with Exec pointing at this
very Python (so the app starts from its virtual environment), and the icon into the user's hicolor theme.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from xrayviewer.paths import RESOURCES_DIR

DESKTOP_FILE = "xrayviewer.desktop"
ICON_FILE = "xrayviewer.svg"


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def desktop_entry_text(python: str | None = None, icon: str = "xrayviewer") -> str:
    """The template with Exec set to `<python> -m xrayviewer` (quoted per the Desktop Entry spec) and Icon set."""
    python = python or sys.executable
    exec_line = f'Exec="{python}" -m xrayviewer'
    lines = []
    for line in (RESOURCES_DIR / DESKTOP_FILE).read_text(encoding="utf-8").splitlines():
        if line.startswith("Exec="):
            line = exec_line
        elif line.startswith("Icon="):
            line = f"Icon={icon}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def install_desktop_entry() -> int:
    """Install the launcher and icon for the current user. 0 on success; 1 with the reason on stderr otherwise."""
    if not sys.platform.startswith("linux"):
        print("--install-desktop-entry is for Linux desktops; on this system start the app with "
              "`python -m xrayviewer`.", file=sys.stderr)
        return 1
    data = _data_home()
    apps = data / "applications"
    icon_dir = data / "icons" / "hicolor" / "scalable" / "apps"
    try:
        apps.mkdir(parents=True, exist_ok=True)
        icon_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(RESOURCES_DIR / ICON_FILE, icon_dir / ICON_FILE)
        target = apps / DESKTOP_FILE
        tmp = target.with_suffix(".tmp")
        tmp.write_text(desktop_entry_text(icon=str(icon_dir / ICON_FILE)), encoding="utf-8")
        tmp.chmod(0o755)
        tmp.replace(target)
    except OSError as exc:
        print(f"could not install the desktop entry in {apps}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if shutil.which("update-desktop-database"):  # refreshes menus on desktops that cache them; optional
        subprocess.run(["update-desktop-database", str(apps)], capture_output=True, check=False)
    print(f"installed {target}\n  icon {icon_dir / ICON_FILE}\nXRayViewer is now in your applications menu.")
    return 0
