"""Profiles (``configs/<name>.yaml``), output folders, seeding, atomic writes and run manifests.

Nothing here knows about models or data formats; notebooks call these to stay honest about where a
number comes from (profile, data source, split, commit, machine).
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from p2bot_utils import cpu_memory
from p2bot_utils.errors import ConfigError
from p2bot_utils.profile_check import check_params

PROFILES = ("smoke", "demo", "paper", "paper-dryrun")


def repo_root() -> Path:
    """The project folder (the one holding ``configs/``), also when run from ``notebooks/`` or ``build/``."""
    here = Path(__file__).resolve().parent.parent
    if (here / "configs").is_dir():
        return here
    cwd = Path.cwd().resolve()
    for p in (cwd, *cwd.parents):
        if (p / "configs").is_dir() and (p / "p2bot_utils").is_dir():
            return p
    return cwd


def load_params(profile_or_path: str | os.PathLike, check: bool = True, unknown_ok: bool = False) -> dict[str, Any]:
    """Read a profile's parameter file: a name from ``PROFILES`` or a path to a YAML file. Every value is
    checked by type and range against ``configs/smoke.yaml`` and ``profile_check`` (``check=False`` skips it;
    ``unknown_ok`` lets keys the reference lacks through); a problem is a ``ConfigError`` naming file and key."""
    p = Path(profile_or_path)
    if not p.suffix:
        p = repo_root() / "configs" / f"{profile_or_path}.yaml"
    if not p.is_file():
        raise ConfigError(f"{p}: no such profile file (profiles: {', '.join(PROFILES)})")
    params = _read_yaml(p)
    if "extends" in params:  # a profile built on another (paper-dryrun extends paper): its keys, then these
        base = str(params.pop("extends"))
        params = {**load_params(base if Path(base).suffix else p.parent / f"{base}.yaml", check=False), **params}
    if check:
        reference = _read_yaml(repo_root() / "configs" / "smoke.yaml")
        params = check_params(params, reference, str(p), unknown_ok)
    return params


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: unreadable ({e})") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: a profile must be a mapping of parameter names to values")
    return params


def notebook_parameters(notebook: str | os.PathLike) -> list[str]:
    """Names assigned at the top level of a notebook's cell tagged ``parameters`` (what papermill may set)."""
    nb = Path(notebook)
    try:
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{nb}: not a readable notebook ({e})") from None
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"{nb}: {len(tagged)} cells tagged 'parameters', want exactly 1")
    names = []
    for node in ast.parse("".join(tagged[0]["source"])).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def output_dirs(profile: str, data_source: str, root: str | os.PathLike | None = None, results_dir: str = "",
                figures_dir: str = "") -> tuple[Path, Path]:
    """``results/<profile>/`` and ``figures/<profile>/`` (created), or the ``results_dir`` / ``figures_dir``
    given (a notebook's parameters; "" = the default). A run on the shipped sample writes to
    ``<profile>-sample`` so it never overwrites results computed on real data."""
    root = Path(root) if root is not None else repo_root()
    name = profile if data_source == "real" else f"{profile}-sample"
    res = Path(results_dir) if results_dir else root / "results" / name
    fig = Path(figures_dir) if figures_dir else root / "figures" / name
    res.mkdir(parents=True, exist_ok=True)
    fig.mkdir(parents=True, exist_ok=True)
    return res, fig


def runs_dir(profile: str, data_source: str, root: str | os.PathLike | None = None) -> Path:
    """Checkpoints and trained models: ``runs/<profile>[-sample]/`` (ignored by git)."""
    root = Path(root) if root is not None else repo_root()
    d = root / "runs" / (profile if data_source == "real" else f"{profile}-sample")
    d.mkdir(parents=True, exist_ok=True)
    return d


# --- where each model of a run lives: the one place these folder names are spelled -------------------------
MODEL_FOLDERS = {
    ("transmitter", "full"): "transmitter",  # P²Bot-S (notebook 01)
    ("transmitter", "no_next"): "transmitter-no_next",  # −Next
    ("transmitter", "no_persona"): "transmitter-no_persona",  # −Persona
    ("receiver", ""): "receiver",  # notebook 02
    ("selfplay", "rs1"): "selfplay-rs1",  # +RS.1 (notebook 03)
    ("selfplay", "rs1_rs2"): "selfplay-rs1_rs2",  # +RS.1+RS.2
    ("selfplay", "p2bot"): "selfplay-p2bot",  # +RS.1+RS.2+RS.3 = P²Bot
}


