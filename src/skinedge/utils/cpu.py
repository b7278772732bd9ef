"""Which CPU ran a benchmark or an export: model, cores and the instruction sets that decide speed.

Latency figures (and whether INT8 beats FP32) depend on the vector and int8 dot-product
instructions of the CPU: AVX2 vs AVX-512, VNNI and AMX on x86, NEON dotprod and i8mm on ARM. A
report that records :func:`cpu_info` says which machine its figures belong to, so figures from
two machines are never read as one.

Read from ``/proc/cpuinfo`` on Linux and ``sysctl`` on macOS, with :mod:`platform` elsewhere.
Nothing here raises: what cannot be read is None (or an empty ISA list).
"""

from __future__ import annotations

import copy
import functools
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

#: The instruction-set flags a report records (Linux ``flags`` / ``Features`` spelling).
ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_int8", "amx_bf16", "neon", "asimd", "asimddp", "i8mm", "sve")

#: Flags that mean an int8 dot-product instruction (what makes INT8 inference fast).
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")

_SHOWN = {"avx": "AVX", "avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512F",
          "avx512bw": "AVX-512BW", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI",
          "avx512_bf16": "AVX512-BF16", "amx_int8": "AMX-INT8", "amx_bf16": "AMX-BF16",
          "neon": "NEON", "asimd": "NEON", "asimddp": "dotprod", "i8mm": "I8MM", "sve": "SVE"}

#: ``CPU implementer`` codes of ARM ``/proc/cpuinfo``.
_ARM_VENDORS = {"0x41": "ARM", "0x42": "Broadcom", "0x46": "Fujitsu", "0x48": "HiSilicon",
                "0x4e": "NVIDIA", "0x51": "Qualcomm", "0x61": "Apple", "0x6d": "Microsoft",
                "0xc0": "Ampere"}
#: ``CPU part`` codes of common ARM Ltd. cores.
_ARM_PARTS = {"0xd03": "Cortex-A53", "0xd05": "Cortex-A55", "0xd08": "Cortex-A72",
              "0xd0b": "Cortex-A76", "0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1",
              "0xd41": "Cortex-A78", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510",
              "0xd47": "Cortex-A710", "0xd49": "Neoverse-N2", "0xd4f": "Neoverse-V2"}

#: macOS ``sysctl`` keys -> the Linux flag they mean.
_SYSCTL_FLAGS = {"hw.optional.avx1_0": "avx", "hw.optional.avx2_0": "avx2",
                 "hw.optional.fma": "fma", "hw.optional.avx512f": "avx512f",
                 "hw.optional.avx512bw": "avx512bw", "hw.optional.avx512vnni": "avx512_vnni",
                 "hw.optional.neon": "asimd", "hw.optional.arm.AdvSIMD": "asimd",
                 "hw.optional.arm.FEAT_DotProd": "asimddp", "hw.optional.arm.FEAT_I8MM": "i8mm",
                 "hw.optional.arm.FEAT_SVE": "sve"}
_SYSCTL_KEYS = ("machdep.cpu.brand_string", "machdep.cpu.vendor", "hw.physicalcpu",
                "hw.logicalcpu", *_SYSCTL_FLAGS)


def _int8_dot(isa: list[str], known: bool) -> bool | None:
    """True with a dot-product flag, False when the flags were read and none is there."""
    if any(flag in isa for flag in INT8_DOT_FLAGS):
        return True
    return False if known else None


def _fields(block: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in block.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), " ".join(value.split()))
    return fields


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """What Linux ``/proc/cpuinfo`` says, x86 (``model name``, ``flags``) or ARM (``Features``,
    ``CPU implementer``, ``CPU part``).

    Returns:
        ``model``, ``vendor``, ``physical_cores`` (None unless ``physical id``/``core id`` are
        listed), ``isa`` (sorted flags among :data:`ISA_FLAGS`) and ``int8_dot`` (None when the
        text has no flags line).
    """
    blocks = [_fields(b) for b in re.split(r"\n\s*\n", text) if b.strip()]
    merged: dict[str, str] = {}
    for block in blocks:
        for key, value in block.items():
            merged.setdefault(key, value)
    flags_line = merged.get("flags", merged.get("features"))
    flags = set((flags_line or "").split())
    isa = sorted(flag for flag in ISA_FLAGS if flag in flags)
    vendor = merged.get("vendor_id") or _ARM_VENDORS.get(merged.get("cpu implementer", "").lower())
    model = merged.get("model name") or merged.get("hardware")
    part = merged.get("cpu part", "").lower()
    if (not model or model.startswith("ARMv")) and part:
        model = _ARM_PARTS.get(part) or f"{vendor or 'ARM'} part {part}"
    cores = {(b.get("physical id"), b["core id"]) for b in blocks if "core id" in b}
    return {"model": model, "vendor": vendor, "physical_cores": len(cores) or None,
            "isa": isa, "int8_dot": _int8_dot(isa, flags_line is not None)}


