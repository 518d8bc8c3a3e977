"""Thin Qt layer: views, models, dialogs. Never calls TensorFlow on the GUI thread."""
