"""Colours the widgets share beyond the palette (ui/app.py dark_palette): one place, so the dark theme stays legible."""

ERROR_TEXT = "#ff8a80"     # warnings and failures: light red, readable on the dark window and base colours
