"""stcvq: video face enhancement and de-flickering with a spatial-temporal VQGAN.

The library knows nothing about DVC or params.yaml: the scripts in ``pipeline/`` read the
parameters and call into it with typed configs.
"""

import os

# Transparent huge pages for torch's large CPU allocations (torch reads this once, at its first
# allocation, so it must be set before torch is imported). A fresh multi-GB feature map is
# otherwise first touched 4 KiB page by page: 3x slower at 512^2 inference. "0" turns it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
