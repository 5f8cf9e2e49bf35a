"""How many CPU threads this process should compute with.

torch's intra-op pool starts one thread per core the machine has. On a shared machine that is
wrong twice: the process may be allowed fewer cores (CPU affinity, a cgroup CPU quota in a
container), and other processes may be keeping some cores busy. Either way the pool's
threads outnumber the cores they really get, and because every parallel region ends in a
barrier, each region waits for the thread that was descheduled: one busy neighbour on a
2-core machine made `mav generate` 3x slower instead of 2x. `choose_threads` counts the cores
this process may use and subtracts the ones other processes keep busy right now.

Pure standard library: no torch here, so the CLI can decide before torch starts its pool.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path


def allowed_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota + 0.5)))
    return max(1, cores)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The cgroup's CPU quota in cores (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`), or None
    when there is none."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def _cpu_times(stat: Path) -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat's first line."""
    fields = [int(v) for v in stat.read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def _own_jiffies() -> int:
    t = os.times()
    return round((t.user + t.system) * os.sysconf("SC_CLK_TCK"))


def busy_cores_elsewhere(window: float = 0.1, stat: Path = Path("/proc/stat")) -> float:
    """How many cores other processes keep busy, sampled over `window` seconds (0 where the
    system does not say)."""
    try:
        busy0, total0 = _cpu_times(stat)
        own0 = _own_jiffies()
        time.sleep(window)
        busy1, total1 = _cpu_times(stat)
        own1 = _own_jiffies()
    except (OSError, ValueError, IndexError):
        return 0.0
    cores = os.cpu_count() or 1
    if total1 <= total0:
        return 0.0
    share = max(0, (busy1 - busy0) - (own1 - own0)) / (total1 - total0)  # of all cores
    return share * cores


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    allowed: int  # cores this process may use
    busy: float  # cores kept busy by other processes when it chose
    reason: str

    def describe(self) -> str:
        return f"{self.threads} CPU thread{'s' if self.threads != 1 else ''} ({self.reason})"


def choose_threads(requested: int | None = None, *, busy: float | None = None) -> ThreadChoice:
    """The intra-op thread count: `requested` when given; otherwise the cores this process may
    use minus those that other processes keep busy (a core counts as taken when it is at least
    half busy), at least 1."""
    allowed = allowed_cores()
    if requested is not None:
        if requested < 1:
            raise ValueError(f"the thread count must be >= 1, got {requested}")
        return ThreadChoice(requested, allowed, 0.0, "as asked")
    busy = busy_cores_elsewhere() if busy is None else busy
    taken = math.floor(busy + 0.5)
    threads = max(1, min(allowed, allowed - taken))
    reason = f"{allowed} usable core{'s' if allowed != 1 else ''}"
    if threads < allowed:
        reason += f", {taken} kept busy by other processes"
    return ThreadChoice(threads, allowed, busy, reason)


def available_memory() -> int | None:
    """Bytes this process can still allocate without swapping or being killed: the kernel's
    MemAvailable, capped by the cgroup's memory limit (v2 `memory.max` - `memory.current`,
    v1 `memory.limit_in_bytes` - `memory.usage_in_bytes`). None where the system does not say."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    root = Path("/sys/fs/cgroup")
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit = (root / limit_file).read_text().strip()
            if limit == "max" or int(limit) >= 1 << 60:  # v1 writes "no limit" as a huge number
                continue
            left = int(limit) - int((root / usage_file).read_text())
        except (OSError, ValueError):
            continue
        avail = left if avail is None else min(avail, left)
    return avail


#: what `--precision` accepts (mavcli.pipeline.resolve_precision says what each means)
PRECISIONS = ("auto", "float32", "bfloat16")


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` says a disk (or a quota) filled up: ENOSPC or EDQUOT from Python, or the
    same in another tool's message (ffmpeg's, or safetensors' "os error 28")."""
    import errno

    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(error) or "Disk quota exceeded" in str(error)


def disk_free(where: str | os.PathLike[str]) -> int:
    """Bytes free on the disk that holds `where` (a file or folder, or the nearest parent of it
    that exists)."""
    import shutil

    probe = Path(where).expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def size_text(nbytes: float) -> str:
    """A size as messages give it: '3.70 GB', '512 MB' or '66 kB' (powers of 10, as disks are
    sold and `df -H` counts)."""
    if nbytes >= 1e9:
        return f"{nbytes / 1e9:.2f} GB"
    return f"{nbytes / 1e6:.0f} MB" if nbytes >= 1e6 else f"{nbytes / 1e3:.0f} kB"


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX); elsewhere torch
    emulates bfloat16 on the CPU and it is slower than float32."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags

