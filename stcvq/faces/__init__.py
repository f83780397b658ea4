"""Faces: dlib detection, landmarks and descriptors (detection), shot cuts (shots), and face tracks
with smoothed square crops (tracks), shared by the crop stage and `stcvq enhance`."""
