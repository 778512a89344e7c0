"""The training loop shared by the Transmitter and the Receiver (checkpoints: ``checkpoints``).

One loop for every supervised stage, built on Hugging Face ``accelerate`` so the same code runs in a notebook
on one CPU / GPU and under ``accelerate launch`` on several GPUs: AdamW / Adam, linear or constant schedule
with warmup, gradient clipping, gradient accumulation, mixed precision.

Data order: each epoch is a fresh permutation (``torch.Generator`` seeded ``seed + epoch``) cut into
micro-batches of ``batch_size`` (the last may be short). One optimizer step takes ``grad_accum`` micro-batches
on each of the ``num_processes`` processes; micro-batches left at the end of an epoch that cannot fill a whole
step (fewer than ``grad_accum * num_processes``; none when both are 1) are skipped.

Checkpoints (``out_dir/checkpoint/``) hold only safetensors + JSON (+ the CSV log): weights, optimizer and
scheduler state, RNG states and the data position, so a killed run resumes where it stopped and, on the same
machine, ends with bit-identical parameters.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from p2bot_utils.checkpoints import find_checkpoint, load_checkpoint, run_lock, save_checkpoint, write_log_csv
from p2bot_utils.errors import CheckpointError
from p2bot_utils.profile import timed_phase

_CHOICES = {"optimizer": ("adamw", "adam"), "scheduler": ("linear", "constant"),
            "mixed_precision": ("no", "bf16", "fp16"), "optimizer_impl": ("fused", "for_loop")}
# fields that change the arithmetic: a checkpoint written under other values cannot be resumed
_RESUME_KEYS = ("lr", "num_epochs", "max_steps", "batch_size", "grad_accum", "max_grad_norm", "warmup_steps",
                "weight_decay", "optimizer", "scheduler", "seed")


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run. Build it from a flat profile with
    ``TrainConfig.from_params(params, "transmitter_", out_dir=...)``; every field has a ``help`` string."""

    out_dir: str = field(metadata={"help": "run folder: checkpoint/ and the CSV log live here"})
    lr: float = _f(5e-5, "peak learning rate")
    num_epochs: int = _f(1, "passes over the examples (ignored when max_steps > 0)")
    max_steps: int = _f(-1, "optimizer steps to take; -1 = num_epochs worth of steps")
    batch_size: int = _f(8, "examples per micro-batch and process")
    grad_accum: int = _f(1, "micro-batches accumulated per optimizer step")
    max_grad_norm: float = _f(1.0, "clip the global gradient L2 norm to this; 0 = no clipping")
    warmup_steps: int = _f(0, "optimizer steps of linear warmup from 0 to lr")
    weight_decay: float = _f(0.0, "decoupled (adamw) / L2 (adam) weight decay on matrices, never on biases/norms")
    optimizer: str = _f("adamw", "adamw | adam")
    optimizer_impl: str = _f("fused", "fused: PyTorch's one-kernel Adam(W) on CPU / CUDA (the optimizer step 5x faster "
                             "on 2 CPU cores) | for_loop: its per-parameter loop. The same update rule; the "
                             "rounding differs, so the weights drift apart by float error")
    scheduler: str = _f("linear", "linear: decay to 0 at the last step | constant (both after warmup)")
    save_every: int = _f(500, "checkpoint every N optimizer steps (and always at the end); 0 = only at the end")
    log_every: int = _f(10, "write one CSV log row every N optimizer steps (and at the last step)")
    seed: int = _f(0, "seeds the data order (seed + epoch) and, on a fresh start, the global RNGs")
    mixed_precision: str = _f("no", "no | bf16 | fp16 (accelerate autocast; fp16 adds a gradient scaler)")
    log_csv: str = _f("", "CSV log path; '' = <out_dir>/train_log.csv")

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, _coerce(f.name, f.type, getattr(self, f.name)))
        checks = [
            ("out_dir", self.out_dir != "", "must name a folder"),
            ("lr", math.isfinite(self.lr) and self.lr > 0, "must be a finite number > 0"),
            ("num_epochs", self.num_epochs >= 1 or self.max_steps > 0, "must be >= 1 (or set max_steps > 0)"),
            ("max_steps", self.max_steps == -1 or self.max_steps >= 1, "must be -1 (use num_epochs) or >= 1"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("grad_accum", self.grad_accum >= 1, "must be >= 1"),
            ("max_grad_norm", self.max_grad_norm >= 0, "must be >= 0 (0 = no clipping)"),
            ("warmup_steps", self.warmup_steps >= 0, "must be >= 0"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("save_every", self.save_every >= 0, "must be >= 0 (0 = only at the end)"),
            ("log_every", self.log_every >= 1, "must be >= 1"),
        ] + [(k, getattr(self, k) in v, f"must be one of {', '.join(v)}") for k, v in _CHOICES.items()]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: {why}")

    @property
    def log_path(self) -> Path:
        return Path(self.log_csv) if self.log_csv else Path(self.out_dir) / "train_log.csv"

    @classmethod
    def from_params(cls, params: dict[str, Any], prefix: str, **overrides: Any) -> "TrainConfig":
        """Read ``<prefix><field>`` keys (e.g. ``transmitter_lr``) of a flat profile; missing keys keep their
        defaults, ``seed`` falls back to the shared ``seed`` key, keyword ``overrides`` win over both."""
        prefix = prefix if not prefix or prefix.endswith("_") else prefix + "_"
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"TrainConfig.from_params: unknown override(s) {unknown}; fields: {sorted(names)}")
        kwargs = {n: params[prefix + n] for n in names if prefix + n in params}
        if "seed" not in kwargs and "seed" in params:
            kwargs["seed"] = params["seed"]
        kwargs.update(overrides)
        if "out_dir" not in kwargs:
            raise ValueError(f"TrainConfig.from_params: no '{prefix}out_dir' in params; pass out_dir=...")
        return cls(**kwargs)


def _coerce(name: str, type_name: Any, value: Any) -> Any:
    """YAML reads ``1e-4`` as a string and ``2.0`` as a float: convert to the field's type, or fail in one line."""
    kind = {"float": float, "int": int, "str": str}[str(type_name)]
    if name == "max_steps" and value is None:
        return -1
    try:
        if kind is str:
            return str(value) if isinstance(value, (str, Path)) else _fail()
        if isinstance(value, bool):
            _fail()
        number = float(value)
        if kind is int and number != int(number):
            _fail()
        return int(number) if kind is int else number
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"TrainConfig.{name}={value!r}: expected {kind.__name__}") from None


