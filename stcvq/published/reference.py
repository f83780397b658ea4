"""The published BFVR-STC checkpoints as stcvq models.

The paper's authors publish three trained Stage II models (their ``CodeFormer3D``: BFVR,
brightness de-flicker, pixel de-flicker) and train them on a Stage I ``VQAutoEncoder3D``.
:func:`import_checkpoint` turns such a file into a normal stcvq model folder, so ``stcvq
enhance``, evaluation and the pipeline run the paper's real weights.

The weights were trained with the reference code's layout, so stcvq builds that layout when a
config says ``layout="reference"`` (like diffusers' VQ ``legacy`` flag, it exists only to
compute what someone else's weights were trained to compute). What differs from stcvq's own
models:

- input in [0, 1] as it is (stcvq centres it on zero), output through a sigmoid;
- the spatio-temporal downsample zero-pads the end of T, H and W and convolves unpadded; the
  spatial downsamples have (1, 3, 3) kernels;
- no activation between the last GroupNorm and conv of the encoder and of the decoder;
- the decoder's two lowest levels both run at the latent resolution, both with attention; its
  temporal upsample comes last, at full resolution;
- TA has GroupNorm with 16 groups and no residual add;
- Stage II's temporal input adds a motion residual over memory rows, not along time
  (:func:`stcvq.nn.temporal.reference_stage2_residual`); Stage I's is along time;
- the lookup transformers read the latent itself as tokens (no input projection), add their
  spatial position table to the queries and keys of every layer, and have a logits head
  without bias.

Stored but never used by the reference forward pass, so dropped: ``s_feat_emb``,
``t_feat_emb`` and ``fuse_convs_dict.*`` (CodeFormer's fidelity fusion blocks).

Loading never unpickles code: ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from stcvq.io import atomic_folder
from stcvq.nn.autoencoder import Encoder3d
from stcvq.nn.blocks import Downsample3d, ResBlock3d, SelfAttention3d, Upsample3d
from stcvq.nn.lookup import LookupTransformer
from stcvq.nn.restorer import PROFILES, Stage2Config, Stage2Model
from stcvq.nn.vqgan import Stage1Config, Stage1Model
from stcvq.tasks import check_task

# Reference keys stored in the published files that their forward pass never reads.
UNUSED_PREFIXES = ("s_feat_emb.", "t_feat_emb.", "fuse_convs_dict.")


class ReferenceCheckpointError(ValueError):
    """A file is not a reference checkpoint of the expected layout (the message names it)."""


# ---------------------------------------------------------------------------------------------
# The published networks: the "reference" profile (stcvq.nn.restorer.PROFILES)


def stage1_config() -> Stage1Config:
    """The published Stage I (VQAutoEncoder3D): nf 32, [1, 2, 4, 8], 2 blocks, D 256, 1024 + 1024 codes."""
    return PROFILES["reference"].stage1()


# ---------------------------------------------------------------------------------------------
# Key mapping: which reference tensors make each stcvq parameter


@dataclass(frozen=True)
class KeyRule:
    """stcvq parameter ``target`` = ``combine`` of the reference tensors ``sources``."""

    target: str
    sources: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]  # each source's shape in the reference layout
    combine: Callable[[list[torch.Tensor]], torch.Tensor]


def _same(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0]


def _concat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(tensors, dim=0)


def _autoencoder_blocks(net: nn.Module) -> list[nn.Module]:
    """The modules of an Encoder3d / Decoder3d in the order of the reference ``blocks`` list."""
    levels = []
    for level in net.levels:
        for block, attn in zip(level.blocks, level.attns):
            levels += [block, attn]
        levels.append(level.down if isinstance(net, Encoder3d) else level.up)
    mid = list(net.mid)
    if isinstance(net, Encoder3d):
        order = [net.conv_in, *levels, *mid, net.norm_out, net.conv_out]
    else:
        order = [net.conv_in, *mid, *levels, net.norm_out, net.conv_out]
    return [m for m in order if not isinstance(m, nn.Identity)]


def _module_rules(module: nn.Module, target: str, source: str) -> list[KeyRule]:
    """Rules for one module's parameters: stcvq names under ``target``, reference under ``source``."""
    params = dict(module.named_parameters())
    if isinstance(module, SelfAttention3d):
        names = {"norm.weight": "norm.weight", "norm.bias": "norm.bias", "proj.weight": "proj_out.weight",
                 "proj.bias": "proj_out.bias"}
        rules = [_rule(f"{target}.{ours}", f"{source}.{theirs}", params[ours]) for ours, theirs in names.items()]
        for kind in ("weight", "bias"):  # their q, k, v convs are our one qkv conv
            parts = params[f"qkv.{kind}"].chunk(3, dim=0)
            rules.append(KeyRule(f"{target}.qkv.{kind}", tuple(f"{source}.{n}.{kind}" for n in "qkv"),
                                 tuple(tuple(p.shape) for p in parts), _concat))
        return rules
    rename = {"skip.": "conv_out."} if isinstance(module, ResBlock3d) else {}
    rules = []
    for name, param in params.items():
        theirs = name
        for ours_prefix, their_prefix in rename.items():
            if name.startswith(ours_prefix):
                theirs = their_prefix + name[len(ours_prefix):]
        rules.append(_rule(f"{target}.{name}", f"{source}.{theirs}", param))
    return rules


