// `vsa create`, `mount`, `unmount`, `status`, `top` and `scrub`: commands on the array as a whole.
import ArgumentParser
import ArrayModel
import Control
import Daemon
import Foundation
import Metadata
import ServiceProcessor
import SysPosix

#if canImport(Glibc)
    import Glibc
#endif

struct Create: VSACommand {
    static let configuration = CommandConfiguration(abstract: "Create an array: drive files in DIR, or existing drives (--drive).")
    @Argument(help: "The array folder.") var dir: String
    @Option(help: "Number of drive files to create in DIR.") var drives: Int?
    @Option(help: "Size of each drive file (K, M, G, T).") var driveSize: String?
    @Option(
        name: .customLong("drive"),
        help: "A drive: an existing file or block device, or an NBD export (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH); repeat.")
    var drivePaths: [String] = []
    @Option(help: "RAID level: 0, 1, 5, 6 or 10.") var raid: String = "5"
    @Option(help: "How many of the drives are hot spares.") var spares: Int = 0
    @Option(help: "Stripe unit (strip) size.") var stripeUnit: String = "64K"
    @Option(help: "Global memory size used when mounting: cache slots, the partners' mirrors and the pool's map.") var cache: String = "512M"
    @Option(
        help:
            "Number of engines (two directors each), 1 to 8; default 1, or 8 when a drive is an NBD URI (a director runs one request's drive I/O at a time: over a network, requests in flight need directors)."
    )
    var engines: Int?
    @Flag(help: "Destroy an existing array in DIR or on the drives.") var force = false

    func execute() throws(VSAError) {
        guard let level = RAIDLevel(name: raid) else { throw VSAError("unknown RAID level '\(raid)': use 0, 1, 5, 6 or 10") }
        let su = try size(stripeUnit, "--stripe-unit")
        guard su <= UInt64(Int32.max) else { throw VSAError("--stripe-unit must be a power of two from 4K to 16M") }
        let options = CreateOptions(
            directory: absolutePath(dir), driveCount: drives, driveSizeBytes: try driveSize.map { s throws(VSAError) in try size(s, "--drive-size") },
            drivePaths: drivePaths, raidLevel: level, spareCount: spares, stripUnitBytes: Int(su),
            cacheBytes: try size(cache, "--cache"), engineCount: engines ?? (drivePaths.contains { $0.contains("://") } ? 8 : 1), force: force)
        if let n = drives, n < 1 { throw VSAError("--drives must be at least 1") }
        let store = try ArrayStore.create(options)
        let sb = store.superblock
        print(
            "created \(sb.raidLevel) array \(sb.arrayUUID) in \(store.directory): \(sb.memberCount) members, \(sb.spareCount) spares, capacity \(formatSize(store.geometry.capacityBytes))"
        )
    }
}

struct Mount: VSACommand {
    static let configuration = CommandConfiguration(abstract: "Mount an array: its LUNs appear as files in MOUNTPOINT.")
    @Argument(help: "The array folder.") var dir: String
    @Argument(help: "An existing empty folder to mount on.") var mountpoint: String
    @Flag(help: "Stay in the foreground and log to stderr.") var foreground = false
    @Option(
        name: .short,
        help:
            "Mount options: FUSE's (allow_other, ...) and vsa's (cache=SIZE, threads=N, drive_timeout=SECONDS, director_timeout=SECONDS, cleaner_rate=SIZE per second or 0, read_realloc=on|off, metrics[=HOST:PORT], dashboard[=HOST:PORT], powercut[=SIZE]), comma-separated."
    ) var o: [String] = []
    @Flag(help: .hidden) var daemonChild = false