def _fail() -> Any:
    raise TypeError


@dataclass
class TrainResult:
    """``steps``: optimizer steps reached; ``log``: every CSV row so far; ``final_loss``: mean loss of the last
    step; ``stopped``: the run ended on ``stop_after_steps`` before the last step; ``resumed_from``: step of the
    checkpoint it started from (0 = fresh); ``mixed_precision``: the precision it trained in
    (``applied_precision``)."""

    steps: int
    log: list[dict[str, Any]]
    final_loss: float
    stopped: bool = False
    resumed_from: int = 0
    mixed_precision: str = "no"


# --- the loop ----------------------------------------------------------------------------------------------
CPU_AUTOCAST_ENV = "P2BOT_CPU_AUTOCAST"


def applied_precision(requested: str) -> str:
    """The precision a run trains in: the requested one on a GPU; on a CPU full precision ("no"), unless
    ``P2BOT_CPU_AUTOCAST=1``. bf16 / fp16 mixed precision is a GPU speed feature; on a CPU without bf16
    matrix units (this project's AVX2 machines) autocast emulates it many times slower than fp32 (one
    paper-dryrun optimizer step of the 12 × 768 GPT took about 200 s in bf16), and fp32 is no less exact.
    Said on stderr when it happens; ``TrainResult.mixed_precision`` and the manifests record it."""
    if requested == "no" or torch.cuda.is_available() or os.environ.get(CPU_AUTOCAST_ENV) == "1":
        return requested
    print(f"training: {requested} mixed precision asked for, but this is a CPU: training in fp32 "
          f"(set {CPU_AUTOCAST_ENV}=1 to force autocast)", file=sys.stderr)
    return "no"