def _rule(target: str, source: str, param: torch.Tensor) -> KeyRule:
    return KeyRule(target, (source,), (tuple(param.shape),), _same)


def _named(root: nn.Module, module: nn.Module) -> str:
    for name, m in root.named_modules():
        if m is module:
            return name
    raise KeyError(module)


def stage1_rules(vqgan: Stage1Model, prefix: str = "") -> list[KeyRule]:
    """Rules from a reference VQAutoEncoder3D state dict (encoder, quantize, generator) to ``vqgan``."""
    if vqgan.config.layout != "reference":
        raise ValueError("only a Stage I model with layout='reference' computes "
                         "the reference checkpoints' forward pass")
    rules = []
    for net, theirs in ((vqgan.encoder, "encoder"), (vqgan.decoder, "generator")):
        for i, module in enumerate(_autoencoder_blocks(net)):
            if isinstance(module, (ResBlock3d, SelfAttention3d, Downsample3d, Upsample3d, nn.Conv3d, nn.GroupNorm)):
                rules += _module_rules(module, f"{prefix}{_named(vqgan, module)}", f"{theirs}.blocks.{i}")
            else:
                raise TypeError(f"no reference mapping for {type(module).__name__}")
    rules += _module_rules(vqgan.temporal.attention.attn, f"{prefix}temporal.attention.attn", "quantize.SA")
    for ours, theirs in (("spatial_codebook", "embedding_s"), ("temporal_codebook", "embedding_t")):
        rules.append(_rule(f"{prefix}{ours}.codebook.weight", f"quantize.{theirs}.weight",
                           getattr(vqgan, ours).codebook.weight))
    return rules


def _transformer_rules(transformer: LookupTransformer, target: str, branch: str) -> list[KeyRule]:
    """``branch`` "s" or "t": their s_/t_ transformer and position table."""
    grid = transformer.spatial_position.shape[1:]  # (h*w, width); theirs is stored without the batch axis
    rules = [KeyRule(f"{target}.spatial_position", (f"position_emb_{branch}",), (tuple(grid),),
                     lambda tensors: tensors[0].unsqueeze(0))]
    names = {"norm1": "norm1", "norm2": "norm2", "qkv": "self_attn.in_proj", "proj": "self_attn.out_proj",
             "mlp.0": "linear1", "mlp.3": "linear2"}
    for i, block in enumerate(transformer.blocks):
        for name, param in block.named_parameters():
            module, kind = name.rsplit(".", 1)
            theirs = names[module]
            # MultiheadAttention names its packed q/k/v projection in_proj_weight / in_proj_bias
            key = f"{theirs}_{kind}" if theirs.endswith("in_proj") else f"{theirs}.{kind}"
            rules.append(_rule(f"{target}.blocks.{i}.{name}", f"{branch}_ft_layers.{i}.{key}", param))
    for name, param in transformer.norm_out.named_parameters():
        rules.append(_rule(f"{target}.norm_out.{name}", f"{branch}_idx_pred_layer.0.{name}", param))
    rules.append(_rule(f"{target}.head.weight", f"{branch}_idx_pred_layer.1.weight", transformer.head.weight))
    return rules


def stage2_rules(model: Stage2Model) -> list[KeyRule]:
    """Rules from a reference CodeFormer3D state dict to ``model`` (every stcvq parameter)."""
    return (stage1_rules(model.vqgan, "vqgan.")
            + _transformer_rules(model.spatial_transformer, "spatial_transformer", "s")
            + _transformer_rules(model.temporal_transformer, "temporal_transformer", "t"))


def expected_layout(rules: list[KeyRule]) -> dict[str, tuple[int, ...]]:
    """Reference key -> shape of every tensor the forward pass reads."""
    return {key: shape for rule in rules for key, shape in zip(rule.sources, rule.shapes)}


