"""Pickle-free checkpoints: safetensors for tensors, JSON for the rest, a CSV for the training log.

A checkpoint folder holds the weights, the optimizer and scheduler state, every process's RNG states and
the loop's ``state`` (data position, log), so a killed run resumes where it stopped and, on the same
machine, ends with bit-identical parameters. Used by ``training`` (supervised stages) and ``selfplay``.
"""
from __future__ import annotations

import csv
import io
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import extract_model_from_parallel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from p2bot_utils.profile import atomic_write_json, atomic_write_text


# --- pickle-free serialisation -----------------------------------------------------------------------------
def save_state_dict_safetensors(state_dict: dict[str, torch.Tensor], path: str | Path,
                                metadata: dict[str, str] | None = None) -> Path:
    """Write a state dict with ``safetensors.torch.save_file``. Tied tensors (same storage, offset, shape and
    stride, e.g. GPT's ``lm_head.weight`` = ``wte.weight``) are stored once, the other names kept as aliases in
    the metadata; tensors that only partly overlap are cloned."""
    tensors, aliases, seen, storages = {}, {}, {}, set()
    for name, t in state_dict.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{path}: state_dict[{name!r}] is a {type(t).__name__}, not a tensor")
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        key = (t.device, ptr, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if ptr is not None and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        t = t.detach().to("cpu").contiguous()
        tensors[name] = t.clone() if ptr in storages else t
        storages.add(ptr)
    meta = {"format": "pt", **(metadata or {}), "aliases": json.dumps(aliases, sort_keys=True)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return Path(path)


def load_state_dict_safetensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Inverse of ``save_state_dict_safetensors``: every name back, aliases pointing at the same tensor."""
    with safe_open(str(path), framework="pt", device=device) as f:
        meta = f.metadata() or {}
        out = {k: f.get_tensor(k) for k in f.keys()}
    for alias, target in json.loads(meta.get("aliases", "{}")).items():
        out[alias] = out[target]
    return out


def optimizer_state_to_tensors(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors ``state.<param>.<name>`` (for safetensors) and a JSON-able
    rest (non-tensor per-parameter values and ``param_groups`` hyper-parameters)."""
    tensors, scalars = {}, {}
    for pid, pstate in state_dict["state"].items():
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_state_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of ``optimizer_state_to_tensors`` (JSON lists in ``param_groups`` become tuples, e.g. betas)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, values in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}  # (5056,) uint8
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(keys.astype(np.int64))  # (624,) MT19937 words
    return tensors, {"python": random.getstate(), "numpy": [name, pos, has_gauss, gauss]}


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        if f"cuda.{i}" in tensors:
            torch.cuda.set_rng_state(tensors[f"cuda.{i}"], i)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))


