"""Input validation shared by every public function.

Errors name the function and the argument, say what was expected and what was received:
TypeError for a wrong kind or dtype, ValueError for shapes and values.
"""
from __future__ import annotations

import numbers
from typing import Any, Sequence

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"ndarray of dtype {x.dtype} and shape {x.shape}"
    return type(x).__name__


def float_array(x: Any, func: str, arg: str, *, ndim: tuple[int, ...] | None = None,
                dtypes: Sequence[np.dtype] = FLOAT_DTYPES, dtype: np.dtype | None = None) -> np.ndarray:
    """Returns `x` as a C-contiguous float array (no copy when it already is one).

    Arrays of integer, bool, complex or object dtype are refused (TypeError). Plain Python
    sequences of numbers become float64 (or `dtype` when given). `dtype` forces the
    result dtype (used for arguments that must match another array's dtype).
    """
    # Fast path: already a C-contiguous ndarray of an accepted dtype.
    if type(x) is np.ndarray and x.flags.c_contiguous and x.dtype in dtypes and (
            dtype is None or x.dtype == dtype) and (ndim is None or x.ndim in ndim):
        return x
    if x is None:
        raise TypeError(f"{func}(): argument '{arg}' must be a float array, got None")
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{func}(): argument '{arg}' must be a float array, got {type(x).__name__}")
    is_array = hasattr(x, "dtype") and hasattr(x, "shape")
    if is_array and getattr(getattr(x, "device", None), "type", "cpu") not in ("cpu",):
        raise TypeError(f"{func}(): argument '{arg}' is on device '{x.device}'; grpo_swift kernels "
                        f"run on CPU: move it with .cpu() first")
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists, objects without __array__, ...
        raise TypeError(f"{func}(): argument '{arg}' must be a float array, got {_describe(x)} ({exc})") from None
    kind = arr.dtype.kind
    if kind in "iub" and not is_array:
        arr = arr.astype(dtype or np.float64)  # a plain list of Python numbers
    elif kind not in "f" or (arr.dtype not in dtypes):
        allowed = " or ".join(str(d) for d in dtypes)
        hint = " (cast with .astype(np.float32))" if kind in "iub" else ""
        raise TypeError(f"{func}(): argument '{arg}' must have dtype {allowed}, got {arr.dtype}{hint}")
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(f"{func}(): argument '{arg}' must have dtype {dtype} (the dtype of the other "
                        f"inputs), got {arr.dtype}")
    if ndim is not None:
        if arr.ndim not in ndim:
            want = " or ".join(f"{d}-D" for d in ndim)
            raise ValueError(f"{func}(): argument '{arg}' must be {want}, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def choice(value: Any, func: str, arg: str, choices: Sequence[str]) -> str:
    """Checks that `value` is one of `choices` (strings); the message lists them."""
    if value.__class__ is not str or value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{func}(): argument '{arg}' must be one of {listed}, got {value!r}")
    return value


def integer(value: Any, func: str, arg: str, *, minimum: int | None = None) -> int:
    """Checks that `value` is an int (not a bool), optionally >= minimum."""
    if value.__class__ is not int and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        raise TypeError(f"{func}(): argument '{arg}' must be an int, got {type(value).__name__}")
    v = int(value)
    if minimum is not None and v < minimum:
        raise ValueError(f"{func}(): argument '{arg}' must be >= {minimum}, got {v}")
    return v


def real(value: Any, func: str, arg: str, *, minimum: float | None = None,
         strict_minimum: bool = False, finite: bool = True) -> float:
    """Checks that `value` is a real number (not a bool), optionally bounded below."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{func}(): argument '{arg}' must be a float, got {type(value).__name__}")
    v = float(value)
    if finite and not np.isfinite(v):
        raise ValueError(f"{func}(): argument '{arg}' must be finite, got {v}")
    if minimum is not None and (v <= minimum if strict_minimum else v < minimum):
        op = ">" if strict_minimum else ">="
        raise ValueError(f"{func}(): argument '{arg}' must be {op} {minimum}, got {v}")
    return v
