// Daemon: the composition root. It is the only code that knows every layer and the only code that makes threads:
// one per director, the control socket's and its clients', the health monitor's and the drive probers', and the FUSE
// workers (FuseSession.run's). Life cycle of a mount:
//   lock the array folder -> assemble from the drives -> recover the journal (replay after an unclean stop) -> mark dirty ->
//   build directors (cache portions, back-end adapters) -> bind the control socket -> mount FUSE -> start accepting on
//   the socket, the drive probers and the health monitor -> tell the parent "ready" -> serve -> (unmount or signal) ->
//   destage everything -> flush drives -> mark clean -> exit.
import ArrayModel
import BackEnd
import Buffers
import Control
import Directors
import Drives
import Foundation
import FrontEnd
import GlobalMemory
import MemoryServices
import Metadata
import Pool
import Replication
import Synchronization
import SysFuse
import SysPosix

#if canImport(Glibc)
    import Glibc
#endif

public struct MountOptions: Sendable {
    public var directory: String
    public var mountpoint: String
    /// -o options passed through to FUSE (allow_other, ...), vsa's own (cache=SIZE) removed.
    public var fuseOptions: [String]
    public var cacheBytes: UInt64?
    /// libfuse worker threads. Few beat many here: each extra thread adds context switches, and a director's work
    /// runs on whichever thread submits it. Measured on 2 cores: 4 threads gave 108k 4k-random-read IOPS at QD16 on
    /// RAID-0, 16 threads 84k. 0: 4, or 16 when a drive is remote (its requests wait on the network, and each waits on
    /// a thread: with 1 ms more per read, 16 threads and 8 engines gave 6,918 IOPS where 4 threads gave 2,705).
    public var fuseThreads = 0
    /// How long a drive may keep one batch of I/O waiting before it is failed (0: forever).
    public var driveTimeoutSeconds: Double = 30
    /// How long a director may finish no request while work waits for it before the array fails it over by itself
    /// (0: never; nil: the drive deadline and 10 s more, so a director waiting on a drive is never taken for a
    /// hung one; 60 s when drives have no deadline).
    public var directorTimeoutSeconds: Double? = nil
    /// The director deadline in force.
    public var directorDeadlineSeconds: Double { directorTimeoutSeconds ?? (driveTimeoutSeconds > 0 ? driveTimeoutSeconds + 10 : 60) }
    /// Bytes per second of pool segments the background cleaner reads at most (0: it cleans only when a write would
    /// otherwise get ENOSPC, or the pool is nearly full).
    public var cleanerRate: UInt64 = CleanerControl.defaultRate
    /// Whether sequential reads of thin LUN pages scattered by random writes write them again in order
    /// (`-o read_realloc=off` turns it off; docs/POOL.md, "Read reallocation").
    public var readReallocation = true
    /// `-o powercut[=SIZE]`: the host's view gets a volatile write cache of this many bytes, so `vsa powercut` can drop
    /// what no flush made durable (FrontEnd/VolatileWriteCache.swift). nil: not armed, and nothing of it exists.
    public var powerCutCacheBytes: UInt64? = nil
    public init(directory: String, mountpoint: String, fuseOptions: [String], cacheBytes: UInt64?) {
        self.directory = directory
        self.mountpoint = mountpoint
        self.fuseOptions = fuseOptions
        self.cacheBytes = cacheBytes
    }
}

/// Writes one timestamped line to the daemon's log (its stderr, which is DIR/vsa.log once it runs in background).
public func daemonLog(_ message: String) {
    var t = time(nil)
    var tmv = tm()
    gmtime_r(&t, &tmv)
    let stamp = String(format: "%04d-%02d-%02dT%02d:%02d:%02dZ", tmv.tm_year + 1900, tmv.tm_mon + 1, tmv.tm_mday, tmv.tm_hour, tmv.tm_min, tmv.tm_sec)
    FileHandle.standardError.write(Data("\(stamp) vsa[\(getpid())] \(message)\n".utf8))
}

/// Holds the array folder's lock for the life of the mount: a second mount of the same array is refused.
public final class ArrayLock {
    public let fd: Int32
    public init(directory: String, mountpoint: String) throws(VSAError) {
        let path = ArrayStore.lockPath(directory: directory)
        let fd: Int32
        do { fd = try Posix.open(path, flags: O_RDWR | O_CREAT | O_CLOEXEC, mode: 0o600) } catch {
            throw VSAError("cannot open \(path): \(error)")
        }
        let locked: Bool
        do { locked = try Posix.tryLockExclusive(fd) } catch {
            Posix.close(fd)
            throw VSAError("cannot lock \(path): \(error)")
        }
        guard locked else {
            Posix.close(fd)
            let holder = ArrayLock.holder(directory: directory)
            throw VSAError("array \(directory) is already mounted\(holder.map { " at \($0.mountpoint) (pid \($0.pid))" } ?? ""); unmount it first")
        }
        self.fd = fd
        let text = "\(getpid()) \(mountpoint)\n"
        _ = Glibc.ftruncate(fd, 0)
        _ = text.withCString { Glibc.pwrite(fd, $0, strlen($0), 0) }
    }

