"""What the machine computes natively, for the choices that depend on it (dtypes)."""

from __future__ import annotations

from pathlib import Path


def cpu_supports_bf16() -> bool:
    """Whether this x86 CPU has native bfloat16 (AVX512-BF16 or AMX). Without it bfloat16 is
    emulated and slower than float32 (docs/benchmarks.md, The CPU IRPO preset)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


__all__ = ["cpu_supports_bf16"]