def _make_accelerator(config: TrainConfig):
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState

    precision = applied_precision(config.mixed_precision)
    previous = AcceleratorState._shared_state.get("_mixed_precision")
    if previous is not None and previous != precision:
        if PartialState().num_processes > 1:  # cannot re-initialise a distributed state
            raise ValueError(f"TrainConfig.mixed_precision={config.mixed_precision!r}: this process already "
                             f"trains with {previous!r}; use one precision per launch")
        AcceleratorState._reset_state()  # one process: a notebook may train stages in different precisions
    return Accelerator(mixed_precision=precision, gradient_accumulation_steps=config.grad_accum)


def _build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on matrices only (dim >= 2), never on biases / norm gains; trainable parameters only."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train: the model has no trainable parameters (requires_grad is False everywhere)")
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls([g for g in groups if g["params"]], lr=config.lr, **adam_impl(params, config.optimizer_impl))


def adam_impl(params, impl: str = "fused") -> dict:
    """``torch.optim.Adam(W)`` keywords for ``impl``: ``fused`` where PyTorch has the fused kernel (floating
    parameters on CPU or CUDA), else its per-parameter loop (``for_loop``, also the fallback)."""
    if impl not in ("fused", "for_loop"):
        raise ValueError(f"optimizer_impl={impl!r}: must be one of fused, for_loop")
    params = list(params)
    fusable = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return {"fused": True} if impl == "fused" and fusable else {"foreach": False}