    /// Who holds the lock: (pid, mountpoint), or nil when nobody does.
    public static func holder(directory: String) -> (pid: Int32, mountpoint: String)? {
        let path = ArrayStore.lockPath(directory: directory)
        guard let fd = try? Posix.open(path, flags: O_RDWR | O_CLOEXEC) else { return nil }
        defer { Posix.close(fd) }
        if (try? Posix.tryLockExclusive(fd)) == true { return nil }  // nobody holds it (closing fd releases ours)
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        let parts = text.trimmingWhitespace().split(separator: " ", maxSplits: 1)
        guard parts.count == 2, let pid = Int32(parts[0]) else { return nil }
        return (pid, String(parts[1]))
    }

    deinit { Posix.close(fd) }
}

public final class ArrayDaemon: @unchecked Sendable {
    let options: MountOptions
    let store: ArrayStore
    let engines: Engines
    let frontEnd: LUNFrontEnd
    let cacheBytes: UInt64
    /// Serialises the control plane: metadata writes, LUN changes, drive failures, rebuild steps, `messages`.
    let controlLock = Locked<Void>(())
    /// Serialises control-socket commands that change the array (each client has its own thread).
    let commandLock = Locked<Void>(())
    /// The pool, once the array has one (Pool.swift).
    let pool = Locked<PoolRuntime?>(nil)
    /// The earliest time a secure snapshot expires (0: none), which the health loop waits for (Snapshots.swift);
    /// 1 at mount, so the first look finds what the pool holds.
    let nextSecureExpiry = Atomic<UInt64>(1)
    var session: FuseSession?
    /// Notes for `vsa status` (guarded by controlLock).
    var messages: [String] = []
    let rebuildTracker = RebuildTracker()
    /// Faults injected with `vsa inject` (Faults.swift).
    let faults = FaultRegistry()
    /// The pool homes' counters as the pool thread last gathered them (about once a second): what status shows while
    /// an injected hang keeps a director from answering (Pool.swift, `addPoolStatus`).
    let lastPoolStats = Locked<[PoolHomeStats]?>(nil)
    let scrubTracker = ScrubTracker()
    let cleaner: CleanerControl
    /// The rate the queued rebuild asked for (it starts when the running one ends).
    let queuedRebuildRate = Atomic<UInt64>(defaultRebuildRate)
    /// One prober per member (see `startDriveProbes`).
    let driveProbes: [DriveProbe]
    /// Set when the unmount begins: no rebuild or scrub starts after it.
    let shuttingDown = Atomic<Bool>(false)
    /// What the mount should tell the user (a degraded array, stale drives), printed by `vsa mount`.
    public private(set) var warnings: [String] = []
    private let lock: ArrayLock
    /// The host's volatile write cache when armed (`-o powercut`), and the power cuts so far (PowerCut.swift).
    let volatileCache: VolatileWriteCache?
    /// The replica layer (Replication/): always between the front end and the directors, so groups can be made while
    /// the array runs; a LUN in no group passes straight through.
    let replicator: Replicator
    let powerCuts = Locked<[StatusReport.PowerCutInfo.Cut]>([])
    /// Where the service processor serves the metrics and the dashboard (set by whoever started it; status shows them).
    public let serviceURLs = Locked<(metrics: String?, dashboard: String?)>((nil, nil))
    /// Run when the file system is unmounted, before the array is destaged and stopped (the service processor stops
    /// there, so nothing drives the array while it shuts down).
    public var beforeShutdown: (@Sendable () -> Void)?
    /// Block checksums, shared by every director's back end (nil only with VSA_UNSAFE_NO_CHECKSUMS=1, a switch for
    /// measuring what they cost: reads are then not verified).
    let checksums: BlockChecksums?

