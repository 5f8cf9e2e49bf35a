"""mavcli.runtime: the CPU thread count from the cores this process may use and the load."""

from pathlib import Path

import pytest

from mavcli import runtime


def test_cgroup_quota_v2_and_v1(tmp_path: Path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert runtime.cgroup_cpu_quota(tmp_path) == pytest.approx(1.5)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert runtime.cgroup_cpu_quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert runtime.cgroup_cpu_quota(v1) == pytest.approx(0.5)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert runtime.cgroup_cpu_quota(v1) is None


def test_threads_follow_affinity_quota_and_busy_neighbours(monkeypatch):
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(runtime, "cgroup_cpu_quota", lambda: None)
    assert runtime.choose_threads(busy=0.0).threads == 4
    assert runtime.choose_threads(busy=0.3).threads == 4  # a light neighbour takes no core
    one = runtime.choose_threads(busy=1.0)
    assert one.threads == 3 and "1 kept busy" in one.describe()
    assert runtime.choose_threads(busy=7.0).threads == 1  # never below one
    monkeypatch.setattr(runtime, "cgroup_cpu_quota", lambda: 2.0)
    assert runtime.choose_threads(busy=0.0).threads == 2
    assert runtime.choose_threads(5).threads == 5 and runtime.choose_threads(5).reason == "as asked"
    with pytest.raises(ValueError, match=">= 1"):
        runtime.choose_threads(0)


def test_busy_cores_elsewhere_reads_proc_stat(tmp_path: Path, monkeypatch):
    """Two samples of /proc/stat on a 2-core machine, 1000 jiffies apart in all: 500 busy,
    100 of them this process's own, so 0.8 cores busy elsewhere."""
    first, second = tmp_path / "stat0", tmp_path / "stat1"
    first.write_text("cpu  1000 0 0 9000 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
    second.write_text("cpu  1400 0 100 9400 100 0 0 0 0 0\ncpu0 1 2 3 4\n")  # iowait counts as idle
    files, own = [first, second], iter([50, 150])
    real = runtime._cpu_times
    monkeypatch.setattr(runtime, "_cpu_times", lambda stat: real(files.pop(0)))
    monkeypatch.setattr(runtime, "_own_jiffies", lambda: next(own))
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 2)
    assert runtime.busy_cores_elsewhere(0.0, first) == pytest.approx(0.8)


def test_busy_cores_on_this_machine_is_a_share_of_its_cores():
    busy = runtime.busy_cores_elsewhere(0.05)
    assert 0.0 <= busy <= (runtime.os.cpu_count() or 1)


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path):
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert runtime.cpu_has_native_bf16(info)
    info.write_text("flags\t\t: fpu avx2 amx_bf16 amx_tile\n")
    assert runtime.cpu_has_native_bf16(info)
    info.write_text("flags\t\t: fpu avx2 avx512f\n")
    assert not runtime.cpu_has_native_bf16(info)
    assert not runtime.cpu_has_native_bf16(tmp_path / "missing")


def test_precision_auto_follows_the_hardware(monkeypatch):
    import torch

    from mavcli.errors import UserInputError
    from mavcli.pipeline import resolve_precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == torch.float32
    assert resolve_precision("bfloat16", cpu) == torch.bfloat16  # asked for: emulated, but honoured
    assert resolve_precision("float32", torch.device("cuda")) == torch.float32
    assert resolve_precision("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(UserInputError, match="choose one of auto, float32, bfloat16"):
        resolve_precision("half", cpu)


def test_sizes_read_as_disks_are_sold():
    from mavcli.runtime import size_text

    assert size_text(3.7e9) == "3.70 GB" and size_text(209_715_200) == "210 MB" and size_text(65_800) == "66 kB"


def test_a_full_disk_anywhere_is_said_without_a_traceback(monkeypatch):
    """The CLI's safety net: a disk-full error from any command (a pack being exported, a
    report) ends it with a message and exit 1; any other error still propagates."""
    import errno

    import pytest
    import typer

    from mavcli.cli import console
    from mavcli.runtime import is_disk_full

    said = []
    monkeypatch.setattr(console, "error", said.append)
    with pytest.raises(typer.Exit) as info:
        with console.user_errors():
            raise OSError(errno.ENOSPC, "No space left on device", "runs/pack/pack.json")
    assert info.value.exit_code == 1 and "a disk filled up" in said[0] and "runs/pack/pack.json" in said[0]
    assert is_disk_full(Exception("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    with pytest.raises(ValueError):
        with console.user_errors():
            raise ValueError("a bug, shown as one")
