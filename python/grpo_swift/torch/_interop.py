"""Zero-copy hand-over of torch tensors to the native kernels.

A contiguous CPU tensor of float32, float64 or float16 is passed as the numpy view of its
own storage (`tensor.detach().numpy()` shares memory); bfloat16, which numpy has no dtype
for, is passed as the int16 view of the same bits and read as bfloat16 in Swift. No
`.float()` copy happens on this path. A non-contiguous tensor is made contiguous once
(one copy, the only one). Tensors on another device are refused with a TypeError saying
the kernels run on CPU. Tensors that require grad are read through `.detach()`, which
shares storage and leaves the autograd graph untouched.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from .. import _native

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

DTYPE_CODE = {
    torch.float32: _native.F32,
    torch.float64: _native.F64,
    torch.bfloat16: _native.BF16,
    torch.float16: _native.F16,
}


def _dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(t, func: str, arg: str, *, dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
                 ndim: tuple[int, ...] | None = None) -> torch.Tensor:
    """Validates a tensor argument: a torch.Tensor on CPU with an accepted dtype and ndim.

    Returns it contiguous (a copy only when it was not)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{func}(): argument '{arg}' must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_cpu:
        raise TypeError(f"{func}(): argument '{arg}' is on device '{t.device}', but grpo_swift kernels "
                        f"run on CPU; move it with {arg}.cpu() (and the result back with .to(device))")
    if t.dtype not in dtypes:
        raise TypeError(f"{func}(): argument '{arg}' must have dtype {_dtype_names(dtypes)}, got "
                        f"{str(t.dtype).replace('torch.', '')}")
    if ndim is not None and t.dim() not in ndim:
        want = " or ".join(f"{d}-D" for d in ndim)
        raise ValueError(f"{func}(): argument '{arg}' must be {want}, got shape {tuple(t.shape)}")
    if not t.is_contiguous():
        t = t.contiguous()  # documented: the one copy, for strided inputs
    if not torch.compiler.is_compiling() and t.is_neg():  # (traced graphs get resolved values)
        t = t.resolve_neg()  # a lazily negated view (torch._neg_view): its storage holds -x
    return t


def buffer_of(t: torch.Tensor) -> np.ndarray:
    """A numpy array sharing `t`'s storage (bfloat16 as int16 bits, bool as uint8). `t` must be
    contiguous CPU."""
    if t.requires_grad:
        t = t.detach()
    dtype = t.dtype
    if dtype == torch.bfloat16:
        t = t.view(torch.int16)
    elif dtype == torch.bool:
        t = t.view(torch.uint8)
    return t.numpy()


# The torch objects the C fast paths compare against (grpo_swift._native does not import torch),
# in the order of the R_*/A_* indices of python/src/native_torch.c.
TORCH_REGISTRY = (
    torch.Tensor, torch.nn.Parameter,
    torch.float32, torch.float64, torch.bfloat16, torch.float16,
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.empty, torch.strided,
    "dtype", "is_cpu", "shape", "is_contiguous", "data_ptr", "requires_grad", "is_neg", "layout",
)


def dtype_code(t: torch.Tensor) -> int:
    return DTYPE_CODE[t.dtype]


def kernel_op(name: str, impl: Callable, fake: Callable, *, backward: Optional[Callable] = None,
              setup_context: Optional[Callable] = None) -> Any:
    """Registers a CPU kernel wrapper as the torch.library custom op `name` (`impl` computes real
    outputs, `fake` their shapes and dtypes for tracing; `backward` / `setup_context` its autograd
    formula, as torch.library.register_autograd takes them).

    The pattern every torch-facing kernel of grpo_swift follows: the op is what
    `torch.compile(fullgraph=True)` puts in the graph (no graph break, `torch.library.opcheck`
    clean); eager calls skip the dispatcher, whose Python costs more than the kernels take at small
    sizes, and call the same implementation directly (`call_kernel_op`), through an
    autograd.Function of their own when a gradient is needed."""
    op = torch.library.custom_op(name, impl, mutates_args=(), device_types="cpu")
    op.register_fake(fake)
    if backward is not None:
        op.register_autograd(backward, setup_context=setup_context)
    return op


def call_kernel_op(op: Any, eager: Callable, *args: Any) -> Any:
    """`op(*args)` while torch.compile traces, `eager(*args)` otherwise (see `kernel_op`)."""
    if torch.compiler.is_compiling():
        return op(*args)
    return eager(*args)
