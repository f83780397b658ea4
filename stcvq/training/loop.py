"""One training loop for both stages (nanoGPT-style: a config dataclass and one readable loop).

What a stage brings is an objective: the generator module (frozen parts already set
``requires_grad_(False)``: the optimiser only sees trainable parameters), the loss of one
micro-batch, an evaluation and sample images. An objective with more to train than the generator
(Stage I's discriminator) inherits :class:`TrainingHooks` and keeps that part to itself. The loop
brings:

- DDP under ``torchrun`` (env ``WORLD_SIZE`` > 1): gloo on CPU, nccl on GPU;
- autocast (``precision``: auto is bf16 on GPU and fp32 on CPU), a GradScaler for fp16;
- gradient accumulation, gradient clipping, a NaN guard that skips the update (and gives up
  after ``max_bad_steps`` in a row), cosine schedule with linear warmup, EMA of the generator;
- checkpoints (:class:`Checkpoints`) with everything needed to resume bit-exactly on CPU;
- DVCLive logging (when dvclive is installed) of losses, codebook statistics, learning rate,
  evaluations, sample images and system metrics (CPU, RAM, disk, GPU); python logging always.

The loop returns a :class:`TrainResult`; its ``final`` model (the EMA weights) is what a stage
script exports with :func:`export_model`. Whether a run folder may be resumed is
:mod:`stcvq.training.provenance`'s question.

Data: a :class:`ClipSource` yields this process's micro-batches for an epoch; a
:class:`BatchStream` keeps (epoch, micro-batches consumed) and on resume asks for the same epoch
again and skips that many, so the source must be deterministic per (epoch, rank, world_size,
batch size).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
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

from stcvq.config import ConfigError, check, to_dict
from stcvq.io import atomic_folder, write_text
from stcvq.nn.runtime import autocast
from stcvq.training.provenance import rank

log = logging.getLogger(__name__)

_ADAMW_IMPLS: dict[str, dict[str, bool]] = {"auto": {}, "for-loop": {"foreach": False, "fused": False},
                                            "foreach": {"foreach": True}, "fused": {"fused": True}}


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
    optimizer_impl: Literal["auto", "for-loop", "foreach", "fused"] = "auto"  # auto: torch's pick (for-loop on CPU)
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    ema_decay: float = 0.995  # 0 = no EMA
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    activation_checkpointing: bool = False  # recompute activations in backward (the model must support it)
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

    def make_adamw(self, params: list[nn.Parameter], lr: float) -> torch.optim.AdamW:
        """AdamW with this config's betas, eps, weight decay and implementation."""
        return torch.optim.AdamW(params, lr=lr, betas=self.betas, eps=self.adam_eps, weight_decay=self.weight_decay,
                                 **_ADAMW_IMPLS[self.optimizer_impl])


@dataclass
class StepOutput:
    loss: torch.Tensor  # the loss of the micro-batch, what backward runs on
    logs: dict[str, torch.Tensor | float] = field(default_factory=dict)


class Objective(Protocol):
    model: nn.Module

    def step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput: ...

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Any]]) -> dict[str, float]: ...

    def samples(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, np.ndarray]: ...


