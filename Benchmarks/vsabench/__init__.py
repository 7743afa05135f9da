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
  vsa-r5-thin     vsa: one thin LUN (the pool: redirect-on-write) on RAID-5 of four 1 GiB drives (the 1 GiB LUN
                  fills a third of the pool: thin pools are run with room, and read reallocation needs 15% free)

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
                                           vsabench/pool.py); the rest is kept
Standard library only, plus matplotlib (Agg) for the chart. All options and variables: Benchmarks/run --help.

The package, one module per part (Benchmarks/bench.py, which Benchmarks/run runs, only calls cli.main):
  common     paths, log, Scope (the undo stack), processes, mounts, /proc readers
  fio        the workloads and the verify command line; running one fio job and summarizing it
  vsa        vsa arrays: create, mount, unmount, the daemon's pid, the control socket
  targets    the main benchmark's targets (vsa and its peers), brought up by Bench
  matrix     the main benchmark: every workload on every target, the loop pass, verify under load
  render     the main section of BENCHMARKS.md, Benchmarks/ratios.png, the number formats
  scale      --scale and its section
  directors  --directors and its section
  pool       --pool and its section
  markdown   BENCHMARKS.md's section markers, the kept sections, writing the file
  cli        options and environment, the checks before a run, which sections a run measures
"""
