"""What this CPU can do, read once from Linux's /proc/cpuinfo, for the decisions that depend on its instruction set.

- bf16 training (trainers/speed.py): oneDNN runs bf16 natively only with AVX-512 BF16 or AMX-BF16.
- INT8 inference (the ONNX Runtime backend, the export's fidelity advice): ONNX Runtime's x86 int8 kernels multiply
  u8 x s8 with ``vpmaddubsw`` unless the CPU has VNNI (AVX-512 VNNI, AVX-VNNI) or AMX. ``vpmaddubsw`` adds pairs of
  products into a saturating 16-bit lane, and two products of full-range 8-bit weights (|w| up to 127) with
  activations up to 255 exceed it, so such a file returns wrong features there (ONNX Runtime's quantisation docs
  describe this and recommend 7-bit weights, ``reduce_range``). ARM64 (``sdot``/``smmla``) and the VNNI/AMX
  instructions accumulate in 32 bits and do not saturate.
- Speed measurements (benchmarks/train_step.py, the convolution paths of alitool/conv_autotune.py): the vector
  class the kernels may use, which environment variables can hold below the CPU's own.

Torch-free and alitool-free, so that the running side may import it. Elsewhere than Linux the flags are unknown
(``None``), and nothing is guessed from them.
"""

from __future__ import annotations

import functools
import os
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


# ---- vector classes: what the convolution and matrix kernels may use (benchmarks, the conv path cache key) ----

# The environment variables that hold torch's CPU kernels below what the CPU has: oneDNN (convolutions, bf16
# matrix products), ATen's own vectorised loops, and MKL (fp32 matrix products: F.linear, the im2col products of
# alitool/conv_gemm.py). Setting them lets one machine stand in for an older class of CPU.
ISA_LIMIT_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")
# From least to most capable. "AVX-512 BF16" has bf16 dot products (vdpbf16ps); "AMX" also has tile products.
VECTOR_CLASSES = ("SSE4.1", "AVX", "AVX2", "AVX-512", "AVX-512 BF16", "AMX")
# The names /proc/cpuinfo gives the features a benchmark reports, in the order it reports them.
_FEATURE_NAMES = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX-512 BF16"),
                  ("avx512_vnni", "AVX-512 VNNI"), ("amx_bf16", "AMX-BF16"), ("amx_int8", "AMX-INT8"))


def isa_limits() -> dict[str, str]:
    """The ``ISA_LIMIT_ENV`` variables set in this process, by name."""
    return {name: os.environ[name] for name in ISA_LIMIT_ENV if os.environ.get(name)}


def vector_features() -> list[str]:
    """The vector features of ``_FEATURE_NAMES`` this CPU reports, e.g. ["AVX2", "AVX-512", "AVX-512 BF16"]."""
    flags = cpu_flags() or frozenset()
    return [name for flag, name in _FEATURE_NAMES if flag in flags]


def _hardware_class(flags: frozenset[str]) -> str | None:
    for flag, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16"), ("avx512f", "AVX-512"),
                       ("avx2", "AVX2"), ("avx", "AVX"), ("sse4_1", "SSE4.1")):
        if flag in flags:
            return name
    return None


def _onednn_limit_class(value: str) -> str | None:
    """The class a ONEDNN_MAX_CPU_ISA value (oneDNN's names: AVX2, AVX512_CORE_BF16, AVX10_1_512_AMX, ...) allows;
    None for no limit (ALL, DEFAULT) or a name this table does not know."""
    value = value.strip().upper()
    if "AMX" in value:
        return "AMX"
    if value.startswith(("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10")):
        return "AVX-512 BF16"
    if value.startswith("AVX512"):
        return "AVX-512"
    if value.startswith("AVX2"):  # AVX2_VNNI, AVX2_VNNI_2 too: 256-bit vectors
        return "AVX2"
    return {"AVX": "AVX", "SSE41": "SSE4.1"}.get(value)


def vector_class() -> tuple[str | None, str | None]:
    """(class, limiting variable): the most capable ``VECTOR_CLASSES`` entry the convolutions may use here, the
    CPU's own unless ONEDNN_MAX_CPU_ISA (or its older name DNNL_MAX_CPU_ISA) holds oneDNN below it, in which case
    the variable is named. (None, None) where the flags cannot be read or name none of them (non-x86)."""
    flags = cpu_flags()
    own = _hardware_class(flags) if flags and is_x86() else None
    if own is None:
        return None, None
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        limit = _onednn_limit_class(isa_limits().get(name, ""))
        if limit is not None and VECTOR_CLASSES.index(limit) < VECTOR_CLASSES.index(own):
            return limit, name
    return own, None


def describe_vector_class() -> str:
    """"AVX-512 BF16", or "AVX2 (limited by ONEDNN_MAX_CPU_ISA)", or "unknown" where the flags say nothing."""
    name, limited_by = vector_class()
    if name is None:
        return "unknown"
    return f"{name} (limited by {limited_by})" if limited_by else name


def onednn_runs_bf16_natively() -> bool:
    """``has_native_bf16``, and oneDNN not held below bf16 dot products by ONEDNN_MAX_CPU_ISA: with the limit,
    oneDNN emulates bf16 as on a CPU without it."""
    name, _ = vector_class()
    return has_native_bf16() and name in ("AVX-512 BF16", "AMX")


def reported_mhz() -> float | None:
    """The first "cpu MHz" of /proc/cpuinfo: the clock the kernel reports (on VMs often the base clock), not the
    turbo clock the cores may run at; None where there is no such line."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "cpu MHz":
                    return float(value)
    except (OSError, ValueError):
        return None
    return None
