"""A faster ``nn.Linear`` for decoding on a CPU: same weights, same state dict, same result.

``F.linear(x, W)`` computes ``x @ W.T`` with ``W`` stored (out, in). On the CPU this project is timed on
(PyTorch 2.13's CPU build, 2 threads, Intel Xeon with AVX-512), a matrix product whose left side has 4-63
rows (one row per beam or per sampled dialogue while decoding) runs 1.4-5.8x slower with the right side
transposed than with it stored (in, out) contiguously; 1-3 rows and 64 or more are as fast either way
(2 rows slower with the copy). ``python -m p2bot_utils bench linear`` measures both, e.g. 16 rows through
SmolLM2-135M's 576 -> 1536 MLP: 45 vs 216 GFLOP/s.

``install(module)`` turns every ``nn.Linear`` inside ``module`` into a ``RowsLinear`` (its class only: the
parameters, their names and the saved files do not change). Without gradient, on a CPU, for 4-63 fp32 rows,
it multiplies by a transposed copy of the weight kept beside it; that copy is made again whenever the weight
changes (a new tensor, or an in-place optimizer step: PyTorch's version counter). Everything else (training,
a GPU, one row, many rows) calls ``F.linear`` as before. The products are the same sums of the same
numbers; tests/test_cpu_linear.py checks the outputs agree to float rounding.
"""
from __future__ import annotations

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
    """``nn.Linear`` that, when ``uses_copy(x)``, computes ``x @ W_t (+ b)`` with ``W_t`` = the weight
    transposed and contiguous (cached; rebuilt when the weight changes). Otherwise exactly ``nn.Linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if w.dtype != x.dtype or not uses_copy(x):
            return F.linear(x, w, self.bias)
        key = (w.data_ptr(), w._version, tuple(w.shape), w.dtype)
        cached = self.__dict__.get("_weight_t")
        if cached is None or cached[0] != key:
            cached = (key, w.detach().t().contiguous())
            self.__dict__["_weight_t"] = cached  # a plain attribute: not a buffer, never saved
        y = x @ cached[1]
        return y if self.bias is None else y + self.bias


def install(module: nn.Module) -> int:
    """Make every plain ``nn.Linear`` in ``module`` a ``RowsLinear`` in place; returns how many changed."""
    n = 0
    for m in module.modules():
        if type(m) is nn.Linear:
            m.__class__ = RowsLinear
            n += 1
    return n


def drop_copies(module: nn.Module) -> None:
    """Free the transposed copies (they are rebuilt on the next decoding step that needs one)."""
    for m in module.modules():
        m.__dict__.pop("_weight_t", None)
