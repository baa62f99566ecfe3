"""The report's environment block: command, versions, CPU and its kernel-relevant flags."""

from __future__ import annotations

from importlib import metadata

from qcompile.report import environment as env
from qcompile.runtime import cpu


def test_environment_names_the_command_versions_and_cpu() -> None:
    block = env.environment(["/usr/bin/qcompile", "zoo:tiny", "--passes", "w8a8 x"])
    assert block["command"] == "qcompile zoo:tiny --passes 'w8a8 x'"  # shell-quoted, runnable as printed
    assert block["versions"]["onnxruntime"] == metadata.version("onnxruntime")
    assert block["versions"]["qcompile"] == metadata.version("qcompile")
    assert set(block["versions"]) <= set(env.PACKAGES)
    assert block["cpu"] and block["python"].count(".") == 2


def test_cpu_name_and_flags_are_read_from_proc_cpuinfo(monkeypatch, tmp_path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f avx512_vnni sse\n\n"
        "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n"
    )
    monkeypatch.setattr(cpu, "CPUINFO", info)
    assert env.cpu_name() == "Test CPU 9000"  # the first processor's entry
    assert env.cpu_flags() == ["avx2", "avx512f", "avx512_vnni"]  # in CPU_FLAGS order; others dropped
    assert cpu.cpu_flags() == {"fpu", "avx2", "avx512f", "avx512_vnni", "sse"}


def test_without_proc_cpuinfo_the_cpu_is_still_named(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(cpu, "CPUINFO", tmp_path / "absent")
    assert env.cpu_flags() == [] and cpu.cpu_flags() == frozenset() and env.cpu_name()
