"""Experiments: typed configs, runs and run folders, grids, reports and comparisons."""
