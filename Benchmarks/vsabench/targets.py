"""The main benchmark's targets: vsa and its FUSE peers, each brought up as one 1 GiB file of random data on tmpfs
(Bench.setup_NAME), optionally behind a loop device, with every daemon, mount and loop device registered in the
run's Scope."""

import gzip
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field

from .common import (LUN_BYTES, SetupError, run, start_daemon, stop_daemon, tail, teardown_problem,
                     tmpfs_accepts_odirect, unmount_fuse, wait_mounted)
from .vsa import vsa_array_up, vsa_control

PASSTHROUGH_SOURCES = [
    "/usr/share/doc/libfuse3-dev/examples/passthrough_ll.c",
    "/usr/share/doc/libfuse3-dev/examples/passthrough_ll.c.gz",
    "/usr/share/doc/libfuse-dev/examples/passthrough_ll.c",
]

ALL_TARGETS = ["raw", "passthrough_ll", "qsd", "nbd", "s3backer", "vsa-r0", "vsa-r5", "vsa-r5-thin"]
DEFAULT_TARGETS = ["raw", "passthrough_ll", "qsd", "nbd", "vsa-r0", "vsa-r5", "vsa-r5-thin"]
DEFAULT_LOOP_TARGETS = ["vsa-r0", "vsa-r5", "qsd"]
DEFAULT_VERIFY_TARGETS = ["vsa-r5", "qsd", "passthrough_ll"]
VSA_TARGETS = ["vsa-r0", "vsa-r5", "vsa-r5-thin"]


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
        # Larger drives than vsa-r5's: a thin pool is run with room (LVM thin and ZFS warn from 80% used). On 4 x 600
        # MiB the LUN and the dead blocks of the random writes kept the pool 80% used, so the cleaner ran urgent under
        # the 1M workloads and read reallocation (it needs 15% free) never did.
        self.setup_vsa(target, ["--drives", "4", "--drive-size", "1G", "--raid", "5"], kind="--thin")
        target.notes.append("RAID-5 of 4 x 1 GiB: the 1 GiB LUN fills a third of the pool")

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