    /// Builds the whole stack and mounts it. Throws a one-line user error; nothing is written before assembly succeeds.
    public init(options: MountOptions) throws(VSAError) {
        self.options = options
        cleaner = CleanerControl(rate: options.cleanerRate)
        var st = stat()
        guard stat(options.mountpoint, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else {
            throw VSAError("mount point \(options.mountpoint) is not a folder; create it with mkdir")
        }
        DriveIO.deadlineSeconds = options.driveTimeoutSeconds
        lock = try ArrayLock(directory: options.directory, mountpoint: options.mountpoint)
        store = try ArrayStore.assemble(directory: options.directory)
        let sb = store.superblock
        driveProbes = (0..<sb.memberCount).map { _ in DriveProbe() }
        let geometry = store.geometry
        cacheBytes = options.cacheBytes ?? sb.cacheBytes
        // The cache and the mirror of it (as large again) are allocated now: bounded by the format and by this
        // machine, so a number cannot exhaust memory.
        let physicalBytes = UInt64(max(0, sysconf(Int32(_SC_PHYS_PAGES)))) * UInt64(max(0, sysconf(Int32(_SC_PAGESIZE))))
        guard cacheBytes >= Layout.cacheBytesMin, cacheBytes <= Layout.cacheBytesMax, physicalBytes == 0 || cacheBytes <= physicalBytes / 4 else {
            throw VSAError(
                "a cache of \(formatSize(cacheBytes)) does not fit: give -o cache=SIZE from 16M to \(formatSize(min(Layout.cacheBytesMax, max(Layout.cacheBytesMin, physicalBytes / 4)))) (the cache is all of global memory: slots, the partners' mirrors and the pool's map; at most a quarter of this machine's memory)"
            )
        }
        if let cacheBytes = options.powerCutCacheBytes {
            // The blocks, and about 64 bytes of bookkeeping for each.
            let bytes = cacheBytes + cacheBytes / 4096 * 64
            guard physicalBytes == 0 || bytes <= physicalBytes / 4 else {
                throw VSAError("-o powercut=\(formatSize(cacheBytes)) is more than a quarter of this machine's memory; give a smaller size")
            }
        }
        let directorCount = sb.engineCount * 2
        let slotsPerDirector = Int(Layout.slotBytes(ofCache: cacheBytes) / UInt64(sb.stripUnitBytes)) / directorCount
        guard slotsPerDirector >= 2 * geometry.dataStripsPerStripe + 2 else {
            let least = UInt64((2 * geometry.dataStripsPerStripe + 2) * directorCount * sb.stripUnitBytes) / 15 * 32 + (1 << 20)
            throw VSAError("cache of \(formatSize(cacheBytes)) is too small for this array: give at least \(formatSize((least >> 20) << 20))")
        }
        for w in store.assemblyWarnings {
            warnings.append(w)
            messages.append(w)
            daemonLog(w)
        }
        // The journal: after an unclean stop, complete batches are written again and intent regions resynced; every
        // mount then starts a new epoch in each director's slice.
        let checksums = ProcessInfo.processInfo.environment["VSA_UNSAFE_NO_CHECKSUMS"] == "1" ? nil : BlockChecksums(geometry: geometry)
        self.checksums = checksums
        if checksums == nil {
            // Writes will not keep the entries: they go (0 = no checksum), so a later mount finds none stale.
            let area = geometry.layout!
            for drive in store.drives.prefix(sb.memberCount) where drive.isWritable {
                _ = ArrayStore.zeroRange(drive, offsetBytes: area.checksumOffsetBytes, count: area.checksumBytes)
            }
        }
        let recovery = try JournalRecovery.recover(
            geometry: geometry, drives: store.drives, arrayUUID: sb.arrayUUID, unclean: !store.wasClean, checksums: checksums)
        if !recovery.damaged.isEmpty {
            let note =
                "the journal holds \(recovery.damaged.count) damaged record(s), not replayed (first: \(recovery.damaged[0])); run `vsa scrub --repair`"
            warnings.append(note)
            messages.append(note)
            daemonLog(note)
        }
        if !store.wasClean {
            let note =
                "the array was not stopped cleanly: the journal replayed \(recovery.replayedBatches) batches (\(formatSize(recovery.replayedBytes))), dropped \(recovery.droppedBatches) that never started, resynced \(recovery.resyncedRegions) regions"
                + (recovery.resyncRepairedStrips > 0
                    ? "; \(recovery.resyncRepairedStrips) strips in them failed their checksums and were rebuilt from the others" : "")
                + (recovery.resyncUnverifiedStripes > 0
                    ? "; \(recovery.resyncUnverifiedStripes) stripes disagreed where checksums could not tell which member was right (the first copy, or the data, was kept)"
                    : "")
            messages.append(note)
            daemonLog(note)
        }
        _ = try store.recordFailures()
        try store.writeSuperblocks(clean: false)
        let environment = ProcessInfo.processInfo.environment
        var spec = EngineSpec(geometry: geometry, drives: store.drives, engineCount: sb.engineCount, slotsPerDirector: slotsPerDirector)
        spec.journal = (sb.arrayUUID, recovery.epochs)
        spec.checksums = checksums
        spec.mirroring = environment["VSA_UNSAFE_NO_MIRROR"] != "1"
        spec.directRouting = environment["VSA_DIRECT_ROUTING"] == "1"
        engines = try Engines.build(spec)
        // Remote drives: a request's pieces wait on the network in parallel, each on its director's thread.
        engines.handOffPieces = store.hasRemoteDrive
        for director in engines.directors { director.batchesMisses = store.hasRemoteDrive }
        let directors = engines.directors
        // The pool, before any director runs: its homes are recovered on the directors' back ends from this thread.
        let openedPool = try ArrayDaemon.openPool(store: store, engines: engines, cacheBytes: cacheBytes, log: { daemonLog($0) })
        openedPool?.space.readReallocation.store(options.readReallocation, ordering: .relaxed)
        pool.withLock { $0 = openedPool }
        // A LUN whose restore could not be finished stays off the mount (Snapshots.swift, checkSnapshots).
        let files = store.lunTable.entries.filter { $0.pendingReset == 0 }.map {
            LUNFile(name: $0.name, ref: $0.ref)
        }
        let capacityBytes = geometry.capacityBytes
        let freeBox = FreeBytesBox()
        let replication = ReplicationPort(port: engines, lunIDMax: Layout.lunCountMax)
        replicator = Replicator(port: replication, directory: options.directory, deadlineSeconds: options.driveTimeoutSeconds)
        let port: HostIOPort = replication
        volatileCache = options.powerCutCacheBytes.map { VolatileWriteCache(port: port, capacityBytes: $0) }
        frontEnd = LUNFrontEnd(port: volatileCache ?? port, luns: files, userID: getuid(), groupID: getgid()) {
            (capacityBytes, freeBox.value.load(ordering: .relaxed))
        }
        freeBox.value.store(store.freeBytes, ordering: .relaxed)
        self.freeBox = freeBox
        if let ms = environment["VSA_IDLE_DESTAGE_MS"].flatMap(Double.init), ms >= 0 {
            for director in directors { director.idleDestageDelay = ms / 1000 }
        }
        for director in directors {
            let thread = Thread { director.run() }
            thread.name = "director-\(director.id)"
            thread.start()
        }
        engines.afterFlush = { [unowned self] in
            controlLock.withLock { _ in ((try? store.recordFailures()) ?? false) ? 0 : EIO }
        }
        // The control socket exists before the file system appears (a mount nobody can administer is refused).
        let listener: Int32
        do { listener = try ArrayDaemon.bindControlSocket(directory: options.directory) } catch {
            engines.stopAll()
            try? store.writeSuperblocks(clean: true)
            throw error
        }
        let fuseOptions = ["fsname=\(options.directory)", "subtype=vsa", "default_permissions"] + options.fuseOptions
        do { session = try FuseSession(handler: frontEnd, mountpoint: options.mountpoint, options: fuseOptions) } catch {
            engines.stopAll()
            Posix.close(listener)
            try? store.writeSuperblocks(clean: true)
            throw VSAError("cannot mount \(options.mountpoint): \(error)")
        }
        startControlSocket(listener: listener)
        startReplicas()
        startDriveProbes()
        startHealthMonitor()
        startDirectorWatch()
        startSecureExpiry()
        startCleaner()
        // A rebuild the last mount did not finish resumes; a failed member with a spare at hand gets it.
        startRebuildThread(rate: defaultRebuildRate)
        startRebuildOntoSpare()
        daemonLog(
            "mounted array \(sb.arrayUUID) (\(sb.raidLevel), \(sb.memberCount) members) from \(options.directory) at \(options.mountpoint); cache \(formatSize(cacheBytes)), \(directorCount) directors"
        )
    }

    private let freeBox: FreeBytesBox

    /// Serves until unmounted, then shuts down cleanly. Returns the process exit status.
    public func serve() -> Int32 {
        // Remote drives are latency-bound: requests in flight need threads to carry them (on 2 cores, 4 serve local
        // drives best).
        let threads = options.fuseThreads > 0 ? options.fuseThreads : store.hasRemoteDrive ? 16 : 4
        let rc = session!.run(threadsMax: threads)
        daemonLog("file system unmounted (loop status \(rc)); destaging")
        return shutdown()
    }

    private func shutdown() -> Int32 {
        beforeShutdown?()
        removeControlSocket()
        controlLock.withLock { _ in shuttingDown.store(true, ordering: .relaxed) }
        stopCleaner()
        pauseRebuild()
        stopScrub()
        // No host write comes any more: each group's changed tracks are all it needs to send after the next mount.
        replicator.stop(clean: true)
        // Failed directors come back for the stop: the array shuts down whole, and the next mount starts them all.
        for note in engines.restoreAll() { daemonLog("stopping: \(note)") }
        var flushed = engines.flush(lun: nil)
        // A checkpoint of every pool home: the next mount replays no log.
        if flushed == 0 && poolRuntime() != nil { flushed = engines.poolEach { .checkpoint(home: $0) } }
        if flushed == 0 { flushed = engines.endEpochs() }
        engines.stopAll()
        session?.close()
        if flushed != 0 {
            daemonLog("destage failed (\(Posix.errnoDescription(flushed))); the array stays marked not clean")
            return 1
        }
        controlLock.withLock { _ in
            do { try store.writeSuperblocks(clean: true) } catch { daemonLog("marking clean failed: \(error)") }
        }
        daemonLog("array marked clean; daemon exits")
        return 0
    }

    // MARK: Offline changes

    /// `vsa lun delete` with no daemon: after an unclean stop the journal is replayed first (a new epoch started), so
    /// no older record lands on the zeroed stripes later; the LUN's checksum entries are cleared (zeroed blocks have
    /// no checksum), then the LUN goes and its stripes are zeroed. The array's clean flag stays what it was.
    public static func deleteLUNOffline(store: ArrayStore, name: String) throws(VSAError) -> LUNEntry {
        guard let entry = store.lunTable.entries.first(where: { $0.name == name }) else {
            throw VSAError("no LUN named \(name); `vsa lun list` shows the LUNs")
        }
        let checksums = BlockChecksums(geometry: store.geometry)
        _ = try JournalRecovery.recover(
            geometry: store.geometry, drives: store.drives, arrayUUID: store.superblock.arrayUUID, unclean: !store.wasClean, checksums: checksums)
        do {
            let io = try DriveIO(drives: Array(store.drives.prefix(store.memberCount)), capacity: 4 * store.memberCount + 8)
            checksums.clear(firstStripe: entry.startStripe, stripeCount: entry.stripeCount, io: io)
            checksums.writeBack(io: io, skipping: store.membersOut & ~store.rebuildingMask)
            for d in 0..<store.memberCount where store.drives[d].isWritable { io.queueFlush(drive: d) }
            io.submit()
        } catch { throw VSAError("cannot set up io_uring: \(error)") }
        return try store.deleteLUN(name: name)
    }

    // MARK: Health

    /// The array's own detection of a hung director: a director that finishes no request for the director deadline
    /// while work waits for it is failed over, as `vsa director fail` would (its partner replays its mirrored
    /// write-pending data and takes its stripes). A thread of its own, so a failover that waits on a stuck drive holds
    /// up nothing else.
    private func startDirectorWatch() {
        let deadline = options.directorDeadlineSeconds
        guard deadline > 0, !engines.directRouting else { return }
        let thread = Thread { [self] in
            let watchdog = DirectorWatchdog(directorCount: engines.directors.count)
            while !shuttingDown.load(ordering: .relaxed) {
                usleep(UInt32(min(500_000, max(50_000, deadline * 250_000))))
                for director in watchdog.stalled(engines.directors, now: Posix.monotonicSeconds(), deadlineSeconds: deadline) {
                    guard !shuttingDown.load(ordering: .relaxed) else { return }
                    var line = "director \(director.id) finished no request for \(deadline) s with work waiting (the director deadline): "
                    do throws(VSAError) {
                        let notes = try engines.failDirector(director.id)
                        line += "failed over by the array: " + notes.joined(separator: "; ")
                    } catch {
                        line += "its failover failed: \(error.message)"
                    }
                    controlLock.withLock { _ in messages.append(line) }
                    daemonLog(line)
                }
            }
        }
        thread.name = "director-watch"
        thread.start()
    }

    /// Records drive failures in the superblocks soon after they happen (flushes record them at once).
    private func startHealthMonitor() {
        let thread = Thread { [self] in
            var saidLost = false
            var lastDecay = Posix.monotonicSeconds()
            while true {
                usleep(500_000)
                checkDrivesPresent()
                // The read-error budget's count halves every hour, as md's does: only a drive that keeps failing reads is
                // failed for them.
                if Posix.monotonicSeconds() - lastDecay >= 3600 {
                    lastDecay = Posix.monotonicSeconds()
                    for drive in controlLock.withLock({ _ in store.drives }) { drive.decayReadErrors() }
                }
                controlLock.withLock { _ in
                    do {
                        let survives = try store.recordFailures()
                        // Said once when it happens, not every half second.
                        if !survives && !saidLost { daemonLog("more members failed than \(store.superblock.raidLevel) survives; I/O fails") }
                        saidLost = !survives
                    } catch { daemonLog("recording a drive failure failed: \(error)") }
                }
                startRebuildOntoSpare()
            }
        }
        thread.name = "health"
        thread.start()
    }

    // MARK: Control socket

    /// One control request line (ControlProtocol.swift): its reply on the wire. `status` answers at once; requests
    /// that change something run one at a time.
    func handle(_ line: String) -> String {
        let request: ControlRequest
        do throws(VSAError) { request = try ControlRequest(line: line) } catch { return ControlReply.refused(error.message).wire }
        return perform(request).wire
    }

    /// Carries out one typed request (the control socket's, or anything else inside the daemon that drives the array).
    public func perform(_ request: ControlRequest) -> ControlReply {
        func run() -> ControlReply {
            do throws(VSAError) { return .done(try command(request)) } catch { return .refused(error.message) }
        }
        guard request.runsAlone else { return run() }
        return commandLock.withLock { _ in
            let reply = run()
            // Snapshots, clones and deletes change whether versions share blocks (PoolSpace.sharing).
            if request.changesSharing { noteSharing() }
            return reply
        }
    }

    /// One request: its payload, or one line of refusal.
    private func command(_ request: ControlRequest) throws(VSAError) -> String {
        switch request {
        case .status:
            return encodeJSON(statusReport())
        case .latencyCounts:
            return encodeJSON(latencyCounts())
        case .lunCreate(let name, let size, let thin):
            let entry = thin ? try createThinLUN(name: name, sizeBytes: size) : try createThickLUN(name: name, sizeBytes: size)
            let free = controlLock.withLock { _ in store.freeBytes }
            frontEnd.add(LUNFile(name: entry.name, ref: entry.ref))
            freeBox.value.store(free, ordering: .relaxed)
            session?.invalidateEntry(name: entry.name, inode: 0)
            daemonLog("LUN \(entry.name) created, \(entry.sizeBytes) bytes")
            return ""
        case .lunDelete(let name):
            try refuseIfReplicated(lun: name, "deleted")
            guard let entry = controlLock.withLock({ _ in store.lunTable.entries.first(where: { $0.name == name }) }) else {
                throw VSAError("no LUN named \(name); `vsa lun list` shows the LUNs")
            }
            if entry.thin {
                let snaps = try snapshotRecords().filter { $0.label.lunID == entry.lunID }
                guard snaps.isEmpty else {
                    throw VSAError("LUN \(name) has \(snaps.count) snapshot\(snaps.count == 1 ? "" : "s"); delete them first (vsa snap list TARGET \(name))")
                }
            }
            guard frontEnd.remove(lunID: entry.lunID) else {
                throw VSAError("LUN \(name) is open; close it (and detach any loop device on it) first")
            }
            engines.discard(lun: entry.ref)
            volatileCache?.drop(lunID: entry.lunID)
            let free = try controlLock.withLock { _ throws(VSAError) in
                _ = try store.deleteLUN(name: name)
                return store.freeBytes
            }
            if entry.thin {
                if !dropVersion(entry.lunID) { daemonLog("LUN \(name): its blocks could not all be freed now; the next mount frees them") }
            } else if let r = poolRuntime() {
                r.space.unreserve(
                    entry.startStripe..<(entry.startStripe + entry.stripeCount), stillReserved: controlLock.withLock { _ in store.lunTable.reservedRuns })
            }
            freeBox.value.store(free, ordering: .relaxed)
            session?.invalidateEntry(name: name, inode: UInt64(entry.lunID) + 1)
            daemonLog("LUN \(name) deleted")
            return ""
        case .snapCreate(let lun, let name, let seconds):
            let began = Posix.monotonicSeconds()
            try createSnapshot(lun: lun, name: name, secureSeconds: seconds)
            return SnapshotTaken(milliseconds: (Posix.monotonicSeconds() - began) * 1000).payload
        case .snapDelete(let lun, let name):
            try deleteSnapshot(lun: lun, name: name)
            return ""
        case .snapRestore(let lun, let name):
            try refuseIfReplicated(lun: lun, "restored")
            try restoreSnapshot(lun: lun, name: name)
            forgetUnsynced(lun: lun)
            return ""
        case .snapLink(let lun, let name, let clone):
            let entry = try linkSnapshot(lun: lun, name: name, clone: clone)
            freeBox.value.store(controlLock.withLock { _ in store.freeBytes }, ordering: .relaxed)
            return CloneLinked(lunID: entry.lunID).payload
        case .snapUnlink(let clone):
            try unlinkClone(clone)
            return ""
        case .snapRelink(let clone, let name):
            try refuseIfReplicated(lun: clone, "relinked")
            try relinkClone(clone, to: name)
            forgetUnsynced(lun: clone)
            return ""
        case .driveFail(let drive, let force):
            let member = try controlLock.withLock { _ throws(VSAError) in try resolveMember(drive) }
            try failMember(member, force: force)
            return ""
        case .driveReplace(let drive, let newDrive, let force, let rate):
            let member = try controlLock.withLock { _ throws(VSAError) in try resolveMember(drive) }
            let replaced = try replaceMember(member, with: newDrive, force: force, rate: rate)
            return ReplaceStarted(member: member, newDrive: replaced.entry, queued: replaced.queued).payload
        case .scrub(let repair, let rate):
            try startScrub(repair: repair, rate: rate)
            return ""
        case .directorFail(let director), .directorRestore(let director):
            guard !shuttingDown.load(ordering: .relaxed) else { throw VSAError("the array is being unmounted; its directors can no longer change") }
            guard let id = DirectorID(parsing: director) else {
                throw VSAError("\(director) is not a director id; directors are named 1a, 1b, 2a, ... (see vsa director list)")
            }
            let failing = request == .directorFail(director: director)
            let notes = failing ? try engines.failDirector(id) : try engines.restoreDirector(id)
            let line = "director \(id) \(failing ? "failed" : "restored"): " + notes.joined(separator: "; ")
            controlLock.withLock { _ in messages.append(line) }
            daemonLog(line)
            return DirectorChanged(notes: notes).payload
        case .flush:
            let rc = engines.flush(lun: nil)
            if rc != 0 { throw VSAError("flush failed: \(Posix.errnoDescription(rc))") }
            return ""
        case .inject(let spec, let seed):
            return try injectFault(spec, seed: seed).payload
        case .injectClear(let id):
            return String(try clearFaults(id: id))
        case .powerCut(let torn, let seed):
            return try powerCut(torn: torn, seed: seed).payload
        case .replicaCreate, .replicaSuspend, .replicaResume, .replicaDelete, .replicaFailover, .replicaFailback:
            return try replicaCommand(request)
        }
    }

    /// Every LUN's and member's latency histogram counts, and their errors (`latencyCounts`).
    public func latencyCounts() -> LatencyCounts {
        var luns: [String: LatencyCounts.LUN] = [:]
        for f in frontEnd.files { luns[f.name] = .init(f.latency, errors: f.hostErrors.load(ordering: .relaxed)) }
        var drives: [String: LatencyCounts.LUN] = [:]
        let members = controlLock.withLock { _ in Array(store.drives.prefix(store.memberCount)) }
        for (i, d) in members.enumerated() { drives[String(i)] = .init(d.latency, errors: d.errorCount.load(ordering: .relaxed)) }
        return LatencyCounts(luns: luns, drives: drives)
    }

    /// The array as it is now: what `vsa status` shows.
    public func statusReport() -> StatusReport {
        // The drives too: a replace or a spare taking over swaps the store's array of them under the control lock.
        let locked = controlLock.withLock { _ in (StatusReport.offline(store: store, cacheBytes: cacheBytes), messages, store.drives) }
        var report = locked.0
        let notes = locked.1
        let drives = locked.2
        report.array.clean = false
        report.daemon = .init(
            pid: getpid(), mountpoint: options.mountpoint, driveTimeoutSeconds: options.driveTimeoutSeconds,
            directorTimeoutSeconds: engines.directRouting ? 0 : options.directorDeadlineSeconds)
        let urls = serviceURLs.withLock { $0 }
        report.daemon?.metricsURL = urls.metrics
        report.daemon?.dashboardURL = urls.dashboard
        var hits: UInt64 = 0, misses: UInt64 = 0, whits: UInt64 = 0, wmisses: UInt64 = 0
        var used = 0, pending = 0
        var destaged: UInt64 = 0, readAhead: UInt64 = 0, batched: UInt64 = 0, writeThrough: UInt64 = 0, deferred: UInt64 = 0
        var memory = MemoryServices.Counters()
        var backEnd = StatusReport.BackEndInfo(
            fullStripeWrites: 0, reconstructWrites: 0, readModifyWrites: 0, degradedReads: 0, degradedWrites: 0, stripReads: 0, stripWrites: 0,
            journalBatches: 0, journalBytes: 0, journalIntents: 0, journalEpochs: 0,
            checksumMismatches: checksums?.mismatches.load(ordering: .relaxed) ?? 0, checksumRepairs: checksums?.repairs.load(ordering: .relaxed) ?? 0,
            checksumEntryRepairs: checksums?.entryRepairs.load(ordering: .relaxed) ?? 0,
            checksumUnrecoverable: checksums?.unrecoverable.load(ordering: .relaxed) ?? 0)
        report.directors = engines.directors.map { d in
            let c = d.counters
            hits += c.readHits.load(ordering: .relaxed)
            misses += c.readMisses.load(ordering: .relaxed)
            whits += c.writeHits.load(ordering: .relaxed)
            wmisses += c.writeMisses.load(ordering: .relaxed)
            used += c.usedSlots.load(ordering: .relaxed)
            let dp = c.dirtySlots.load(ordering: .relaxed)
            pending += dp
            destaged += c.destagedStripes.load(ordering: .relaxed)
            readAhead += c.readAheadTracks.load(ordering: .relaxed)
            batched += c.batchedMisses.load(ordering: .relaxed)
            writeThrough += c.writeThroughStripes.load(ordering: .relaxed)
            deferred += c.writeThroughDeferred.load(ordering: .relaxed)
            memory = memory + d.memory.counters
            backEnd.fullStripeWrites += d.marks.fullStripeWrites.load(ordering: .relaxed)
            backEnd.reconstructWrites += d.marks.reconstructWrites.load(ordering: .relaxed)
            backEnd.readModifyWrites += d.marks.readModifyWrites.load(ordering: .relaxed)
            backEnd.degradedReads += d.marks.degradedReads.load(ordering: .relaxed)
            backEnd.degradedWrites += d.marks.degradedWrites.load(ordering: .relaxed)
            backEnd.stripReads += d.marks.stripReads.load(ordering: .relaxed)
            backEnd.stripWrites += d.marks.stripWrites.load(ordering: .relaxed)
            backEnd.journalBatches += d.marks.journalBatches.load(ordering: .relaxed)
            backEnd.journalBytes += d.marks.journalBytes.load(ordering: .relaxed)
            backEnd.journalIntents += d.marks.journalIntents.load(ordering: .relaxed)
            backEnd.journalEpochs += d.marks.journalEpochs.load(ordering: .relaxed)
            let services = d.memory.counters
            let index = d.id.index
            return StatusReport.DirectorInfo(
                id: d.id.description, engine: d.id.engine, state: d.state.description,
                cacheSlots: d.cache.slotCount, writePendingSlots: dp,
                requests: d.requestsServed.load(ordering: .relaxed),
                actingFor: engines.actingHomes(of: index).map { engines.directors[$0].id.description },
                primaryDrives: Array(stride(from: index, to: store.superblock.memberCount, by: engines.directors.count)),
                queueDepth: d.queueDepth, usedSlots: c.usedSlots.load(ordering: .relaxed),
                mirroredSlots: d.mirrorForPartner.mirroredSlots.load(ordering: .relaxed),
                mirrorTo: d.state == .online && !d.partnerOut && engines.mirroring ? d.partner.id.description : "none",
                messagesSent: d.channel.messagesSent.load(ordering: .relaxed), messagesReceived: d.channel.messagesReceived.load(ordering: .relaxed),
                bounced: d.channel.bounced.load(ordering: .relaxed), unmirroredWrites: d.channel.unmirroredWrites.load(ordering: .relaxed),
                takeovers: d.channel.takeovers.load(ordering: .relaxed), replayedBytes: d.channel.replayedBytes.load(ordering: .relaxed),
                services: .init(services))
        }
        let lookups = hits + misses + whits + wmisses
        report.cache.slotCount = engines.directors.reduce(0) { $0 + $1.cache.slotCount }
        report.cache.usedSlots = used
        report.cache.writePendingSlots = pending
        report.cache.dirtyBytes = UInt64(pending) * UInt64(store.geometry.stripUnitBytes)
        report.cache.readHits = hits
        report.cache.readMisses = misses
        report.cache.writeHits = whits
        report.cache.writeMisses = wmisses
        report.cache.hitRatio = lookups == 0 ? 0 : Double(hits + whits) / Double(lookups)
        report.cache.destagedStripes = destaged
        report.cache.readAheadTracks = readAhead
        report.cache.batchedMisses = batched
        report.cache.writeThroughStripes = writeThrough
        report.cache.writeThroughDeferred = deferred
        report.memoryServices = .init(memory)
        report.backEnd = backEnd
        report.messages = notes
        addPoolStatus(&report)
        report.scrub = scrubInfo()
        report.rebuild = rebuildInfo()
        report.faults = faultInfos()
        report.powerCut = powerCutInfo()
        report.replicas = replicator.reports()
        for i in report.drives.indices where i < drives.count { report.drives[i].latency = .init(drives[i].latency) }
        for i in report.luns.indices {
            if let file = frontEnd.file(lunID: report.luns[i].id) {
                report.luns[i].latency = .init(file.latency)
                report.luns[i].hostErrors = file.hostErrors.load(ordering: .relaxed)
                report.luns[i].readBytes = file.readBytes.load(ordering: .relaxed)
                report.luns[i].writtenBytes = file.writtenBytes.load(ordering: .relaxed)
            }
        }
        return report
    }
}

final class FreeBytesBox: Sendable {
    let value = Atomic<UInt64>(0)
}