def model_folder(kind: str, variant: str = "") -> str:
    """The folder name of one model under a run root: ``kind`` transmitter | receiver | selfplay."""
    variant = variant or ("full" if kind == "transmitter" else "")
    if (kind, variant) not in MODEL_FOLDERS:
        raise ValueError(f"profile.model_folder: no model ({kind!r}, {variant!r}); known: {sorted(MODEL_FOLDERS)}")
    return MODEL_FOLDERS[(kind, variant)]


def training_dir(model_dir: str | os.PathLike) -> Path:
    """Where a model trains (checkpoint, settings, lock) before it is saved whole to ``model_dir``: the sibling
    ``<model_dir>.train`` (inside ``model_dir`` it would be swept away by the atomic save)."""
    model_dir = Path(model_dir)
    return model_dir.with_name(f"{model_dir.name}.train")


class RunPaths:
    """Every model folder of one run under ``root`` (``runs/<profile>[-sample]/`` by default)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunPaths({str(self.root)!r})"

    def transmitter(self, variant: str = "full") -> Path:
        """A trained Transmitter variant (``full`` = P²Bot-S, ``no_next``, ``no_persona``)."""
        return self.root / model_folder("transmitter", variant)

    def training(self, variant: str = "full") -> Path:
        """A Transmitter variant's training folder (checkpoint, settings) while it trains."""
        return training_dir(self.transmitter(variant))

    def receiver(self) -> Path:
        return self.root / model_folder("receiver")

    def selfplay(self, variant: str) -> Path:
        """A self-play policy (``rs1``, ``rs1_rs2``, ``p2bot``); its checkpoint lives inside while it trains."""
        return self.root / model_folder("selfplay", variant)


SHARED_PARAMS = ("profile", "seed", "data_dir", "use_sample", "persona_clusters", "split_fractions", "device",
                 "results_dir", "figures_dir")


def notebook_params(namespace: dict[str, Any], *prefixes: str) -> dict[str, Any]:
    """A notebook's parameters for its manifest, read from its ``globals()`` right after the parameters cell:
    the shared keys it declares and every name starting with one of ``prefixes``. Seeds the RNGs with
    ``seed`` (``set_seed``), as every notebook does first."""
    params = {k: v for k, v in namespace.items()
              if k in SHARED_PARAMS or (prefixes and k.startswith(prefixes) and not k.startswith("_"))}
    set_seed(params.get("seed", 0))
    phase_seconds(reset=True)  # the manifest's seconds per phase count from here
    return params


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices) once per notebook."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(device: str = "auto") -> str:
    """``auto`` = CUDA when available, else CPU. On a CPU the process also keeps the memory it frees
    (``cpu_memory.keep_freed_memory``: no page faults on every step's fresh tensors; same arithmetic)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        cpu_memory.keep_freed_memory()
    return device


def file_digest(path: str | os.PathLike, algo: str = "md5", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks (data checksums: MD5; checkpoint manifests: SHA-256)."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --- atomic writes: a reader never sees a half-written file ------------------------------------------
def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would make it (0644); mkstemp gives 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def staged_dir(dest: str | os.PathLike):
    """Write a whole folder, then put it in place: yields a fresh temporary sibling of ``dest``; on success it
    replaces ``dest`` (an old ``dest`` is moved aside first and deleted last), on an error it is removed. A
    kill never leaves a half-written ``dest`` that looks whole."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    os.chmod(tmp, 0o777 & ~_umask())  # as mkdir() would make it (0755); mkdtemp gives 0700
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_figure(fig, path_stem: str | os.PathLike, formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Save a matplotlib figure as PNG (and PDF) atomically; returns the written paths."""
    import io

    out = []
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150, bbox_inches="tight")
        out.append(atomic_write_bytes(Path(f"{path_stem}.{fmt}"), buf.getvalue()))
    return out


SAMPLE_WARNING = "SHIPPED SYNTHETIC SAMPLE, NOT PERSONA-CHAT: these numbers say nothing about the paper"


def write_table(df, path_stem: str | os.PathLike, floatfmt: str = ".2f") -> tuple[Path, Path]:
    """Write a pandas DataFrame as CSV and Markdown (``<stem>.csv``, ``<stem>.md``), atomically. Into a
    ``<profile>-sample`` folder (``output_dirs`` on the shipped sample) every table says so: a ``data_warning``
    column in the CSV and a first line in the Markdown."""
    md_text = df.to_markdown(index=False, floatfmt=floatfmt) + "\n"
    if Path(path_stem).parent.name.endswith("-sample"):
        df = df.assign(data_warning=SAMPLE_WARNING)
        md_text = f"**{SAMPLE_WARNING}.**\n\n{md_text}"
    csv = atomic_write_text(f"{path_stem}.csv", df.to_csv(index=False))
    md = atomic_write_text(f"{path_stem}.md", md_text)
    return csv, md


# --- manifest ------------------------------------------------------------------------------------------
def git_commit(root: str | os.PathLike | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root or repo_root(), capture_output=True,
                             text=True, timeout=10)
        commit = out.stdout.strip() or "unknown"
        # outputs (results/, figures/) do not count: a run rewrites the committed ones as it goes
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)results", ":(exclude)figures"], cwd=root or repo_root(),
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    """The CPU's name (Linux ``/proc/cpuinfo``, else ``platform.processor()``): the same core count on another CPU
    model is another machine (the demo's ranking took 633 s on 2 cores of a Xeon with AVX-512, 1069 s on 2 cores
    with AVX2 only)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # AVX2 / AVX512 / ...
            "torch": torch.__version__, "cuda": torch.cuda.is_available(),
            "malloc_keeps_freed_memory": cpu_memory.is_applied()}  # pick_device("cpu") applied it
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# --- where the time goes: seconds per phase, recorded by the library's loops, written by update_manifest ---
_PHASES: dict[str, float] = {}
_OPEN: list[list] = []  # [name, seconds spent in phases nested inside it]


