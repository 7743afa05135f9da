"""The main benchmark (BENCHMARKS.md's first section): every workload on every target, rounds rotated, a loop-device
pass, then fio's verify under load; and the machine it ran on. Returns the results dict that render.render_main turns
into markdown (and that Benchmarks/out/STAMP/results.json keeps)."""

import datetime
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

from .common import (LUN_BYTES, REPO, TEARDOWN_PROBLEMS, Scope, SetupError, first_line, log, make_random_file,
                     remove_tree, shell_line, status_kib)
from .fio import LOOP_WORKLOAD_KEYS, WORKLOAD_BY_KEY, WORKLOADS, run_fio, summarize, verify_fio_args
from .targets import VSA_TARGETS, Bench
from .vsa import vsa_control


def machine_info(vsa_source):
    def command_line(args):
        try:
            result = subprocess.run(args, capture_output=True, text=True, timeout=30)
            return first_line(result.stdout or result.stderr)
        except (OSError, subprocess.TimeoutExpired):
            return "not installed"

    def dpkg_version(package):
        return command_line(["dpkg-query", "-W", "-f=${Version}", package]) or "not installed"

    cpu_model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_total_kib = int(f.readline().split()[1])
    commit = command_line(["git", "-C", REPO, "rev-parse", "--short=12", "HEAD"])
    dirty = command_line(["sh", "-c", f"git -C {shlex.quote(REPO)} status --porcelain --untracked-files=no | wc -l"])
    try:
        import matplotlib
        matplotlib_version = matplotlib.__version__
    except ImportError:
        matplotlib_version = "not installed"
    binary_stat = os.stat(vsa_source)
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu_model, "nproc": os.cpu_count(), "memory_gib": round(mem_total_kib / (1 << 20), 1),
        "kernel": os.uname().release,
        "os": command_line(["sh", "-c", ". /etc/os-release && echo \"$PRETTY_NAME\""]),
        "fio": command_line(["fio", "--version"]),
        "qsd": command_line(["qemu-storage-daemon", "--version"]),
        "libfuse": command_line(["pkg-config", "--modversion", "fuse3"]),
        "nbdkit": command_line(["nbdkit", "--version"]), "nbdfuse": command_line(["nbdfuse", "--version"]),
        "s3backer": dpkg_version("s3backer"),
        "gcc": command_line(["gcc", "--version"]),
        "python": sys.version.split()[0], "matplotlib": matplotlib_version,
        "vsa_commit": commit, "vsa_dirty_files": int(dirty or 0),
        "vsa_binary": os.path.relpath(vsa_source, REPO) if vsa_source.startswith(REPO) else vsa_source,
        "vsa_binary_kind": "release" if "/release/" in vsa_source else ("debug" if "/debug/" in vsa_source else "?"),
        "vsa_binary_mtime": datetime.datetime.fromtimestamp(binary_stat.st_mtime).strftime("%Y-%m-%d %H:%M"),
        "vsa_binary_sha256": hashlib.sha256(open(vsa_source, "rb").read()).hexdigest()[:16],
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
    }


