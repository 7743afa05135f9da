"""The pool's section of `make bench` (issue 13's targets): `Benchmarks/run --pool` runs it alone, a full `make bench`
runs it last. It brings arrays up and down with the package's helpers (Scope, vsa_array_up, run_fio, ...), so nothing
here starts what the Scopes would not stop.

Three arrays, each on tmpfs drives whose files are allocated whole before the mount (tmpfs allocates and zeroes a page
at its first write: a pool that writes to segments never written before, as it does while snapshots keep the old
blocks, paid that and ran at a third of its speed), each torn down before the next:

  snapshots-64  RAID-5 of 4 x 4 GiB, two 512 MiB thin LUNs filled with random data: fio's workloads on one (fresh),
                then 64 times a 10% random overwrite of each and a snapshot of the second, then the workloads on both
                in rounds, their order swapped each round, medians (the LUN without snapshots is the control); snapshot create times along the way; the daemon's RSS
                against its cache.
  extents       RAID-5 of 4 x 2 GiB, a 1 TiB thin LUN holding 4 GiB (1 M mapped 4 KiB blocks): snapshot create
                times when nothing changed and after 64 MiB of 4 KiB overwrites; unmount and mount times; RSS after
                the mount (the map is read on demand: memory bounded by the cache, not by what is mapped).
  cleaner       RAID-5 of 4 x 600 MiB, a thin LUN of 90% of the pool, written whole, then 4 KiB random overwrites at
                QD16 for 2 minutes: IOPS per second, the second minute against the first, and what the cleaner did.
"""

import json
import re
import os
import statistics
import time

from .common import generated_on, MD_PATH, REPO, Scope, SetupError, log, one_line, run, status_kib
from .fio import WORKLOAD_BY_KEY, median_of, run_fio, summarize
from .markdown import POOL_BEGIN, POOL_END, existing_main_section, existing_scale_section, write_markdown
from .render import fmt_value
from .vsa import array_folder, bench_workspace, vsa_array_up, vsa_control, vsa_daemon_pid

SNAPSHOT_WORKLOAD_KEYS = ["4k-randread-qd1", "4k-randread-qd16", "4k-randwrite-qd16", "1m-read-qd4", "1m-write-qd4"]
SNAPSHOTS = 64
CACHE = "512M"
# The snapshot comparison's LUN: 64 rounds of 10% overwrites leave 6.4 times its size held by snapshots, and the pool
# (RAID-5 of 4 x 4 GiB: 9.7 GiB) must keep room to spare, or the comparison measures a nearly full pool (with a 1 GiB
# LUN the second column ran at 86% used, its writes waiting for the cleaner), not the snapshots.
SNAPSHOT_LUN_MIB = 512


def timed(args, timeout=300):
    started = time.monotonic()
    run(args, timeout=timeout)
    return time.monotonic() - started


def snap_create(vsa, mnt, lun, name, daemon_times):
    """`vsa snap create`'s wall time; the daemon's own time for it (it says "taken in N ms") goes to daemon_times."""
    started = time.monotonic()
    out = run([vsa, "snap", "create", mnt, lun, name]).stdout
    wall = time.monotonic() - started
    found = re.search(r"taken in ([0-9.]+) ms", out)
    if found:
        daemon_times.append(float(found.group(1)) / 1000)
    return wall


def status_json(vsa, target):
    return json.loads(run([vsa, "status", target, "--json"]).stdout)


def fio_fill(lun, size, outdir, label):
    """Writes `size` of the LUN once, 1M sequential (fio's buffers: random, never zero, so every block is stored)."""
    return run(["fio", f"--name={label}", f"--filename={lun}", f"--size={size}", "--rw=write", "--bs=1M",
                "--ioengine=io_uring", "--iodepth=4", "--direct=1", "--fallocate=none",
                f"--output={os.path.join(outdir, label + '.json')}", "--output-format=json"], timeout=1800)


