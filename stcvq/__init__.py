"""stcvq: video face enhancement and de-flickering with a spatial-temporal VQGAN.

The library knows nothing about DVC or params.yaml: the scripts in ``pipeline/`` read the
parameters and call into it with typed configs.
"""

__version__ = "0.1.0"
