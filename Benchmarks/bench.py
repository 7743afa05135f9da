#!/usr/bin/env python3
"""`make bench`: vsa beside the FUSE block-volume peers, in one run (issue 4).

What it owns: every daemon, mount, loop device and temporary folder it starts, and BENCHMARKS.md, Benchmarks/ratios.png
and Benchmarks/out/ (raw fio JSON, logs). Each target exposes one 1 GiB file of random data backed by tmpfs, so the
software is measured, not a disk:

  raw             fio on a tmpfs file (the physical ceiling)
  passthrough_ll  libfuse's C example, compiled here (the ceiling for any FUSE file system)
  qsd             qemu-storage-daemon's FUSE export
  nbd             nbdkit file plugin + nbdfuse (skipped cleanly if it does not come up)
  s3backer        s3backer --test (opt-in only: its test mode is about 10 IOPS)
  vsa-r0, vsa-r5  vsa: one thick LUN on RAID-0 of one drive / RAID-5 of four drives
  vsa-r5-thin     vsa: one thin LUN (the pool: redirect-on-write) on RAID-5 of four drives

Invariants: a round runs every workload on every target, the target order rotated by one each round; a daemon's CPU
time is read from /proc/PID/stat right before and after each fio run; everything started is stopped by pid, unmounted
or detached on every exit path (Ctrl-C, SIGTERM, SIGHUP, errors) by the Scope that registered it, most recent first.

Usage, as root (loop devices; FUSE mounts of the peers):
  make bench                               release build, scripts/bench-deps, full run (3 rounds x 10 s) and --scale
  Benchmarks/run --quick                   1 round of 2 s, short verify, no scale: a check of a change
  TARGETS=raw,qsd,vsa-r5 ROUNDS=5 RUNTIME=20 Benchmarks/run --no-scale
  Benchmarks/run --scale                   only the scale section; the rest of BENCHMARKS.md is kept
  Benchmarks/run --directors               only the director-cost section (issue 6); the rest is kept
  Benchmarks/run --pool                    only the pool section (issue 13: snapshots, extents, the cleaner;
                                           Benchmarks/pool_bench.py); the rest is kept
Standard library only, plus matplotlib (Agg) for the chart. All options and variables: Benchmarks/run --help.
"""

import argparse
import datetime
import fcntl
import gzip
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import pool_bench

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(REPO, "Benchmarks")
OUT_ROOT = os.path.join(BENCH_DIR, "out")
MD_PATH = os.path.join(REPO, "BENCHMARKS.md")
PNG_PATH = os.path.join(BENCH_DIR, "ratios.png")
SCALE_BEGIN = "<!-- BEGIN scale (bench.py --scale rewrites this section) -->"
SCALE_END = "<!-- END scale -->"
DIRECTORS_BEGIN = "<!-- BEGIN directors (bench.py --directors rewrites this section) -->"
DIRECTORS_END = "<!-- END directors -->"
DIRECTOR_WORKLOAD_KEYS = ["4k-randread-qd16", "4k-randwrite-qd16", "1m-read-qd4", "1m-write-qd4"]
PASSTHROUGH_SOURCES = [
    "/usr/share/doc/libfuse3-dev/examples/passthrough_ll.c",
    "/usr/share/doc/libfuse3-dev/examples/passthrough_ll.c.gz",
    "/usr/share/doc/libfuse-dev/examples/passthrough_ll.c",
]

MIB = 1 << 20
GIB = 1 << 30
LUN_BYTES = GIB
CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")

ALL_TARGETS = ["raw", "passthrough_ll", "qsd", "nbd", "s3backer", "vsa-r0", "vsa-r5", "vsa-r5-thin"]
DEFAULT_TARGETS = ["raw", "passthrough_ll", "qsd", "nbd", "vsa-r0", "vsa-r5", "vsa-r5-thin"]
DEFAULT_LOOP_TARGETS = ["vsa-r0", "vsa-r5", "qsd"]
DEFAULT_VERIFY_TARGETS = ["vsa-r5", "qsd", "passthrough_ll"]
VSA_TARGETS = ["vsa-r0", "vsa-r5", "vsa-r5-thin"]


TEARDOWN_PROBLEMS = []  # what did not stop, unmount or detach cleanly; reported in BENCHMARKS.md


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def teardown_problem(message):
    TEARDOWN_PROBLEMS.append(message)
    log(f"cleanup: {message}")


