"""The episode model every reader produces, and the dialogue views built on it (no I/O, no model code).

``SILENCE`` is ConvAI2's placeholder partner utterance when the own speaker opens a dialogue; every view
drops it. This module is near the bottom of the package: of the project it imports only ``errors``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from p2bot_utils.errors import UserError

SILENCE = "__SILENCE__"
MODES = ("original", "revised")


class DataFormatError(UserError):
    """Bad input file; the message names the file and (1-based) line: ``path:line: what is wrong``."""


@dataclass(frozen=True)
class Turn:
    """One turn pair seen from the episode's own speaker.

    ``partner`` is what the partner said (``"__SILENCE__"`` when the own speaker opens the dialogue),
    ``reply`` is the own speaker's answer; ``candidates`` holds 20 replies with the gold LAST
    (empty tuple when the file had none and none were sampled yet).
    """

    partner: str
    reply: str
    candidates: tuple[str, ...] = ()


@dataclass(frozen=True)
class Episode:
    """One dialogue from one speaker's side.

    ``own_persona`` / ``partner_persona``: persona sentences (``partner_persona`` is empty for
    ``self``/``none`` variants). ``candidate_source``: ``"official"`` (from the file), ``"sampled"``
    (drawn by ``sample_candidates``) or ``"none"``. ``episode_id`` is stable: ``"<file stem>:<index>"``.
    """

    episode_id: str
    own_persona: tuple[str, ...]
    partner_persona: tuple[str, ...]
    turns: tuple[Turn, ...]
    candidate_source: str = "none"
    meta: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class PersonaEntry:
    """One persona of the pool; ``group`` lets a caller avoid drawing a variant of the same persona."""

    group: str
    sentences: tuple[str, ...]


def is_silence(utterance: str) -> bool:
    """True for an empty utterance or ConvAI2's ``__SILENCE__`` placeholder."""
    return not utterance.strip() or utterance.strip() == SILENCE


def episode_turns(episode: Episode) -> list[tuple[list[str], list[str], str, tuple]]:
    """(own persona, history, gold reply, candidates) of every turn; history = all earlier utterances of both
    speakers plus the partner's current one (``__SILENCE__`` dropped)."""
    out, hist = [], []
    for turn in episode.turns:
        if not is_silence(turn.partner):
            hist.append(turn.partner)
        out.append((list(episode.own_persona), list(hist), turn.reply, tuple(turn.candidates)))
        hist.append(turn.reply)
    return out
