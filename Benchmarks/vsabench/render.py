"""The main section of BENCHMARKS.md and Benchmarks/ratios.png, from run_main's results; and the number formats
(fmt_value, fmt_us, fmt_ratio, fmt_kib) the other sections' renderers use too. Runs nothing: results in, text and
the chart out, so a saved results.json can be rendered again."""

import os
import statistics

from .common import PNG_PATH, one_line, shell_line
from .fio import LOOP_WORKLOAD_KEYS, WORKLOAD_BY_KEY, WORKLOADS, median_of, verify_fio_args
from .targets import VSA_TARGETS


def fmt_value(value, unit):
    if value is None:
        return "—"
    if unit == "MiB/s":
        return f"{value:,.0f} MiB/s"
    return f"{value / 1000:,.1f}k" if value >= 1000 else f"{value:,.0f}"


def fmt_us(value):
    if value is None:
        return "—"
    if value >= 10000:
        return f"{value / 1000:,.1f} ms"
    return f"{value:,.0f} µs" if value >= 100 else f"{value:,.1f} µs"


def fmt_ratio(value):
    return "—" if value is None else f"{value:.2f}×"


def fmt_kib(kib):
    return "—" if not kib else f"{kib / 1024:,.1f} MiB"


def medians(runs):
    """{workload: {target: {value, p99_us, cpu_us_per_io, spread, errors}}} from the per-round summaries."""
    table = {}
    for key, per_target in runs.items():
        for name, samples in per_target.items():
            good = [s for s in samples if "value" in s]
            row = {"rounds": len(good), "errors": [s["error"] for s in samples if "error" in s]}
            if good:
                values = [s["value"] for s in good]
                row.update(value=statistics.median(values), p99_us=median_of(good, "p99_us"),
                           cpu_us_per_io=median_of(good, "cpu_us_per_io"),
                           fsync_p99_us=median_of(good, "fsync_p99_us"),
                           spread=(max(values) - min(values)) / statistics.median(values) if len(values) > 1 else None)
            table.setdefault(key, {})[name] = row
    return table


def ratio(table, key, numerator, denominator):
    row = table.get(key, {})
    a, b = row.get(numerator, {}).get("value"), row.get(denominator, {}).get("value")
    return a / b if a and b else None


