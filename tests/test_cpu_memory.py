"""cpu_memory.keep_freed_memory: glibc keeps what a step frees, so the next step takes no page faults."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
glibc_linux = pytest.mark.skipif(not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"),
                                 reason="glibc's mallopt only")


def _run(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                          timeout=600).stdout


@glibc_linux
def test_freed_blocks_are_reused_without_page_faults():
    """A step's pattern: twelve 8 MB blocks alive together, then all freed, five times. By default glibc
    gives the freed top of its heap back to the kernel (trimming), so every round faults its pages in again;
    with the settings the heap keeps them and the faults stop."""
    out = _run("""
import json, resource
from p2bot_utils import cpu_memory
def faults():
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        blocks = [bytearray(8 * 1024 * 1024) for _ in range(12)]  # zero-filled: every page touched
        del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
before = faults()
applied = (cpu_memory.is_applied(), cpu_memory.keep_freed_memory(), cpu_memory.keep_freed_memory(), cpu_memory.is_applied())
faults()  # the heap grows once
print(json.dumps({"before": before, "after": faults(), "applied": applied}))
""")
    r = json.loads(out)
    assert r["applied"] == [False, True, True, True]
    assert r["before"] >= 4 * 12 * 2048 * 0.9  # at least 4 rounds x 12 x 8 MB of 4 KB pages
    assert r["after"] < 0.05 * r["before"]


def test_a_cpu_device_applies_it_and_the_manifest_says_so():
    out = _run("""
import json
from p2bot_utils import cpu_memory, profile
before = profile.machine_info()["malloc_keeps_freed_memory"]
device = profile.pick_device("cpu")
print(json.dumps([before, device, profile.machine_info()["malloc_keeps_freed_memory"], cpu_memory.is_applied()]))
""")
    before, device, after, applied = json.loads(out)
    assert (before, device) == (False, "cpu") and after == applied
    if sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION"):
        assert after is True


@glibc_linux
def test_bench_alloc_reports_both_ways_and_refuses_a_process_already_tuned():
    out = _run("""
import json
from p2bot_utils import bench, cpu_memory
from p2bot_utils.data import sample_data_dir
res = bench.alloc(backbone="tiny-gpt2", data_dir=str(sample_data_dir()), steps=2)
try:
    bench.alloc(backbone="tiny-gpt2", data_dir=str(sample_data_dir()), steps=1)
    again = "ran"
except RuntimeError as e:
    again = str(e)
print(json.dumps({"res": res, "again": again}))
""")
    r = json.loads(out.strip().splitlines()[-1])
    assert r["res"]["applied"] is True and r["res"]["data_source"] == "sample"
    for name in ("page_faults", "sys_seconds", "wall_seconds"):
        assert r["res"][f"{name}_per_step_default"] >= 0 and r["res"][f"{name}_per_step_kept"] >= 0
    assert "already in force" in r["again"]
