"""XRayViewer: chest radiographs beside a model's prediction and Grad-CAM heatmap.

Research use only. Not a diagnosis.
"""

__version__ = "0.1.0"
APP_NAME = "XRayViewer"
DISCLAIMER = "Research use only — not a diagnosis."
