"""Evaluation and reporting for the painting classifier (style/genre/artist): metrics, embedding
outliers, plots and a self-contained HTML report. Pure Python (numpy/sklearn/matplotlib/PIL), no Ray."""