def run_main(options, outdir, vsa_source, info):
    results = {"info": info, "options": vars(options).copy(), "targets": {}, "skipped": {}, "runs": {},
               "loop_runs": {}, "verify": [], "rss_kib": {}, "commands": {}, "notes": {}, "fio_lines": {}}
    started = time.monotonic()
    with Scope("main") as scope:
        workdir = tempfile.mkdtemp(prefix="vsa-bench.", dir="/dev/shm")
        scope.push(f"remove {workdir}", lambda: remove_tree(workdir))
        results["workdir"] = workdir
        vsa_bin = os.path.join(workdir, "vsa")
        shutil.copy2(vsa_source, vsa_bin)  # a rebuild during the run must not swap the binary under us
        bench = Bench(options, scope, workdir, outdir, vsa_bin)
        needed_gib = 1 + 1.7 * len(options.targets) + 0.3 * sum(t in VSA_TARGETS for t in options.targets)
        available_gib = mem_available_kib() / (1 << 20)
        if available_gib < needed_gib:
            log(f"warning: about {needed_gib:.1f} GiB of tmpfs and cache needed, {available_gib:.1f} GiB available")
        log(f"work folder {workdir}; writing 1 GiB of random data")
        make_random_file(bench.random_path, LUN_BYTES)

        targets = {}
        for name in options.targets:
            log(f"setting up {name}")
            try:
                targets[name] = bench.setup(name)
                log(f"  {name}: {targets[name].filename} ready in {targets[name].setup_seconds:.1f} s")
            except SetupError as error:
                results["skipped"][name] = str(error)
                log(f"  {name} skipped: {error}")
        os.unlink(bench.random_path)
        for name in options.loop_targets:
            if name in targets:
                try:
                    bench.attach_loop(targets[name])
                    log(f"  {name}: loop device {targets[name].loop_device}")
                except SetupError as error:
                    results["skipped"][f"{name} (loop)"] = str(error)
        names = [n for n in options.targets if n in targets]
        loop_names = [n for n in names if targets[n].loop_device]
        results["targets"] = names
        results["loop_targets"] = loop_names
        if not names:
            raise SystemExit("no target came up; see the messages above")

        for w in WORKLOADS:
            results["fio_lines"][w.key] = shell_line(w.fio_args("@FILE@", options.runtime))
        runs_total = options.rounds * (len(WORKLOADS) * len(names) + len(LOOP_WORKLOAD_KEYS) * len(loop_names))
        log(f"{options.rounds} round(s) x ({len(WORKLOADS)} workloads x {len(names)} targets + "
            f"{len(LOOP_WORKLOAD_KEYS)} x {len(loop_names)} through loop devices) = {runs_total} fio runs of "
            f"{options.runtime} s: about {runs_total * (options.runtime + 0.4) / 60:.0f} min")
        run_index = 0
        for round_index in range(options.rounds):
            shift = round_index % len(names)
            order = names[shift:] + names[:shift]
            loop_order = [n for n in order if n in loop_names]
            log(f"round {round_index + 1}/{options.rounds}: {', '.join(order)}")
            passes = [("direct", WORKLOADS, order), ("loop", [WORKLOAD_BY_KEY[k] for k in LOOP_WORKLOAD_KEYS],
                                                     loop_order)]
            for pass_name, workloads, pass_order in passes:
                for workload in workloads:
                    for name in pass_order:
                        target = targets[name]
                        filename = target.loop_device if pass_name == "loop" else target.filename
                        run_index += 1
                        output = os.path.join(outdir, f"r{round_index + 1}-{pass_name}-{workload.key}-{name}.json")
                        record = run_fio(workload.fio_args(filename, options.runtime), output, target.daemon_pids(),
                                         options.runtime + 120)
                        summary = summarize(record, workload)
                        bucket = results["runs"] if pass_name == "direct" else results["loop_runs"]
                        bucket.setdefault(workload.key, {}).setdefault(name, []).append(summary)
                        shown = (f"{summary['value']:.0f} {workload.unit}" if "value" in summary
                                 else f"FAILED: {summary['error']}")
                        log(f"  [{run_index}/{runs_total}] {pass_name} {workload.key} {name}: {shown}")

        for name in names:
            pids = targets[name].daemon_pids()
            if pids:
                values = [status_kib(pid, "VmHWM") for pid in pids]
                results["rss_kib"][name] = sum(v for v in values if v) if all(values) else None

        if options.verify:
            results["verify"] = run_verify(options, targets, names, outdir)
            for name in names:  # the verify runs are load too: keep the larger peak
                pids = targets[name].daemon_pids()
                values = [status_kib(pid, "VmHWM") for pid in pids]
                if pids and all(values):
                    results["rss_kib"][name] = max(results["rss_kib"].get(name) or 0, sum(values))
        for name in names:
            target = targets[name]
            if target.array_dir:
                try:
                    status = vsa_control(target.array_dir, "status")
                    with open(os.path.join(outdir, f"status-{name}.json"), "w") as f:
                        f.write(status)
                except (SetupError, OSError) as error:
                    log(f"  vsa status of {name}: {error}")
            results["commands"][name] = [shlex.join(c).replace(workdir, "$T") for c in target.commands]
            results["notes"][name] = target.notes
        log("stopping the targets")
    results["seconds"] = time.monotonic() - started
    results["info"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    results["teardown_problems"] = [p.replace(results["workdir"], "$T") for p in TEARDOWN_PROBLEMS]
    TEARDOWN_PROBLEMS.clear()
    return results


def mem_available_kib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def run_verify(options, targets, names, outdir):
    verdicts = []
    for name in options.verify_targets:
        if name not in names:
            continue
        target = targets[name]
        paths = [("file", target.filename)] + ([("loop", target.loop_device)] if target.loop_device else [])
        for path_name, filename in paths:
            for bs in ("4k", "64k"):
                args = verify_fio_args(filename, bs, options.verify_size)
                output = os.path.join(outdir, f"verify-{name}-{path_name}-{bs}.json")
                log(f"verify {name} via {path_name}, {bs} writes, 4 jobs x QD16 x {options.verify_size}")
                record = run_fio(args, output, target.daemon_pids(), 1800)
                verdicts.append(verify_verdict(record, name, path_name, bs))
                log(f"  {verdicts[-1]['verdict']}: {verdicts[-1]['mismatches']} mismatch(es), "
                    f"{verdicts[-1]['job_errors']} job error(s) {verdicts[-1]['first_error']}")
    return verdicts


def verify_verdict(record, name, path_name, bs):
    stderr = record.get("stderr", "")
    mismatch_lines = [l for l in stderr.splitlines()
                      if l.startswith("verify:") or re.match(r"^\w+: verify failed", l)]
    job_errors, written, verified = 0, 0, 0
    first_error = ""
    if "json" in record:
        for job in record["json"]["jobs"]:
            written += job["write"]["total_ios"]
            verified += job["read"]["total_ios"]
            if job.get("error"):
                job_errors += 1
                first_error = first_error or f"errno {job['error']} ({os.strerror(job['error'])})"
    else:
        job_errors = len(re.findall(r"^fio: pid=\d+, err=", stderr, re.MULTILINE)) or 1
        first_error = record.get("error", "")
    if mismatch_lines:
        first_error = mismatch_lines[0][:160]
    ok = record.get("rc") == 0 and not mismatch_lines and job_errors == 0 and "json" in record
    return {"target": name, "path": path_name, "bs": bs, "rc": record.get("rc"), "mismatches": len(mismatch_lines),
            "job_errors": job_errors, "written_ios": written, "verified_ios": verified,
            "seconds": round(record.get("seconds", 0), 1), "first_error": first_error,
            "verdict": "ok" if ok else "FAILED"}
