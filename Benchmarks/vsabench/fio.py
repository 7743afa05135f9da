"""The fio side: the workloads (each one fio command line), the verify-under-load command line, and running one fio
job with the daemons' CPU time sampled around it, then summarizing its JSON. Shared by every benchmark."""

import os
import statistics
import subprocess
import time
from dataclasses import dataclass

from .common import CLOCK_TICKS_PER_SECOND, MIB, cpu_ticks, first_line, load_fio_json, run


# ---------------------------------------------------------------------------------------------------------------
# Workloads


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    group: str
    rw: str
    bs: str
    engine: str
    depth: int
    fsync: bool = False

    @property
    def unit(self):
        return "MiB/s" if self.bs == "1M" else "IOPS"

    @property
    def direction(self):
        return "read" if self.rw in ("read", "randread") else "write"

    def fio_args(self, filename, runtime_seconds, size="1G"):
        args = [
            "fio", f"--name={self.key}", f"--filename={filename}", f"--size={size}", "--time_based",
            f"--runtime={runtime_seconds}", "--fallocate=none", "--direct=1", f"--rw={self.rw}", f"--bs={self.bs}",
            f"--ioengine={self.engine}", f"--iodepth={self.depth}",
        ]
        if self.fsync:
            args.append("--fsync=1")
        return args + ["--group_reporting", "--output-format=json"]


WORKLOADS = [
    Workload("4k-randread-qd1", "4k randread QD1", "4k QD1 (psync)", "randread", "4k", "psync", 1),
    Workload("4k-randwrite-qd1", "4k randwrite QD1", "4k QD1 (psync)", "randwrite", "4k", "psync", 1),
    Workload("4k-randread-qd16", "4k randread QD16", "4k QD16 (io_uring)", "randread", "4k", "io_uring", 16),
    Workload("4k-randwrite-qd16", "4k randwrite QD16", "4k QD16 (io_uring)", "randwrite", "4k", "io_uring", 16),
    Workload("1m-read-qd4", "1M read QD4", "1M QD4 (io_uring)", "read", "1M", "io_uring", 4),
    Workload("1m-write-qd4", "1M write QD4", "1M QD4 (io_uring)", "write", "1M", "io_uring", 4),
    Workload("4k-randwrite-fsync", "4k randwrite + fsync=1", "4k randwrite with fsync=1 (psync, durable)",
             "randwrite", "4k", "psync", 1, fsync=True),
]
LOOP_WORKLOAD_KEYS = ["4k-randread-qd16", "4k-randwrite-qd16", "1m-read-qd4", "1m-write-qd4"]
WORKLOAD_BY_KEY = {w.key: w for w in WORKLOADS}


def verify_fio_args(filename, bs, size_per_job):
    """4 jobs x QD16 random writes, each job on its own quarter of the 1 GiB file, then read back and checked."""
    return [
        "fio", f"--name=verify-{bs}", f"--filename={filename}", f"--size={size_per_job}", "--offset_increment=256M",
        "--numjobs=4", "--rw=randwrite", f"--bs={bs}", "--ioengine=io_uring", "--iodepth=16", "--direct=1",
        "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--output-format=json",
    ]


# ---------------------------------------------------------------------------------------------------------------
# Measurement


def run_fio(args, output_path, pids, timeout_seconds):
    """Runs one fio job, sampling the daemons' CPU time around it. Returns a dict with the JSON or the error."""
    args = args + [f"--output={output_path}"]
    before = cpu_ticks(pids) if pids else None
    started = time.monotonic()
    try:
        result = run(args, check=False, timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        return {"error": f"fio did not finish in {timeout_seconds} s", "seconds": time.monotonic() - started}
    after = cpu_ticks(pids) if pids else None
    record = {"rc": result.returncode, "stderr": result.stderr[-4000:], "seconds": time.monotonic() - started}
    try:
        record["json"] = load_fio_json(output_path)
    except (OSError, ValueError) as error:
        record["error"] = f"fio exited {result.returncode}, no JSON ({error}): {first_line(result.stderr)}"
    if before is not None and after is not None:
        record["cpu_seconds"] = (after - before) / CLOCK_TICKS_PER_SECOND
    return record


def summarize(record, workload):
    """value (IOPS or MiB/s), p99 clat µs, CPU µs per I/O (None without a daemon) from one fio run."""
    if "json" not in record:
        return {"error": record.get("error", "no result")}
    job = record["json"]["jobs"][0]
    if job.get("error"):
        return {"error": f"fio job error {job['error']} ({os.strerror(job['error'])}): "
                         f"{first_line(record.get('stderr', ''))}"}
    side = job[workload.direction]
    value = side["bw_bytes"] / MIB if workload.unit == "MiB/s" else side["iops"]
    percentiles = side["clat_ns"].get("percentile", {})
    p99 = percentiles.get("99.000000")
    summary = {"value": value, "p99_us": p99 / 1000 if p99 else None, "ios": side["total_ios"]}
    ios = job["read"]["total_ios"] + job["write"]["total_ios"]
    if "cpu_seconds" in record and ios:
        summary["cpu_us_per_io"] = record["cpu_seconds"] * 1e6 / ios
    if workload.fsync:
        sync_percentiles = job.get("sync", {}).get("lat_ns", {}).get("percentile", {})
        if sync_percentiles.get("99.000000"):
            summary["fsync_p99_us"] = sync_percentiles["99.000000"] / 1000
    return summary


def median_of(samples, key):
    values = [s[key] for s in samples if s.get(key) is not None]
    return statistics.median(values) if values else None
