"""The CPU description every bench and export report records, from real /proc/cpuinfo and
sysctl texts of x86 (with and without VNNI/AMX) and ARM (with and without dotprod) machines."""

from __future__ import annotations

import pytest

from skinedge.utils import cpu as cpu_module
from skinedge.utils.cpu import cpu_info, cpu_summary, parse_cpuinfo, parse_sysctl

_EPYC_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse "
    "sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology "
    "nonstop_tsc cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 "
    "x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm "
    "sse4a misalignsse 3dnowprefetch osvw topoext bmi1 avx2 smep bmi2 erms invpcid rdseed adx "
    "smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves clzero arat umip vaes vpclmulqdq "
    "rdpid fsrm")


def _x86(model: str, vendor: str, flags: str, cores: int, threads_per_core: int = 1) -> str:
    """/proc/cpuinfo of one socket: a block per logical CPU, as Linux writes it."""
    blocks = []
    for cpu in range(cores * threads_per_core):
        blocks.append(f"processor\t: {cpu}\nvendor_id\t: {vendor}\ncpu family\t: 25\n"
                      f"model\t\t: 1\nmodel name\t: {model}\nstepping\t: 1\n"
                      f"cpu MHz\t\t: 2445.428\nphysical id\t: 0\nsiblings\t: "
                      f"{cores * threads_per_core}\ncore id\t\t: {cpu % cores}\n"
                      f"cpu cores\t: {cores}\nflags\t\t: {flags}\nbogomips\t: 4890.85\n")
    return "\n".join(blocks)


EPYC_NO_VNNI = _x86("AMD EPYC 7B13", "AuthenticAMD", _EPYC_FLAGS, cores=1, threads_per_core=2)
CASCADE_LAKE = _x86("Intel(R) Xeon(R) CPU @ 2.80GHz", "GenuineIntel",
                    _EPYC_FLAGS + " avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni",
                    cores=2, threads_per_core=2)
SAPPHIRE_RAPIDS = _x86("Intel(R) Xeon(R) Platinum 8480+", "GenuineIntel",
                       _EPYC_FLAGS + " avx_vnni avx512_bf16 avx512f avx512bw avx512_vnni "
                       "amx_bf16 avx512_fp16 amx_tile amx_int8", cores=4)

GRAVITON2 = "".join(
    f"processor\t: {cpu}\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 "
    "crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\n"
    "CPU revision\t: 1\n\n" for cpu in range(4))
RASPBERRY_PI_3 = (
    "processor\t: 0\nBogoMIPS\t: 38.40\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd03\n"
    "CPU revision\t: 4\n\nHardware\t: BCM2835\nRevision\t: a02082\n")

APPLE_M2 = """machdep.cpu.brand_string: Apple M2
hw.physicalcpu: 8
hw.logicalcpu: 8
hw.optional.neon: 1
hw.optional.arm.AdvSIMD: 1
hw.optional.arm.FEAT_DotProd: 1
hw.optional.arm.FEAT_I8MM: 1
"""


def test_an_x86_cpu_without_vnni_says_so() -> None:
    info = parse_cpuinfo(EPYC_NO_VNNI)
    assert info == {"model": "AMD EPYC 7B13", "vendor": "AuthenticAMD", "physical_cores": 1,
                    "isa": ["avx", "avx2", "fma"], "int8_dot": False}


def test_an_x86_cpu_with_avx512_vnni_has_an_int8_dot_product() -> None:
    info = parse_cpuinfo(CASCADE_LAKE)
    assert info["isa"] == ["avx", "avx2", "avx512_vnni", "avx512bw", "avx512f", "fma"]
    assert info["int8_dot"] is True and info["physical_cores"] == 2
    assert info["model"] == "Intel(R) Xeon(R) CPU @ 2.80GHz"


