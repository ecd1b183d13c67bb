"""How many CPUs this process may use, for `WORKERS=auto`: the smallest of the scheduler's affinity mask and
the cgroup's CPU quota (a container's or a Kubernetes pod's CPU limit), not the host's count that
os.cpu_count() gives inside a container."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    counts = [len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1]
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        counts.append(quota)
    return max(1, min(counts))


def cgroup_cpu_quota(root: Path) -> int | None:
    """The CPU limit in whole CPUs (rounded up), or None when there is none or it cannot be read.
    cgroup v2: `cpu.max` holds "<quota> <period>" or "max <period>"; v1: `cpu/cpu.cfs_quota_us` (-1: none)
    and `cpu/cpu.cfs_period_us`."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        return _whole(quota, period)
    return _whole(_read(root / "cpu" / "cpu.cfs_quota_us"), _read(root / "cpu" / "cpu.cfs_period_us"))


def _whole(quota: str | None, period: str | None) -> int | None:
    try:
        q, p = int(quota or ""), int(period or "")
    except ValueError:  # "max", absent, or unreadable: no limit we can use
        return None
    return math.ceil(q / p) if q > 0 and p > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
