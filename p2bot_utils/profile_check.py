"""Checks every value of a profile by type and range before anything runs (``profile.load_params`` calls it).

A wrong key, type or value is a ``ConfigError`` that names the file and the key. The reference for keys and
types is ``configs/smoke.yaml`` (every profile defines the same keys, tests/test_project.py); ranges and choices
are the table below. Of the project it imports only ``errors``.
"""
from __future__ import annotations

import difflib
import math
import re
from fnmatch import fnmatch
from typing import Any

from p2bot_utils.errors import ConfigError

MODES = ("original", "revised")
PARTS = ("train", "dev", "test", "all")
RESERVED = {"extends"}  # a profile may name another one it builds on
CHOICES = {
    "transmitter_mode": MODES, "selfplay_mode": MODES, "transmitter_nup_loss": ("binary", "softmax"), "transmitter_optimizer": ("adamw", "adam"),
    "transmitter_optimizer_impl": ("fused", "for_loop"),
    "transmitter_scheduler": ("linear", "constant"), "transmitter_mixed_precision": ("no", "bf16", "fp16"),
    "selfplay_user_decoding": ("beam", "greedy"), "selfplay_reward_preset": ("paper", "released_code"),
    "receiver_distractor": ("persona", "combination"), "probe_mrr_pool": ("candidates", "all"),
    "eval_split": PARTS, "probe_part": PARTS,
}
LIST_CHOICES = {"receiver_train_modes": MODES, "probe_modes": MODES, "selfplay_variants": ("rs1", "rs1_rs2", "p2bot")}
_POS, _NONNEG = (lambda v: v > 0, "> 0"), (lambda v: v >= 0, ">= 0")
_ONE = (lambda v: v >= 1, ">= 1")
_UNIT = (lambda v: 0 <= v <= 1, "in [0, 1]")
RANGES = [  # (key pattern, test, what it must be); the first matching pattern applies
    ("*_max_steps", lambda v: v == -1 or v >= 1, "-1 (use num_epochs) or >= 1"),
    ("receiver_train_layers", lambda v: v == -1 or v >= 1, "-1 (all) or >= 1"),
    ("selfplay_eval_batch_size", *_NONNEG),  # 0 = selfplay_batch_size
    ("*_head_dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("*_n_candidates", lambda v: v >= 2, ">= 2"),
    ("*_lr", *_POS), ("*_temperature", *_POS), ("*_tau_start", *_POS), ("*_tau_end", *_POS),
    ("*_alpha", *_UNIT), ("*_gamma", *_UNIT),
    *[(p, *_ONE) for p in ("*_batch_size", "*_grad_accum", "*_num_epochs", "*_log_every", "*_max_len",
                           "*_max_length", "*_max_reply_tokens", "*_max_new_tokens", "*_num_beams", "*_n_turns",
                           "*_n_dialogues", "*_eval_dialogues", "*_nup_distractors", "*_hard_k")],
    *[(p, *_NONNEG) for p in ("seed", "*_save_every", "*_warmup_steps", "*_weight_decay", "*_max_grad_norm",
                              "*_max_turns", "*_gen_turns", "*_top_k", "*_trainable_layers", "*_coef", "*_margin",
                              "*_l1_beta", "*_n_samples", "*_human_n", "*_show_turns", "*_n_examples_shown",
                              "*_index")],
]


def _where(source: str, key: str) -> str:
    return f"{source}: {key}"


def _typed(source: str, key: str, value: Any, like: Any) -> Any:
    """``value`` as the type of the reference value ``like`` (YAML reads 1e-4 as a string: a number is fine)."""
    want = type(like)
    bad = ConfigError(f"{_where(source, key)}: expected {_name(like)}, got {value!r}")
    if want is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if want in (int, float):
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        if want is int:
            if value != int(value):
                raise bad
            return int(value)
        return float(value)
    if want is str:
        if not isinstance(value, str):
            raise bad
        return value
    if want is list:
        if not isinstance(value, list):
            raise bad
        return value
    return value


def _name(like: Any) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string (quoted)",
            list: "a list [...]"}.get(type(like), type(like).__name__)


def _check_value(source: str, key: str, value: Any) -> None:
    where = _where(source, key)
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(CHOICES[key])}")
    if key in LIST_CHOICES and (not value or any(v not in LIST_CHOICES[key] for v in value)):
        raise ConfigError(f"{where}: {value!r} must be a non-empty list of {', '.join(LIST_CHOICES[key])}")
    if key == "device" and not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(value)):
        raise ConfigError(f"{where}: {value!r} is not auto, cpu, cuda, cuda:N or mps")
    if key == "split_fractions" and (len(value) != 3 or not all(isinstance(v, (int, float)) and v >= 0 for v in value)
                                     or abs(sum(value) - 1) > 1e-6):
        raise ConfigError(f"{where}: {value!r} must be three numbers >= 0 (train, dev, test) that sum to 1")
    if key == "selfplay_reward_weights" and (len(value) != 3 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in value)):
        raise ConfigError(f"{where}: {value!r} must be three numbers >= 0 (λ1, λ2, λ3 of Eq. 10)")
    if key == "probe_tau_grid" and (not value or not all(isinstance(v, (int, float)) and v > 0 for v in value)):
        raise ConfigError(f"{where}: {value!r} must be a non-empty list of numbers > 0")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for pattern, ok, what in RANGES:
            if fnmatch(key, pattern):
                if not ok(value):
                    raise ConfigError(f"{where}: {value!r} must be {what}")
                break


def check_params(params: dict[str, Any], reference: dict[str, Any], source: str,
                 unknown_ok: bool = False) -> dict[str, Any]:
    """``params`` with every value checked against ``reference`` (keys and types) and the range table; numbers
    written as strings are converted. Unknown keys are errors (with the closest known key) unless
    ``unknown_ok`` (then they pass unchecked)."""
    out = {}
    for key, value in params.items():
        if key in RESERVED or (unknown_ok and key not in reference):
            out[key] = value
            continue
        if key not in reference:
            close = difflib.get_close_matches(key, list(reference), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{_where(source, key)}: unknown key{hint}")
        out[key] = _typed(source, key, value, reference[key])
        _check_value(source, key, out[key])
    return out
