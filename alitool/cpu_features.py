"""What this CPU can do, read once from Linux's /proc/cpuinfo, for the decisions that depend on its instruction set.

- bf16 training (trainers/speed.py): oneDNN runs bf16 natively only with AVX-512 BF16 or AMX-BF16.
- INT8 inference (the ONNX Runtime backend, the export's fidelity advice): ONNX Runtime's x86 int8 kernels multiply
  u8 x s8 with ``vpmaddubsw`` unless the CPU has VNNI (AVX-512 VNNI, AVX-VNNI) or AMX. ``vpmaddubsw`` adds pairs of
  products into a saturating 16-bit lane, and two products of full-range 8-bit weights (|w| up to 127) with
  activations up to 255 exceed it, so such a file returns wrong features there (ONNX Runtime's quantisation docs
  describe this and recommend 7-bit weights, ``reduce_range``). ARM64 (``sdot``/``smmla``) and the VNNI/AMX
  instructions accumulate in 32 bits and do not saturate.

Torch-free and alitool-free, so that the running side may import it. Elsewhere than Linux the flags are unknown
(``None``), and nothing is guessed from them.
"""

from __future__ import annotations

import functools
import platform

# x86 flags (Linux's names) whose int8 dot products accumulate in 32 bits: no 16-bit saturation.
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# The INT8 schemes (export/quantize.py, SCHEMES) whose weights use the full signed 8-bit range. An INT8 file without
# the scheme key was written before schemes existed, by the full-range quantiser, and counts as one of them.
FULL_RANGE_INT8_SCHEMES = frozenset({"vnni"})


@functools.cache
def cpuinfo() -> tuple[str, frozenset[str]] | None:
    """(model name, flags) of the first CPU in /proc/cpuinfo; None where there is no such file (macOS, Windows)."""
    model, flags = "", None
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and flags is None:  # x86 says flags, ARM says Features
                    flags = frozenset(value.split())
                if model and flags is not None:
                    break
    except OSError:
        return None
    return model or platform.processor() or platform.machine(), flags or frozenset()


def cpu_flags() -> frozenset[str] | None:
    info = cpuinfo()
    return None if info is None else info[1]


def cpu_model() -> str:
    info = cpuinfo()
    return info[0] if info else (platform.processor() or platform.machine())


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def has_native_bf16() -> bool:
    return bool((cpu_flags() or frozenset()) & NATIVE_BF16_FLAGS)


def has_int8_dot_product() -> bool | None:
    """Whether ONNX Runtime's int8 kernels on this CPU accumulate without 16-bit saturation: True on x86 with
    VNNI/AMX and on any non-x86 CPU, False on x86 without them, None when the flags cannot be read."""
    if not is_x86():
        return True
    flags = cpu_flags()
    if not flags:
        return None
    return bool(flags & INT8_DOT_FLAGS)


def scheme_saturates(scheme: str | None) -> bool:
    """Whether an INT8 file of ``scheme`` (None: no scheme recorded, an earlier release's full-range file) is
    known to return wrong features on this CPU. False when the CPU cannot be told."""
    full_range = scheme is None or scheme in FULL_RANGE_INT8_SCHEMES
    return full_range and has_int8_dot_product() is False


def describe_int8_support() -> str:
    """One line for benchmarks and warnings: the CPU model and the flags that decide the int8 kernels."""
    flags = cpu_flags()
    if flags is None:
        return f"{cpu_model()} (CPU flags unknown on this OS)"
    if not is_x86():
        return f"{cpu_model()} ({platform.machine()}: int8 dot products accumulate in 32 bits)"
    shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16") if f in flags]
    return f"{cpu_model()} (flags: {', '.join(shown) or 'none of avx2/avx512/vnni/amx'})"
