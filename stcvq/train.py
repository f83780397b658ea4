"""One training loop for both stages (nanoGPT-style: a config dataclass and one readable loop).

What a stage brings is an :class:`Objective`: the generator module (frozen parts already set
``requires_grad_(False)``: the optimiser only sees trainable parameters), an optional
discriminator, the loss of one micro-batch, an evaluation and sample images. The loop brings:

- DDP under ``torchrun`` (env ``WORLD_SIZE`` > 1): gloo on CPU, nccl on GPU; the generator is
  wrapped in DistributedDataParallel, the discriminator heads' gradients are all-reduced by hand;
- bf16/fp16 autocast on GPU (fp16 with a GradScaler), fp32 on CPU;
- gradient accumulation, gradient clipping, a NaN guard that skips the update (and gives up
  after ``max_bad_steps`` in a row), cosine schedule with linear warmup, EMA of the generator,
  a discriminator start step and hinge adversarial loss;
- checkpoints with everything needed to resume bit-exactly on CPU: model, EMA, both
  optimisers, schedulers, grad scaler, every process's RNG states and the data position.
  Tensors go to safetensors, the rest to JSON; a checkpoint folder appears under its final
  name only when complete (written to a temporary folder, then renamed);
- DVCLive logging (when dvclive is installed) of losses, codebook statistics, learning rate,
  evaluations and sample images; python logging always.

Data: a :class:`ClipSource` yields this process's micro-batches for an epoch; the loop keeps
(epoch, micro-batches consumed) and on resume asks for the same epoch again and skips that many,
so the source must be deterministic per (epoch, rank, world_size, batch size).
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Protocol

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from .config import check, to_dict
from .io import write_text

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 4  # clips per optimiser step, over all processes and accumulation steps
    grad_accum: int = 1
    lr: float = 7e-5
    min_lr: float = 6e-5  # cosine schedule ends here (paper Stage I: 7e-5 -> 6e-5)
    warmup_steps: int = 0
    betas: tuple[float, float] = (0.9, 0.99)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    ema_decay: float = 0.995  # 0 = no EMA
    adversarial_weight: float = 0.1
    disc_start: int = 0  # first step with the adversarial loss
    disc_lr: float = 7e-5
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"  # on GPU; CPU always trains in fp32
    log_every: int = 10
    eval_every: int = 100
    ckpt_every: int = 100
    keep_checkpoints: int = 2
    max_bad_steps: int = 10
    num_samples: int = 2  # clips drawn in the sample images
    seed: int = 0
    num_threads: int = 0  # torch CPU threads per process; 0 = leave as is

    def __post_init__(self) -> None:
        check(self.steps >= 1 and self.batch_size >= 1 and self.grad_accum >= 1, "steps, batch_size, grad_accum >= 1")
        check(0 <= self.ema_decay < 1, "ema_decay in [0, 1)")
        check(self.lr > 0 and 0 <= self.min_lr <= self.lr, "0 <= min_lr <= lr, lr > 0")
        check(self.log_every >= 1 and self.eval_every >= 1 and self.ckpt_every >= 1, "*_every >= 1")
        check(self.keep_checkpoints >= 1, "keep_checkpoints >= 1")


@dataclass
class StepOutput:
    loss: torch.Tensor  # the generator loss of the micro-batch (without the adversarial part)
    logs: dict[str, torch.Tensor | float] = field(default_factory=dict)
    real: torch.Tensor | None = None  # (B, 3, T, H, W) targets, for the discriminator
    fake: torch.Tensor | None = None  # (B, 3, T, H, W) outputs, attached to the graph


class Objective(Protocol):
    model: nn.Module
    discriminator: nn.Module | None

    def step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput: ...

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Any]]) -> dict[str, float]: ...

    def samples(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, np.ndarray]: ...


class ClipSource(Protocol):
    def batches(self, epoch: int, rank: int, world_size: int, batch_size: int) -> Iterator[dict[str, Any]]: ...


class TensorClips:
    """In-memory clips (N, C, T, H, W) as a deterministic ClipSource: each epoch a seeded
    permutation, cut into global batches of ``batch_size * world_size``; process ``rank`` takes
    its slice of each. So one process with batch B and two with B/2 see the same global batches."""

    def __init__(self, clips: torch.Tensor, seed: int = 0, key: str = "hq", extra: dict[str, torch.Tensor] | None = None):
        self.clips, self.seed, self.key, self.extra = clips, seed, key, extra or {}

    def __len__(self) -> int:
        return len(self.clips)

    def batches(self, epoch: int, rank: int, world_size: int, batch_size: int) -> Iterator[dict[str, Any]]:
        order = torch.randperm(len(self.clips), generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
        chunk = batch_size * world_size
        for start in range(0, len(order) - chunk + 1, chunk):
            idx = order[start + rank * batch_size : start + (rank + 1) * batch_size]
            batch = {self.key: self.clips[idx]}
            batch.update({k: v[idx] for k, v in self.extra.items()})
            yield batch


# -- distributed helpers ----------------------------------------------------------------------
def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _rank() -> int:
    return dist.get_rank() if _dist_on() else 0


def _world() -> int:
    return dist.get_world_size() if _dist_on() else 1


def _barrier() -> None:
    if _dist_on():
        dist.barrier()


def _destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _setup_distributed() -> tuple[bool, torch.device]:
    """Join the torchrun process group if the environment asks for one; pick the device."""
    created = False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        atexit.register(_destroy_group)
        created = True
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return created, torch.device("cuda", local)
    return created, torch.device("cpu")


# -- state (de)serialisation: tensors -> safetensors, the rest -> JSON ------------------------
def _split(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().contiguous().cpu()
        return {"__tensor__": prefix}
    if isinstance(obj, np.ndarray):
        tensors[prefix] = torch.from_numpy(obj.astype(np.int64) if obj.dtype == np.uint32 else obj.copy())
        return {"__ndarray__": prefix, "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _split(v, tensors, f"{prefix}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_split(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    return obj


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy().astype(obj["dtype"])
        if "__dict__" in obj:
            return {k: _join(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_join(v, tensors) for v in obj["__tuple__"])
        if "__float__" in obj:
            return float(obj["__float__"])
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


def save_state(folder: Path, name: str, state: Any) -> None:
    tensors: dict[str, torch.Tensor] = {}
    structure = _split(state, tensors, name)
    save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(structure))


def load_state(folder: Path, name: str) -> Any:
    tensors = load_file(str(folder / f"{name}.safetensors"))
    return _join(json.loads((folder / f"{name}.json").read_text()), tensors)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def code_fingerprint(*roots: str) -> dict[str, Any]:
    """SHA-256 over the source of the ``stcvq`` modules that ``roots`` import, transitively.

    The closure is read from the source files (every ``import`` naming a ``stcvq`` module, at
    module level or inside a function, relative imports included), not from ``sys.modules``, so
    the same code gives the same digest whatever else the process has imported. A module counts
    with its packages' ``__init__`` files. The digest runs over (module name, source bytes),
    sorted by module name. Not covered: code outside ``stcvq`` (the stage scripts under
    ``pipeline/``, torch and the other libraries)."""
    package_dir = Path(__file__).resolve().parent
    package = package_dir.name

    def source(name: str) -> Path | None:
        parts = name.split(".")[1:]
        candidates = [package_dir.joinpath(*parts, "__init__.py")]
        if parts:
            candidates.insert(0, package_dir.joinpath(*parts[:-1], parts[-1] + ".py"))
        return next((c for c in candidates if c.is_file()), None)

    files: dict[str, bytes] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in files or not (name == package or name.startswith(package + ".")):
            continue
        path = source(name)
        if path is None:  # a name imported from a module, not a submodule
            continue
        files[name] = path.read_bytes()
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a.b.c runs a and a.b
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(files[name], filename=str(path))):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: level 1 is this package, 2 its parent, ...
                    anchor = here.rsplit(".", node.level - 1)[0]
                    base = f"{anchor}.{base}" if base else anchor
                todo += [base] + [f"{base}.{alias.name}" for alias in node.names]  # a name may be a submodule
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{len(files[name])}\0".encode())  # unambiguous concatenation
        digest.update(files[name])
    return {"sha256": digest.hexdigest(), "modules": sorted(files)}


def reset_stale_run(out_dir: str | Path, fingerprint: dict[str, Any]) -> None:
    """Wipe ``out_dir`` when it holds a run of another config, data or code, then record ``fingerprint``.

    Checkpoints persist between `dvc repro` runs so a killed run resumes; without this check a
    changed config (an ablation) or changed code (a new loss) would resume, or silently return,
    the old run's weights. The stages put :func:`code_fingerprint` under ``"code"``."""
    out_dir = Path(out_dir)
    run_file = out_dir / "run.json"
    if int(os.environ.get("RANK", "0")) != 0:  # rank 0 owns the run folder
        return
    if run_file.is_file():
        old = json.loads(run_file.read_text())
        changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        if changed:
            log.info("%s: %s changed since the last run, starting over", out_dir, ", ".join(changed))
            shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_file, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -- schedule and EMA -------------------------------------------------------------------------