def parse_sysctl(text: str) -> dict[str, Any]:
    """What macOS ``sysctl`` (``key: value`` lines) says; same keys as :func:`parse_cpuinfo`."""
    values = _fields(text)
    flags = {flag for key, flag in _SYSCTL_FLAGS.items() if values.get(key.lower()) == "1"}
    known = any(key.lower() in values for key in _SYSCTL_FLAGS)
    isa = sorted(flags)
    physical = values.get("hw.physicalcpu", "")
    return {"model": values.get("machdep.cpu.brand_string"),
            "vendor": values.get("machdep.cpu.vendor") or ("Apple" if "asimd" in flags else None),
            "physical_cores": int(physical) if physical.isdigit() else None,
            "isa": isa, "int8_dot": _int8_dot(isa, known)}


def _read_platform() -> dict[str, Any]:
    """This machine's CPU as the OS tells it (``/proc/cpuinfo``, ``sysctl``, or :mod:`platform`)."""
    if sys.platform.startswith("linux"):
        try:
            return parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))
        except OSError:
            pass
    elif sys.platform == "darwin":
        try:
            done = subprocess.run(["sysctl", *_SYSCTL_KEYS], capture_output=True, text=True,
                                  timeout=10)  # unknown keys are reported on stderr, skipped
            return parse_sysctl(done.stdout)
        except (OSError, subprocess.SubprocessError):
            pass
    return {"model": platform.processor() or None, "vendor": None, "physical_cores": None,
            "isa": [], "int8_dot": None}


@functools.lru_cache(maxsize=1)
def _cpu_info() -> dict[str, Any]:
    try:
        found = _read_platform()
    except Exception:  # noqa: BLE001 - a report must never fail over its machine description
        found = {"model": None, "vendor": None, "physical_cores": None, "isa": [],
                 "int8_dot": None}
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        usable = None
    return {"model": found["model"], "vendor": found["vendor"], "arch": platform.machine(),
            "logical_cores": os.cpu_count(), "physical_cores": found["physical_cores"],
            "usable_cores": usable, "isa": found["isa"], "int8_dot": found["int8_dot"]}


def cpu_info() -> dict[str, Any]:
    """This machine's CPU, read once per process (a copy each call).

    Returns:
        ``model`` (``AMD EPYC 7B13``), ``vendor``, ``arch`` (:func:`platform.machine`),
        ``logical_cores``, ``physical_cores`` (None when unknown), ``usable_cores`` (what this
        process may run on), ``isa`` (sorted, among :data:`ISA_FLAGS`) and ``int8_dot``: whether
        it has an int8 dot-product instruction (VNNI, AMX, ARM dotprod/i8mm); None when unknown.
    """
    return copy.deepcopy(_cpu_info())


def _is_arm(info: dict[str, Any]) -> bool:
    arch = (info.get("arch") or "").lower()
    return arch.startswith(("arm", "aarch")) or any(f in info.get("isa", ()) for f in
                                                    ("asimd", "neon"))


def int8_dot_words(info: dict[str, Any]) -> str:
    """``int8 dot product (AVX512-VNNI)``, ``no VNNI/AMX int8 dot product``, ``no dotprod``, or
    ``int8 dot product unknown``."""
    if info.get("int8_dot") is None:
        return "int8 dot product unknown"
    if info["int8_dot"]:
        found = [_SHOWN[f] for f in INT8_DOT_FLAGS if f in info.get("isa", ())]
        return f"int8 dot product ({', '.join(found)})"
    return "no dotprod/i8mm int8 dot product" if _is_arm(info) else "no VNNI/AMX int8 dot product"


def cpu_summary(info: dict[str, Any] | None = None) -> str:
    """One line naming the CPU, e.g. ``AMD EPYC 7B13, x86_64, 2 logical cores, AVX AVX2 FMA,
    no VNNI/AMX int8 dot product``; ``info`` defaults to :func:`cpu_info`."""
    info = cpu_info() if info is None else info
    cores = f"{info.get('logical_cores') or '?'} logical cores"
    if info.get("physical_cores") and info["physical_cores"] != info.get("logical_cores"):
        cores += f" ({info['physical_cores']} physical)"
    shown = list(dict.fromkeys(_SHOWN[f] for f in ISA_FLAGS
                               if f in info.get("isa", ()) and f not in INT8_DOT_FLAGS))
    return ", ".join([info.get("model") or "unknown CPU", info.get("arch") or "unknown arch",
                      cores, " ".join(shown) or "ISA unknown", int8_dot_words(info)])
