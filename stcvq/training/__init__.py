"""Training: one loop for both stages (loop.py), its batch sources, evaluations and the two objectives."""