    func execute() throws(VSAError) {
        let directory = absolutePath(dir)
        let mp = absolutePath(mountpoint)
        var fuseOptions: [String] = []
        var cacheBytes: UInt64? = nil
        var fuseThreads = 0  // the daemon's choice: 4, or 16 for an array with remote drives
        var driveTimeout: Double = 30
        var directorTimeout: Double? = nil
        var cleanerRate: UInt64? = nil
        var readReallocation = true
        var metrics: ServiceAddress? = nil
        var dashboard: ServiceAddress? = nil
        var powerCutBytes: UInt64? = nil
        for item in o.flatMap({ $0.split(separator: ",").map(String.init) }) {
            if item == "metrics" || item.hasPrefix("metrics=") {
                metrics = try ServiceAddress(parsing: item == "metrics" ? "127.0.0.1:9580" : String(item.dropFirst(8)), option: "metrics")
            } else if item == "dashboard" || item.hasPrefix("dashboard=") {
                dashboard = try ServiceAddress(parsing: item == "dashboard" ? "127.0.0.1:9581" : String(item.dropFirst(10)), option: "dashboard")
            } else if item == "powercut" || item.hasPrefix("powercut=") {
                let bytes = item == "powercut" ? UInt64(128 << 20) : try size(String(item.dropFirst(9)), "-o powercut")
                guard bytes >= 1 << 20 && bytes <= 64 << 30 else {
                    throw VSAError("-o powercut takes the size of the host's volatile write cache, from 1M to 64G (got '\(item.dropFirst(9))')")
                }
                powerCutBytes = bytes
            } else if item.hasPrefix("threads=") {
                guard let n = Int(item.dropFirst(8)), n >= 1, n <= 64 else {
                    throw VSAError("-o threads takes a number of FUSE worker threads from 1 to 64 (got '\(item.dropFirst(8))')")
                }
                fuseThreads = n
            } else if item.hasPrefix("cache=") {
                cacheBytes = try size(String(item.dropFirst(6)), "-o cache")
            } else if item.hasPrefix("drive_timeout=") {
                guard let seconds = Double(item.dropFirst(14)), seconds.isFinite, seconds == 0 || (seconds >= 0.5 && seconds <= 3600) else {
                    throw VSAError("-o drive_timeout takes seconds from 0.5 to 3600, or 0 for none (got '\(item.dropFirst(14))')")
                }
                driveTimeout = seconds
            } else if item.hasPrefix("director_timeout=") {
                guard let seconds = Double(item.dropFirst(17)), seconds.isFinite, seconds == 0 || (seconds >= 0.5 && seconds <= 3600) else {
                    throw VSAError("-o director_timeout takes seconds from 0.5 to 3600, or 0 for none (got '\(item.dropFirst(17))')")
                }
                directorTimeout = seconds
            } else if item.hasPrefix("cleaner_rate=") {
                let value = String(item.dropFirst(13))
                let rate = value == "0" ? 0 : try size(value, "-o cleaner_rate")
                guard rate == 0 || (rate >= 1 << 20 && rate <= 64 << 30) else {
                    throw VSAError("-o cleaner_rate takes a size per second from 1M to 64G, or 0 for no background cleaning (got '\(value)')")
                }
                cleanerRate = rate
            } else if item.hasPrefix("read_realloc=") {
                let value = String(item.dropFirst(13))
                guard value == "on" || value == "off" else { throw VSAError("-o read_realloc takes on or off (got '\(value)')") }
                readReallocation = value == "on"
            } else if [
                "rw", "defaults", "auto", "noauto", "user", "nouser", "_netdev", "nofail", "dev", "suid", "exec", "nodev", "nosuid", "noexec", "async", "atime",
                "noatime", "relatime",
            ].contains(item) {
                continue  // mount(8)/fstab words that mean nothing to a FUSE session
            } else {
                fuseOptions.append(item)
            }
        }
        guard ArrayStore.holdsArray(directory: directory) else {
            throw VSAError("\(dir) holds no vsa array; create one with `vsa create \(dir) --drives 4 --drive-size 1G`")
        }
        if let holder = try runningDaemon(directory) {
            throw VSAError("array \(directory) is already mounted at \(holder.mountpoint) (pid \(holder.pid)); unmount it first")
        }
        var options = MountOptions(directory: directory, mountpoint: mp, fuseOptions: fuseOptions, cacheBytes: cacheBytes)
        options.fuseThreads = fuseThreads
        options.driveTimeoutSeconds = driveTimeout
        options.directorTimeoutSeconds = directorTimeout
        if let cleanerRate { options.cleanerRate = cleanerRate }
        options.readReallocation = readReallocation
        options.powerCutCacheBytes = powerCutBytes
        if foreground || daemonChild {
            if daemonChild { setsid() }
            let daemon: ArrayDaemon
            var processor: ServiceProcessor? = nil
            do throws(VSAError) {
                // The service processor's ports first: one in use refuses the mount before the array is touched.
                if metrics != nil || dashboard != nil { processor = try ServiceProcessor(metrics: metrics, dashboard: dashboard) }
                do { daemon = try ArrayDaemon(options: options) } catch {
                    processor?.stop()
                    throw error
                }
            } catch {
                if daemonChild { print("error \(error.message)"); fflush(nil) }
                throw error
            }
            var served: [String] = []
            if let processor {
                processor.attach(daemon)
                daemon.serviceURLs.withLock { $0 = (processor.metricsURL, processor.dashboardURL) }
                daemon.beforeShutdown = { processor.stop() }
                if let url = processor.metricsURL { served.append("metrics: \(url)") }
                if let url = processor.dashboardURL { served.append("dashboard: \(url)") }
                for line in served { daemonLog(line.hasPrefix("dashboard") ? "dashboard served (its URL carries the token: vsa dashboard TARGET)" : line) }
            }
            if !daemonChild { for line in served { print(line) } }
            if daemonChild {
                for w in daemon.warnings { print("warning \(w)") }
                for line in served { print("info \(line)") }
                print("ready")
                fflush(nil)
                // From here on, the parent is gone: stdout and stderr go to the log.
                let log = open(ArrayStore.logPath(directory: directory), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
                if log >= 0 {
                    dup2(log, 1)
                    dup2(log, 2)
                    close(log)
                }
            }
            Foundation.exit(daemon.serve())
        }
        try spawnDaemon(directory: directory, mountpoint: mp)
    }

    private func spawnDaemon(directory: String, mountpoint: String) throws(VSAError) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/proc/self/exe")
        // A daemon keeps no folder busy (the caller's working folder could not be unmounted while it runs), and does
        // not depend on being allowed into it.
        process.currentDirectoryURL = URL(fileURLWithPath: "/")
        var arguments = ["mount", directory, mountpoint, "--daemon-child"]
        for item in o { arguments += ["-o", item] }
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardInput = FileHandle.nullDevice
        let logPath = ArrayStore.logPath(directory: directory)
        let logFD = open(logPath, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        if logFD >= 0 { process.standardError = FileHandle(fileDescriptor: logFD, closeOnDealloc: true) }
        do { try process.run() } catch { throw VSAError("cannot start the daemon: \(error)") }
        pipe.fileHandleForWriting.closeFile()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        var lines = output.split(separator: "\n").map(String.init)
        var served: [String] = []
        while let w = lines.first, w.hasPrefix("warning ") || w.hasPrefix("info ") {
            if w.hasPrefix("info ") { served.append(String(w.dropFirst(5))) } else { printError("warning: \(w.dropFirst(8))") }
            lines.removeFirst()
        }
        let first = lines.first ?? ""
        if first == "ready" {
            print("mounted \(directory) at \(mountpoint)")
            for line in served { print(line) }
            return
        }
        if first.hasPrefix("error ") { throw VSAError(String(first.dropFirst(6))) }
        process.waitUntilExit()
        throw VSAError("the daemon exited while starting (status \(process.terminationStatus)); see \(logPath)")
    }
}

struct Unmount: VSACommand {
    static let configuration = CommandConfiguration(abstract: "Destage everything, mark the array clean and unmount it.")
    @Argument(help: "The mount point.") var mountpoint: String