# ---------------------------------------------------------------------------------------------
# Reading and checking a checkpoint


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict in ``path`` (its ``params_ema`` entry, else ``params``) and the entry's name.

    ``weights_only=True``: a file holding anything but tensors and plain containers is refused
    rather than unpickled."""
    path = Path(path)
    if not path.is_file():
        raise ReferenceCheckpointError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):  # torch.save's zip, or a bare pickle
        raise ReferenceCheckpointError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip nor a pickle)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if "Unsupported" in line]
        why = lines[0].split(". Please")[0] if lines else "objects other than tensors"
        raise ReferenceCheckpointError(
            f"{path}: not a tensors-only checkpoint, refusing to unpickle it ({why})") from None
    except Exception as err:  # a damaged zip or pickle
        raise ReferenceCheckpointError(f"{path}: unreadable PyTorch checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(checkpoint, Mapping):
        raise ReferenceCheckpointError(f"{path}: holds a {type(checkpoint).__name__}, expected a dict with params_ema")
    for entry in ("params_ema", "params"):
        state = checkpoint.get(entry)
        if isinstance(state, Mapping):
            bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
            if bad:
                raise ReferenceCheckpointError(f"{path}: {entry} has non-tensor entries {bad[:5]}")
            return dict(state), entry
    raise ReferenceCheckpointError(f"{path}: no params_ema or params entry (keys: {sorted(map(str, checkpoint))[:10]})")


def check_layout(path: Path, state: Mapping[str, torch.Tensor], layout: Mapping[str, tuple[int, ...]],
                 allowed_unused: tuple[str, ...] = UNUSED_PREFIXES) -> list[str]:
    """Raise ReferenceCheckpointError listing missing, unexpected and mis-shaped keys; return
    the stored keys that are dropped as unused (``allowed_unused`` prefixes)."""
    missing = sorted(set(layout) - set(state))
    unused = sorted(k for k in state if k not in layout and k.startswith(allowed_unused))
    unexpected = sorted(k for k in state if k not in layout and not k.startswith(allowed_unused))
    misshaped = sorted(f"{k} {tuple(state[k].shape)} (expected {layout[k]})"
                       for k in layout if k in state and tuple(state[k].shape) != tuple(layout[k]))
    problems = []
    for name, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{len(keys)} {name}: {shown}")
    if problems:
        raise ReferenceCheckpointError(f"{path}: not the expected reference layout; " + "; ".join(problems))
    return unused


def convert(state: Mapping[str, torch.Tensor], rules: list[KeyRule]) -> dict[str, torch.Tensor]:
    """The stcvq state dict built from a checked reference state dict."""
    return {rule.target: rule.combine([state[k].float() for k in rule.sources]).contiguous() for rule in rules}


# ---------------------------------------------------------------------------------------------
# Import


def _load(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    # strict: every stcvq parameter must come from a rule (buffers: none in these models)
    model.load_state_dict(state, strict=True)


def import_checkpoint(path: str | Path, task: str, out_dir: str | Path, config: Stage2Config | None = None) -> Path:
    """Import a published Stage II file (``task``: bfvr, deflicker or deflicker-pixel) as a
    Stage II model folder that :meth:`Stage2Model.from_pretrained` loads. Checks everything
    before writing; the folder appears whole or not at all. ``config``: a network of the
    reference layout other than the published one (tests use small ones)."""
    check_task(task)
    path = Path(path)
    state, entry = read_state_dict(path)
    model = Stage2Model(config or Stage2Config.profile("reference", task))
    rules = stage2_rules(model)
    dropped = check_layout(path, state, expected_layout(rules))
    _load(model, convert(state, rules))
    provenance = _provenance(path, entry, dropped, f"CodeFormer3D ({task})")
    with atomic_folder(out_dir) as staging:
        model.save_pretrained(staging, provenance=provenance)
    return Path(out_dir)


def import_stage1_checkpoint(path: str | Path, out_dir: str | Path, config: Stage1Config | None = None) -> Path:
    """Import a reference Stage I file (VQAutoEncoder3D: encoder, quantize, generator) as a
    Stage I model folder (:meth:`Stage1Model.from_pretrained`), e.g. to train Stage II on it.
    ``config``: a reference-layout network other than the published one."""
    path = Path(path)
    state, entry = read_state_dict(path)
    model = Stage1Model(config or stage1_config())
    rules = stage1_rules(model)
    dropped = check_layout(path, state, expected_layout(rules), allowed_unused=())
    _load(model, convert(state, rules))
    provenance = _provenance(path, entry, dropped, "VQAutoEncoder3D")
    with atomic_folder(out_dir) as staging:
        model.save_pretrained(staging, provenance=provenance)
    return Path(out_dir)


def _provenance(path: Path, entry: str, dropped: list[str], network: str) -> dict:
    return {"source_file": path.name, "source_sha256": sha256_file(path), "source_entry": entry,
            "source_network": network, "dropped_keys": dropped}


__all__ = ["ReferenceCheckpointError", "check_layout", "convert", "expected_layout", "import_checkpoint",
           "import_stage1_checkpoint", "read_state_dict", "stage1_config", "stage1_rules", "stage2_rules"]