def fio_overwrite(lun, io_size, outdir, label, seed, size="1G"):
    """Random 4 KiB overwrites of `io_size` in all over the first `size` of the LUN, QD16 (a snapshot's worth of
    change)."""
    return run(["fio", f"--name={label}", f"--filename={lun}", f"--size={size}", f"--io_size={io_size}",
                "--rw=randwrite", "--bs=4k", "--ioengine=io_uring", "--iodepth=16", "--direct=1",
                "--fallocate=none", f"--randseed={seed}", f"--output={os.path.join(outdir, label + '.json')}",
                "--output-format=json"], timeout=1800)


def run_workloads(options, lun, pid, outdir, label, size="1G"):
    """The snapshot comparison's workloads, after one untimed read of the whole LUN: both columns start with the
    map's frames and the drive files' pages warm (measured cold, the first column's 4 KiB QD1 reads came out at half
    the second's, which had 64 rounds of overwrites to warm them)."""
    run(["fio", f"--name={label}-warm", f"--filename={lun}", f"--size={size}", "--rw=read", "--bs=1M", "--ioengine=io_uring",
         "--iodepth=4", "--direct=1", "--fallocate=none", "--output-format=terse"], timeout=600)
    results = {}
    for key in SNAPSHOT_WORKLOAD_KEYS:
        workload = WORKLOAD_BY_KEY[key]
        record = run_fio(workload.fio_args(lun, options.runtime, size), os.path.join(outdir, f"{label}-{key}.json"),
                           [pid] if pid else [], options.runtime + 120)
        results[key] = summarize(record, workload)
        log(f"  {label} {workload.title}: {results[key].get('value', 0):.0f} {workload.unit}")
    return results


def median_workload(samples):
    """One workload's figures over rounds: the median of each (errors left out unless every round failed)."""
    good = [one for one in samples if "error" not in one]
    if not good:
        return samples[0]
    return {key: median_of(good, key) for key in good[0]}


def raid5_up(scope, vsa, shm_dir, logdir, label, drive_size, luns):
    """A RAID-5 of 4 preallocated tmpfs drives of `drive_size` with `luns` [(name, size, kind)], mounted; its unmount
    and removal registered in `scope`. Returns (array_dir, mountpoint)."""
    array_dir, mnt = array_folder(scope, shm_dir, label)
    vsa_array_up(scope, vsa, array_dir, mnt, ["--drives", "4", "--drive-size", drive_size, "--raid", "5", "--cache",
                                              CACHE], luns, [], logdir, label, preallocate=True)
    return array_dir, mnt