class SetupError(Exception):
    """A target could not be brought up; it is skipped and the reason goes into BENCHMARKS.md."""


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

    def fio_args(self, filename, runtime_seconds):
        args = [
            "fio", f"--name={self.key}", f"--filename={filename}", "--size=1G", "--time_based",
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
# Scope: everything started is registered here and undone on exit, most recent first.


class Scope:
    """A stack of undo actions. Leaving the `with` block (normally, by exception, Ctrl-C or SIGTERM) runs them all,
    newest first, with SIGINT ignored so that a second Ctrl-C cannot leave a mount behind."""

    def __init__(self, name):
        self.name = name
        self.actions = []

    def push(self, description, action):
        self.actions.append((description, action))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            while self.actions:
                description, action = self.actions.pop()
                try:
                    action()
                except BaseException as error:  # keep undoing the rest
                    teardown_problem(f"{description} failed: {error}")
        finally:
            signal.signal(signal.SIGINT, previous)
        return False


def exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------------------------------------------------------
# Small system helpers


def run(args, check=True, timeout=300, record=None, **kwargs):
    """Runs a command to completion (its own session, so a terminal Ctrl-C reaches only us), returns the result."""
    if record is not None:
        record.append(args)
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, **kwargs)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except BaseException:
        stop_process_group(process)
        raise
    if check and process.returncode != 0:
        raise SetupError(f"{shlex.join(args)} exited {process.returncode}: {(stderr or stdout).strip()[-400:]}")
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def stop_process_group(process, grace_seconds=5):
    """Stops a child we started in its own session: SIGINT, then SIGKILL, to its process group only."""
    if process.poll() is not None:
        return
    for signum, wait_seconds in ((signal.SIGINT, grace_seconds), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_seconds)
            return
        except subprocess.TimeoutExpired:
            continue


def start_daemon(args, log_path, record=None):
    if record is not None:
        record.append(args)
    log_file = open(log_path, "ab")
    try:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        log_file.close()


def stop_daemon(process, signum=signal.SIGTERM, grace_seconds=10):
    """Stops a daemon we started, by its pid: `signum`, then SIGKILL."""
    if process.poll() is not None:
        return
    try:
        process.send_signal(signum)
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        teardown_problem(f"{os.path.basename(str(process.args[0]))} (pid {process.pid}) ignored "
                         f"{signal.Signals(signum).name} for {grace_seconds} s; SIGKILL")
        process.kill()
        process.wait(timeout=10)


def mount_points():
    points = set()
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4]
            points.add(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point))
    return points


def is_mounted(path):
    return os.path.realpath(path) in mount_points()


def wait_mounted(path, processes, log_path, timeout_seconds=20):
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if is_mounted(path):
            return
        for process in processes:
            if process.poll() is not None:
                raise SetupError(f"{os.path.basename(str(process.args[0]))} exited {process.returncode} before "
                                 f"mounting: {tail(log_path)}")
        time.sleep(0.05)
    raise SetupError(f"{path} was not mounted after {timeout_seconds} s: {tail(log_path)}")


def unmount_fuse(path):
    """fusermount3 -u, and a lazy umount if that does not take (a dead daemon leaves an unusable mount)."""
    if not is_mounted(path):
        return
    run(["fusermount3", "-u", path], check=False, timeout=60)
    if is_mounted(path):
        run(["umount", path], check=False, timeout=60)
    if is_mounted(path):
        run(["umount", "-l", path], check=False, timeout=60)


def tail(path, characters=400):
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError:
        return "(no log)"
    text = " | ".join(line for line in text.strip().splitlines() if line.strip())
    return text[-characters:] if text else "(empty log)"