    func execute() throws(VSAError) {
        let mp = absolutePath(mountpoint)
        guard let mount = vsaMounts().first(where: { $0.mountpoint == mp }) else {
            throw VSAError("\(mountpoint) is not a mounted vsa array; `mount -t fuse.vsa` lists them")
        }
        let pid = ArrayLock.holder(directory: mount.directory)?.pid
        if getuid() == 0 {
            if umount2(mp, 0) != 0 {
                let code = errno
                if code == EBUSY { throw VSAError("\(mountpoint) is busy: close the LUN files and detach their loop devices (vsa-loop detach) first") }
                throw VSAError("cannot unmount \(mountpoint): \(Posix.errnoDescription(code))")
            }
        } else {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/sh")
            process.arguments = ["-c", "exec fusermount3 -u \"$0\" 2>&1", mp]
            let pipe = Pipe()
            process.standardOutput = pipe
            do { try process.run() } catch { throw VSAError("cannot run fusermount3: \(error)") }
            let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            if process.terminationStatus != 0 {
                if text.contains("busy") { throw VSAError("\(mountpoint) is busy: close the LUN files and detach their loop devices first") }
                throw VSAError("fusermount3 -u \(mountpoint) failed: \(text.split(separator: "\n").first ?? "")")
            }
        }
        // The daemon destages and marks the array clean once the kernel lets go; wait for it.
        if let pid {
            var waited = 0
            while Posix.isProcessAlive(pid) && ArrayLock.holder(directory: mount.directory) != nil {
                usleep(20_000)
                waited += 1
                if waited == 15_000 {
                    throw VSAError("the daemon (pid \(pid)) has not finished destaging after 5 minutes; see \(ArrayStore.logPath(directory: mount.directory))")
                }
            }
        }
        if let sb = try? ArrayStore.assemble(directory: mount.directory).superblock, !sb.clean {
            throw VSAError("unmounted, but the array was not marked clean; see \(ArrayStore.logPath(directory: mount.directory))")
        }
        print("unmounted \(mount.directory) from \(mp); array clean")
    }
}

struct Status: VSACommand {
    static let configuration = CommandConfiguration(abstract: "Show engines, directors, drives, LUNs and cache.")
    @Argument(help: "The array folder or its mount point.") var target: String
    @Flag(help: "Print one JSON object.") var json = false

    func execute() throws(VSAError) {
        let report = try statusReport(target)
        print(json ? encodeJSON(report) : report.text)
    }
}

struct Top: VSACommand {
    static let configuration = CommandConfiguration(abstract: "A live view of a mounted array's directors, refreshed once a second.")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Option(help: "Stop after this many refreshes (default: until interrupted).") var count: Int?

    func execute() throws(VSAError) {
        if let count, count < 1 { throw VSAError("--count must be at least 1") }
        let dir = try mountedArray(target, "watch it")
        let tty = isatty(1) != 0
        var previous: StatusReport? = nil
        var previousCounts: LatencyCounts? = nil
        var shown = 0
        while count.map({ shown < $0 }) ?? true {
            let report = try statusReport(dir)
            let counts = try? JSONDecoder().decode(LatencyCounts.self, from: Data(try control(dir, .latencyCounts).utf8))
            var lines = ["vsa top  \(report.array.raidLevel)  \(report.array.state)  \(report.daemon?.mountpoint ?? dir)"]
            var rows = [
                [
                    "director", "state", "acting-for", "req/s", "sent/s", "recv/s", "queue", "write-pending", "mirrored-here", "mirror-to", "copies/s",
                    "parity/s",
                ]
            ]
            for d in report.directors {
                let before = previous?.directors.first { $0.id == d.id }
                func rate(_ now: UInt64, _ then: UInt64?) -> String { then.map { String(now &- $0) } ?? "-" }
                rows.append([
                    d.id, d.state, d.actingFor.isEmpty ? "-" : d.actingFor.joined(separator: ","), rate(d.requests, before?.requests),
                    rate(d.messagesSent, before?.messagesSent), rate(d.messagesReceived, before?.messagesReceived), String(d.queueDepth),
                    String(d.writePendingSlots), String(d.mirroredSlots), d.mirrorTo,
                    rate(d.services?.copies ?? 0, before.map { $0.services?.copies ?? 0 }),
                    rate((d.services?.xorOps ?? 0) + (d.services?.pqOps ?? 0), before.map { ($0.services?.xorOps ?? 0) + ($0.services?.pqOps ?? 0) }),
                ])
            }
            lines.append(table(rows))
            // LUNs: operations per second and latency percentiles of the last interval (since the mount, the first time),
            // from the difference of two snapshots of their histograms' buckets.
            var lunRows = [["lun", "reads/s", "writes/s", "fsyncs/s", "read p50", "read p99", "write p50", "write p99", "fsync p99", "errors"]]
            for l in report.luns {
                guard let now = counts?.luns[l.name] else { continue }
                let then = previousCounts?.luns[l.name]
                let (read, write, flush) = now.summaries(since: then)
                func rate(_ s: LatencySummary) -> String { then == nil ? "-" : String(s.count) }
                func ms(_ micros: Double, _ s: LatencySummary) -> String { s.count == 0 ? "-" : LatencySummary.format(micros) }
                lunRows.append([
                    l.name, rate(read), rate(write), rate(flush), ms(read.p50Micros, read), ms(read.p99Micros, read), ms(write.p50Micros, write),
                    ms(write.p99Micros, write), ms(flush.p99Micros, flush), String(now.errors &- min(now.errors, then?.errors ?? 0)),
                ])
            }
            if lunRows.count > 1 { lines.append(table(lunRows)) }
            previousCounts = counts
            let c = report.cache
            lines.append("cache: used \(c.usedSlots)/\(c.slotCount) slots, dirty \(formatSize(c.dirtyBytes)), hit ratio \(Int((c.hitRatio * 100).rounded()))%")
            for m in report.messages.suffix(3) { lines.append("note: \(m)") }
            if tty { print("\u{1B}[H\u{1B}[2J", terminator: "") }
            print(lines.joined(separator: "\n"))
            if !tty { print("") }
            fflush(nil)
            previous = report
            shown += 1
            if count.map({ shown < $0 }) ?? true { sleep(1) }
        }
    }
}

struct Scrub: VSACommand {
    static let configuration = CommandConfiguration(
        abstract: "Check every stripe's redundancy against its data (and repair with --repair), online, with a progress bar.")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Flag(help: "Fix what is found: parity or mirror copies rewritten; RAID-6 also rewrites a single bad data strip.") var repair = false
    @Option(help: "Rate limit per drive (K, M, G per second; 0 = none).") var rate: String = "0"
    @Flag(help: "Start it and return; vsa status shows its progress.") var noWait = false

