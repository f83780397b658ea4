"""The published BFVR-STC checkpoints: their download and their import as stcvq models."""