def cpu_ticks(pids):
    """utime + stime of each pid (all threads, live and exited), summed; None if a pid is gone."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            return None
        fields = stat[stat.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total


def status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def remove_tree(path):
    """Removes our temporary folder, but never descends into a live mount (rmtree would delete through it)."""
    if not os.path.isdir(path):
        return
    inside = [p for p in mount_points() if p == path or p.startswith(path.rstrip("/") + "/")]
    for point in sorted(inside, key=len, reverse=True):
        teardown_problem(f"{point} was still mounted when its folder was removed; lazy unmount")
        run(["umount", "-l", point], check=False, timeout=60)
    still = [p for p in mount_points() if p.startswith(path.rstrip("/") + "/")]
    if still:
        teardown_problem(f"not removing {path}: still mounted: {still}")
        return
    shutil.rmtree(path, ignore_errors=True)


def make_random_file(path, size_bytes):
    with open(path, "wb") as f:
        for _ in range(size_bytes // (16 * MIB)):
            f.write(os.urandom(16 * MIB))


def tmpfs_accepts_odirect(folder):
    probe = os.path.join(folder, ".odirect-probe")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o600)
        os.close(fd)
        return True
    except OSError:
        return False
    finally:
        with_suppressed(os.unlink, probe)


def with_suppressed(function, *args):
    try:
        function(*args)
    except OSError:
        pass


def load_fio_json(path):
    """fio may print warnings before its JSON, even with --output; the object starts at the first '{' line."""
    with open(path, errors="replace") as f:
        text = f.read()
    match = re.search(r"^\{", text, re.MULTILINE)
    if not match:
        raise ValueError("no JSON in fio output")
    return json.loads(text[match.start():])


def shell_line(args):
    """A command line to show: quoted for the shell, with @NAME@ placeholders shown as $NAME."""
    return re.sub(r"@(\w+)@", r"$\1", shlex.join(args))


def one_line(text, characters=300):
    text = " ".join(line.strip() for line in str(text).splitlines() if line.strip())
    return text if len(text) <= characters else text[:characters] + "…"


def first_line(text):
    return (text.strip().splitlines() or [""])[0].strip()


# ---------------------------------------------------------------------------------------------------------------
# Targets


@dataclass
class Target:
    name: str
    filename: str = ""
    processes: list = field(default_factory=list)  # daemons we started (pid sampled for CPU and RSS)
    commands: list = field(default_factory=list)  # command lines, for BENCHMARKS.md
    notes: list = field(default_factory=list)
    array_dir: str = ""  # vsa only: the array folder (daemon pid in array.lock)
    mountpoint: str = ""
    loop_device: str = ""
    setup_seconds: float = 0.0

    def daemon_pids(self):
        if self.array_dir:
            try:
                with open(os.path.join(self.array_dir, "array.lock")) as f:
                    return [int(f.read().split()[0])]
            except (OSError, ValueError, IndexError):
                return []
        return [p.pid for p in self.processes if p.poll() is None]


class Bench:
    def __init__(self, options, scope, workdir, outdir, vsa_bin):
        self.options = options
        self.scope = scope
        self.workdir = workdir
        self.outdir = outdir
        self.vsa = vsa_bin
        self.random_path = os.path.join(workdir, "random.bin")
        self.logdir = os.path.join(outdir, "logs")
        os.makedirs(self.logdir, exist_ok=True)

    def folder(self, name):
        path = os.path.join(self.workdir, name)
        os.makedirs(path, exist_ok=True)
        return path

    # -- targets ------------------------------------------------------------------------------------------------

    def setup(self, name):
        target = Target(name)
        started = time.monotonic()
        getattr(self, "setup_" + name.replace("-", "_"))(target)
        if not os.path.exists(target.filename):
            raise SetupError(f"{target.filename} does not exist after setup")
        if os.path.getsize(target.filename) != LUN_BYTES and not target.filename.startswith("/dev/"):
            raise SetupError(f"{target.filename} is {os.path.getsize(target.filename)} bytes, not 1 GiB")
        target.setup_seconds = time.monotonic() - started
        return target

    def backing_copy(self, folder, name):
        path = os.path.join(folder, name)
        shutil.copyfile(self.random_path, path)
        return path

    def setup_raw(self, target):
        target.filename = self.backing_copy(self.folder("raw"), "data")
        target.notes.append("fio straight on a tmpfs file, a copy of `$T/random.bin`")

    def setup_passthrough_ll(self, target):
        folder = self.folder("passthrough_ll")
        source = next((p for p in PASSTHROUGH_SOURCES if os.path.exists(p)), None)
        if source is None:
            raise SetupError("passthrough_ll.c not found; install libfuse3-dev (scripts/bench-deps)")
        c_path = os.path.join(folder, "passthrough_ll.c")
        opener = gzip.open if source.endswith(".gz") else open
        with opener(source, "rb") as src:
            code = src.read()
        backing = self.folder("passthrough_ll/source")
        if tmpfs_accepts_odirect(backing):
            target.notes.append(
                "passthrough_ll runs with its defaults (cache=auto, no writeback, multi-threaded session loop). "
                "fio's O_DIRECT open reaches lo_open(), which opens the backing tmpfs file with the same flags; tmpfs "
                "accepts O_DIRECT since Linux 6.6 (checked at bench time), so no option or patch is needed.")
        else:
            # Older kernels: tmpfs refuses O_DIRECT (EINVAL), so strip it from the backing open only. The FUSE file
            # is still opened O_DIRECT by fio, so the kernel's page cache for the mount is bypassed as for the others.
            old = b"fd = open(buf, fi->flags & ~O_NOFOLLOW);"
            if old not in code:
                raise SetupError("tmpfs refuses O_DIRECT and passthrough_ll.c's lo_open() is not the expected one")
            code = code.replace(old, b"fd = open(buf, fi->flags & ~(O_NOFOLLOW | O_DIRECT));")
            target.notes.append(
                "tmpfs here refuses O_DIRECT, so the compiled copy strips O_DIRECT from lo_open()'s backing open "
                "(one-line patch); fio's O_DIRECT open of the FUSE file still bypasses the mount's page cache.")
        with open(c_path, "wb") as dst:
            dst.write(code)
        for header in ("passthrough_helpers.h",):  # included by the example, next to it in the package
            for candidate in (os.path.join(os.path.dirname(source), header),
                              os.path.join(os.path.dirname(source), header + ".gz")):
                if os.path.exists(candidate):
                    opener = gzip.open if candidate.endswith(".gz") else open
                    with opener(candidate, "rb") as src, open(os.path.join(folder, header), "wb") as dst:
                        dst.write(src.read())
                    break
        binary = os.path.join(folder, "passthrough_ll")
        flags = run(["pkg-config", "fuse3", "--cflags", "--libs"]).stdout.split()
        run(["gcc", "-O2", "-o", binary, c_path] + flags, record=target.commands)
        self.backing_copy(backing, "data")
        mountpoint = self.folder("passthrough_ll/mnt")
        log_path = os.path.join(self.logdir, "passthrough_ll.log")
        process = start_daemon([binary, "-f", "-o", f"source={backing}", mountpoint], log_path, target.commands)
        target.processes.append(process)
        self.scope.push("stop passthrough_ll", lambda: self.stop_fuse_daemon(mountpoint, [process]))
        wait_mounted(mountpoint, [process], log_path)
        target.filename = os.path.join(mountpoint, "data")
        target.mountpoint = mountpoint

    def setup_qsd(self, target):
        folder = self.folder("qsd")
        image = self.backing_copy(folder, "data.img")
        export = os.path.join(folder, "export")
        open(export, "w").close()  # the export mounts over an existing regular file
        log_path = os.path.join(self.logdir, "qsd.log")
        process = start_daemon([
            "qemu-storage-daemon", "--blockdev",
            f"node-name=f0,driver=file,filename={image},aio=threads,cache.direct=off",
            "--export", f"type=fuse,id=e0,node-name=f0,mountpoint={export},writable=on",
        ], log_path, target.commands)
        target.processes.append(process)

        def stop():
            stop_daemon(process, signal.SIGTERM)  # qsd unmounts its export on SIGTERM
            unmount_fuse(export)

        self.scope.push("stop qemu-storage-daemon", stop)
        wait_mounted(export, [process], log_path)
        target.filename = export
        target.mountpoint = export

    def setup_nbd(self, target):
        folder = self.folder("nbd")
        image = self.backing_copy(folder, "data.img")
        sock = os.path.join(folder, "nbd.sock")
        mountpoint = self.folder("nbd/mnt")
        server_log = os.path.join(self.logdir, "nbdkit.log")
        server = start_daemon(["nbdkit", "-f", "--exit-with-parent", "-U", sock, "file", f"file={image}"],
                              server_log, target.commands)
        target.processes.append(server)
        self.scope.push("stop nbdkit", lambda: stop_daemon(server))
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            if server.poll() is not None or time.monotonic() > deadline:
                raise SetupError(f"nbdkit did not create its socket: {tail(server_log)}")
            time.sleep(0.05)
        client_log = os.path.join(self.logdir, "nbdfuse.log")
        client = start_daemon(["nbdfuse", mountpoint, "--unix", sock], client_log, target.commands)
        target.processes.append(client)
        self.scope.push("stop nbdfuse", lambda: self.stop_fuse_daemon(mountpoint, [client]))
        wait_mounted(mountpoint, [client], client_log)
        target.filename = os.path.join(mountpoint, "nbd")
        target.mountpoint = mountpoint
        target.notes.append("nbdfuse in its default multi-threaded, multi-conn mode; CPU and RSS are nbdkit + nbdfuse")

    def setup_s3backer(self, target):
        bucket = self.folder("s3backer/bucket")
        mountpoint = self.folder("s3backer/mnt")
        log_path = os.path.join(self.logdir, "s3backer.log")
        process = start_daemon(["s3backer", "--test", "-f", "--blockSize=64K", "--size=1G", "--listBlocks", bucket,
                                mountpoint], log_path, target.commands)
        target.processes.append(process)
        self.scope.push("stop s3backer", lambda: self.stop_fuse_daemon(mountpoint, [process]))
        wait_mounted(mountpoint, [process], log_path)
        target.filename = os.path.join(mountpoint, "file")
        target.mountpoint = mountpoint
        self.fill_through(target)

    def setup_vsa_r0(self, target):
        self.setup_vsa(target, ["--drives", "1", "--drive-size", "1100M", "--raid", "0"])

    def setup_vsa_r5(self, target):
        self.setup_vsa(target, ["--drives", "4", "--drive-size", "400M", "--raid", "5"])

    def setup_vsa_r5_thin(self, target):
        self.setup_vsa(target, ["--drives", "4", "--drive-size", "600M", "--raid", "5"], kind="--thin")

    def setup_vsa(self, target, create_options, kind="--thick"):
        folder = self.folder(target.name)
        array_dir = os.path.join(folder, "array")
        mountpoint = self.folder(target.name + "/mnt")
        target.array_dir = array_dir
        target.mountpoint = mountpoint
        vsa_array_up(self.scope, self.vsa, array_dir, mountpoint, create_options, [("lun0", "1G", kind)],
                     target.commands, self.logdir, target.name)
        target.filename = os.path.join(mountpoint, "lun0")
        self.fill_through(target)
        vsa_control(array_dir, "flush")  # start every round from a clean cache, as the peers start from the file
        target.notes.append("filled through the LUN file with dd, then the cache flushed over the control socket")

    def fill_through(self, target):
        run(["dd", f"if={self.random_path}", f"of={target.filename}", "bs=1M", "count=1024", "oflag=direct",
             "conv=notrunc", "status=none"], timeout=1800, record=target.commands)

    def stop_fuse_daemon(self, mountpoint, processes):
        unmount_fuse(mountpoint)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                stop_daemon(process)
        unmount_fuse(mountpoint)

    def attach_loop(self, target):
        device = run(["losetup", "--find", "--show", "--direct-io=on", target.filename],
                     record=target.commands).stdout.strip()
        if not device.startswith("/dev/loop"):
            raise SetupError(f"losetup printed {device!r}")
        self.scope.push(f"detach {device}", lambda: detach_loop(device))
        target.loop_device = device


def detach_loop(device):
    for _ in range(20):
        if run(["losetup", "-d", device], check=False, timeout=60).returncode == 0:
            return
        time.sleep(0.5)
    teardown_problem(f"could not detach {device}")


# ---------------------------------------------------------------------------------------------------------------
# vsa arrays (shared by the vsa targets and --scale)


def array_folder(scope, parent, name):
    """Makes parent/name/mnt for one array (parent/name/array is its folder) and registers the folder's removal in
    `scope`. Returns (array_dir, mountpoint)."""
    folder = os.path.join(parent, name)
    os.makedirs(os.path.join(folder, "mnt"))
    scope.push(f"remove {folder}", lambda: remove_tree(folder))
    return os.path.join(folder, "array"), os.path.join(folder, "mnt")


def vsa_array_up(scope, vsa, array_dir, mountpoint, create_options, luns, record, logdir, label, env=None,
                 preallocate=False):
    """Creates, mounts and fills nothing: an array with `luns` [(name, size)], mounted at mountpoint. The unmount is
    registered in `scope` before mounting, so an interrupted mount is cleaned up too. `preallocate`: the drive files'
    holes are allocated first (tmpfs allocates and zeroes a page at its first write, a cost no disk has: a pool that
    writes to segments never written before would pay it and look slower than it is)."""
    run([vsa, "create", array_dir] + create_options, record=record)
    if preallocate:
        for name in sorted(os.listdir(array_dir)):
            path = os.path.join(array_dir, name)
            if name.startswith("drive-") and os.path.isfile(path):
                run(["fallocate", "-l", str(os.path.getsize(path)), path], record=record)
    for name, size, *kind in luns:
        # Thick unless told: the targets measured before LUNs were thin by default keep measuring what they did.
        run([vsa, "lun", "create", array_dir, name, "--size", size] + (kind or ["--thick"]), record=record)
    scope.push(f"unmount {label}", lambda: vsa_array_down(vsa, array_dir, mountpoint, logdir, label))
    started = time.monotonic()
    run([vsa, "mount", array_dir, mountpoint], record=record, timeout=120,
        env=None if env is None else dict(os.environ, **env))
    return time.monotonic() - started


def vsa_daemon_pid(array_dir):
    try:
        with open(os.path.join(array_dir, "array.lock")) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def vsa_array_down(vsa, array_dir, mountpoint, logdir, label):
    """vsa unmount (destage, mark clean); if that fails, stop the daemon by the pid in array.lock."""
    pid = vsa_daemon_pid(array_dir)
    result = None
    if is_mounted(mountpoint):
        for attempt in range(10):
            result = run([vsa, "unmount", mountpoint], check=False, timeout=360)
            if result.returncode == 0 or not is_mounted(mountpoint):
                break
            time.sleep(0.5)  # a just-detached loop device can keep the mount busy for a moment
        if result is not None and result.returncode != 0:
            teardown_problem(f"vsa unmount of {label} exited {result.returncode}: "
                             f"{one_line(result.stderr or result.stdout)}")
    if pid and os.path.exists(f"/proc/{pid}") and is_mounted(mountpoint):
        teardown_problem(f"vsa daemon {pid} of {label} still mounted after vsa unmount; SIGTERM")
        with_suppressed(os.kill, pid, signal.SIGTERM)
        for _ in range(300):
            if not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(0.1)
        else:
            with_suppressed(os.kill, pid, signal.SIGKILL)
    unmount_fuse(mountpoint)
    log_path = os.path.join(array_dir, "vsa.log")
    if os.path.exists(log_path):
        with_suppressed(shutil.copyfile, log_path, os.path.join(logdir, f"{label}.vsa.log"))


def vsa_control(array_dir, request, timeout_seconds=10):
    """One request on DIR/control.sock (it appears a moment after `vsa mount` returns: retry)."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(300)
                sock.connect(os.path.join(array_dir, "control.sock"))
                sock.sendall(request.encode() + b"\n")
                reply = b""
                while chunk := sock.recv(65536):
                    reply += chunk
            text = reply.decode(errors="replace")
            if not text.startswith("ok\n"):
                raise SetupError(f"vsa control {request}: {text.strip()}")
            return text[3:]
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise SetupError(f"cannot reach {array_dir}/control.sock")
            time.sleep(0.05)


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


