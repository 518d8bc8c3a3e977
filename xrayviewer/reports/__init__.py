"""Results and exports without Qt: folder-run summaries, ground truth lookup, case reports, heatmap PNGs.

Submodules are imported directly (`xrayviewer.reports.case_report` pulls in matplotlib; the others stay light).
"""