def render_chart(direct, loop, peers_present, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, NullLocator
    except ImportError:
        return "matplotlib is not installed (scripts/bench-deps installs python3-matplotlib): no chart"
    peers = [p for p in ("passthrough_ll", "qsd") if p in peers_present]
    series = [(v, p) for v in VSA_TARGETS for p in peers]
    labels, groups = [], []
    for table, keys, prefix in ((direct, [w.key for w in WORKLOADS], ""), (loop, LOOP_WORKLOAD_KEYS, "loop: ")):
        for key in keys:
            values = [ratio(table, key, v, p) for v, p in series]
            if any(values):
                labels.append(prefix + WORKLOAD_BY_KEY[key].title)
                groups.append(values)
    if not groups:
        return "no ratio to chart (a vsa target and passthrough_ll or qsd are needed)"
    colors = {("vsa-r0", "passthrough_ll"): "#9ecae1", ("vsa-r0", "qsd"): "#3182bd",
              ("vsa-r5", "passthrough_ll"): "#fdae6b", ("vsa-r5", "qsd"): "#e6550d",
              ("vsa-r5-thin", "passthrough_ll"): "#a1d99b", ("vsa-r5-thin", "qsd"): "#31a354"}
    figure, axes = plt.subplots(figsize=(max(9, 1.25 * len(labels) + 2), 5.2), dpi=110)
    width = 0.8 / len(series)
    present = [v for g in groups for v in g if v]
    for index, (vsa_name, peer) in enumerate(series):
        xs = [i + (index - (len(series) - 1) / 2) * width for i in range(len(groups))]
        heights = [g[index] if g[index] else 0 for g in groups]
        bars = axes.bar(xs, heights, width, label=f"{vsa_name} ÷ {peer}", color=colors[(vsa_name, peer)])
        for bar, value in zip(bars, heights):
            if value:
                axes.annotate(f"{value:.2f}", (bar.get_x() + bar.get_width() / 2, value), ha="center",
                              va="bottom", fontsize=6.5, rotation=90, xytext=(0, 2), textcoords="offset points")
    axes.axhline(1.0, color="black", linewidth=1)
    axes.set_yscale("log", base=2)
    low, high = min(present + [0.5]) / 1.5, max(present + [2.0]) * 2
    ticks = [2.0 ** e for e in range(-12, 8) if low <= 2.0 ** e <= high]
    axes.yaxis.set_major_locator(FixedLocator(ticks))
    axes.yaxis.set_minor_locator(NullLocator())
    axes.set_yticklabels([f"{t:g}×" for t in ticks])
    axes.set_ylim(low, high)
    axes.set_xticks(range(len(labels)))
    axes.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    axes.set_ylabel("vsa ÷ peer (higher is better for vsa; log scale)")
    axes.set_title("vsa's ratio to its peers, median IOPS or MiB/s (direct I/O; loop = through losetup --direct-io=on)",
                   fontsize=9)
    axes.legend(fontsize=8, ncol=2)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return None


def render_main(results, outdir):
    info, options = results["info"], results["options"]
    names = results["targets"]
    direct, loop = medians(results["runs"]), medians(results["loop_runs"])
    vsa_present = [v for v in VSA_TARGETS if v in names]
    peers = [n for n in names if n not in VSA_TARGETS]
    mode = "quick" if options["quick"] else "full"
    lines = []
    add = lines.append
    add("# vsa benchmarks")
    add("")
    add(f"Generated by `make bench` (`Benchmarks/run`, i.e. `Benchmarks/bench.py`) on {info['date']}; do not edit "
        f"by hand, rerun it. Mode **{mode}**: {options['rounds']} round(s), {options['runtime']} s per fio run, the "
        f"target order rotated each round, **median over rounds**; the run took {results['seconds'] / 60:.1f} min. "
        f"Raw fio JSON and logs: `Benchmarks/out/{os.path.basename(outdir)}/` (git-ignored).")
    add("")
    add(f"- Machine: {info['cpu']}, {info['nproc']} CPUs (nproc), {info['memory_gib']} GiB memory, kernel "
        f"{info['kernel']}, {info['os']}. Load average (1/5/15 min) at start {' '.join(info['loadavg_start'])}, at "
        f"end {' '.join(info.get('loadavg_end', ['?']))}: other work on the machine shows up in the numbers.")
    add(f"- Versions: {info['fio']}; {info['qsd']}; libfuse {info['libfuse']}; {info['nbdkit']}; {info['nbdfuse']}; "
        f"{info['gcc']}; Python {info['python']}, matplotlib {info['matplotlib']}.")
    dirty = (f", working tree with {info['vsa_dirty_files']} changed tracked file(s)" if info["vsa_dirty_files"]
             else ", clean working tree")
    add(f"- vsa: commit `{info['vsa_commit']}`{dirty}; binary `{info['vsa_binary']}` (**{info['vsa_binary_kind']}** "
        f"build, {info['vsa_binary_mtime']}, sha256 {info['vsa_binary_sha256']}…), copied to the work folder at "
        f"start.")
    add("- Data: every target exposes one 1 GiB file of random data (`$T/random.bin`, 1 GiB from os.urandom, made "
        "once per run); all backing data is on tmpfs (`/dev/shm`), so the software is measured, not a disk. The peers' "
        "backing files are copies of it made before their daemon starts; vsa's LUNs are filled through the LUN file "
        "with dd. fio runs with `--direct=1` on the target's file (and, in the loop pass, on a loop device attached "
        "with `losetup --direct-io=on`).")
    add("- Columns: the median of the rounds; *spread* = (max − min) / median over rounds; *p99* = fio's 99th "
        "percentile completion latency (clat); *CPU/IO* = the daemon's utime + stime from `/proc/PID/stat` (all "
        "threads; for vsa the pid in `DIR/array.lock`, for nbd nbdkit + nbdfuse) sampled right before and after the "
        "fio run, divided by the I/Os fio completed (kernel FUSE and loop-worker time is not in it); *vsa-r0 ÷* and "
        "*vsa-r5 ÷* = vsa's IOPS or MiB/s divided by that row's.")
    for name, reason in results["skipped"].items():
        add(f"- **{name} skipped**: {one_line(reason).replace(results['workdir'], '$T')}")
    add("")

    add("## Summary: vsa's ratio to each peer")
    add("")
    if vsa_present and peers:
        columns = [(v, p) for v in vsa_present for p in peers]
        add("| workload | " + " | ".join(f"{v} ÷ {p}" for v, p in columns) + " |")
        add("|---|" + "---:|" * len(columns))
        for w in WORKLOADS:
            add(f"| {w.title} | " + " | ".join(fmt_ratio(ratio(direct, w.key, v, p)) for v, p in columns) + " |")
        for key in LOOP_WORKLOAD_KEYS:
            if key in loop:
                add(f"| loop: {WORKLOAD_BY_KEY[key].title} | " +
                    " | ".join(fmt_ratio(ratio(loop, key, v, p)) for v, p in columns) + " |")
        add("")
    chart_problem = render_chart(direct, loop, names, PNG_PATH)
    if chart_problem:
        add(f"(No chart: {chart_problem}.)")
    else:
        add("![vsa's ratio to passthrough_ll and qsd per workload](Benchmarks/ratios.png)")
    add("")

    def workload_table(table, workloads, title):
        add(f"## {title}")
        add("")
        fsync = any(w.fsync for w in workloads)
        header = ["workload", "target", "IOPS / MiB/s", "spread", "p99"] + (["fsync p99"] if fsync else []) + \
                 ["CPU/IO"] + [f"{v} ÷" for v in vsa_present]
        add("| " + " | ".join(header) + " |")
        add("|---|---|" + "---:|" * (len(header) - 2))
        for w in workloads:
            for name in names:
                row = table.get(w.key, {}).get(name)
                if row is None:
                    continue
                if "value" not in row:
                    cells = [w.title, name, "**failed**: " + one_line(row["errors"][0] if row["errors"] else "?", 150)]
                    add("| " + " | ".join(cells + [""] * (len(header) - 3)) + " |")
                    continue
                cells = [w.title, f"**{name}**" if name in VSA_TARGETS else name, fmt_value(row["value"], w.unit),
                         "—" if row["spread"] is None else f"{row['spread'] * 100:.0f}%", fmt_us(row["p99_us"])]
                if fsync:
                    cells.append(fmt_us(row.get("fsync_p99_us")))
                cells.append(fmt_us(row["cpu_us_per_io"]))
                cells += ["" if name in VSA_TARGETS else fmt_ratio(ratio(table, w.key, v, name)) for v in vsa_present]
                if row["errors"]:
                    cells[2] += f" ({len(row['errors'])} failed round(s))"
                add("| " + " | ".join(cells) + " |")
        add("")

    groups = []
    for w in WORKLOADS:
        if w.group not in groups:
            groups.append(w.group)
    for group in groups:
        workload_table(direct, [w for w in WORKLOADS if w.group == group], group)
    if results["loop_runs"]:
        workload_table(loop, [WORKLOAD_BY_KEY[k] for k in LOOP_WORKLOAD_KEYS],
                       "Through a loop device (`losetup --direct-io=on`, fio on /dev/loopN)")

    add("## Daemon peak RSS")
    add("")
    add("VmHWM from `/proc/PID/status` at the end of the run (after the benchmark and verify runs).")
    add("")
    add("| target | peak RSS |")
    add("|---|---:|")
    for name in names:
        add(f"| {name} | {fmt_kib(results['rss_kib'].get(name)) if name != 'raw' else '— (no daemon)'} |")
    add("")

    add("## Correctness under load")
    add("")
    if results["verify"]:
        add(f"`fio --verify=crc32c --do_verify=1 --verify_fatal=1` with 4 jobs × QD16 (io_uring, O_DIRECT) of random "
            f"writes, each job on its own {options['verify_size']} at a 256M offset increment, then every block "
            f"read back and checked; on the file and through the loop device. *mismatches* counts fio's "
            f"`verify:`/`verify failed` lines (with `--verify_fatal=1` fio stops a job at its first bad block, so "
            f"this is a lower bound); *job errors* counts jobs that ended with an error.")
        add("")
        add("| target | path | block size | verdict | mismatches | job errors | writes | verified reads | "
            "time | first error |")
        add("|---|---|---|---|---:|---:|---:|---:|---:|---|")
        for v in results["verify"]:
            verdict = "ok" if v["verdict"] == "ok" else "**FAILED**"
            add(f"| {v['target']} | {v['path']} | {v['bs']} | {verdict} | {v['mismatches']} | {v['job_errors']} | "
                f"{v['written_ios']:,} | {v['verified_ios']:,} | {v['seconds']} s | "
                f"{v['first_error'].replace('|', '/').replace(results['workdir'], '$T')} |")
        add("")
        add("Command (`$FILE` is the target's file or /dev/loopN; `BS` 4k and 64k):")
        add("")
        add("```")
        add(shell_line(verify_fio_args("@FILE@", "@BS@", options["verify_size"])))
        add("```")
    else:
        add("Not run (`--no-verify`).")
    add("")

    add("## How it was run")
    add("")
    add("fio command lines (`$FILE` is the target's file, or /dev/loopN in the loop pass; bench.py adds "
        "`--output=FILE.json`):")
    add("")
    add("```")
    for w in WORKLOADS:
        add(results["fio_lines"][w.key])
    add("```")
    add("")
    add("Target command lines (`$T` is the work folder, a fresh `mkdtemp` under /dev/shm; `$T/vsa` is a copy of "
        "the vsa binary named above):")
    add("")
    for name in names:
        add(f"- **{name}**" + (": " + " ".join(results["notes"].get(name, [])) if results["notes"].get(name) else ""))
        if results["commands"].get(name):
            add("")
            add("  ```")
            for command in results["commands"][name]:
                add("  " + command)
            add("  ```")
    add("")
    add("Stopping: vsa with `vsa unmount MNT` (destage, mark clean), passthrough_ll and nbdfuse with "
        "`fusermount3 -u`, qemu-storage-daemon and nbdkit with SIGTERM, loop devices with `losetup -d`; then the work "
        "folder is removed. " + ("Every target stopped cleanly." if not results.get("teardown_problems") else
                                 "**Teardown problems:** " + "; ".join(results["teardown_problems"])))
    add("")
    return "\n".join(lines)
