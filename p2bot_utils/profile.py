"""Profiles (``configs/<name>.yaml``), output folders, seeding, atomic writes and run manifests.

Nothing here knows about models or data formats; notebooks call these to stay honest about where a
number comes from (profile, data source, split, commit, machine).
"""
from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

PROFILES = ("smoke", "demo", "paper")


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


def load_params(profile_or_path: str | os.PathLike) -> dict[str, Any]:
    """Read a profile's parameter file: a name from ``PROFILES`` or a path to a YAML file."""
    p = Path(profile_or_path)
    if not p.suffix:
        p = repo_root() / "configs" / f"{profile_or_path}.yaml"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such profile file (profiles: {', '.join(PROFILES)})")
    params = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{p}: a profile must be a mapping of parameter names to values")
    return params


def notebook_parameters(notebook: str | os.PathLike) -> list[str]:
    """Names assigned at the top level of a notebook's cell tagged ``parameters`` (what papermill may set)."""
    import ast

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


def notebook_params_main(argv: list[str]) -> int:
    """``notebook-params PROFILE NOTEBOOK OUT``: write to OUT the profile's values of the parameters NOTEBOOK
    declares (run_all.sh hands papermill only those). A profile key that no notebook beside NOTEBOOK declares
    is an error: a misspelt key would otherwise be dropped without a word."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m p2bot_utils notebook-params")
    ap.add_argument("profile", help="profile name or YAML path")
    ap.add_argument("notebook")
    ap.add_argument("out", help="YAML file to write (papermill -f)")
    args = ap.parse_args(argv)
    try:
        params = load_params(args.profile)
        nb = Path(args.notebook)
        declared_anywhere = {k for other in sorted(nb.parent.glob("*.ipynb")) for k in notebook_parameters(other)}
        unknown = sorted(set(params) - declared_anywhere)
        if unknown:
            raise ValueError(f"{args.profile}: {', '.join(unknown)} set by the profile but declared by no "
                             f"notebook's parameters cell in {nb.parent}/ (misspelt?)")
        mine = set(notebook_parameters(nb))
    except (OSError, ValueError, SyntaxError) as e:
        print(f"notebook-params: {e}", file=sys.stderr)
        return 2
    keep = {k: v for k, v in params.items() if k in mine}
    atomic_write_text(args.out, yaml.safe_dump(keep, allow_unicode=True, sort_keys=False))
    return 0


def output_dirs(profile: str, data_source: str, root: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """``results/<profile>/`` and ``figures/<profile>/``; a run on the shipped sample writes to
    ``<profile>-sample`` so it never overwrites results computed on real data."""
    root = Path(root) if root is not None else repo_root()
    name = profile if data_source == "real" else f"{profile}-sample"
    res, fig = root / "results" / name, root / "figures" / name
    res.mkdir(parents=True, exist_ok=True)
    fig.mkdir(parents=True, exist_ok=True)
    return res, fig


def runs_dir(profile: str, data_source: str, root: str | os.PathLike | None = None) -> Path:
    """Checkpoints and trained models: ``runs/<profile>[-sample]/`` (ignored by git)."""
    root = Path(root) if root is not None else repo_root()
    d = root / "runs" / (profile if data_source == "real" else f"{profile}-sample")
    d.mkdir(parents=True, exist_ok=True)
    return d


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices) once per notebook."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(device: str = "auto") -> str:
    """``auto`` = CUDA when available, else CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# --- atomic writes: a reader never sees a half-written file ------------------------------------------
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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


def machine_info() -> dict[str, Any]:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def update_manifest(results_dir: str | os.PathLike, notebook: str, params: dict[str, Any],
                    wall_time_s: float | None = None, **facts: Any) -> Path:
    """Record, per notebook, what produced the files in ``results_dir``: commit, profile parameters, data
    source and split, models, machine and wall time. Merges into ``manifest.json``."""
    path = Path(results_dir) / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"notebooks": {}}
    manifest["notebooks"][notebook] = {
        "commit": git_commit(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
        "wall_time_s": None if wall_time_s is None else round(wall_time_s, 1), "params": params, **facts,
    }
    return atomic_write_json(path, manifest)