def write_log_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _read_log_csv(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = list(csv.DictReader(path.read_text(encoding="utf-8").splitlines()))
    return [{k: _parse_cell(v) for k, v in r.items()} for r in rows]


def _parse_cell(text: str) -> Any:
    """CSV cell back to what was written: int ("3"), float ("0.5", "1.0", "nan"), None (""), else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None if text == "" else text


# --- checkpoints -------------------------------------------------------------------------------------------
def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return extract_model_from_parallel(model)


def _barrier(accelerator) -> None:
    if accelerator is not None:
        accelerator.wait_for_everyone()


def save_checkpoint(ckpt_dir: str | Path, model, optimizer=None, scheduler=None, state: dict | None = None, *,
                    accelerator=None) -> Path:
    """Write ``ckpt_dir`` atomically (a temp folder renamed into place): ``model.safetensors``, ``optimizer``
    (.safetensors + .json), ``scheduler.json``, ``rng-<rank>`` (.safetensors + .json), ``scaler.json`` (fp16),
    ``state.json`` (JSON-able ``state``; its ``log`` rows go to ``log.csv``). No pickle anywhere."""
    ckpt_dir = Path(ckpt_dir)
    tmp = ckpt_dir.with_name(f".{ckpt_dir.name}.tmp")
    rank, is_main = (accelerator.process_index, accelerator.is_main_process) if accelerator else (0, True)
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier(accelerator)
    rng_tensors, rng_meta = _rng_state()
    save_file(rng_tensors, str(tmp / f"rng-{rank}.safetensors"))
    atomic_write_json(tmp / f"rng-{rank}.json", rng_meta)
    if is_main:
        _save_main_files(tmp, model, optimizer, scheduler, dict(state or {}), accelerator)
    _barrier(accelerator)
    if is_main:
        old = ckpt_dir.with_name(f".{ckpt_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if ckpt_dir.exists():
            ckpt_dir.rename(old)
        tmp.rename(ckpt_dir)
        shutil.rmtree(old, ignore_errors=True)
    _barrier(accelerator)
    return ckpt_dir


def _save_main_files(tmp: Path, model, optimizer, scheduler, state: dict, accelerator) -> None:
    save_state_dict_safetensors(_unwrap(model).state_dict(), tmp / "model.safetensors")
    if optimizer is not None:
        tensors, meta = optimizer_state_to_tensors(optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        atomic_write_json(tmp / "optimizer.json", meta)
    if scheduler is not None:
        atomic_write_json(tmp / "scheduler.json", scheduler.state_dict())
    if accelerator is not None and accelerator.scaler is not None:
        atomic_write_json(tmp / "scaler.json", accelerator.scaler.state_dict())
    if "log" in state:
        write_log_csv(tmp / "log.csv", state.pop("log"))
    atomic_write_json(tmp / "state.json", state)


def find_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """``ckpt_dir`` if it holds a checkpoint, else the previous one left by a save killed mid-rename, else None."""
    ckpt_dir = Path(ckpt_dir)
    for cand in (ckpt_dir, ckpt_dir.with_name(f".{ckpt_dir.name}.old")):
        if (cand / "state.json").is_file():
            return cand
    return None


def load_checkpoint(ckpt_dir: str | Path, model, optimizer=None, scheduler=None, *, accelerator=None) -> dict:
    """Restore what ``save_checkpoint`` wrote into the given objects (and this process's RNG states); returns
    the saved ``state`` dict with its ``log`` rows."""
    found = find_checkpoint(ckpt_dir)
    if found is None:
        raise FileNotFoundError(f"{ckpt_dir}: no checkpoint (state.json missing)")
    try:
        _unwrap(model).load_state_dict(load_state_dict_safetensors(found / "model.safetensors"))
    except RuntimeError as e:
        raise ValueError(f"{found / 'model.safetensors'}: weights do not fit the model: "
                         f"{str(e).splitlines()[0]}") from None
    if optimizer is not None:
        meta = json.loads((found / "optimizer.json").read_text(encoding="utf-8"))
        try:
            optimizer.load_state_dict(optimizer_state_from_tensors(load_file(str(found / "optimizer.safetensors")),
                                                                   meta))
        except ValueError as e:  # e.g. other trainable layers than when the checkpoint was written
            raise ValueError(f"{found}: optimizer state does not fit this run's trainable parameters "
                             f"({str(e).splitlines()[0]}); delete {ckpt_dir} to start afresh") from None
    if scheduler is not None:
        scheduler.load_state_dict(json.loads((found / "scheduler.json").read_text(encoding="utf-8")))
    if accelerator is not None and accelerator.scaler is not None and (found / "scaler.json").is_file():
        accelerator.scaler.load_state_dict(json.loads((found / "scaler.json").read_text(encoding="utf-8")))
    rank = accelerator.process_index if accelerator else 0
    if (found / f"rng-{rank}.safetensors").is_file():
        _set_rng_state(load_file(str(found / f"rng-{rank}.safetensors")),
                       json.loads((found / f"rng-{rank}.json").read_text(encoding="utf-8")))
    state = json.loads((found / "state.json").read_text(encoding="utf-8"))
    state["log"] = _read_log_csv(found / "log.csv")
    return state
