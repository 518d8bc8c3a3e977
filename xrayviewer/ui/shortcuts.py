"""Every keyboard shortcut of the window in one table: the actions are built from it and Help › Shortcuts lists it.

View keys follow OHIF's defaults (= fit, +/- zoom, r/l rotate, h/v flip, i invert, space reset), so a radiologist's
hands already know them.
"""

from __future__ import annotations

# action id -> (menu text, shortcuts, group shown in Help › Shortcuts)
SHORTCUTS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "open_folder": ("Open &folder…", ("Ctrl+O",), "Files"),
    "open_file": ("Open f&ile…", ("Ctrl+Shift+O",), "Files"),
    "quit": ("&Quit", ("Ctrl+Q",), "Files"),
    "next": ("&Next image", ("Right", "J", "PgDown"), "Browse"),
    "previous": ("&Previous image", ("Left", "K", "PgUp"), "Browse"),
    "first": ("&First image", ("Home",), "Browse"),
    "last": ("&Last image", ("End",), "Browse"),
    "fit": ("&Fit to window", ("=",), "View"),
    "actual_size": ("&1:1 (actual pixels)", ("1",), "View"),
    "zoom_in": ("Zoom &in", ("+", "Ctrl++"), "View"),
    "zoom_out": ("Zoom &out", ("-", "Ctrl+-"), "View"),
    "invert": ("&Invert", ("I",), "View"),
    "reset": ("&Reset view and window/level", ("Space",), "View"),
    "rotate_right": ("Rotate &right", ("R",), "View"),
    "rotate_left": ("Rotate &left", ("L",), "View"),
    "flip_h": ("Flip &horizontally", ("H",), "View"),
    "flip_v": ("Flip &vertically", ("V",), "View"),
    "overlay": ("&Overlay heatmap on one image", ("O",), "Heatmap"),
    "heatmap": ("Show &heatmap", ("C",), "Heatmap"),
    "opacity_up": ("Heatmap more opaque", ("]",), "Heatmap"),
    "opacity_down": ("Heatmap more transparent", ("[",), "Heatmap"),
    "lung_outline": ("Lung &outline", ("U",), "Heatmap"),
    "lungs_only": ("Heatmap only inside the &lungs", ("Shift+U",), "Heatmap"),
    "shortcuts": ("&Keyboard shortcuts", ("F1", "?"), "Help"),
}

MOUSE = [
    ("Wheel", "zoom around the pointer"),
    ("Left drag", "pan (both panes follow)"),
    ("Right drag", "window / level: left-right = width, up-down = level"),
    ("Double click", "fit to window"),
]
