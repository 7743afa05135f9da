"""`Benchmarks/run`'s options and environment, the checks before anything starts (root, tools, the vsa binary, one run
at a time), and which sections a run measures and writes."""

import argparse
import datetime
import fcntl
import json
import os
import re
import shutil
import signal

from .common import BENCH_DIR, MD_PATH, OUT_ROOT, PNG_PATH, REPO, exit_on_signal, log
from .directors import directors_section
from .markdown import existing_main_section, existing_scale_section, write_markdown
from .matrix import machine_info, run_main
from .pool import pool_section
from .render import render_main
from .scale import render_scale, run_scale
from .targets import ALL_TARGETS, DEFAULT_LOOP_TARGETS, DEFAULT_TARGETS, DEFAULT_VERIFY_TARGETS

# The file a run locks: the entry script, as before the package (Benchmarks/run runs it), so that the message below
# still names it.
LOCK_PATH = os.path.join(BENCH_DIR, "bench.py")


def parse_options(argv):
    def env_list(name, default):
        value = os.environ.get(name, "").strip()
        return [v for v in re.split(r"[,\s]+", value) if v] if value else default

    parser = argparse.ArgumentParser(
        prog="Benchmarks/run", description="vsa beside qemu-storage-daemon, nbdfuse and libfuse's passthrough_ll: "
        "the fio matrix, verify under load and --scale; writes BENCHMARKS.md and Benchmarks/ratios.png. "
        "Environment: TARGETS, LOOP_TARGETS, VERIFY_TARGETS (comma lists), ROUNDS, RUNTIME, VERIFY_SIZE, VSA_BIN, "
        "SCALE_DIR; options win over the environment.")
    parser.add_argument("--targets", help=f"comma list from {','.join(ALL_TARGETS)} "
                        f"(default {','.join(DEFAULT_TARGETS)})")
    parser.add_argument("--loop-targets", help=f"targets also measured through a loop device "
                        f"(default {','.join(DEFAULT_LOOP_TARGETS)}; 'none' for no loop pass)")
    parser.add_argument("--verify-targets", help=f"default {','.join(DEFAULT_VERIFY_TARGETS)}")
    parser.add_argument("--rounds", type=int, help="rounds (default 3; ROUNDS)")
    parser.add_argument("--runtime", type=int, help="seconds per fio run (default 10; RUNTIME)")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s runs, 64M per verify job, no --scale")
    parser.add_argument("--scale", action="store_true",
                        help="run only the scale benchmarks; the other sections of BENCHMARKS.md are kept")
    parser.add_argument("--no-scale", action="store_true", help="skip the scale benchmarks")
    parser.add_argument("--directors", action="store_true",
                        help="run only the director-cost benchmark (--engines 1 against VSA_DIRECT_ROUTING=1); "
                             "the other sections of BENCHMARKS.md are kept")
    parser.add_argument("--no-directors", action="store_true", help="skip the director-cost benchmark")
    parser.add_argument("--pool", action="store_true",
                        help="run only the pool benchmark (64 snapshots, snapshot create and mount times with mapped "
                             "extents, the cleaner at 90%% fill); the other sections of BENCHMARKS.md are kept")
    parser.add_argument("--no-pool", action="store_true", help="skip the pool benchmark")
    parser.add_argument("--no-verify", action="store_true", help="skip the verify-under-load runs")
    options = parser.parse_args(argv)

    options.targets = options.targets.split(",") if options.targets else env_list("TARGETS", DEFAULT_TARGETS)
    loop = options.loop_targets.split(",") if options.loop_targets else env_list("LOOP_TARGETS",
                                                                                 DEFAULT_LOOP_TARGETS)
    options.loop_targets = [] if loop == ["none"] else loop
    options.verify_targets = (options.verify_targets.split(",") if options.verify_targets
                              else env_list("VERIFY_TARGETS", DEFAULT_VERIFY_TARGETS))
    for name in options.targets + options.loop_targets + options.verify_targets:
        if name not in ALL_TARGETS:
            parser.error(f"unknown target {name!r}: choose from {', '.join(ALL_TARGETS)}")
    if len(set(options.targets)) != len(options.targets):
        parser.error("a target is listed twice")
    options.rounds = options.rounds or int(os.environ.get("ROUNDS") or (1 if options.quick else 3))
    options.runtime = options.runtime or int(os.environ.get("RUNTIME") or (2 if options.quick else 10))
    options.verify_size = os.environ.get("VERIFY_SIZE") or ("64M" if options.quick else "256M")
    options.scale_runtime = 2 if options.quick else 5
    options.scale_dir = os.environ.get("SCALE_DIR") or "/var/tmp"
    options.verify = not options.no_verify
    if options.rounds < 1 or options.runtime < 1:
        parser.error("ROUNDS and RUNTIME must be at least 1")
    return options