# ---------------------------------------------------------------------------------------------------------------
# The main benchmark


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


# ---------------------------------------------------------------------------------------------------------------
# --scale


def run_scale(options, outdir, vsa_source):
    results = {"mount": [], "drives": [], "luns": [], "runtime": options.scale_runtime}
    started = time.monotonic()
    with Scope("scale") as scope:
        disk_dir = tempfile.mkdtemp(prefix="vsa-bench-scale.", dir=options.scale_dir)
        scope.push(f"remove {disk_dir}", lambda: remove_tree(disk_dir))
        shm_dir = tempfile.mkdtemp(prefix="vsa-bench-scale.", dir="/dev/shm")
        scope.push(f"remove {shm_dir}", lambda: remove_tree(shm_dir))
        vsa = os.path.join(shm_dir, "vsa")
        shutil.copy2(vsa_source, vsa)
        logdir = os.path.join(outdir, "logs")
        os.makedirs(logdir, exist_ok=True)
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


# ---------------------------------------------------------------------------------------------------------------
# Rendering


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


def render_scale(scale):
    lines = [SCALE_BEGIN, "## Scale", ""]
    add = lines.append
    add(f"Generated by `Benchmarks/run --scale` on {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}"
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


# --directors: what the director architecture costs (issue 6)

DIRECTOR_MODES = [("engines-1", "--engines 1: front-end queues, virtual switch, mirrored write-pending", {}),
                  ("direct", "VSA_DIRECT_ROUTING=1: each piece runs on the FUSE thread, straight into its home "
                             "portion and back end (no queue, no switch, no mirror)", {"VSA_DIRECT_ROUTING": "1"})]


def run_directors(options, outdir, vsa_source):
    """The same build, RAID-5 of 4 tmpfs drives, one 1 GiB LUN: --engines 1 against direct routing, rounds rotated."""
    results = {"runtime": options.runtime, "rounds": options.rounds, "samples": {}}
    started = time.monotonic()
    with Scope("directors") as scope:
        shm_dir = tempfile.mkdtemp(prefix="vsa-bench-directors.", dir="/dev/shm")
        scope.push(f"remove {shm_dir}", lambda: remove_tree(shm_dir))
        vsa = os.path.join(shm_dir, "vsa")
        shutil.copy2(vsa_source, vsa)
        random_path = os.path.join(shm_dir, "random.bin")
        make_random_file(random_path, LUN_BYTES)
        logdir = os.path.join(outdir, "logs")
        os.makedirs(logdir, exist_ok=True)
        for round_index in range(options.rounds):
            modes = DIRECTOR_MODES[round_index % 2:] + DIRECTOR_MODES[:round_index % 2]
            for key, _, env in modes:
                label = f"directors-{key}-r{round_index + 1}"
                log(f"directors: round {round_index + 1}, {key}")
                with Scope(label) as array_scope:
                    array_dir, mountpoint = array_folder(array_scope, shm_dir, label)
                    try:
                        vsa_array_up(array_scope, vsa, array_dir, mountpoint,
                                     ["--drives", "4", "--drive-size", "400M", "--raid", "5", "--engines", "1"],
                                     [("lun0", "1G")], [], logdir, label, env=env)
                        lun = os.path.join(mountpoint, "lun0")
                        run(["dd", f"if={random_path}", f"of={lun}", "bs=1M", "count=1024", "oflag=direct",
                             "conv=notrunc", "status=none"], timeout=1800)
                        vsa_control(array_dir, "flush")
                        pid = vsa_daemon_pid(array_dir)
                        for workload_key in DIRECTOR_WORKLOAD_KEYS:
                            workload = WORKLOAD_BY_KEY[workload_key]
                            record = run_fio(workload.fio_args(lun, options.runtime),
                                             os.path.join(outdir, f"{label}-{workload_key}.json"), [pid],
                                             options.runtime + 120)
                            summary = summarize(record, workload)
                            results["samples"].setdefault(f"{key}/{workload_key}", []).append(summary)
                            log(f"  {workload.title}: {summary.get('value', 0):.0f} {workload.unit}"
                                if "value" in summary else f"  {workload.title}: {summary.get('error')}")
                    except SetupError as error:
                        results.setdefault("errors", []).append(f"{label}: {error}")
                        log(f"  failed: {error}")
    results["seconds"] = time.monotonic() - started
    return results


def render_directors(results):
    lines = []
    add = lines.append
    add(DIRECTORS_BEGIN)
    add("## What the director architecture costs")
    add("")
    add(f"Generated by `Benchmarks/run --directors` on "
        f"{datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} ({results['rounds']} round(s) of "
        f"{results['runtime']} s per fio run, the two modes alternating first; median over rounds; took "
        f"{results['seconds'] / 60:.1f} min). The same release build, RAID-5 of 4 drives of 400 MiB on tmpfs, one "
        f"1 GiB LUN filled with random data through the LUN file, fio `--direct=1`:")
    add("")
    for key, description, _ in DIRECTOR_MODES:
        add(f"- **{key}**: {description}")
    add("")
    add("Target (issue 6): the directors cost under 10% of throughput.")
    add("")
    add("| workload | engines-1 | direct | engines-1 ÷ direct | spread (engines-1 / direct) | CPU/IO (engines-1 / direct) |")
    add("|---|---:|---:|---:|---:|---:|")
    for workload_key in DIRECTOR_WORKLOAD_KEYS:
        workload = WORKLOAD_BY_KEY[workload_key]
        cells = {}
        for key, _, _ in DIRECTOR_MODES:
            samples = [s for s in results["samples"].get(f"{key}/{workload_key}", []) if "value" in s]
            values = [s["value"] for s in samples]
            median = statistics.median(values) if values else None
            spread = (max(values) - min(values)) / median if values and median else None
            cpu = median_of(samples, "cpu_us_per_io")
            cells[key] = (median, spread, cpu)
        a, b = cells["engines-1"], cells["direct"]
        ratio = f"{a[0] / b[0]:.2f}×" if a[0] and b[0] else "—"
        def fmt(v, unit):
            return "—" if v is None else (f"{v / 1000:.1f}k IOPS" if unit == "IOPS" else f"{v:.0f} MiB/s")
        def pct(v):
            return "—" if v is None else f"{v * 100:.0f}%"
        def cpu(v):
            return "—" if v is None else f"{v:.1f} µs"
        add(f"| {workload.title} | {fmt(a[0], workload.unit)} | {fmt(b[0], workload.unit)} | {ratio} | "
            f"{pct(a[1])} / {pct(b[1])} | {cpu(a[2])} / {cpu(b[2])} |")
    add("")
    for error in results.get("errors", []):
        add(f"**Failed**: {one_line(error)}")
    add(DIRECTORS_END)
    return "\n".join(lines)


def directors_section(options, outdir, vsa_source, main_text, scale_text):
    """Runs the director-cost benchmark and writes its section beside the given main and scale sections."""
    directors = run_directors(options, outdir, vsa_source)
    with open(os.path.join(outdir, "directors.json"), "w") as f:
        json.dump(directors, f, indent=1, default=str)
    write_markdown(main_text, scale_text, render_directors(directors))
    log(f"wrote the directors section of {os.path.relpath(MD_PATH, REPO)} (took {directors['seconds'] / 60:.1f} min)")


def pool_section(options, outdir, vsa_source):
    """Runs the pool benchmark (Benchmarks/pool_bench.py) and rewrites its section; the others are kept."""
    results = pool_bench.run_pool(sys.modules[__name__], options, outdir, vsa_source)
    with open(os.path.join(outdir, "pool.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    write_markdown(existing_main_section(), existing_scale_section(), None,
                   pool_bench.render_pool(sys.modules[__name__], results))
    log(f"wrote the pool section of {os.path.relpath(MD_PATH, REPO)} (took {results['seconds'] / 60:.1f} min)")


def existing_section(begin_marker, end_marker):
    try:
        with open(MD_PATH) as f:
            text = f.read()
    except OSError:
        return None
    begin, end = text.find(begin_marker), text.find(end_marker)
    if begin < 0 or end < 0:
        return None
    return text[begin:end + len(end_marker)]


def existing_scale_section():
    return existing_section(SCALE_BEGIN, SCALE_END)


def existing_main_section():
    try:
        with open(MD_PATH) as f:
            text = f.read()
    except OSError:
        return None
    for begin_marker, end_marker in ((SCALE_BEGIN, SCALE_END), (DIRECTORS_BEGIN, DIRECTORS_END),
                                     (pool_bench.POOL_BEGIN, pool_bench.POOL_END)):
        begin = text.find(begin_marker)
        if begin >= 0:
            end = text.find(end_marker)
            text = text[:begin] + (text[end + len(end_marker):] if end >= 0 else "")
    return text.strip() or None


def write_markdown(main_text, scale_text, directors_text=None, pool_text=None):
    directors_text = directors_text or existing_section(DIRECTORS_BEGIN, DIRECTORS_END)
    pool_text = pool_text or existing_section(pool_bench.POOL_BEGIN, pool_bench.POOL_END)
    parts = [p.strip() for p in (main_text, scale_text, directors_text, pool_text) if p]
    if not parts:
        return
    with open(MD_PATH, "w") as f:
        f.write("\n\n".join(parts) + "\n")


# ---------------------------------------------------------------------------------------------------------------


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
    lock_file = open(os.path.abspath(__file__))  # one run at a time; a lock on our own source leaves nothing behind
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


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped and removed")
        sys.exit(130)
