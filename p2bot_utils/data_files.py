"""Finding, downloading and verifying PERSONA-CHAT / ConvAI2 files (no parsing here: see ``data``).

Search order of ``locate_data_dir``: explicit argument, env ``P2BOT_DATA_DIR``, ``<repo>/data/``, then a
download of ParlAI's ``convai2_fix_723.tgz`` into ``<repo>/data/`` (SHA-256 checked before it is kept).
Official sizes and MD5s of the files the project reads ship in ``p2bot_utils/checksums.json``.
"""
from __future__ import annotations

import json
import sys
import os
import re
import tarfile
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from p2bot_utils.profile import file_digest, repo_root

ENV_VAR = "P2BOT_DATA_DIR"
ARCHIVE_NAME = "convai2_fix_723.tgz"
ARCHIVE_URL = "http://parl.ai/downloads/convai2/convai2_fix_723.tgz"
CHECKSUMS_PATH = Path(__file__).with_name("checksums.json")
# ParlAI text files (``valid_both_original_no_cands.txt``) and Hugging Face's ``personachat_self_original.json``
DATA_FILE_RE = re.compile(r"^(?:(train|valid|test)_(self|other|both|none)_(original|revised)(_no_cands)?\.txt"
                          r"|personachat_self_(original|revised)\.json)$")


VERDICTS = {True: "official (size+MD5 match)", False: "partial/modified copy (differs from the official size/MD5)",
            None: "no official facts"}


class ChecksumError(ValueError):
    """A downloaded file does not match its official size / checksum (the file has been deleted)."""


def known_facts(path: str | os.PathLike = CHECKSUMS_PATH) -> dict[str, dict]:
    """Official facts keyed by file name (``valid_both_original.txt`` -> ``{"bytes", "md5"[, "sha256"]}``)."""
    files = json.loads(Path(path).read_text(encoding="utf-8"))["files"]
    return {Path(name).name: facts for name, facts in files.items()}


def matches_facts(path: str | os.PathLike, facts: dict) -> bool:
    """Size first (cheap), then every digest the facts name (``md5``, ``sha256``)."""
    if Path(path).stat().st_size != facts["bytes"]:
        return False
    return all(file_digest(path, algo) == facts[algo] for algo in ("md5", "sha256") if facts.get(algo))


def verify_file(path: str | os.PathLike, facts: dict[str, dict] | None = None) -> bool | None:
    """True: the file is the official one (size + MD5); False: a partial or modified copy; None: no facts
    are known for this file name."""
    f = (known_facts() if facts is None else facts).get(Path(path).name)
    return None if f is None else matches_facts(path, f)


def describe_verification(path: str | os.PathLike, facts: dict[str, dict] | None = None) -> str:
    """One word-ish verdict for tables and ``info``: official / partial/modified copy / no official facts."""
    return VERDICTS[verify_file(path, facts)]


def find_convai2_dir(d: str | os.PathLike) -> Path | None:
    """``d`` itself or ``d/ConvAI2`` when it holds data files (see ``DATA_FILE_RE``), else None."""
    for cand in (Path(d), Path(d) / "ConvAI2"):
        if cand.is_dir() and any(DATA_FILE_RE.match(p.name) for p in cand.iterdir()):
            return cand
    return None


def fetch_url(url: str, dest: str | os.PathLike, timeout: float = 30.0) -> None:
    """Stream ``url`` to ``dest`` with a tqdm progress bar (urllib; raises ``OSError`` when offline)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=Path(dest).name) as bar:
            while block := resp.read(1 << 20):
                out.write(block)
                bar.update(len(block))


def download_archive(dest_dir: str | os.PathLike, url: str = ARCHIVE_URL, facts: dict | None = None) -> Path:
    """Download the ConvAI2 archive into ``dest_dir`` and keep it only if its size and SHA-256 match.

    Writes ``.<name>.part`` first; on a mismatch the partial file is deleted and ``ChecksumError`` raised."""
    facts = known_facts()[ARCHIVE_NAME] if facts is None else facts
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest, part = dest_dir / ARCHIVE_NAME, dest_dir / f".{ARCHIVE_NAME}.part"
    try:
        fetch_url(url, part)
        if not matches_facts(part, facts):
            raise ChecksumError(f"{url}: downloaded file does not match the official size/SHA-256 "
                                f"({facts['bytes']} bytes, sha256 {facts.get('sha256')}); deleted it")
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest


def extract_archive(archive: str | os.PathLike, dest_dir: str | os.PathLike,
                    facts: dict[str, dict] | None = None) -> dict[str, str]:
    """Unpack the data files of the archive into ``dest_dir/ConvAI2/`` (as ParlAI does; tarfile's safe
    ``data`` filter) and verify each with the official facts; returns ``{file name: verdict}``."""
    dest_dir = Path(dest_dir)
    with tarfile.open(archive, "r:*") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and DATA_FILE_RE.match(Path(m.name).name)]
        prefixed = bool(members) and all(Path(m.name).parts[-2:-1] == ("ConvAI2",) for m in members)
        target = dest_dir if prefixed else dest_dir / "ConvAI2"
        tar.extractall(target, members=members, filter="data")
    files = [target / m.name for m in members]
    return {p.name: VERDICTS[ok] for p in files if (ok := verify_file(p, facts)) is not None}


def _checked(p: str | os.PathLike, origin: str) -> Path:
    d = find_convai2_dir(Path(p).expanduser())
    if d is None:
        raise FileNotFoundError(f"{p} (from {origin}): no PERSONA-CHAT / ConvAI2 files there or under ConvAI2/ "
                                f"(expected names like valid_both_original_no_cands.txt)")
    return d


def locate_data_dir(explicit: str | os.PathLike | None = None, download: bool = True, *,
                    root: str | os.PathLike | None = None, facts: dict[str, dict] | None = None
                    ) -> tuple[Path | None, str]:
    """Find the data: ``explicit`` -> ``$P2BOT_DATA_DIR`` -> ``<root>/data`` -> download (if allowed).

    Returns ``(folder holding the files, how it was found)`` with how in ``explicit | env | local | download``,
    or ``(None, "none")`` after printing ONE line saying what to set, so the caller can use the sample."""
    if explicit:
        return _checked(explicit, "argument"), "explicit"
    if os.environ.get(ENV_VAR):
        return _checked(os.environ[ENV_VAR], ENV_VAR), "env"
    local = Path(root if root is not None else repo_root()) / "data"
    if (d := find_convai2_dir(local)) is not None:
        return d, "local"
    hint = f"set {ENV_VAR}=/path/to/ConvAI2 (or put the files in {local})"
    archive = local / ARCHIVE_NAME
    how = "local" if archive.is_file() else "download"
    if not archive.is_file() and download:
        try:
            download_archive(local, facts=None if facts is None else facts[ARCHIVE_NAME])
        except (OSError, ChecksumError) as e:  # offline (URLError is an OSError) or a bad download
            print(f"no PERSONA-CHAT / ConvAI2 data ({type(e).__name__}: {e}); {hint}", file=sys.stderr)
            return None, "none"
    if not archive.is_file():
        print(f"no PERSONA-CHAT / ConvAI2 data found and download disabled; {hint}", file=sys.stderr)
        return None, "none"
    for name, verdict in extract_archive(archive, local, facts).items():
        if not verdict.startswith("official"):
            print(f"warning: {name}: {verdict}", file=sys.stderr)
    return find_convai2_dir(local), how
