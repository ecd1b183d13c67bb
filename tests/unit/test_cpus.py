from __future__ import annotations

import os
from pathlib import Path

import pytest

from consumer.cpus import cgroup_cpu_quota, usable_cpus


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(("content", "expected"), [
    ("200000 100000\n", 2), ("150000 100000", 2), ("50000 100000", 1), ("max 100000", None), ("garbage", None),
])
def test_cgroup_v2_cpu_max_in_whole_cpus(tmp_path: Path, content: str, expected: int | None) -> None:
    _write(tmp_path, "cpu.max", content)
    assert cgroup_cpu_quota(tmp_path) == expected


@pytest.mark.parametrize(("quota", "expected"), [("300000", 3), ("-1", None)])
def test_cgroup_v1_cfs_quota_in_whole_cpus(tmp_path: Path, quota: str, expected: int | None) -> None:
    _write(tmp_path, "cpu/cpu.cfs_quota_us", quota)
    _write(tmp_path, "cpu/cpu.cfs_period_us", "100000")
    assert cgroup_cpu_quota(tmp_path) == expected


def test_no_cgroup_files_means_no_quota(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path) is None


def test_usable_cpus_is_the_smaller_of_the_quota_and_the_affinity(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == affinity
    _write(tmp_path, "cpu.max", "100000 100000")
    assert usable_cpus(tmp_path) == 1
    _write(tmp_path, "cpu.max", f"{(affinity + 4) * 100000} 100000")
    assert usable_cpus(tmp_path) == affinity