    func execute() throws(VSAError) {
        let bytes = try size(rate, "--rate")
        let dir = try mountedArray(target, "scrub it")
        _ = try control(dir, .scrub(repair: repair, rateBytes: bytes))
        guard !noWait else {
            print("scrub started")
            return
        }
        let s = try follow(dir, job: "scrub", pick: { $0.scrub }) { s in
            (s.percent, progressBar(percent: s.percent) + "  \(s.mismatches) mismatches", s.state == "running")
        }
        print("scrub \(s.state): \(s.summary)")
        let left = s.mismatches - s.repaired
        if s.state != "complete" { throw VSAError("the scrub did not finish (\(s.state)); see \(ArrayStore.logPath(directory: dir))") }
        if s.unreadableStripes > 0 {
            throw VSAError("\(s.unreadableStripes) stripes could not be read (a drive failed); see vsa status and \(ArrayStore.logPath(directory: dir))")
        }
        if s.skippedStripes > 0 && left == 0 {
            throw VSAError("\(s.skippedStripes) stripes were not checked because a member is out; replace it (vsa drive replace), then scrub again")
        }
        if left > 0 {
            throw VSAError(
                s.repair
                    ? "\(left) mismatches could not be repaired; see \(ArrayStore.logPath(directory: dir))"
                    : "\(left) stripes disagree with their redundancy; run `vsa scrub --repair`")
        }
    }
}
