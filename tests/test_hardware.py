from __future__ import annotations

from pathlib import Path

from shipyard.hardware import _cpuinfo, hardware_fingerprint


def test_fingerprint_names_the_cpu_and_its_isa() -> None:
    fingerprint = hardware_fingerprint()
    assert fingerprint["cpu"]
    assert isinstance(fingerprint["isa"], list)
    assert fingerprint["isa"] == sorted(fingerprint["isa"])
    assert fingerprint["logical_cores"] >= 1
    assert fingerprint["usable_cores"] <= fingerprint["logical_cores"]
    assert fingerprint["versions"]["torch"]


def test_cpuinfo_keeps_only_the_isa_flags_that_pick_kernels(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text(
        "processor\t: 0\nmodel name\t: Example Xeon\nflags\t\t: fpu sse4_2 avx2 avx512_vnni ht\n"
        "processor\t: 1\nmodel name\t: second core, not read\nflags\t\t: fpu amx_tile\n"
    )
    assert _cpuinfo(x86) == ("Example Xeon", ["amx_tile", "avx2", "avx512_vnni", "sse4_2"])
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm crc32\n")  # no model name
    assert _cpuinfo(arm) == (None, ["asimd"])
    assert _cpuinfo(tmp_path / "missing") == (None, [])