def _build_scheduler(optimizer, config: TrainConfig, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """lr factor at step s: s / warmup during warmup, then 1 (constant) or (total - s) / (total - warmup)
    (linear; same formula as transformers' ``get_linear_schedule_with_warmup``)."""
    warm = config.warmup_steps

    def factor(s: int) -> float:
        if s < warm:
            return s / max(1, warm)
        return 1.0 if config.scheduler == "constant" else max(0.0, (total - s) / max(1, total - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    """Deterministic example order of one epoch: a permutation seeded ``seed + epoch``."""
    return tuple(torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist())


def _step_batches(order: tuple[int, ...], first_micro: int, config: TrainConfig, rank: int,
                  num_processes: int) -> list[tuple[int, ...]]:
    """Example indices of this process's ``grad_accum`` micro-batches of the step starting at ``first_micro``."""
    b, a = config.batch_size, config.grad_accum
    start = first_micro + rank * a
    return [order[m * b:(m + 1) * b] for m in range(start, start + a)]


@dataclass
class _Run:
    """Mutable position of a run; everything but ``t0`` goes into the checkpoint's state.json."""

    step: int = 0
    epoch: int = 0
    micro: int = 0  # micro-batches of this epoch consumed by all processes together
    window: dict = field(default_factory=lambda: {"sums": {}, "steps": 0, "examples": 0})
    log: list = field(default_factory=list)
    last_loss: float = float("nan")
    t0: float = field(default_factory=time.perf_counter)


@dataclass
class _Ctx:
    acc: Any
    model: Any
    optimizer: Any
    scheduler: Any
    examples: Sequence
    collate_fn: Callable
    loss_fn: Callable
    config: TrainConfig
    total: int
    micro_per_epoch: int  # micro-batches used per epoch (a multiple of grad_accum * num_processes)


def _optimizer_step(ctx: _Ctx, batches: list[tuple[int, ...]], progress: float) -> dict[str, float]:
    """Forward / backward over this process's micro-batches, clip, step; returns the step's scalars averaged
    over micro-batches and processes, plus ``lr`` (of this step) and ``grad_norm`` (before clipping)."""
    from accelerate.utils import send_to_device

    acc, sums = ctx.acc, {}
    for idx in batches:
        batch = send_to_device(ctx.collate_fn([ctx.examples[i] for i in idx]), acc.device)
        with acc.accumulate(ctx.model):
            with acc.autocast():
                out = ctx.loss_fn(ctx.model, batch, progress)
            if not isinstance(out, dict) or "loss" not in out:
                raise ValueError(f"train: loss_fn must return a dict with key 'loss', got {type(out).__name__}"
                                 f" {list(out) if isinstance(out, dict) else ''}")
            acc.backward(out["loss"])
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + torch.as_tensor(v).detach().float().to(acc.device)
    assert acc.sync_gradients, "accumulation out of step with accelerate's counter"
    max_norm = ctx.config.max_grad_norm if ctx.config.max_grad_norm > 0 else float("inf")
    grad_norm = acc.clip_grad_norm_(ctx.model.parameters(), max_norm)
    lr = ctx.optimizer.param_groups[0]["lr"]
    ctx.optimizer.step()
    if not acc.optimizer_step_was_skipped:  # fp16 overflow: keep the schedule in step with real updates
        ctx.scheduler.step()
    ctx.optimizer.zero_grad()
    keys = list(sums)
    values = torch.stack([sums[k] for k in keys] + [torch.as_tensor(grad_norm, device=acc.device).float()])
    values = (acc.reduce(values, "mean") if acc.num_processes > 1 else values).tolist()  # (K + 1,)
    scalars = {k: v / len(batches) for k, v in zip(keys, values[:-1])}
    return {"lr": lr, **scalars, "grad_norm": values[-1]}


def _record(ctx: _Ctx, run: _Run, scalars: dict[str, float], n_examples: int) -> None:
    """Add one step to the log window; write a CSV row every ``log_every`` steps and at the last step."""
    loss = scalars["loss"]
    if not math.isfinite(loss):
        raise FloatingPointError(f"train: loss is {loss} at step {run.step} (epoch {run.epoch}); "
                                 f"lower TrainConfig.lr or check the batch")
    run.last_loss = loss
    w = run.window
    for k, v in scalars.items():
        w["sums"][k] = w["sums"].get(k, 0.0) + v
    w["steps"], w["examples"] = w["steps"] + 1, w["examples"] + n_examples
    if run.step % ctx.config.log_every and run.step != ctx.total:
        return
    means = {k: v / w["steps"] for k, v in w["sums"].items()}
    epoch = run.epoch + run.micro / ctx.micro_per_epoch
    row = {"step": run.step, "epoch": round(epoch, 4), "lr": means.pop("lr"), "loss": means.pop("loss"),
           **{k: v for k, v in means.items() if k != "grad_norm"}, "grad_norm": means["grad_norm"],
           "examples_per_s": w["examples"] / max(time.perf_counter() - run.t0, 1e-9)}
    run.log.append(row)
    run.window, run.t0 = {"sums": {}, "steps": 0, "examples": 0}, time.perf_counter()
    if ctx.acc.is_main_process:
        write_log_csv(ctx.config.log_path, run.log)


def _state(ctx: _Ctx, run: _Run, n_examples: int) -> dict:
    return {"step": run.step, "epoch": run.epoch, "micro_batch": run.micro, "total_steps": ctx.total,
            "window": run.window, "last_loss": run.last_loss, "log": list(run.log), "n_examples": n_examples,
            "num_processes": ctx.acc.num_processes, "config": asdict(ctx.config), "format": 1}


def _resume(ctx: _Ctx, ckpt: Path, n_examples: int) -> _Run:
    state = load_checkpoint(ckpt, ctx.model, ctx.optimizer, ctx.scheduler, accelerator=ctx.acc)
    saved = {**state["config"], "n_examples": state["n_examples"], "num_processes": state["num_processes"]}
    now = {**asdict(ctx.config), "n_examples": n_examples, "num_processes": ctx.acc.num_processes}
    for key in (*_RESUME_KEYS, "n_examples", "num_processes"):
        if saved[key] != now[key]:
            raise CheckpointError(f"{ckpt}: checkpoint was written with {key}={saved[key]!r} but this run has "
                             f"{now[key]!r}; delete the checkpoint or use another TrainConfig.out_dir")
    run = _Run(step=state["step"], epoch=state["epoch"], micro=state["micro_batch"], window=state["window"],
               log=state["log"], last_loss=state["last_loss"])
    if ctx.acc.is_main_process:  # drop rows logged after the checkpoint by the killed run
        write_log_csv(ctx.config.log_path, run.log)
    return run


def train(model: torch.nn.Module, examples: Sequence, collate_fn: Callable[[list], Any],
          loss_fn: Callable[[torch.nn.Module, Any, float], dict[str, torch.Tensor]], config: TrainConfig, *,
          stop_after_steps: int | None = None) -> TrainResult:
    """Train ``model`` in place on ``examples``; resume from ``config.out_dir/checkpoint`` when it exists.

    ``collate_fn(list of examples) -> batch`` (moved to the device by accelerate); ``loss_fn(model, batch,
    progress) -> {"loss": scalar tensor, other scalars...}`` with ``progress`` = optimizer step / total steps.
    ``stop_after_steps=N`` stops (as if killed) after N optimizer steps of this call, leaving only the periodic
    checkpoints behind. Saving the final model is the caller's job."""
    from accelerate.utils import set_seed

    n = len(examples)
    if stop_after_steps is not None and (not isinstance(stop_after_steps, int) or stop_after_steps < 0):
        raise ValueError(f"train: stop_after_steps={stop_after_steps!r} must be None or an int >= 0")
    acc = _make_accelerator(config)
    per_step = config.grad_accum * acc.num_processes
    micro_per_epoch = (math.ceil(n / config.batch_size) // per_step) * per_step
    if micro_per_epoch == 0:
        raise ValueError(f"train: {n} examples cannot fill one optimizer step of {per_step} micro-batches "
                         f"(batch_size={config.batch_size}, grad_accum={config.grad_accum}, processes="
                         f"{acc.num_processes}); lower TrainConfig.batch_size or grad_accum")
    total = config.max_steps if config.max_steps > 0 else config.num_epochs * micro_per_epoch // per_step
    set_seed(config.seed, device_specific=True)  # fresh start; a resume restores the saved RNG states
    optimizer = _build_optimizer(model, config)
    scheduler = _build_scheduler(optimizer, config, total)
    was_training = model.training
    model.train()
    prepared, optimizer = acc.prepare(model, optimizer)
    ctx = _Ctx(acc, prepared, optimizer, scheduler, examples, collate_fn, loss_fn, config, total, micro_per_epoch)
    ckpt = Path(config.out_dir) / "checkpoint"
    with run_lock(config.out_dir, enabled=acc.is_main_process):  # one run per folder
        run = _resume(ctx, ckpt, n) if find_checkpoint(ckpt) else _Run()
        resumed_from = run.step
        _loop(ctx, run, n, stop_after_steps)
    acc.unwrap_model(prepared, keep_fp32_wrapper=False)  # drop accelerate's autocast wrapper from forward
    model.train(was_training)
    return TrainResult(steps=run.step, log=list(run.log), final_loss=run.last_loss, mixed_precision=acc.mixed_precision,
                       stopped=run.step < total, resumed_from=resumed_from)


@timed_phase("training")
def _loop(ctx: _Ctx, run: _Run, n: int, stop_after_steps: int | None) -> None:
    acc, cfg = ctx.acc, ctx.config
    per_step = cfg.grad_accum * acc.num_processes
    bar = tqdm(total=ctx.total, initial=run.step, desc=f"train {Path(cfg.out_dir).name}", dynamic_ncols=True,
               disable=not acc.is_local_main_process)
    taken, run.t0 = 0, time.perf_counter()
    while run.step < ctx.total and taken != stop_after_steps:
        if run.micro >= ctx.micro_per_epoch:
            run.epoch, run.micro = run.epoch + 1, 0
        order = _epoch_order(n, cfg.seed, run.epoch)
        batches = _step_batches(order, run.micro, cfg, acc.process_index, acc.num_processes)
        scalars = _optimizer_step(ctx, batches, progress=run.step / ctx.total)
        run.step, run.micro, taken = run.step + 1, run.micro + per_step, taken + 1
        _record(ctx, run, scalars, n_examples=sum(map(len, batches)) * acc.num_processes)
        if (cfg.save_every and run.step % cfg.save_every == 0) or run.step == ctx.total:
            save_checkpoint(Path(cfg.out_dir) / "checkpoint", ctx.model, ctx.optimizer, ctx.scheduler,
                            _state(ctx, run, n), accelerator=acc)
        bar.update(1)
        bar.set_postfix(loss=f"{run.last_loss:.4f}", epoch=run.epoch)
    bar.close()