def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to lr, then cosine from lr to min_lr over the remaining steps."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.min_lr / cfg.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class EMA:
    """Exponential moving average of a module's trainable parameters (buffers are copied)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))  # short warmup: early EMA follows the model
        own = dict(self.model.named_parameters())
        src = dict(model.named_parameters())
        torch._foreach_lerp_([own[n] for n in self.names], [src[n].detach() for n in self.names], 1 - decay)
        for (_, b_own), (_, b_src) in zip(self.model.named_buffers(), model.named_buffers()):
            b_own.copy_(b_src)


def _disc_state(disc: nn.Module) -> dict[str, torch.Tensor]:
    """The discriminator minus its frozen backbone (which comes from the hub, not from us)."""
    return {k: v for k, v in disc.state_dict().items() if not k.startswith("backbone.")}


# -- logging ----------------------------------------------------------------------------------
class _Logger:
    """DVCLive when available (rank 0 only), python logging always."""

    def __init__(self, folder: Path | None, resume: bool):
        self.live = None
        if folder is None or _rank() != 0:
            return
        try:
            from dvclive import Live
        except ImportError:
            log.info("dvclive not installed: metrics go to the log only")
            return
        self.live = Live(dir=str(folder), resume=resume, save_dvc_exp=False, dvcyaml=None, report=None)

    def metrics(self, step: int, values: dict[str, float], prefix: str) -> None:
        if self.live is not None:
            self.live.step = step
            for k, v in values.items():
                self.live.log_metric(f"{prefix}/{k}", float(v))
            self.live.make_summary()

    def images(self, step: int, images: dict[str, np.ndarray]) -> None:
        if self.live is not None:
            self.live.step = step
            for k, v in images.items():
                self.live.log_image(f"{k}.png", v)

    def close(self) -> None:
        if self.live is not None:
            self.live.end()


# -- the loop ---------------------------------------------------------------------------------
@dataclass
class TrainResult:
    model: nn.Module  # the trained generator (unwrapped)
    ema_model: nn.Module | None
    step: int
    history: list[dict[str, float]]  # every evaluation: {"step": ..., metric: ...}
    bad_steps: int
    discriminator: nn.Module | None = None


def _autocast(device: torch.device, precision: str):
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _mean_logs(logs: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in logs[0]:
        out[k] = float(np.mean([float(l[k]) for l in logs]))
    return out


def train(
    objective: Objective,
    data: ClipSource,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    val_batches: Callable[[], Iterable[dict[str, Any]]] | None = None,
    resume: bool = True,
    on_step_end: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``objective`` on ``data`` for ``cfg.steps`` optimiser steps.

    ``out_dir`` gets ``checkpoints/`` (resumed from when ``resume`` and one exists) and
    ``dvclive/``. ``val_batches()`` returns the validation batches, evaluated on rank 0 with the
    EMA weights (the model's when EMA is off) at step 0, every ``eval_every`` steps and at the end.
    ``on_step_end(step)`` runs after each completed step (and its checkpoint): tests use it to
    kill the process mid-run."""
    out_dir = Path(out_dir)
    _, device = _setup_distributed()
    rank, world = _rank(), _world()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    per_step = world * cfg.grad_accum
    check(cfg.batch_size % per_step == 0, f"batch_size {cfg.batch_size} is not divisible by processes x grad_accum = {per_step}")
    micro = cfg.batch_size // per_step
    seed_everything(cfg.seed + rank)

    model = objective.model.to(device)
    disc = objective.discriminator.to(device) if objective.discriminator is not None else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    use_adv = disc is not None and cfg.adversarial_weight > 0
    if disc is not None:
        disc_params = [p for p in disc.parameters() if p.requires_grad]
        opt_d = torch.optim.AdamW(disc_params, lr=cfg.disc_lr, betas=cfg.betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.precision == "fp16")
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    step, epoch, consumed, bad_steps, bad_in_row = 0, 0, 0, 0, 0
    history: list[dict[str, float]] = []

    ckpt_root = out_dir / "checkpoints"
    latest = ckpt_root / "latest"
    if resume and latest.is_file():
        folder = ckpt_root / latest.read_text().strip()
        state = json.loads((folder / "state.json").read_text())
        model.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(device)))
        if ema is not None:
            ema.model.load_state_dict(load_file(str(folder / "ema.safetensors"), device=str(device)))
        optim = load_state(folder, "optim")
        opt.load_state_dict(optim["generator"])
        sched.load_state_dict(optim["scheduler"])
        scaler.load_state_dict(optim["scaler"])
        if disc is not None:
            missing, unexpected = disc.load_state_dict(load_file(str(folder / "disc.safetensors"), device=str(device)), strict=False)
            if unexpected or any(not k.startswith("backbone.") for k in missing):
                raise RuntimeError(f"{folder}: discriminator state does not match ({missing[:3]}, {unexpected[:3]})")
            opt_d.load_state_dict(optim["discriminator"])
        rng_file = folder / f"rng_rank{rank}"
        if not rng_file.with_suffix(".json").is_file():
            raise RuntimeError(f"{folder}: no RNG state for rank {rank}; resume with the same number of processes")
        _set_rng_state(load_state(folder, f"rng_rank{rank}"))
        step, epoch, consumed = state["step"], state["epoch"], state["consumed"]
        bad_steps, history = state["bad_steps"], state["history"]
        log.info("resumed from %s at step %d (epoch %d, micro-batch %d)", folder, step, epoch, consumed)

    ddp_model = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    logger = _Logger(out_dir / "dvclive", resume=step > 0)

    def batches_from(epoch_: int, skip: int) -> Iterator[dict[str, Any]]:
        it = iter(data.batches(epoch_, rank, world, micro))
        for _ in range(skip):
            next(it)
        return it

    def next_batch() -> dict[str, Any]:
        nonlocal data_iter, epoch, consumed
        for _ in range(2):
            try:
                batch = next(data_iter)
                consumed += 1
                return _to_device(batch, device)
            except StopIteration:
                epoch, consumed = epoch + 1, 0
                data_iter = batches_from(epoch, 0)
        raise RuntimeError(f"the data source yields no batch of {micro} clips for rank {rank} of {world}")

    def evaluate() -> None:
        if val_batches is None:
            return
        if rank == 0:
            eval_model = ema.model if ema is not None else model
            was_training = eval_model.training
            eval_model.eval()
            with torch.no_grad(), _autocast(device, cfg.precision):
                metrics = objective.evaluate(eval_model, val_batches())
                first = next(iter(val_batches()), None)
                images = objective.samples(eval_model, _to_device(first, device)) if first is not None and cfg.num_samples else {}
            eval_model.train(was_training)
            history.append({"step": step, **metrics})
            logger.metrics(step, metrics, "val")
            logger.images(step, images)
            log.info("step %d eval: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        _barrier()

    def save_checkpoint() -> None:
        name = f"step_{step:08d}"
        final, tmp = ckpt_root / name, ckpt_root / f".tmp_{name}"
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        save_state(tmp, f"rng_rank{rank}", _rng_state())
        _barrier()
        if rank == 0:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
            if ema is not None:
                save_file({k: v.contiguous() for k, v in ema.model.state_dict().items()}, str(tmp / "ema.safetensors"))
            optim: dict[str, Any] = {"generator": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict()}
            if disc is not None:
                save_file({k: v.contiguous() for k, v in _disc_state(disc).items()}, str(tmp / "disc.safetensors"))
                optim["discriminator"] = opt_d.state_dict()
            save_state(tmp, "optim", optim)
            state = {"step": step, "epoch": epoch, "consumed": consumed, "bad_steps": bad_steps, "history": history,
                     "world_size": world, "config": to_dict(cfg)}
            (tmp / "state.json").write_text(json.dumps(state, indent=1))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            write_text(latest, name)
            for old in sorted(ckpt_root.glob("step_*"))[: -cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()

    data_iter = batches_from(epoch, consumed)
    model.train()
    if step == 0:
        evaluate()
    t0, window_logs = time.time(), []
    try:
        from tqdm import tqdm

        progress = tqdm(total=cfg.steps, initial=step, disable=rank != 0, desc="train", mininterval=5)
    except ImportError:  # pragma: no cover
        progress = None
    while step < cfg.steps:
        adversarial = use_adv and step >= cfg.disc_start
        opt.zero_grad(set_to_none=True)
        step_logs, pairs = [], []
        if disc is not None:
            disc.requires_grad_(False)  # heads get no grad from the generator loss
        for k in range(cfg.grad_accum):
            batch = next_batch()
            sync = k == cfg.grad_accum - 1
            with (contextlib.nullcontext() if sync or world == 1 else ddp_model.no_sync()):
                with _autocast(device, cfg.precision):
                    out = objective.step(ddp_model, batch)
                    loss = out.loss
                    logs = dict(out.logs)
                    if adversarial:
                        g_adv = _hinge_g(disc(out.fake))
                        loss = loss + cfg.adversarial_weight * g_adv
                        logs["g_adv"] = g_adv.detach()
                logs["loss"] = loss.detach()
                scaler.scale(loss / cfg.grad_accum).backward()
            step_logs.append(logs)
            if adversarial:
                pairs.append((out.real.detach(), out.fake.detach()))
        if disc is not None:
            for p in disc_params:
                p.requires_grad_(True)

        scaler.unscale_(opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        finite = torch.tensor([float(torch.isfinite(grad_norm) and all(math.isfinite(float(l["loss"])) for l in step_logs))], device=device)
        if _dist_on():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() == 1.0 or scaler.is_enabled():
            scaler.step(opt)  # with fp16 the scaler itself skips non-finite steps
            bad_in_row = 0
        else:
            bad_steps, bad_in_row = bad_steps + 1, bad_in_row + 1
            log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row)", step, bad_in_row)
            if bad_in_row > cfg.max_bad_steps:
                raise RuntimeError(f"{bad_in_row} non-finite steps in a row at step {step}: giving up")
        scaler.update()
        sched.step()
        if ema is not None:
            ema.update(model, step)

        if adversarial:  # discriminator step on this step's real and (detached) fake clips
            opt_d.zero_grad(set_to_none=True)
            for real, fake in pairs:
                with _autocast(device, cfg.precision):
                    d_loss = _hinge_d(disc(real), disc(fake))
                (d_loss / cfg.grad_accum).backward()
                step_logs[-1]["d_loss"] = d_loss.detach()
            if _dist_on():
                for p in disc_params:
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= world
            opt_d.step()

        step += 1
        window_logs.append(_mean_logs(step_logs) | {"grad_norm": float(grad_norm), "lr": sched.get_last_lr()[0]})
        if progress is not None:
            progress.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            keys = set.intersection(*(set(w) for w in window_logs))
            means = {k: float(np.mean([w[k] for w in window_logs])) for k in sorted(keys)}
            means["steps_per_s"] = len(window_logs) / max(1e-9, time.time() - t0)
            logger.metrics(step, means, "train")
            log.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in means.items()))
            t0, window_logs = time.time(), []
        if step % cfg.eval_every == 0 or step == cfg.steps:
            evaluate()
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            save_checkpoint()
        if on_step_end is not None:
            on_step_end(step)
    if progress is not None:
        progress.close()
    logger.close()
    # The group stays up until the process exits (atexit, see _setup_distributed): a second
    # train() call in the same process (Stage II's incremental phases) re-rendezvousing on the
    # same MASTER_PORT right after a destroy could hang in init_process_group.
    return TrainResult(model, ema.model if ema is not None else None, step, history, bad_steps, disc)


def _hinge_g(logits: list[torch.Tensor]) -> torch.Tensor:
    from .nn.discriminator import hinge_g_loss

    return hinge_g_loss(logits)


def _hinge_d(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    from .nn.discriminator import hinge_d_loss

    return hinge_d_loss(real, fake)


__all__ = ["ClipSource", "EMA", "Objective", "StepOutput", "TensorClips", "TrainConfig", "TrainResult", "lr_factor",
           "load_state", "save_state", "seed_everything", "train"]