class TrainingHooks:
    """What an objective may add to the loop besides its loss; these defaults do nothing.

    The loop calls ``setup`` once the device is known, ``before_step`` before each optimiser
    step's micro-batches, ``after_update`` right after the generator's update (and EMA), and keeps
    ``state_dict`` in every checkpoint. An objective that does not inherit this class gets the
    defaults."""

    def setup(self, cfg: TrainConfig, device: torch.device) -> None:
        pass

    def before_step(self, step: int) -> None:
        pass

    def after_update(self, step: int) -> dict[str, torch.Tensor | float]:
        """Logs of the objective's own update."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class ClipSource(Protocol):
    def batches(self, epoch: int, rank: int, world_size: int, batch_size: int) -> Iterator[dict[str, Any]]: ...

    def fingerprint(self) -> str:
        """A digest of the clips: another digest means other training data."""
        ...


# -- distributed helpers ----------------------------------------------------------------------
def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _world() -> int:
    return dist.get_world_size() if _dist_on() else 1


def _barrier() -> None:
    if _dist_on():
        dist.barrier()


def _destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _setup_distributed() -> torch.device:
    """Join the torchrun process group if the environment asks for one; pick the device.

    The group stays up until the process exits (atexit): a second train() call in the same
    process (Stage II's phases) re-rendezvousing on the same MASTER_PORT right after a destroy
    can hang in init_process_group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(_destroy_group)
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Mean of each gradient over the processes, for parameters outside the DDP wrapper."""
    if not _dist_on():
        return
    world = _world()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


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


# -- data position ----------------------------------------------------------------------------
def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class BatchStream:
    """This process's micro-batches from a :class:`ClipSource`, epoch after epoch, with the
    position a checkpoint keeps: (epoch, micro-batches consumed in it). After
    :meth:`load_state_dict` the next batch reopens that epoch and skips the consumed ones."""

    def __init__(self, source: ClipSource, batch_size: int, device: torch.device, rank: int = 0, world_size: int = 1):
        self.source, self.batch_size, self.device = source, batch_size, device
        self.rank, self.world_size = rank, world_size
        self.epoch, self.consumed = 0, 0
        self._batches: Iterator[dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.consumed, self._batches = state["epoch"], state["consumed"], None

    def _open(self) -> Iterator[dict[str, Any]]:
        batches = iter(self.source.batches(self.epoch, self.rank, self.world_size, self.batch_size))
        for _ in range(self.consumed):
            next(batches)
        return batches

    def next(self) -> dict[str, Any]:
        for _ in range(2):  # this epoch's next batch, else the first of the next epoch
            if self._batches is None:
                self._batches = self._open()
            try:
                batch = next(self._batches)
            except StopIteration:
                self.epoch, self.consumed, self._batches = self.epoch + 1, 0, None
                continue
            self.consumed += 1
            return _to_device(batch, self.device)
        raise RuntimeError(f"the data source yields no batch of {self.batch_size} clips "
                           f"for rank {self.rank} of {self.world_size}")


# -- checkpoints ------------------------------------------------------------------------------
@dataclass
class TrainState:
    """Everything a checkpoint holds; resuming from it continues the run bit-exactly on CPU."""

    model: nn.Module
    ema: EMA | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    objective: TrainingHooks
    batches: BatchStream
    step: int = 0
    bad_steps: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # every evaluation: {"step": ..., metric: ...}


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in module.state_dict().items()}


class Checkpoints:
    """A run's ``checkpoints/`` folder: the one place that writes and reads a checkpoint.

    ``step_XXXXXXXX/`` holds ``model.safetensors``, ``ema.safetensors``, ``optim.*`` (optimiser,
    scheduler, grad scaler), ``objective.*`` (the objective's own state, e.g. a discriminator),
    ``rng_rank<r>.*`` (every process's RNG states) and ``state.json`` (step, data position,
    history, config); ``latest`` names the newest. A checkpoint is written to a temporary folder
    and renamed, so it appears under its final name only when complete."""

    def __init__(self, root: Path, keep: int):
        self.root, self.keep = Path(root), keep

    def latest(self) -> Path | None:
        pointer = self.root / "latest"
        return self.root / pointer.read_text().strip() if pointer.is_file() else None

    def save(self, state: TrainState, config: dict[str, Any]) -> None:
        """Every process calls this: each writes its RNG states, rank 0 the rest."""
        this_rank, name = rank(), f"step_{state.step:08d}"
        final, tmp = self.root / name, self.root / f".tmp_{name}"
        if this_rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        save_state(tmp, f"rng_rank{this_rank}", _rng_state())
        _barrier()
        if this_rank == 0:
            save_file(_tensors(state.model), str(tmp / "model.safetensors"))
            if state.ema is not None:
                save_file(_tensors(state.ema.model), str(tmp / "ema.safetensors"))
            save_state(tmp, "optim", {"optimizer": state.optimizer.state_dict(),
                                      "scheduler": state.scheduler.state_dict(), "scaler": state.scaler.state_dict()})
            save_state(tmp, "objective", state.objective.state_dict())
            meta = {"step": state.step, **state.batches.state_dict(), "bad_steps": state.bad_steps,
                    "history": state.history, "world_size": _world(), "config": config}
            (tmp / "state.json").write_text(json.dumps(meta, indent=1))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            write_text(self.root / "latest", name)
            for old in sorted(self.root.glob("step_*"))[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()

    def load(self, folder: Path, state: TrainState, device: torch.device) -> None:
        this_rank = rank()
        if not (folder / f"rng_rank{this_rank}.json").is_file():
            raise RuntimeError(f"{folder}: no RNG state for rank {this_rank}; resume with the same number of processes")
        meta = json.loads((folder / "state.json").read_text())
        state.model.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(device)))
        if state.ema is not None:
            state.ema.model.load_state_dict(load_file(str(folder / "ema.safetensors"), device=str(device)))
        optim = load_state(folder, "optim")
        state.optimizer.load_state_dict(optim["optimizer"])
        state.scheduler.load_state_dict(optim["scheduler"])
        state.scaler.load_state_dict(optim["scaler"])
        state.objective.load_state_dict(load_state(folder, "objective"))
        _set_rng_state(load_state(folder, f"rng_rank{this_rank}"))
        state.step, state.bad_steps, state.history = meta["step"], meta["bad_steps"], meta["history"]
        state.batches.load_state_dict(meta)
        log.info("resumed from %s at step %d (epoch %d, micro-batch %d)", folder, state.step, meta["epoch"],
                 meta["consumed"])


# -- logging ----------------------------------------------------------------------------------
def _open_live(folder: Path, resume: bool):
    """DVCLive's ``Live`` on ``folder`` (None without dvclive). Its dvc.yaml (the run's metrics,
    plots and model artifacts) goes beside ``folder``, in the run folder: never into the
    repository's root dvc.yaml, which declares the pipeline and its artifacts. The run folders are
    git-ignored stage outputs, so DVC itself does not collect the run's dvc.yaml."""
    try:
        from dvclive import Live
    except ImportError:
        return None
    dvcyaml = None if (folder.parent / ".dvc").is_dir() else str(folder.parent / "dvc.yaml")
    dvclive_log = logging.getLogger("dvclive")
    level = dvclive_log.level
    dvclive_log.setLevel(logging.ERROR)  # it warns that the run's dvc.yaml lies inside a stage's output
    try:
        return Live(dir=str(folder), resume=resume, save_dvc_exp=False, dvcyaml=dvcyaml, report=None)
    finally:
        dvclive_log.setLevel(level)


def _monitor_system(live, folder: Path) -> None:
    """DVCLive's system metrics (CPU, RAM, the run folder's disk; GPU through NVML), sampled in a
    thread every 0.1 s and logged every 2 s under ``system/``."""
    from dvclive import monitor_system

    if monitor_system.GPU_AVAILABLE:
        from pynvml import NVMLError, nvmlInit, nvmlShutdown

        try:
            nvmlInit()
            nvmlShutdown()
        except NVMLError:
            # dvclive samples NVML first in every sample: without an NVIDIA driver each sample
            # fails and not even the CPU metrics are logged
            monitor_system.GPU_AVAILABLE = False
    live.monitor_system(interval=0.1, num_samples=20, directories_to_monitor={"run": str(folder)})


class _Logger:
    """DVCLive when available (rank 0 only), python logging always."""

    def __init__(self, folder: Path | None, resume: bool):
        self.live = None
        if folder is None or rank() != 0:
            return
        self.live = _open_live(folder, resume)
        if self.live is None:
            log.info("dvclive not installed: metrics go to the log only")
            return
        _monitor_system(self.live, folder)

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
        """Ends the DVCLive run, which stops its system-monitor thread (a live thread would keep
        the process from exiting)."""
        if self.live is not None:
            self.live.end()
            self.live = None


def export_model(model: nn.Module, folder: str | Path, live_dir: str | Path, name: str, description: str,
                 labels: list[str] | None = None) -> None:
    """Write ``model`` to ``folder`` with its ``save_pretrained`` (atomically: the folder appears
    whole or not at all) and record it as a model artifact of the DVCLive run in ``live_dir``
    (the ``artifacts:`` section of the run's own dvc.yaml, see :func:`_open_live`). The artifact
    is not cached or copied: under `dvc repro` the model folder is a stage output already."""
    with atomic_folder(folder) as staging:
        model.save_pretrained(staging)
    if (live := _open_live(Path(live_dir), resume=True)) is not None:
        live.log_artifact(str(folder), type="model", name=name, desc=description, labels=labels, cache=False)
        live.end()


# -- the loop ---------------------------------------------------------------------------------
@dataclass
class TrainResult:
    model: nn.Module  # the trained generator (unwrapped)
    ema_model: nn.Module | None
    step: int
    history: list[dict[str, float]]  # every evaluation: {"step": ..., metric: ...}
    bad_steps: int
    objective: Objective | None = None  # the trained objective (Stage I's holds its discriminator)

    @property
    def final(self) -> nn.Module:
        """What a stage exports: the EMA weights, the model's when EMA is off."""
        return self.ema_model if self.ema_model is not None else self.model


def _mean_logs(logs: list[dict[str, Any]]) -> dict[str, float]:
    return {k: float(np.mean([float(entry[k]) for entry in logs])) for k in logs[0]}


def _initial_state(objective: Objective, hooks: TrainingHooks, data: ClipSource, cfg: TrainConfig,
                   device: torch.device) -> TrainState:
    world = _world()
    per_step = world * cfg.grad_accum
    check(cfg.batch_size % per_step == 0,
          f"batch_size {cfg.batch_size} is not divisible by processes x grad_accum = {per_step}")
    model = objective.model.to(device)
    optimizer = cfg.make_adamw([p for p in model.parameters() if p.requires_grad], cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    if cfg.activation_checkpointing:
        if not hasattr(model, "set_activation_checkpointing"):
            raise ConfigError(f"activation_checkpointing: {type(model).__name__} has no set_activation_checkpointing()")
        model.set_activation_checkpointing(True)
    hooks.setup(cfg, device)
    batches = BatchStream(data, cfg.batch_size // per_step, device, rank(), world)
    return TrainState(model, ema, optimizer, scheduler, scaler, hooks, batches)


def _forward_backward(objective: Objective, model: nn.Module, batch: dict[str, Any], cfg: TrainConfig,
                      scaler: torch.amp.GradScaler, device: torch.device, sync: bool) -> dict[str, Any]:
    """One micro-batch's loss and gradients; DDP averages gradients only when ``sync``."""
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    with (model.no_sync() if ddp and not sync else contextlib.nullcontext()):
        with autocast(device, cfg.precision):
            out = objective.step(model, batch)
        logs = {**out.logs, "loss": out.loss.detach()}
        scaler.scale(out.loss / cfg.grad_accum).backward()
    return logs


def _optimizer_step(state: TrainState, step_logs: list[dict[str, Any]], cfg: TrainConfig,
                    device: torch.device) -> tuple[torch.Tensor, bool]:
    """Clip, then update unless any process saw a non-finite loss or gradient; (grad norm, updated)."""
    params = [p for group in state.optimizer.param_groups for p in group["params"]]
    state.scaler.unscale_(state.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    losses_finite = all(math.isfinite(float(entry["loss"])) for entry in step_logs)
    finite = torch.tensor([float(torch.isfinite(grad_norm) and losses_finite)], device=device)
    if _dist_on():
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    updated = finite.item() == 1.0 or state.scaler.is_enabled()  # with fp16 the scaler itself skips non-finite steps
    if updated:
        state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    return grad_norm, updated


def _evaluate(objective: Objective, state: TrainState, val_batches: Callable[[], Iterable[dict[str, Any]]] | None,
              cfg: TrainConfig, device: torch.device, logger: _Logger) -> None:
    """Rank 0 scores the EMA weights (the model's when EMA is off); the other processes wait."""
    if val_batches is None:
        return
    if rank() == 0:
        model = state.ema.model if state.ema is not None else state.model
        was_training = model.training
        model.eval()
        with torch.no_grad(), autocast(device, cfg.precision):
            metrics = objective.evaluate(model, val_batches())
            first = next(iter(val_batches()), None)
            drawn = first is not None and cfg.num_samples > 0
            images = objective.samples(model, _to_device(first, device)) if drawn else {}
        model.train(was_training)
        state.history.append({"step": state.step, **metrics})
        logger.metrics(state.step, metrics, "val")
        logger.images(state.step, images)
        log.info("step %d eval: %s", state.step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    _barrier()


def _log_window(logger: _Logger, step: int, window: list[dict[str, float]], seconds: float) -> None:
    """Means over the steps since the last log line of the values every step logged, and the rate."""
    means = {k: float(np.mean([w[k] for w in window])) for k in sorted(set.intersection(*(set(w) for w in window)))}
    means["steps_per_s"] = len(window) / max(1e-9, seconds)
    logger.metrics(step, means, "train")
    log.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in means.items()))


def _progress_bar(cfg: TrainConfig, initial: int):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=cfg.steps, initial=initial, disable=rank() != 0, desc="train", mininterval=5)


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
    device = _setup_distributed()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seed + rank())
    hooks = objective if isinstance(objective, TrainingHooks) else TrainingHooks()
    state = _initial_state(objective, hooks, data, cfg, device)
    checkpoints = Checkpoints(out_dir / "checkpoints", cfg.keep_checkpoints)
    if resume and (folder := checkpoints.latest()) is not None:
        checkpoints.load(folder, state, device)
    model = state.model
    if _world() > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # closing the logger ends DVCLive's system-monitor thread, which would keep a failed run alive
    with contextlib.closing(_Logger(out_dir / "dvclive", resume=state.step > 0)) as logger:
        state.model.train()
        if state.step == 0:
            _evaluate(objective, state, val_batches, cfg, device, logger)
        progress = _progress_bar(cfg, state.step)
        t0, window, bad_in_row = time.time(), [], 0
        while state.step < cfg.steps:
            # forward backward: grad_accum micro-batches, DDP syncing on the last
            state.optimizer.zero_grad(set_to_none=True)
            hooks.before_step(state.step)
            step_logs = [_forward_backward(objective, model, state.batches.next(), cfg, state.scaler, device,
                                           sync=k == cfg.grad_accum - 1) for k in range(cfg.grad_accum)]

            # update: the generator (or a skipped non-finite step), the EMA, the objective's own part
            grad_norm, updated = _optimizer_step(state, step_logs, cfg, device)
            bad_in_row = 0 if updated else bad_in_row + 1
            if not updated:
                state.bad_steps += 1
                log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row)", state.step,
                            bad_in_row)
                if bad_in_row > cfg.max_bad_steps:
                    raise RuntimeError(f"{bad_in_row} non-finite steps in a row at step {state.step}: giving up")
            if state.ema is not None:
                state.ema.update(state.model, state.step)
            update_logs = {k: float(v) for k, v in hooks.after_update(state.step).items()}
            state.step += 1

            # timing and logging
            lr = state.scheduler.get_last_lr()[0]
            window.append(_mean_logs(step_logs) | update_logs | {"grad_norm": float(grad_norm), "lr": lr})
            if progress is not None:
                progress.update(1)
            if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                _log_window(logger, state.step, window, time.time() - t0)
                t0, window = time.time(), []

            # evaluate and checkpoint
            if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
                _evaluate(objective, state, val_batches, cfg, device, logger)
            if state.step % cfg.ckpt_every == 0 or state.step == cfg.steps:
                checkpoints.save(state, to_dict(cfg))
            if on_step_end is not None:
                on_step_end(state.step)
        if progress is not None:
            progress.close()
    return TrainResult(state.model, state.ema.model if state.ema is not None else None, state.step, state.history,
                       state.bad_steps, objective)


__all__ = ["BatchStream", "Checkpoints", "ClipSource", "EMA", "Objective", "StepOutput", "TrainConfig", "TrainResult",
           "TrainState", "TrainingHooks", "average_gradients", "export_model", "load_state", "lr_factor",
           "save_state", "seed_everything", "train"]
