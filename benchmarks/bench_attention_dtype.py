"""Why bf16 enhancement is not 2x float32 on this CPU: the attention kernel.

    .venv/bin/python benchmarks/bench_attention_dtype.py [--tokens 4096] [--heads 2] [--head-dim 128] [--batch 12]

Times torch's fused scaled_dot_product_attention on the paper profile's Stage II shape at
512^2 (12 latent frames of 64x64 = 4096 tokens, width 256 in 2 heads; the lookup transformers
attend within each frame) in float32 and bf16, with the same-dtype GEMM measured in the same run
(:func:`stcvq.inference.bench.gemm_flops_per_s`). Prints one JSON object: GFLOP/s of each, and the bf16
over float32 speed-up of each. Attention is about a quarter of the paper profile's FLOPs, so if
it does not speed up in bf16, neither can the whole model by 2x.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stcvq.inference.bench import gemm_flops_per_s  # noqa: E402


def attention_flops_per_s(dtype: torch.dtype, batch: int, heads: int, tokens: int, head_dim: int,
                          repeats: int = 2) -> float:
    """Best-of-``repeats`` FLOP/s of SDPA (QK^T and AV: 4 * B * heads * L^2 * d FLOPs)."""
    q, k, v = (torch.randn(batch, heads, tokens, head_dim).to(dtype) for _ in range(3))
    with torch.inference_mode():
        F.scaled_dot_product_attention(q, k, v)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            F.scaled_dot_product_attention(q, k, v)
            best = min(best, time.perf_counter() - start)
    return 4 * batch * heads * tokens**2 * head_dim / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=12)
    a = parser.parse_args()
    result = {"threads": torch.get_num_threads(), "shape": [a.batch, a.heads, a.tokens, a.head_dim]}
    for name, dtype in (("float32", torch.float32), ("bf16", torch.bfloat16)):
        result[f"attention_gflops_{name}"] = attention_flops_per_s(dtype, a.batch, a.heads, a.tokens, a.head_dim) / 1e9
        result[f"gemm_gflops_{name}"] = gemm_flops_per_s(name, "cpu") / 1e9
    result["attention_bf16_speedup"] = result["attention_gflops_bf16"] / result["attention_gflops_float32"]
    result["gemm_bf16_speedup"] = result["gemm_gflops_bf16"] / result["gemm_gflops_float32"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
