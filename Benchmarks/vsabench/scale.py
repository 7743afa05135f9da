"""--scale: mount time and RSS of a 16 GiB against a 16 TiB sparse LUN (drives on disk), 4k random write IOPS
against drive count, 1M writes on 1, 2 and 4 busy LUNs; and its section of BENCHMARKS.md."""

import os
import shlex
import statistics
import tempfile
import time

from .common import (generated_on, TEARDOWN_PROBLEMS, Scope, SetupError, first_line, log, one_line, remove_tree, run,
                     status_kib)
from .fio import WORKLOAD_BY_KEY, Workload, run_fio, summarize
from .markdown import SCALE_BEGIN, SCALE_END
from .render import fmt_kib, fmt_us, fmt_value
from .vsa import array_folder, bench_workspace, vsa_array_down, vsa_array_up, vsa_control, vsa_daemon_pid


def run_scale(options, outdir, vsa_source):
    results = {"mount": [], "drives": [], "luns": [], "runtime": options.scale_runtime}
    started = time.monotonic()
    with Scope("scale") as scope:
        disk_dir = tempfile.mkdtemp(prefix="vsa-bench-scale.", dir=options.scale_dir)
        scope.push(f"remove {disk_dir}", lambda: remove_tree(disk_dir))
        shm_dir, vsa, logdir = bench_workspace(scope, "scale", vsa_source, outdir)
        results["disk_fs"] = first_line(run(["findmnt", "-n", "-o", "FSTYPE", "-T", disk_dir], check=False).stdout)
        results["disk_dir"] = options.scale_dir

        # Mount time and RSS: the same geometry, 1024 times the size.
        for label, drive_size, lun_size in (("16 GiB LUN", "5.5G", "16G"), ("16 TiB sparse LUN", "5.5T", "16T")):
            log(f"scale: {label} (RAID-5, 4 sparse drives of {drive_size} on {results['disk_fs']})")
            entry = {"label": label, "drive_size": drive_size, "lun_size": lun_size}
            with Scope(label) as array_scope:
                array_dir, mountpoint = array_folder(array_scope, disk_dir, lun_size)
                commands = []
                try:
                    mount_seconds, rss_after_mount, unmount_seconds = [], [], []
                    for attempt in range(3):
                        with Scope(f"{label} mount {attempt}") as mount_scope:
                            if attempt == 0:
                                seconds = vsa_array_up(mount_scope, vsa, array_dir, mountpoint,
                                                       ["--drives", "4", "--drive-size", drive_size, "--raid", "5"],
                                                       [("big", lun_size)], commands, logdir, f"scale-{lun_size}")
                            else:
                                mount_scope.push("unmount", lambda: vsa_array_down(vsa, array_dir, mountpoint, logdir,
                                                                                   f"scale-{lun_size}"))
                                t0 = time.monotonic()
                                run([vsa, "mount", array_dir, mountpoint], timeout=120)
                                seconds = time.monotonic() - t0
                            mount_seconds.append(seconds)
                            vsa_control(array_dir, "status")
                            pid = vsa_daemon_pid(array_dir)
                            rss_after_mount.append(status_kib(pid, "VmRSS"))
                            if attempt == 0:
                                workload = Workload("scale-randwrite", "", "", "randwrite", "4k", "io_uring", 16)
                                args = workload.fio_args(os.path.join(mountpoint, "big"), options.scale_runtime)
                                args = [a for a in args if a != "--size=1G"] + ["--norandommap", "--randrepeat=0"]
                                record = run_fio(args, os.path.join(outdir, f"scale-mount-{lun_size}.json"), [pid],
                                                 options.scale_runtime + 120)
                                summary = summarize(record, workload)
                                entry["randwrite_iops"] = summary.get("value")
                                entry["randwrite_error"] = summary.get("error")
                                entry["hwm_after_writes_kib"] = status_kib(pid, "VmHWM")
                            t0 = time.monotonic()
                            run([vsa, "unmount", mountpoint], timeout=360)
                            unmount_seconds.append(time.monotonic() - t0)
                    entry.update(mount_seconds=statistics.median(mount_seconds),
                                 mount_seconds_all=[round(s, 3) for s in mount_seconds],
                                 rss_after_mount_kib=statistics.median([r for r in rss_after_mount if r]),
                                 unmount_seconds=statistics.median(unmount_seconds),
                                 disk_used_kib=int(run(["du", "-sk", array_dir]).stdout.split()[0]))
                except SetupError as error:
                    entry["error"] = str(error)
                    log(f"  failed: {error}")
                entry["commands"] = [shlex.join(c).replace(disk_dir, "$S").replace(shm_dir, "$T") for c in commands]
                results["mount"].append(entry)

        # 4k random write IOPS against drive count, RAID-5 and RAID-6, drives on tmpfs.
        for raid, parity in (("5", 1), ("6", 2)):
            for drives in (4, 8, 16):
                data_drives = drives - parity
                drive_mib = -(-1024 // data_drives) + 48
                label = f"raid{raid}-{drives}"
                log(f"scale: RAID-{raid}, {drives} drives of {drive_mib}M on tmpfs, 1 GiB LUN")
                entry = {"raid": raid, "drives": drives, "drive_size": f"{drive_mib}M"}
                with Scope(label) as array_scope:
                    array_dir, mountpoint = array_folder(array_scope, shm_dir, label)
                    try:
                        vsa_array_up(array_scope, vsa, array_dir, mountpoint,
                                     ["--drives", str(drives), "--drive-size", f"{drive_mib}M", "--raid", raid],
                                     [("lun0", "1G")], [], logdir, f"scale-{label}")
                        workload = WORKLOAD_BY_KEY["4k-randwrite-qd16"]
                        pid = vsa_daemon_pid(array_dir)
                        record = run_fio(workload.fio_args(os.path.join(mountpoint, "lun0"), options.scale_runtime),
                                         os.path.join(outdir, f"scale-{label}.json"), [pid],
                                         options.scale_runtime + 120)
                        entry.update(summarize(record, workload))
                    except SetupError as error:
                        entry["error"] = str(error)
                        log(f"  failed: {error}")
                results["drives"].append(entry)
                log(f"  {entry.get('value', 0):.0f} IOPS" if "value" in entry else f"  {entry.get('error')}")

        # 1M write throughput with 1, 2, 4 LUNs busy at once (one RAID-5 array of 4 tmpfs drives).
        log("scale: 1M writes QD4 on 1, 2 and 4 LUNs at once (RAID-5, 4 drives on tmpfs, 4 LUNs of 512 MiB)")
        with Scope("luns") as array_scope:
            array_dir, mountpoint = array_folder(array_scope, shm_dir, "luns")
            try:
                vsa_array_up(array_scope, vsa, array_dir, mountpoint,
                             ["--drives", "4", "--drive-size", "736M", "--raid", "5"],
                             [(f"lun{i}", "512M") for i in range(4)], [], logdir, "scale-luns")
                pid = vsa_daemon_pid(array_dir)
                for busy in (1, 2, 4):
                    args = ["fio", "--time_based", f"--runtime={options.scale_runtime}", "--fallocate=none",
                            "--direct=1", "--rw=write", "--bs=1M", "--ioengine=io_uring", "--iodepth=4",
                            "--size=512M", "--group_reporting", "--output-format=json"]
                    for i in range(busy):
                        args += [f"--name=lun{i}", f"--filename={os.path.join(mountpoint, f'lun{i}')}"]
                    record = run_fio(args, os.path.join(outdir, f"scale-luns-{busy}.json"), [pid],
                                     options.scale_runtime + 120)
                    summary = summarize(record, Workload("x", "", "", "write", "1M", "io_uring", 4))
                    summary["busy_luns"] = busy
                    results["luns"].append(summary)
                    log(f"  {busy} LUN(s): " + (f"{summary['value']:.0f} MiB/s" if "value" in summary
                                                else summary["error"]))
                results["luns_command"] = shlex.join(args).replace(shm_dir, "$T")
            except SetupError as error:
                results["luns_error"] = str(error)
                log(f"  failed: {error}")
    results["seconds"] = time.monotonic() - started
    results["teardown_problems"] = [p.replace(disk_dir, "$S").replace(shm_dir, "$T") for p in TEARDOWN_PROBLEMS]
    TEARDOWN_PROBLEMS.clear()
    return results


def render_scale(scale):
    lines = [SCALE_BEGIN, "## Scale", ""]
    add = lines.append
    add(f"Generated by `Benchmarks/run --scale` on {generated_on()}"
        f" ({scale['runtime']} s per fio run; took {scale['seconds'] / 60:.1f} min).")
    add("")
    add(f"### Mount time and RSS: a 16 GiB LUN against a 16 TiB sparse LUN")
    add("")
    add(f"RAID-5 of 4 sparse drive files in {scale['disk_dir']} ({scale['disk_fs']}, not tmpfs), one LUN. Mount time "
        f"is the wall time of `vsa mount` (median of 3 mounts); RSS is the daemon's VmRSS once the control socket "
        f"answers; then one {scale['runtime']} s run of 4k random writes (io_uring QD16, `--norandommap`) over the "
        f"whole LUN, and the peak RSS after it.")
    add("")
    add("| LUN | drives | mount time (3 mounts) | RSS after mount | 4k randwrite QD16 | peak RSS after writes | "
        "unmount time | disk used |")
    add("|---|---|---:|---:|---:|---:|---:|---:|")
    for e in scale["mount"]:
        if "error" in e and "mount_seconds" not in e:
            add(f"| {e['label']} | 4 × {e['drive_size']} | **failed**: {one_line(e['error'], 150)} | | | | | |")
            continue
        iops = fmt_value(e.get("randwrite_iops"), "IOPS") if e.get("randwrite_iops") else \
            f"failed: {e.get('randwrite_error')}"
        add(f"| {e['label']} | 4 × {e['drive_size']} | {e['mount_seconds'] * 1000:.0f} ms "
            f"({', '.join(f'{s * 1000:.0f}' for s in e['mount_seconds_all'])}) | {fmt_kib(e['rss_after_mount_kib'])} "
            f"| {iops} | {fmt_kib(e.get('hwm_after_writes_kib'))} | {e['unmount_seconds'] * 1000:.0f} ms | "
            f"{fmt_kib(e['disk_used_kib'])} |")
    if len(scale["mount"]) == 2 and all("mount_seconds" in e for e in scale["mount"]):
        small, big = scale["mount"]
        add("")
        mount_ms = (big["mount_seconds"] - small["mount_seconds"]) * 1000
        rss_mib = round((big["rss_after_mount_kib"] - small["rss_after_mount_kib"]) / 1024, 1) + 0.0  # no "-0.0"
        add(f"16 TiB − 16 GiB: mount time {mount_ms:+.0f} ms, RSS after mount {rss_mib:+.1f} MiB.")
    add("")
    add("### 4k random write IOPS against drive count")
    add("")
    add(f"One 1 GiB LUN on RAID-5 and RAID-6 of 4, 8 and 16 drives on tmpfs (drive size set so the LUN fits); "
        f"`fio ... --rw=randwrite --bs=4k --ioengine=io_uring --iodepth=16 --runtime={scale['runtime']}` (the same "
        f"line as the main table) on a LUN that was not filled first.")
    add("")
    add("| RAID | drives | drive size | IOPS | p99 | CPU/IO |")
    add("|---|---:|---:|---:|---:|---:|")
    for e in scale["drives"]:
        if "value" not in e:
            add(f"| RAID-{e['raid']} | {e['drives']} | {e['drive_size']} | "
                f"**failed**: {one_line(e.get('error', '?'), 150)} | | |")
            continue
        add(f"| RAID-{e['raid']} | {e['drives']} | {e['drive_size']} | {fmt_value(e['value'], 'IOPS')} | "
            f"{fmt_us(e.get('p99_us'))} | {fmt_us(e.get('cpu_us_per_io'))} |")
    add("")
    add("### 1M write throughput with 1, 2 and 4 LUNs busy at once")
    add("")
    add("RAID-5 of 4 drives of 736 MiB on tmpfs, 4 LUNs of 512 MiB; one fio job per busy LUN, each 1M sequential "
        "writes io_uring QD4; the sum over the jobs.")
    add("")
    if scale.get("luns_error"):
        add(f"**Failed**: {one_line(scale['luns_error'])}")
    else:
        add("| busy LUNs | MiB/s (sum) | p99 | CPU/IO |")
        add("|---:|---:|---:|---:|")
        for e in scale["luns"]:
            if "value" not in e:
                add(f"| {e['busy_luns']} | **failed**: {one_line(e.get('error', '?'), 150)} | | |")
                continue
            add(f"| {e['busy_luns']} | {fmt_value(e['value'], 'MiB/s')} | {fmt_us(e.get('p99_us'))} | "
                f"{fmt_us(e.get('cpu_us_per_io'))} |")
        add("")
        add("```")
        add(scale.get("luns_command", ""))
        add("```")
    add("")
    add("Scale-mode commands (`$S` is a fresh folder on disk, `$T` one on /dev/shm holding a copy of the vsa binary; "
        "the tmpfs arrays are made the same way with the drive counts and sizes above):")
    add("")
    add("```")
    for e in scale["mount"]:
        for command in e.get("commands", []):
            add(command)
    add("```")
    add("")
    add("Every array unmounted cleanly." if not scale.get("teardown_problems") else
        "**Teardown problems:** " + "; ".join(scale["teardown_problems"]))
    add(SCALE_END)
    return "\n".join(lines)
