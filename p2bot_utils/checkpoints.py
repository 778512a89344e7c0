"""Pickle-free checkpoints: safetensors for tensors, JSON for the rest, a CSV for the training log.

A checkpoint folder holds the weights, the optimizer and scheduler state, every process's RNG states and
the loop's ``state`` (data position, log), so a killed run resumes where it stopped and, on the same
machine, ends with bit-identical parameters. Used by ``training`` (supervised stages) and ``selfplay``.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import random
import shutil
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from accelerate.utils import broadcast_object_list, extract_model_from_parallel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from p2bot_utils.errors import CheckpointError, RunLockedError
from p2bot_utils.profile import atomic_write_json, atomic_write_text, file_digest


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


# --- checkpoints: a save survives a kill at any point, twice in a row --------------------------------------
# A save writes a fresh, uniquely named folder ``.<name>.tmp-<token>``, then a manifest (size and SHA-256 of
# every file) as its last file, then rotates: ``.<name>.prev`` goes to ``.<name>.trash-<token>``, ``<name>``
# goes to ``.<name>.prev``, the new folder becomes ``<name>``, and leftovers are deleted. At every moment at
# least one complete checkpoint (``<name>``, ``.<name>.prev`` or a finished temporary folder) is on disk; a load
# takes the newest one whose files match their manifest, with a warning when it skips one.
MANIFEST = "checkpoint_manifest.json"
_UNFINISHED = "unfinished save (no manifest)"
_AFTER_OP: Callable[[str], None] | None = None  # tests: called after each file operation of a save (crash matrix)


def _op(name: str) -> None:
    if _AFTER_OP is not None:
        _AFTER_OP(name)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return extract_model_from_parallel(model)


def _barrier(accelerator) -> None:
    if accelerator is not None:
        accelerator.wait_for_everyone()


def _token(accelerator) -> str:
    """A name part unique to this save, the same on every process."""
    token = [f"{os.getpid()}-{uuid.uuid4().hex[:8]}"]
    if accelerator is not None and accelerator.num_processes > 1:
        broadcast_object_list(token)
    return token[0]


def save_checkpoint(ckpt_dir: str | Path, model, optimizer=None, scheduler=None, state: dict | None = None, *,
                    accelerator=None) -> Path:
    """Write ``ckpt_dir``: ``model.safetensors``, ``optimizer`` (.safetensors + .json), ``scheduler.json``,
    ``rng-<rank>`` (.safetensors + .json), ``scaler.json`` (fp16), ``state.json`` (JSON-able ``state``; its
    ``log`` rows go to ``log.csv``) and last the manifest. No pickle anywhere; see the protocol above."""
    ckpt_dir = Path(ckpt_dir)
    token = _token(accelerator)
    tmp = ckpt_dir.with_name(f".{ckpt_dir.name}.tmp-{token}")
    rank, is_main = (accelerator.process_index, accelerator.is_main_process) if accelerator else (0, True)
    if is_main:
        tmp.mkdir(parents=True)
        _op("mkdir")
    _barrier(accelerator)
    rng_tensors, rng_meta = _rng_state()
    save_file(rng_tensors, str(tmp / f"rng-{rank}.safetensors"))
    _op(f"rng-{rank}.safetensors")
    atomic_write_json(tmp / f"rng-{rank}.json", rng_meta)
    _op(f"rng-{rank}.json")
    if is_main:
        _save_main_files(tmp, model, optimizer, scheduler, dict(state or {}), accelerator)
    _barrier(accelerator)
    if is_main:
        _finish_save(ckpt_dir, tmp, token)
    _barrier(accelerator)
    return ckpt_dir


def _save_main_files(tmp: Path, model, optimizer, scheduler, state: dict, accelerator) -> None:
    save_state_dict_safetensors(_unwrap(model).state_dict(), tmp / "model.safetensors")
    _op("model.safetensors")
    if optimizer is not None:
        tensors, meta = optimizer_state_to_tensors(optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        _op("optimizer.safetensors")
        atomic_write_json(tmp / "optimizer.json", meta)
        _op("optimizer.json")
    if scheduler is not None:
        atomic_write_json(tmp / "scheduler.json", scheduler.state_dict())
        _op("scheduler.json")
    if accelerator is not None and accelerator.scaler is not None:
        atomic_write_json(tmp / "scaler.json", accelerator.scaler.state_dict())
        _op("scaler.json")
    if "log" in state:
        write_log_csv(tmp / "log.csv", state.pop("log"))
        _op("log.csv")
    atomic_write_json(tmp / "state.json", state)
    _op("state.json")


def _finish_save(ckpt_dir: Path, tmp: Path, token: str) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": file_digest(p, "sha256")} for p in sorted(tmp.iterdir())}
    atomic_write_json(tmp / MANIFEST, {"files": files})
    _op("manifest")
    prev, trash = ckpt_dir.with_name(f".{ckpt_dir.name}.prev"), ckpt_dir.with_name(f".{ckpt_dir.name}.trash-{token}")
    if ckpt_dir.exists():
        if prev.exists():
            prev.rename(trash)
            _op("prev->trash")
        ckpt_dir.rename(prev)
        _op("current->prev")
    tmp.rename(ckpt_dir)
    _op("tmp->current")
    for kind in ("tmp", "trash"):  # the trash, and unfinished saves of killed runs
        for left in ckpt_dir.parent.glob(f".{ckpt_dir.name}.{kind}-*"):
            shutil.rmtree(left, ignore_errors=True)
    _op("cleanup")


def _candidates(ckpt_dir: Path) -> list[Path]:
    names = [ckpt_dir, ckpt_dir.with_name(f".{ckpt_dir.name}.prev"), ckpt_dir.with_name(f".{ckpt_dir.name}.old")]
    names += sorted(ckpt_dir.parent.glob(f".{ckpt_dir.name}.tmp-*")) if ckpt_dir.parent.is_dir() else []
    return [c for c in names if (c / "state.json").is_file()]


def checkpoint_problem(folder: Path, hashes: bool = True) -> str | None:
    """None when every file of ``folder`` matches its manifest, else what is wrong (naming the file). A
    checkpoint without a manifest (written before manifests existed) cannot be checked and is accepted."""
    man = folder / MANIFEST
    if not man.is_file():
        return None if ".tmp-" not in folder.name else f"{folder}: {_UNFINISHED}"
    try:
        files = json.loads(man.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, OSError):
        return f"{man}: unreadable manifest"
    for name, facts in files.items():
        p = folder / name
        if not p.is_file() or p.stat().st_size != facts["size"]:
            return f"{p}: missing or truncated ({p.stat().st_size if p.is_file() else 'no file'} bytes, " \
                   f"{facts['size']} written)"
        if hashes and file_digest(p, "sha256") != facts["sha256"]:
            return f"{p}: content changed since it was written (SHA-256 mismatch)"
    return None


def _step(folder: Path) -> float:
    """The saved step; an unreadable state.json sorts first, so that its damage is reported, not skipped quietly."""
    try:
        return int(json.loads((folder / "state.json").read_text(encoding="utf-8")).get("step", 0))
    except (ValueError, OSError, AttributeError):
        return math.inf


def find_checkpoint(ckpt_dir: str | Path, verify: bool = False) -> Path | None:
    """The newest checkpoint among ``ckpt_dir``, its previous one and the finished saves of a killed run (by
    the ``step`` in ``state.json``; sizes checked, and hashes too with ``verify``), else None. Finished
    checkpoints that are all damaged raise ``CheckpointError``: a run never restarts from step 0 silently; the
    unfinished save of a killed run is no checkpoint (skipped with a warning)."""
    ckpt_dir = Path(ckpt_dir)
    problems, unfinished = [], []
    for cand in sorted(_candidates(ckpt_dir), key=_step, reverse=True):
        problem = checkpoint_problem(cand, hashes=verify)
        if problem is None:
            if problems or unfinished:
                warnings.warn(f"skipped unfinished or damaged checkpoint(s): {'; '.join(problems + unfinished)}; "
                              f"resuming from {cand}")
            return cand
        (unfinished if problem.endswith(_UNFINISHED) else problems).append(problem)
    if problems:
        raise CheckpointError(f"{ckpt_dir}: no complete checkpoint ({'; '.join(problems)}); "
                              f"delete {ckpt_dir.parent} to start afresh")
    if unfinished:
        warnings.warn(f"skipped the unfinished save of a killed run ({'; '.join(unfinished)}); starting afresh")
    return None


def load_checkpoint(ckpt_dir: str | Path, model, optimizer=None, scheduler=None, *, accelerator=None) -> dict:
    """Restore the newest complete checkpoint (every file checked against its manifest) into the given objects
    (and this process's RNG states); returns the saved ``state`` dict with its ``log`` rows."""
    found = find_checkpoint(ckpt_dir, verify=True)
    if found is None:
        raise CheckpointError(f"{ckpt_dir}: no checkpoint (state.json missing)")
    try:
        _unwrap(model).load_state_dict(load_state_dict_safetensors(found / "model.safetensors"))
    except RuntimeError as e:
        raise CheckpointError(f"{found / 'model.safetensors'}: weights do not fit the model: "
                              f"{str(e).splitlines()[0]}") from None
    if optimizer is not None:
        meta = _read_json(found / "optimizer.json")
        try:
            optimizer.load_state_dict(optimizer_state_from_tensors(load_file(str(found / "optimizer.safetensors")),
                                                                   meta))
        except ValueError as e:  # e.g. other trainable layers than when the checkpoint was written
            raise CheckpointError(f"{found}: optimizer state does not fit this run's trainable parameters "
                                  f"({str(e).splitlines()[0]}); delete {ckpt_dir} to start afresh") from None
    if scheduler is not None:
        scheduler.load_state_dict(_read_json(found / "scheduler.json"))
    if accelerator is not None and accelerator.scaler is not None and (found / "scaler.json").is_file():
        accelerator.scaler.load_state_dict(_read_json(found / "scaler.json"))
    rank = accelerator.process_index if accelerator else 0
    if (found / f"rng-{rank}.safetensors").is_file():
        _set_rng_state(load_file(str(found / f"rng-{rank}.safetensors")), _read_json(found / f"rng-{rank}.json"))
    state = _read_json(found / "state.json")
    state["log"] = _read_log_csv(found / "log.csv")
    return state


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None


# --- one run per output folder ----------------------------------------------------------------------------
@contextmanager
def run_lock(out_dir: str | Path, enabled: bool = True):
    """Hold ``out_dir/.lock`` (an OS file lock, released when the process ends, even by a kill) while a run
    writes there; a second run on the same folder stops at once with ``RunLockedError``."""
    if not enabled:
        yield
        return
    path = Path(out_dir) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise RunLockedError(f"{out_dir}: another run is writing there (pid {f.read().strip() or '?'}); wait for "
                                 f"it to finish or give this run another folder") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