def snapshots_64(options, outdir, vsa, shm_dir, logdir, results):
    label = "pool-snapshots-64"
    with Scope(label) as scope:
        # Two LUNs given the same 64 rounds of random overwrites, one with a snapshot after each: redirect-on-write
        # scatters an overwritten LUN's blocks whether or not snapshots keep the old ones, so the LUN without
        # snapshots is the control (the target: within 15% of it); the fresh LUN's figures are shown beside.
        size = f"{SNAPSHOT_LUN_MIB}M"
        array_dir, mnt = raid5_up(scope, vsa, shm_dir, logdir, label, "4G", [("plain", size, "--thin"), ("lun0", size, "--thin")])
        plain, lun = os.path.join(mnt, "plain"), os.path.join(mnt, "lun0")
        fio_fill(plain, size, outdir, f"{label}-fill-plain")
        fio_fill(lun, size, outdir, f"{label}-fill")
        vsa_control(array_dir, "flush")  # destaged: the first workload does not share the drives with the fill's tail
        pid = vsa_daemon_pid(array_dir)
        results["fresh"] = run_workloads(options, plain, pid, outdir, f"{label}-fresh", size)
        creates, daemon_creates = [], []
        count = SNAPSHOTS if not options.quick else 8
        for i in range(count):
            fio_overwrite(plain, f"{SNAPSHOT_LUN_MIB // 10}M", outdir, f"{label}-overwrite-plain-{i}", seed=1000 + i, size=size)
            fio_overwrite(lun, f"{SNAPSHOT_LUN_MIB // 10}M", outdir, f"{label}-overwrite-{i}", seed=1000 + i, size=size)
            creates.append(snap_create(vsa, mnt, "lun0", f"s{i}", daemon_creates))
        results["snapshots"] = count
        results["create_seconds"] = creates
        results["create_daemon_seconds"] = daemon_creates
        vsa_control(array_dir, "flush")
        # Rounds, the two LUNs' order swapped each round, and the median per workload: this machine's speed varied
        # 2-4x within one run, and a single pass put whichever LUN ran in a slow minute behind.
        rounds = max(1, options.rounds)
        samples = {"none": [], "with": []}
        for r in range(rounds):
            order = [("none", plain), ("with", lun)] if r % 2 == 0 else [("with", lun), ("none", plain)]
            for name, path in order:
                samples[name].append(run_workloads(options, path, pid, outdir, f"{label}-{name}-r{r}", size))
        for name, runs in samples.items():
            results[name] = {key: median_workload([one[key] for one in runs]) for key in SNAPSHOT_WORKLOAD_KEYS}
        results["rounds"] = rounds
        results["lun_mib"] = SNAPSHOT_LUN_MIB
        status = status_json(vsa, mnt)
        pool = status.get("pool", {})
        results["pool_used_bytes"] = pool.get("allocatedBytes")
        results["pool_size_bytes"] = pool.get("sizeBytes")
        results["rss_kib"] = status_kib(pid, "VmRSS") if pid else None
        results["hwm_kib"] = status_kib(pid, "VmHWM") if pid else None
        results["cache"] = CACHE


def extents(options, outdir, vsa, shm_dir, logdir, results):
    label = "pool-extents"
    data = "4G" if not options.quick else "512M"
    with Scope(label) as scope:
        array_dir, mnt = raid5_up(scope, vsa, shm_dir, logdir, label, "2G", [("big", "1T", "--thin")])
        lun = os.path.join(mnt, "big")
        started = time.monotonic()
        fio_fill(lun, data, outdir, f"{label}-fill")
        vsa_control(array_dir, "flush")
        results["fill_seconds"] = time.monotonic() - started
        results["data"] = data
        quiet, busy, quiet_daemon, busy_daemon = [], [], [], []
        for i in range(5):
            quiet.append(snap_create(vsa, mnt, "big", f"q{i}", quiet_daemon))
            fio_overwrite(lun, "64M", outdir, f"{label}-overwrite-{i}", seed=2000 + i)
            busy.append(snap_create(vsa, mnt, "big", f"b{i}", busy_daemon))
        results["create_quiet_seconds"] = quiet
        results["create_busy_seconds"] = busy
        results["create_quiet_daemon_seconds"] = quiet_daemon
        results["create_busy_daemon_seconds"] = busy_daemon
        # A request that does nothing: what the command line itself costs (process start, the control socket).
        results["cli_baseline_seconds"] = statistics.median(timed([vsa, "snap", "list", mnt]) for _ in range(5))
        status = status_json(vsa, mnt)
        lun_status = next((l for l in status.get("luns", []) if l.get("name") == "big"), {})
        results["mapped_blocks"] = (lun_status.get("allocatedBytes") or 0) // 4096
        results["unmount_seconds"] = timed([vsa, "unmount", mnt], timeout=600)
        results["mount_seconds"] = timed([vsa, "mount", array_dir, mnt], timeout=600)
        pid = vsa_daemon_pid(array_dir)
        results["rss_after_mount_kib"] = status_kib(pid, "VmRSS") if pid else None
        record = run_fio(["fio", "--name=readall", f"--filename={lun}", f"--size={data}", "--rw=read", "--bs=1M",
                          "--ioengine=io_uring", "--iodepth=4", "--direct=1", "--output-format=json"],
                         os.path.join(outdir, f"{label}-readall.json"), [pid] if pid else [], 1800)
        results["read_all"] = summarize(record, WORKLOAD_BY_KEY["1m-read-qd4"])
        results["rss_after_read_kib"] = status_kib(pid, "VmRSS") if pid else None
        results["hwm_kib"] = status_kib(pid, "VmHWM") if pid else None