def test_amx_and_avx_vnni_are_recorded() -> None:
    info = parse_cpuinfo(SAPPHIRE_RAPIDS)
    assert {"amx_int8", "amx_bf16", "avx_vnni", "avx512_bf16", "avx512_vnni"} <= set(info["isa"])
    assert "amx_tile" not in info["isa"] and info["int8_dot"] is True


def test_arm_with_dotprod_is_named_by_its_part() -> None:
    info = parse_cpuinfo(GRAVITON2)
    assert info == {"model": "Neoverse-N1", "vendor": "ARM", "physical_cores": None,
                    "isa": ["asimd", "asimddp"], "int8_dot": True}


def test_arm_without_dotprod_has_no_int8_dot_product() -> None:
    info = parse_cpuinfo(RASPBERRY_PI_3)
    assert info["isa"] == ["asimd"] and info["int8_dot"] is False
    assert info["model"] == "BCM2835"  # the board's Hardware line, when the kernel gives one


def test_no_flags_line_means_unknown_not_absent() -> None:
    assert parse_cpuinfo("processor\t: 0\n")["int8_dot"] is None
    assert parse_cpuinfo("")["isa"] == []


def test_macos_sysctl() -> None:
    info = parse_sysctl(APPLE_M2)
    assert info == {"model": "Apple M2", "vendor": "Apple", "physical_cores": 8,
                    "isa": ["asimd", "asimddp", "i8mm"], "int8_dot": True}
    assert parse_sysctl("machdep.cpu.brand_string: Intel(R) Core(TM) i7\n")["int8_dot"] is None


@pytest.mark.parametrize("text, arch, logical, expected", [
    (EPYC_NO_VNNI, "x86_64", 2,
     "AMD EPYC 7B13, x86_64, 2 logical cores (1 physical), AVX AVX2 FMA, "
     "no VNNI/AMX int8 dot product"),
    (CASCADE_LAKE, "x86_64", 4,
     "Intel(R) Xeon(R) CPU @ 2.80GHz, x86_64, 4 logical cores (2 physical), "
     "AVX AVX2 FMA AVX-512F AVX-512BW, int8 dot product (AVX512-VNNI)"),
    (GRAVITON2, "aarch64", 4, "Neoverse-N1, aarch64, 4 logical cores, NEON, "
                              "int8 dot product (dotprod)"),
    (RASPBERRY_PI_3, "aarch64", 4, "BCM2835, aarch64, 4 logical cores, NEON, "
                                   "no dotprod/i8mm int8 dot product"),
])
def test_summary_names_the_cpu_cores_and_int8_support(text, arch, logical, expected) -> None:
    info = {**parse_cpuinfo(text), "arch": arch, "logical_cores": logical}
    assert cpu_summary(info) == expected


def test_this_machine_is_described_and_the_cache_is_not_shared() -> None:
    info = cpu_info()
    assert set(info) == {"model", "vendor", "arch", "logical_cores", "physical_cores",
                         "usable_cores", "isa", "int8_dot"}
    assert info["logical_cores"] >= 1 and info["int8_dot"] in (True, False, None)
    info["isa"].append("edited")
    assert "edited" not in cpu_info()["isa"]
    assert cpu_summary().startswith(info["model"] or "unknown CPU")


def test_a_machine_that_cannot_be_read_is_unknown_not_an_error(monkeypatch) -> None:
    def unreadable():
        raise RuntimeError("no /proc here")

    monkeypatch.setattr(cpu_module, "_read_platform", unreadable)
    cpu_module._cpu_info.cache_clear()
    try:
        info = cpu_info()
        assert info["model"] is None and info["isa"] == [] and info["int8_dot"] is None
        assert cpu_summary(info).endswith("ISA unknown, int8 dot product unknown")
    finally:
        cpu_module._cpu_info.cache_clear()


def test_quantize_asks_the_same_question() -> None:
    pytest.importorskip("torch")
    from skinedge.compress.quantize import cpu_has_vnni

    assert cpu_has_vnni() is cpu_info()["int8_dot"]
