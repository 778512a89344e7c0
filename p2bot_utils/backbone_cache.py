"""The conversion cache shared by the backbones: one folder per converted or generated artefact, built in a
temporary sibling and renamed into place with a marker file written last (``backbones``, ``paper_backbones``).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

CACHE_MARKER = "p2bot_cache.json"  # written last inside a cache folder: its presence = complete


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$P2BOT_CACHE_DIR``, else ``~/.cache/p2bot_utils`` (created)."""
    path = Path(cache_dir or os.environ.get("P2BOT_CACHE_DIR") or Path.home() / ".cache" / "p2bot_utils")
    path = path.expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_valid(folder: Path, identity: dict) -> bool:
    marker = folder / CACHE_MARKER
    if not marker.is_file():
        return False
    recorded = json.loads(marker.read_text(encoding="utf-8"))
    return all(recorded.get(k) == v for k, v in identity.items())


def build_atomically(dest: Path, build, identity: dict) -> Path:
    """Run ``build(tmp_folder) -> facts`` in a temp folder beside ``dest``, write the marker, then rename:
    a crash never leaves a half cache, and of two racing builders the first rename wins."""
    if dest.exists() and not cache_valid(dest, identity):  # stale or hand-damaged: move aside, rebuild
        trash = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.stale-"))
        os.replace(dest, trash / dest.name)
        shutil.rmtree(trash, ignore_errors=True)
    if dest.exists():
        return dest
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        facts = build(tmp)
        (tmp / CACHE_MARKER).write_text(json.dumps({**identity, **facts}, indent=2) + "\n", encoding="utf-8")
        _make_readable(tmp)
        os.rename(tmp, dest)
    except OSError:
        if not cache_valid(dest, identity):  # not a lost race: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _make_readable(folder: Path) -> None:
    """mkdtemp makes 0700 folders: open the finished cache to other users like a normal download."""
    folder.chmod(0o755)
    for f in folder.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)


