"""Judging models: accuracy overall and per class, size and CPU speed, the report and plots, and a recipe's `expect:`."""
