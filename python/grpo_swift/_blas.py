"""OpenBLAS core selection, done before the native library (and libopenblas) loads.

Debian's OpenBLAS 0.3.21 does not recognise recent AVX-512 Xeons and falls back to its
"Prescott" (SSE3) kernels: measured on this project's machine, sgemm ran at 33 GFLOP/s
instead of ~220-290 GFLOP/s with the SkylakeX kernels. OpenBLAS reads OPENBLAS_CORETYPE
once, when it is loaded, so the choice has to be made before `grpo_swift._native` is
imported. We only set it when the user has not, and only to the kernel family the CPU's
flags guarantee (AVX-512 F/BW/DQ/VL -> SkylakeX). GRPO_SWIFT_OPENBLAS_CORETYPE=0 disables
this; any other value of it is used as the core type.
"""
from __future__ import annotations

import os
import sys


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def configure_openblas_coretype() -> None:
    if "OPENBLAS_CORETYPE" in os.environ or not sys.platform.startswith("linux"):
        return
    choice = os.environ.get("GRPO_SWIFT_OPENBLAS_CORETYPE")
    if choice == "0":
        return
    if choice:
        os.environ["OPENBLAS_CORETYPE"] = choice
        return
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= _cpu_flags():
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
