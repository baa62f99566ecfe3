"""The report's environment block: command, versions, CPU and its kernel-relevant flags."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from qcompile.report import environment as env


def test_environment_names_the_command_versions_and_cpu() -> None:
    block = env.environment(["/usr/bin/qcompile", "zoo:tiny", "--passes", "w8a8 x"])
    assert block["command"] == "qcompile zoo:tiny --passes 'w8a8 x'"  # shell-quoted, runnable as printed
    assert block["versions"]["onnxruntime"] == metadata.version("onnxruntime")
    assert block["versions"]["qcompile"] == metadata.version("qcompile")
    assert set(block["versions"]) <= set(env.PACKAGES)
    assert block["cpu"] and block["python"].count(".") == 2


def test_cpu_flags_are_read_from_proc_cpuinfo(monkeypatch, tmp_path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f avx512_vnni sse\n")
    real_path = Path

    def fake_path(name, *rest):
        return real_path(info) if name == "/proc/cpuinfo" else real_path(name, *rest)

    monkeypatch.setattr(env, "Path", fake_path)
    assert env.cpu_name() == "Test CPU 9000"
    assert env.cpu_flags() == ["avx2", "avx512f", "avx512_vnni"]  # in CPU_FLAGS order; others dropped


def test_without_proc_cpuinfo_the_cpu_is_still_named(monkeypatch, tmp_path) -> None:
    real_path = Path
    monkeypatch.setattr(
        env,
        "Path",
        lambda name, *rest: real_path(tmp_path / "absent") if name == "/proc/cpuinfo" else real_path(name, *rest),
    )
    assert env.cpu_flags() == [] and env.cpu_name()
