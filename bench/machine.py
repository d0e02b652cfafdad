"""What the machine gives right now, printed by the latency and throughput benches so that their
figures can be read: this project's machine is a shared 2-core VM whose cores are sometimes
slowed by other tenants (the same code then measures up to twice as slow)."""

from __future__ import annotations

import os
import statistics
import time

import torch


def busy_cores(window: float = 0.5) -> float | None:
    """Cores kept busy by other processes over `window` seconds (Linux /proc/stat; None elsewhere)."""
    def sample():
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # total, idle + iowait
    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 == total0:
        return 0.0
    return (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def core_gflops(size: int = 512, repeats: int = 7) -> float:
    """fp32 GFLOP/s of one thread on a size^3 matrix product, median of `repeats`: about 80 on an
    undisturbed core of this project's machine, about 40 while another tenant shares it."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a @ b
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(10):
                a @ b
            times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(old)
    return 10 * 2 * size ** 3 / statistics.median(times) / 1e9


def read_gbs(mib: int, repeats: int = 15) -> float:
    """GB/s of one thread summing `mib` MiB over and over, median of `repeats`: what a decode step
    gets when it reads its weights (20 MiB at the small preset in fp32; 64 MiB is past the cache)."""
    a = torch.ones(mib << 18)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a.sum()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            a.sum()
            times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(old)
    return a.numel() * 4 / statistics.median(times) / 1e9


def machine_note() -> tuple[str, dict]:
    """A line for stderr and the keys for the JSON line."""
    busy, gflops, cached, memory = busy_cores(), core_gflops(), read_gbs(20), read_gbs(64)
    line = (f"machine: one core does {gflops:.0f} fp32 GFLOP/s (about 80 undisturbed here), reads 20 MiB "
            f"at {cached:.0f} GB/s and 64 MiB at {memory:.0f} GB/s")
    if busy is not None:
        line += f"; other processes kept {busy:.1f} cores busy"
    return line, {"core_gflops": round(gflops, 1), "read_gbs_20mib": round(cached, 1), "read_gbs_64mib": round(memory, 1)}
