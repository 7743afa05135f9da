"""vsa arrays for the benchmarks: a folder, create + LUNs + mount with the unmount registered in a Scope first, the
daemon's pid, a clean unmount (or the daemon stopped by its pid), one request on the control socket. The vsa targets
of the main benchmark, --scale, --directors and --pool all bring their arrays up and down through these."""

import os
import shutil
import signal
import socket
import tempfile
import time

from .common import (SetupError, is_mounted, one_line, remove_tree, run, teardown_problem, unmount_fuse,
                     with_suppressed)


def bench_workspace(scope, name, vsa_source, outdir):
    """A section's tmpfs folder (removed by `scope`) with its own copy of the vsa binary (a build while the bench
    runs must not change what is measured), and the log folder. Returns (shm_dir, vsa, logdir)."""
    shm_dir = tempfile.mkdtemp(prefix=f"vsa-bench-{name}.", dir="/dev/shm")
    scope.push(f"remove {shm_dir}", lambda: remove_tree(shm_dir))
    vsa = os.path.join(shm_dir, "vsa")
    shutil.copy2(vsa_source, vsa)
    logdir = os.path.join(outdir, "logs")
    os.makedirs(logdir, exist_ok=True)
    return shm_dir, vsa, logdir


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