def cleaner(options, outdir, vsa, shm_dir, logdir, results):
    label = "pool-cleaner"
    seconds = 120 if not options.quick else 20
    with Scope(label) as scope:
        array_dir, mnt = raid5_up(scope, vsa, shm_dir, logdir, label, "600M", [])
        # The pool's size is known once it exists: a first LUN makes it, the measured one is 90% of it.
        run([vsa, "lun", "create", mnt, "probe", "--size", "1M"])
        size = status_json(vsa, mnt)["pool"]["sizeBytes"]
        run([vsa, "lun", "delete", mnt, "probe"])
        lun_bytes = size * 9 // 10 // (1 << 20) * (1 << 20)
        run([vsa, "lun", "create", mnt, "full", "--size", str(lun_bytes)])
        lun = os.path.join(mnt, "full")
        fio_fill(lun, str(lun_bytes), outdir, f"{label}-fill")
        vsa_control(array_dir, "flush")
        pid = vsa_daemon_pid(array_dir)
        prefix = os.path.join(outdir, f"{label}-iops")
        record = run_fio(["fio", "--name=overwrite", f"--filename={lun}", f"--size={lun_bytes}", "--time_based",
                          f"--runtime={seconds}", "--rw=randwrite", "--bs=4k", "--ioengine=io_uring",
                          "--iodepth=16", "--direct=1", "--fallocate=none", f"--write_iops_log={prefix}",
                          "--log_avg_msec=1000", "--output-format=json"],
                         os.path.join(outdir, f"{label}.json"), [pid] if pid else [], seconds + 300)
        results["summary"] = summarize(record, WORKLOAD_BY_KEY["4k-randwrite-qd16"])
        per_second = []
        for name in sorted(os.listdir(outdir)):
            if name.startswith(os.path.basename(prefix)) and name.endswith(".log"):
                with open(os.path.join(outdir, name)) as f:
                    for line in f:
                        fields = [x.strip() for x in line.split(",")]
                        if len(fields) >= 2 and fields[1].isdigit():
                            per_second.append(int(fields[1]))
        half = len(per_second) // 2
        results["seconds"] = seconds
        results["per_second"] = per_second
        results["first_half_iops"] = statistics.mean(per_second[:half]) if half else None
        results["second_half_iops"] = statistics.mean(per_second[half:]) if half else None
        results["lun_bytes"] = lun_bytes
        results["pool_bytes"] = size
        status = status_json(vsa, mnt)
        results["cleaner"] = status.get("pool", {}).get("cleaner")
        results["pool_used_percent"] = status.get("pool", {}).get("usedPercent")


def run_pool(options, outdir, vsa_source):
    results = {"runtime": options.runtime, "quick": options.quick}
    started = time.monotonic()
    with Scope("pool") as scope:
        shm_dir, vsa, logdir = bench_workspace(scope, "pool", vsa_source, outdir)
        for name, step in (("snapshots-64", snapshots_64), ("extents", extents), ("cleaner", cleaner)):
            log(f"pool: {name}")
            part = results.setdefault(name, {})
            try:
                step(options, outdir, vsa, shm_dir, logdir, part)
            except SetupError as error:
                part["error"] = str(error)
                log(f"  failed: {error}")
    results["seconds"] = time.monotonic() - started
    return results


def ms(values, digits=0):
    if not values:
        return "—"
    return f"{statistics.median(values) * 1000:.{digits}f} ms (max {max(values) * 1000:.{digits}f})"


def mib(kib):
    return "—" if kib is None else f"{kib / 1024:.0f} MiB"


def subsection(add, title, part):
    """A subsection's heading, then its failure instead of its body when the part failed. True: write the body."""
    add(title)
    add("")
    if "error" in part:
        add(f"**Failed**: {one_line(part['error'])}")
        return False
    return True