@contextmanager
def timed_phase(name: str):
    """Add the seconds spent inside to phase ``name`` (training, ranking, generation, self-play rollouts,
    rewards, probing, ...). Exclusive: time inside a nested phase counts for the inner one only, so the
    phases add up to at most the wall time. ``notebook_params`` starts a notebook's clock at zero and
    ``update_manifest`` writes it (``phase_seconds``). Also a decorator: ``@timed_phase("ranking")``."""
    start = time.perf_counter()
    _OPEN.append([name, 0.0])
    try:
        yield
    finally:
        _, inner = _OPEN.pop()
        total = time.perf_counter() - start
        _PHASES[name] = _PHASES.get(name, 0.0) + total - inner
        if _OPEN:
            _OPEN[-1][1] += total


def phase_seconds(reset: bool = False) -> dict[str, float]:
    """Seconds per phase since the last reset (``reset=True`` starts the clock again at zero)."""
    out = {k: round(v, 1) for k, v in sorted(_PHASES.items(), key=lambda kv: -kv[1])}
    if reset:
        _PHASES.clear()
    return out


def update_manifest(results_dir: str | os.PathLike, notebook: str, params: dict[str, Any],
                    wall_time_s: float | None = None, **facts: Any) -> Path:
    """Record, per notebook, what produced the files in ``results_dir``: commit, profile parameters, data
    source and split, models, machine, wall time and the seconds per phase (``timed_phase``; "other" is the
    rest of the wall time: loading, tables, figures). Merges into ``manifest.json``."""
    phases = phase_seconds()
    if wall_time_s is not None:
        phases["other"] = round(max(wall_time_s - sum(phases.values()), 0.0), 1)
    path = Path(results_dir) / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"notebooks": {}}
    manifest["notebooks"][notebook] = {
        "commit": git_commit(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
        "wall_time_s": None if wall_time_s is None else round(wall_time_s, 1), "phase_seconds": phases,
        "params": relative_paths(params), **relative_paths(facts),
    }
    return atomic_write_json(path, manifest)


def relative_paths(obj: Any, root: str | os.PathLike | None = None) -> Any:
    """``obj`` (dicts, lists, tuples, strings) with every absolute path that exists made relative to the repository
    (``runs/demo/transmitter``, ``../shared/data/...``), so that a committed manifest names no one's home."""
    root = Path(root or repo_root()).resolve()
    if isinstance(obj, dict):
        return {k: relative_paths(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(relative_paths(v, root) for v in obj)
    if isinstance(obj, str) and os.path.isabs(obj) and (os.path.exists(obj) or Path(obj).is_relative_to(root)):
        return os.path.relpath(obj, root)  # a path on this machine (or one to come in the repository), not a text
    return obj