def find_vsa_binary():
    configured = os.environ.get("VSA_BIN")
    candidates = [configured] if configured else [os.path.join(REPO, ".build/release/vsa"),
                                                  os.path.join(REPO, ".build/debug/vsa")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
    raise SystemExit(f"bench: no vsa binary at {' or '.join(c for c in candidates if c)}; run `make release` or "
                     f"set VSA_BIN")


def main(argv):
    options = parse_options(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (loop devices, FUSE mounts of peers); e.g. sudo make bench")
    for tool in ("fio", "losetup", "fusermount3", "gcc", "pkg-config"):
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} is missing; run scripts/bench-deps as root")
    vsa_source = find_vsa_binary()
    signal.signal(signal.SIGTERM, exit_on_signal)
    signal.signal(signal.SIGHUP, exit_on_signal)
    lock_file = open(LOCK_PATH)  # one run at a time; a lock on our own source leaves nothing behind
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit("bench: another bench run is going on (it holds a lock on Benchmarks/bench.py)")

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = os.path.join(OUT_ROOT, stamp + ("-scale" if options.scale else "-directors" if options.directors
                                             else "-pool" if options.pool else ""))
    os.makedirs(outdir, exist_ok=True)
    log(f"vsa binary {vsa_source}; raw output in {os.path.relpath(outdir, REPO)}")
    if "/debug/" in vsa_source:
        log("warning: this is a debug build; numbers will not be representative (make release)")

    main_text = scale_text = None
    if options.pool:
        pool_section(options, outdir, vsa_source)
        return 0
    if options.directors:
        directors_section(options, outdir, vsa_source, existing_main_section(), existing_scale_section())
        return 0
    if not options.scale:
        info = machine_info(vsa_source)
        results = run_main(options, outdir, vsa_source, info)
        with open(os.path.join(outdir, "results.json"), "w") as f:
            json.dump(results, f, indent=1, default=str)
        main_text = render_main(results, outdir)
        write_markdown(main_text, existing_scale_section())
        log(f"wrote {os.path.relpath(MD_PATH, REPO)} and {os.path.relpath(PNG_PATH, REPO)} "
            f"(main part took {results['seconds'] / 60:.1f} min)")
    if options.scale or not (options.quick or options.no_scale):
        scale = run_scale(options, outdir, vsa_source)
        with open(os.path.join(outdir, "scale.json"), "w") as f:
            json.dump(scale, f, indent=1, default=str)
        scale_text = render_scale(scale)
        write_markdown(main_text or existing_main_section(), scale_text)
        log(f"wrote the scale section of {os.path.relpath(MD_PATH, REPO)} (took {scale['seconds'] / 60:.1f} min)")
    if not (options.scale or options.quick or options.no_directors):
        directors_section(options, outdir, vsa_source, main_text or existing_main_section(),
                          scale_text or existing_scale_section())
    if not (options.scale or options.quick or options.no_pool):
        pool_section(options, outdir, vsa_source)
    return 0