def render_pool(results):
    lines = []
    add = lines.append
    add(POOL_BEGIN)
    add("## The pool: snapshots, mapped extents, the cleaner (issue 13)")
    add("")
    add(f"Generated by `Benchmarks/run --pool` on {generated_on()}"
        f" (took {results['seconds'] / 60:.1f} min{', --quick: fewer snapshots, less data, a shorter cleaner run' if results.get('quick') else ''})."
        f" Release build, tmpfs drives, RAID-5 of 4, `--cache {CACHE}`, fio `--direct=1`; one run per figure but the"
        f" snapshot comparison's overwritten columns (medians of rounds). Times of `vsa snap create`: the daemon's own (it prints it), and the"
        f" command's wall time, process start and control socket included.")
    add("")
    s = results.get("snapshots-64", {})
    count = s.get("snapshots", SNAPSHOTS)
    if subsection(add, f"### The same workloads with {count} snapshots (target: within 15% of none)", s):
        lun_mib = s.get("lun_mib", 1024)
        if "fresh" in s:
            add(f"Two {lun_mib} MiB thin LUNs, filled; the workloads on one (fresh); then, {count} times, {lun_mib // 10} MiB of"
                " random 4 KiB overwrites (10%) of each and a snapshot of the second; the workloads on both. Redirect-on-write"
                " scatters an overwritten LUN's blocks with or without snapshots (1M reads find shorter runs), so the LUN"
                " overwritten alike without snapshots is the control; the LUNs are small enough that what the snapshots hold"
                " leaves the pool room to spare (with one 1 GiB LUN it was 86% used: a nearly full pool was measured)."
                f" The two overwritten columns are medians of {s.get('rounds', 1)} rounds, the LUNs' order swapped each round.")
        else:
            add(f"A {lun_mib} MiB thin LUN, filled; the workloads; then, {count} times, {lun_mib // 10} MiB of random 4 KiB"
                " overwrites (10%) and a snapshot; the workloads again.")
        add("")
        fresh = s.get("fresh")
        if fresh is not None:
            add(f"| workload | fresh | overwritten, no snapshot | overwritten, {count} snapshots | ratio to no snapshot | ratio to fresh |")
            add("|---|---:|---:|---:|---:|---:|")
        else:
            add(f"| workload | no snapshot | {count} snapshots | ratio |")
            add("|---|---:|---:|---:|")
        for key in SNAPSHOT_WORKLOAD_KEYS:
            workload = WORKLOAD_BY_KEY[key]
            none, with_ = s.get("none", {}).get(key, {}), s.get("with", {}).get(key, {})
            a, c = none.get("value"), with_.get("value")
            ratio = f"{c / a:.2f}×" if a and c else "—"
            cells = f"{fmt_value(a, workload.unit) if a else '—'} | {fmt_value(c, workload.unit) if c else '—'} | {ratio}"
            if fresh is not None:
                f = fresh.get(key, {}).get("value")
                add(f"| {workload.title} | {fmt_value(f, workload.unit) if f else '—'} | {cells} | {f'{c / f:.2f}×' if f and c else '—'} |")
            else:
                add(f"| {workload.title} | {cells} |")
        add("")
        add(f"Snapshot create after each 10% overwrite: {ms(s.get('create_daemon_seconds'), 1)} in the daemon, "
            f"{ms(s.get('create_seconds'))} for the command. Pool used at the end: "
            f"{(s.get('pool_used_bytes') or 0) / (1 << 30):.1f} of {(s.get('pool_size_bytes') or 0) / (1 << 30):.1f} GiB."
            f" Daemon RSS after the runs: {mib(s.get('rss_kib'))} (peak {mib(s.get('hwm_kib'))}), cache {CACHE}"
            f" (target: RSS at most the cache + 64 MiB).")
    add("")
    e = results.get("extents", {})
    if subsection(add, "### Snapshot create time, mount time and memory with mapped extents", e):
        add(f"A 1 TiB thin LUN holding {e.get('data')}iB ({e.get('mapped_blocks', 0):,} mapped 4 KiB blocks; written and "
            f"flushed in {e.get('fill_seconds', 0):.1f} s).")
        add("")
        add("| what | in the daemon | the command (wall) |")
        add("|---|---:|---:|")
        add(f"| snapshot create, nothing written since the last (target < 20 ms) | {ms(e.get('create_quiet_daemon_seconds'), 1)} | "
            f"{ms(e.get('create_quiet_seconds'))} |")
        add(f"| snapshot create after 64 MiB of 4 KiB random overwrites | {ms(e.get('create_busy_daemon_seconds'), 1)} | "
            f"{ms(e.get('create_busy_seconds'))} |")
        add(f"| `vsa snap list` (the command line's own cost) | — | {ms([e['cli_baseline_seconds']]) if 'cli_baseline_seconds' in e else '—'} |")
        add(f"| unmount (destage, checkpoint, clean stop) | — | {e.get('unmount_seconds', 0):.2f} s |")
        add(f"| mount | — | {e.get('mount_seconds', 0):.2f} s |")
        add("")
        read_all = e.get("read_all", {})
        add(f"Daemon RSS right after the mount: {mib(e.get('rss_after_mount_kib'))}; after reading all "
            f"{e.get('data')}iB back ({read_all.get('value', 0):.0f} MiB/s): {mib(e.get('rss_after_read_kib'))} (peak "
            f"{mib(e.get('hwm_kib'))}). The map is read on demand into frames bounded by the cache, so neither "
            f"figure grows with what is mapped; 10 M extents (40 GiB of data) do not fit this machine's tmpfs: "
            f"`Benchmarks/extents-10m` measures them on disk-backed drives, by hand (docs/ROADMAP.md has its figures).")
    add("")
    c = results.get("cleaner", {})
    if subsection(add, "### The cleaner at 90% fill (target: the second minute keeps at least 50% of the first's IOPS)", c):
        first, second = c.get("first_half_iops"), c.get("second_half_iops")
        kept = f"{second / first * 100:.0f}%" if first and second else "—"
        summary = c.get("summary", {})
        cleaner_status = c.get("cleaner") or {}
        ran = len(c.get("per_second") or [])
        if "error" in summary:
            outcome = (f"fio stopped after {ran} s: {summary['error']}. IOPS while it ran: first half "
                       f"{(first or 0) / 1000:.1f}k, second half {(second or 0) / 1000:.1f}k")
        else:
            outcome = (f"first half {(first or 0) / 1000:.1f}k IOPS, second half {(second or 0) / 1000:.1f}k IOPS (kept "
                       f"{kept}); overall {(summary.get('value') or 0) / 1000:.1f}k IOPS")
        add(f"A thin LUN of {(c.get('lun_bytes') or 0) >> 20} MiB (90% of a {(c.get('pool_bytes') or 0) >> 20} MiB pool),"
            f" written whole, then 4 KiB random overwrites at QD16 for {c.get('seconds')} s: {outcome}."
            f" The cleaner moved {(cleaner_status.get('movedBytes') or 0) >> 20} MiB in "
            f"{cleaner_status.get('segmentsCleaned', 0)} segments; pool {c.get('pool_used_percent') or 0:.1f}% used at the end.")
        per_second = c.get("per_second") or []
        if per_second:
            step = max(1, len(per_second) // 12)
            add("")
            add("IOPS by second (every " + str(step) + " s): " +
                ", ".join(f"{v / 1000:.1f}k" for v in per_second[::step]))
    add(POOL_END)
    return "\n".join(lines)


def pool_section(options, outdir, vsa_source):
    """Runs the pool benchmark and rewrites its section; the others are kept."""
    results = run_pool(options, outdir, vsa_source)
    with open(os.path.join(outdir, "pool.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    write_markdown(existing_main_section(), existing_scale_section(), None, render_pool(results))
    log(f"wrote the pool section of {os.path.relpath(MD_PATH, REPO)} (took {results['seconds'] / 60:.1f} min)")
