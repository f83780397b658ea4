"""Frames in and out: video probing, streaming decode and encode, frame tensors, exact resizing."""
