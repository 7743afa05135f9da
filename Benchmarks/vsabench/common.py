"""What every part of the bench shares: where things go, logging, the Scope that undoes what was started, and the
small process, mount and /proc helpers. Kept apart so that each benchmark (the main one, --scale, --directors, --pool)
starts and stops things the one way the Scopes know how to undo; nothing here knows about a target or a section."""

import json
import datetime
import os
import re
import shlex
import shutil
import signal
import subprocess
import time

# This file is Benchmarks/vsabench/common.py: the repository is three folders up.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH_DIR = os.path.join(REPO, "Benchmarks")
OUT_ROOT = os.path.join(BENCH_DIR, "out")
MD_PATH = os.path.join(REPO, "BENCHMARKS.md")
PNG_PATH = os.path.join(BENCH_DIR, "ratios.png")

MIB = 1 << 20
GIB = 1 << 30
LUN_BYTES = GIB
CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


# One list for the whole run: the modules import it by name and only append to it or clear() it, never rebind it, so
# every module's name refers to this same list.
TEARDOWN_PROBLEMS = []  # what did not stop, unmount or detach cleanly; reported in BENCHMARKS.md


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def teardown_problem(message):
    TEARDOWN_PROBLEMS.append(message)
    log(f"cleanup: {message}")


class SetupError(Exception):
    """A target could not be brought up; it is skipped and the reason goes into BENCHMARKS.md."""


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


def generated_on():
    """The local date and time a section says it was generated on."""
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
