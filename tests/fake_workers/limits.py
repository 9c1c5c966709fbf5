"""Reports the memory and CPU limits its container runs under, as the kernel's cgroups say."""

from pathlib import Path

from dagster_pipes import open_dagster_pipes

CGROUP = Path("/sys/fs/cgroup")


def read(*candidates: str) -> str:
    for name in candidates:
        if (CGROUP / name).exists():
            return (CGROUP / name).read_text().strip()
    return "unknown"


with open_dagster_pipes() as pipes:
    pipes.report_custom_message(
        {
            "worker": "limits",
            # cgroup v2 files first, then v1's
            "memory": read("memory.max", "memory/memory.limit_in_bytes"),
            "cpu": read("cpu.max", "cpu/cpu.cfs_quota_us"),
            "cpu_period": read("cpu/cpu.cfs_period_us") if not (CGROUP / "cpu.max").exists() else "",
        }
    )
