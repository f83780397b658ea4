"""Faces: dlib detection, landmarks and descriptors (detection.py)."""
