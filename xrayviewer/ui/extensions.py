"""Modules that add menus/panels to the main window. Each has `install(window)`; a missing one is skipped."""

EXTENSION_MODULES = (
    "xrayviewer.ui.results_view",      # Classify folder, results table, exports (issue 7)
    "xrayviewer.ui.training_dialog",   # Train… and the models manager (issue 5)
    "xrayviewer.ui.audit_dialog",      # Model › Audit…: shortcut audit (issue 6)
)


def install_extensions(window) -> list[str]:
    """Install every available extension; returns the names installed."""
    import importlib
    import logging

    installed = []
    for name in EXTENSION_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            if exc.name != name:  # a real import error inside the module: say so, don't hide it
                logging.getLogger(__name__).exception("extension %s failed to import", name)
            continue
        module.install(window)
        installed.append(name)
    return installed
