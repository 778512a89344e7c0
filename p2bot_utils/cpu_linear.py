"""A faster ``nn.Linear`` for decoding on a CPU: same weights, same state dict, same result.

``F.linear(x, W)`` computes ``x @ W.T`` with ``W`` stored (out, in). On the CPU this project is timed on
(PyTorch 2.13's CPU build, 2 threads, Intel Xeon with AVX-512), a matrix product whose left side has 4-63
rows (one row per beam or per sampled dialogue while decoding) runs 1.4-5.8x slower with the right side
transposed than with it stored (in, out) contiguously; 1-3 rows and 64 or more are as fast either way
(2 rows slower with the copy). ``python -m p2bot_utils bench linear`` measures both, e.g. 16 rows through
SmolLM2-135M's 576 -> 1536 MLP: 45 vs 216 GFLOP/s.

``install(module)`` turns every ``nn.Linear`` inside ``module`` into a ``RowsLinear`` (its class only: the
parameters, their names and the saved files do not change). Inside ``with transposed_copies(module):`` (the
decoding loops open one around each beam search and each sampled reply), without gradient, on a CPU, for
4-63 fp32 rows, a ``RowsLinear`` multiplies by a transposed copy of its weight made on first use; leaving the
scope frees the copies. The weights must not change inside a scope; between scopes they may change in any
way: a copy never outlives its scope. (A cache checked against the weight's version counter is not safe:
PyTorch's fused Adam updates weights in place WITHOUT bumping that counter.) Everywhere else (training,
a GPU, 1-3 or 64+ rows, outside a scope) it is ``F.linear``. The products are the same sums of the same
numbers; tests/test_cpu_linear.py checks the outputs agree to float rounding.
"""
from __future__ import annotations

import itertools
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

MIN_ROWS, MAX_ROWS = 4, 63  # where the transposed product is slow (bench linear: 1-3 and >= 64 rows are not)


def _rows(x: torch.Tensor) -> int:
    return x.numel() // x.shape[-1] if x.dim() and x.shape[-1] else 0


def uses_copy(x: torch.Tensor) -> bool:
    """True when ``RowsLinear`` multiplies ``x`` by its transposed copy (no gradient, CPU, fp32, 4-63 rows)."""
    return (not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == torch.float32
            and MIN_ROWS <= _rows(x) <= MAX_ROWS)


class RowsLinear(nn.Linear):
    """``nn.Linear`` that, inside ``transposed_copies`` and when ``uses_copy(x)``, computes ``x @ W_t (+ b)``
    with ``W_t`` = the weight transposed and contiguous, made once per scope. Otherwise exactly ``nn.Linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, scope = self.weight, self.__dict__.get("_scope")
        if scope not in _OPEN or w.dtype != x.dtype or not uses_copy(x):
            return F.linear(x, w, self.bias)
        cached = self.__dict__.get("_weight_t")
        if cached is None or cached[0] != scope:  # e.g. a deep copy made inside another scope
            cached = self.__dict__["_weight_t"] = (scope, w.detach().t().contiguous())  # never saved
        y = x @ cached[1]
        return y if self.bias is None else y + self.bias


_OPEN: set[int] = set()  # the scopes now open
_NEXT = itertools.count(1)


@contextmanager
def transposed_copies(module: nn.Module):
    """Let the ``RowsLinear`` layers of ``module`` use transposed weight copies until the block ends (then
    freed). A layer already in an open scope keeps that one's copy (nesting). A copy is valid only in the
    scope that made it, so one carried by ``copy.deepcopy`` is never reused. Do not change the weights
    inside the block."""
    scope = next(_NEXT)
    layers = [m for m in module.modules() if isinstance(m, RowsLinear) and m.__dict__.get("_scope") not in _OPEN]
    for m in layers:
        m.__dict__["_scope"] = scope
        m.__dict__.pop("_weight_t", None)
    _OPEN.add(scope)
    try:
        yield
    finally:
        _OPEN.discard(scope)
        for m in layers:
            m.__dict__.pop("_scope", None)
            m.__dict__.pop("_weight_t", None)


def install(module: nn.Module) -> int:
    """Make every plain ``nn.Linear`` in ``module`` a ``RowsLinear`` in place; returns how many changed."""
    n = 0
    for m in module.modules():
        if type(m) is nn.Linear:
            m.__class__ = RowsLinear
            n += 1
    return n
