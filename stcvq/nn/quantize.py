"""Vector quantisation with a straight-through estimator and codebook-usage regularisers.

``VectorQuantizer(z) -> (quantized, indices, loss)`` for latents shaped (B, D, t, h, w);
indices are (B, t, h, w) in the same order as the latent grid (flattened batch-major, so
batch > 1 keeps each clip's codes with its clip).

Regularisers (the paper's section on codebook collapse, Eq. 6):
``none``  nothing beyond the VQ loss.
``pdr``   prior distribution regularisation: KL(one-hot usage marginal || uniform). One-hot
          counts have no gradient, so the backward pass uses the similarity marginal below
          (straight-through: forward value = counts, gradient = soft marginal's).
``mpr``   marginal prior regularisation (Eq. 6): D_E = Euclidean token-code distances,
          s = row-normalise(1 / (D_E + eps) ** power), P_post = mean of s over all tokens,
          L_KL = KL(P_post || U) = sum_n p_n log(p_n * N). Differentiable in both the latents
          (so the encoder and, for the temporal codebook, TA get gradient) and the codes.
          ``power`` = 1 is Eq. 6 as printed. With hundreds of codes the inverse distances are
          nearly flat (nearest vs farthest code within a factor of a few), so P_post can stay
          close to uniform while the argmin usage collapses (benchmarks/bench_mpr_sharpness.py).
          A larger power sharpens s towards the argmin assignment. How much each choice raises
          codebook use, by init (``normal`` vs VQGAN's ``uniform``): docs/results.md, "Codebook use".
Under DDP the marginal is summed over all processes, so the regulariser is that of the global
batch (and a two-process run matches a one-process run with the same global batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .runtime import no_autocast

Regularizer = Literal["none", "pdr", "mpr"]
CodebookInit = Literal["uniform", "normal"]


@dataclass
class QuantizeResult:
    quantized: torch.Tensor  # (B, D, t, h, w), straight-through: forward = codes, grad -> z
    indices: torch.Tensor  # (B, t, h, w) int64
    loss: torch.Tensor  # codebook + beta * commitment + reg_weight * regulariser
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # detached parts, for logs


def _global_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over DDP processes whose gradient flows into this process's share.

    Value: the global sum. Gradient: ``world_size`` x the local one, because DDP *averages*
    gradients over processes while the global sum's true gradient is their *sum*. No collective
    runs in the backward pass, and none at all without grad (evaluation runs on one process)."""
    if not (torch.is_grad_enabled() and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return x
    world = dist.get_world_size()
    total = x.detach().clone()
    dist.all_reduce(total)
    scaled = x * world
    return scaled + (total - scaled.detach())


def kl_to_uniform(p: torch.Tensor, eps: float) -> torch.Tensor:
    """KL(p || uniform over len(p)) = sum p log(p N); ``eps`` floors p N inside the log (log 0)."""
    return (p * torch.log((p * p.numel()).clamp_min(eps))).sum()


def marginal_similarity(distances: torch.Tensor, eps: float, power: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6: summed row-normalised inverse distances (to ``power``) and the token count (both DDP-global)."""
    # softmax of -power * log(D + eps) == row-normalise((D + eps) ** -power), without overflow at large powers
    s = torch.softmax(-power * torch.log(distances + eps), dim=1)
    total = _global_sum(s.sum(dim=0))
    count = _global_sum(torch.tensor(float(distances.shape[0]), device=distances.device))
    return total, count


def codebook_stats(indices: torch.Tensor, num_codes: int) -> dict[str, float]:
    """Fraction of codes used and perplexity (exp entropy of the usage histogram)."""
    counts = torch.bincount(indices.flatten().cpu(), minlength=num_codes).double()
    p = counts / counts.sum().clamp_min(1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return {"usage": float((counts > 0).sum().item() / num_codes), "perplexity": math.exp(entropy)}


class VectorQuantizer(nn.Module):
    def __init__(
        self,
        num_codes: int,
        dim: int,
        beta: float = 0.25,
        regularizer: Regularizer = "none",
        reg_weight: float = 1.0,
        reg_eps: float = 1e-6,
        reg_power: float = 1.0,
        init: CodebookInit = "uniform",
        init_std: float = 0.1,
    ):
        super().__init__()
        if regularizer not in ("none", "pdr", "mpr"):
            raise ValueError(f"unknown regularizer {regularizer!r}; expected none, pdr or mpr")
        if init not in ("uniform", "normal"):
            raise ValueError(f"unknown codebook init {init!r}; expected uniform or normal")
        self.num_codes = num_codes
        self.dim = dim
        self.beta = beta
        self.regularizer = regularizer
        self.reg_weight = reg_weight
        self.reg_eps = reg_eps
        self.reg_power = reg_power
        self.codebook = nn.Embedding(num_codes, dim)
        if init == "uniform":  # VQGAN's (the reference code's): every code within 1/N of the origin
            nn.init.uniform_(self.codebook.weight, -1.0 / num_codes, 1.0 / num_codes)
        else:  # spread at about the latents' scale
            nn.init.normal_(self.codebook.weight, 0.0, init_std)

    def distances(self, z_flat: torch.Tensor) -> torch.Tensor:
        """Euclidean distances (tokens x codes), in float32 even under autocast."""
        codes = self.codebook.weight.float()
        sq = z_flat.pow(2).sum(1, keepdim=True) - 2 * z_flat @ codes.t() + codes.pow(2).sum(1)[None]
        return sq.clamp_min(0).add(self.reg_eps).sqrt()

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes for (B, t, h, w) indices as a (B, D, t, h, w) latent."""
        return self.codebook(indices).permute(0, 4, 1, 2, 3).contiguous()

    def regularizer_loss(self, distances: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        if self.regularizer == "none":
            return distances.new_zeros(())
        total, count = marginal_similarity(distances, self.reg_eps, self.reg_power)
        p_soft = total / count
        if self.regularizer == "mpr":
            return kl_to_uniform(p_soft, self.reg_eps)
        counts = _global_sum(torch.bincount(indices, minlength=self.num_codes).float())
        p_hard = counts / count
        p = p_hard + p_soft - p_soft.detach()  # pdr: forward one-hot counts, soft gradient
        return kl_to_uniform(p, self.reg_eps)

    def quantize(self, z: torch.Tensor) -> QuantizeResult:
        b, d, t, h, w = z.shape
        if d != self.dim:
            raise ValueError(f"latent has {d} channels, codebook dim is {self.dim}")
        with no_autocast(z.device):
            z32 = z.float()
            z_flat = z32.permute(0, 2, 3, 4, 1).reshape(-1, d)
            dist_ = self.distances(z_flat)
            flat_indices = dist_.argmin(dim=1)
            z_q_flat = self.codebook(flat_indices).float()
            codebook_loss = F.mse_loss(z_q_flat, z_flat.detach())
            commitment = F.mse_loss(z_flat, z_q_flat.detach())
            reg = self.regularizer_loss(dist_, flat_indices)
            loss = codebook_loss + self.beta * commitment + self.reg_weight * reg
        z_q = z_q_flat.reshape(b, t, h, w, d).permute(0, 4, 1, 2, 3)
        quantized = (z32 + (z_q - z32).detach()).to(z.dtype)  # straight-through estimator
        terms = {"codebook": codebook_loss.detach(), "commitment": commitment.detach(), "reg": reg.detach()}
        return QuantizeResult(quantized, flat_indices.reshape(b, t, h, w), loss, terms)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r = self.quantize(z)
        return r.quantized, r.indices, r.loss
