"""Inference: streaming enhancement of any video (enhance.py) and its cost (bench.py)."""
