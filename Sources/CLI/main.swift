// The `vsa` command. Every failure prints exactly one line on stderr naming the problem and the fix, and exits
// non-zero; usage text is for --help only. Commands that take DIR|MOUNTPOINT talk to the running daemon over its
// control socket when the array is mounted, and to the drives directly when it is not.
import ArgumentParser
import ArrayModel
import Daemon
import Foundation
import Metadata
import SysPosix

#if canImport(Glibc)
    import Glibc
#endif

func printError(_ line: String) {
    FileHandle.standardError.write(Data("vsa: \(line)\n".utf8))
}

func size(_ text: String, _ option: String) throws(VSAError) -> UInt64 {
    guard let v = parseSize(text) else {
        if let d = Double(text.dropLast()), d > 0, "KMGTkmgt".contains(text.last ?? " ") {
            throw VSAError("size '\(text)' for \(option) is not a whole number of bytes; use a smaller unit (e.g. M)")
        }
        throw VSAError("invalid size '\(text)' for \(option): use a number with an optional K, M, G or T suffix")
    }
    return v
}

func absolutePath(_ path: String) -> String {
    if let real = realpath(path, nil) {
        defer { free(real) }
        return String(cString: real)
    }
    if path.hasPrefix("/") { return path }
    return FileManager.default.currentDirectoryPath + "/" + path
}

/// A vsa mount in /proc/self/mountinfo: mount point and array folder.
struct VSAMount {
    var mountpoint: String
    var directory: String
}

func unescapeMountField(_ s: Substring) -> String {
    var out = ""
    var chars = Array(s)
    var i = 0
    while i < chars.count {
        if chars[i] == "\\", i + 3 < chars.count, let code = UInt8(String(chars[(i + 1)...(i + 3)]), radix: 8) {
            out.append(Character(UnicodeScalar(code)))
            i += 4
        } else {
            out.append(chars[i])
            i += 1
        }
    }
    chars.removeAll()
    return out
}

func vsaMounts() -> [VSAMount] {
    guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return [] }
    var result: [VSAMount] = []
    for line in text.split(separator: "\n") {
        let fields = line.split(separator: " ")
        guard let dash = fields.firstIndex(of: "-"), dash + 2 < fields.count, fields.count > 4 else { continue }
        guard fields[dash + 1] == "fuse.vsa" else { continue }
        result.append(VSAMount(mountpoint: unescapeMountField(fields[4]), directory: unescapeMountField(fields[dash + 2])))
    }
    return result
}

/// DIR|MOUNTPOINT -> the array folder (and the mount point when the path is one).
func resolveArray(_ path: String) throws(VSAError) -> (directory: String, mountpoint: String?) {
    let real = absolutePath(path)
    if let m = vsaMounts().first(where: { $0.mountpoint == real }) { return (m.directory, m.mountpoint) }
    var st = stat()
    guard stat(real, &st) == 0 else { throw VSAError("\(path) does not exist; give the array folder or its mount point") }
    guard (st.st_mode & S_IFMT) == S_IFDIR else { throw VSAError("\(path) is not a folder; give the array folder or its mount point") }
    return (real, nil)
}

/// Sends one control request to the running daemon; returns its payload or throws its error line.
func control(_ directory: String, _ words: [String]) throws(VSAError) -> String {
    let path = ArrayStore.socketPath(directory: directory)
    let fd: Int32
    do {
        fd = try UnixSocket.withReachablePath(folder: directory, name: ArrayStore.socketName) { short throws(SysError) in
            try UnixSocket.connect(path: short)
        }
    } catch {
        throw VSAError("cannot reach the daemon of \(directory) at \(path) (\(error)); is it still running? see \(ArrayStore.logPath(directory: directory))")
    }
    defer { Posix.close(fd) }
    // Never wait forever: a daemon whose drive or director is stuck answers within its drive deadline (30 s by
    // default); one that does not answer in 5 minutes is reported, not waited for.
    UnixSocket.setTimeouts(fd, seconds: 300)
    let reply: String
    do {
        try UnixSocket.send(fd, words.joined(separator: "\t") + "\n")
        reply = try UnixSocket.receive(fd, untilNewline: false)
    } catch {
        if error.errno == EAGAIN || error.errno == EWOULDBLOCK {
            throw VSAError(
                "the daemon of \(directory) did not answer within 300 s (a drive or a director may be stuck); see \(ArrayStore.logPath(directory: directory))")
        }
        throw VSAError("talking to the daemon failed: \(error)")
    }
    if reply.hasPrefix("ok\n") { return String(reply.dropFirst(3)) }
    if reply.hasPrefix("error ") { throw VSAError(String(reply.dropFirst(6)).trimmingWhitespace()) }
    throw VSAError("the daemon gave no answer; see \(ArrayStore.logPath(directory: directory))")
}

/// The daemon serving the array (pid, mount point), or nil when the array is not mounted. An offline command
/// holding the lock (its "mountpoint" reads "(vsa ...)") is neither: the caller is told to try again.
func runningDaemon(_ directory: String) throws(VSAError) -> (pid: Int32, mountpoint: String)? {
    guard let holder = ArrayLock.holder(directory: directory) else { return nil }
    if holder.mountpoint.hasPrefix("(") {
        throw VSAError("array \(directory) is busy with another vsa command (pid \(holder.pid)); try again in a moment")
    }
    return holder
}

/// Runs `body` with the array's lock held, so no mount starts meanwhile (offline changes).
func withOfflineLock<T>(_ directory: String, _ body: () throws(VSAError) -> T) throws(VSAError) -> T {
    let lock = try ArrayLock(directory: directory, mountpoint: "(vsa \(CommandLine.arguments.dropFirst().first ?? ""))")
    defer { withExtendedLifetime(lock) {} }
    return try body()
}

func statusReport(_ target: String) throws(VSAError) -> StatusReport {
    let (dir, _) = try resolveArray(target)
    if try runningDaemon(dir) != nil {
        let json = try control(dir, ["status"])
        guard let report = try? JSONDecoder().decode(StatusReport.self, from: Data(json.utf8)) else {
            throw VSAError("the daemon's status could not be read; see \(ArrayStore.logPath(directory: dir))")
        }
        return report
    }
    let store = try ArrayStore.assemble(directory: dir)
    return StatusReport.offline(store: store, cacheBytes: store.superblock.cacheBytes)
}

func json<T: Encodable>(_ value: T) -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    return String(decoding: (try? encoder.encode(value)) ?? Data(), as: UTF8.self)
}

protocol VSACommand: ParsableCommand {
    func execute() throws(VSAError)
}

extension VSACommand {
    func run() throws { try execute() }
}

struct VSA: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vsa",
        abstract: "A virtual enterprise storage array: LUNs as fixed-size files on a FUSE mount.",
        subcommands: [Create.self, LUN.self, Snap.self, DriveCommand.self, DirectorCommand.self, Scrub.self, Mount.self, Unmount.self, Status.self, Top.self])
}

struct Create: VSACommand {
    static let configuration = CommandConfiguration(abstract: "Create an array: drive files in DIR, or existing drives (--drive).")
    @Argument(help: "The array folder.") var dir: String
    @Option(help: "Number of drive files to create in DIR.") var drives: Int?
    @Option(help: "Size of each drive file (K, M, G, T).") var driveSize: String?
    @Option(name: .customLong("drive"), help: "An existing file or block device to use as a drive (repeat).") var drivePaths: [String] = []
    @Option(help: "RAID level: 0, 1, 5, 6 or 10.") var raid: String = "5"
    @Option(help: "How many of the drives are hot spares.") var spares: Int = 0
    @Option(help: "Stripe unit (strip) size.") var stripeUnit: String = "64K"
    @Option(help: "Global memory size used when mounting: cache slots, the partners' mirrors and the pool's map.") var cache: String = "512M"
    @Option(help: "Number of engines (two directors each).") var engines: Int = 1
    @Flag(help: "Destroy an existing array in DIR or on the drives.") var force = false

    func execute() throws(VSAError) {
        guard let level = RAIDLevel(name: raid) else { throw VSAError("unknown RAID level '\(raid)': use 0, 1, 5, 6 or 10") }
        let su = try size(stripeUnit, "--stripe-unit")
        guard su <= UInt64(Int32.max) else { throw VSAError("--stripe-unit must be a power of two from 4K to 16M") }
        let options = CreateOptions(
            directory: absolutePath(dir), driveCount: drives, driveSizeBytes: try driveSize.map { s throws(VSAError) in try size(s, "--drive-size") },
            drivePaths: drivePaths, raidLevel: level, spareCount: spares, stripUnitBytes: Int(su),
            cacheBytes: try size(cache, "--cache"), engineCount: engines, force: force)
        if let n = drives, n < 1 { throw VSAError("--drives must be at least 1") }
        let store = try ArrayStore.create(options)
        let sb = store.superblock
        print(
            "created \(sb.raidLevel) array \(sb.arrayUUID) in \(store.directory): \(sb.memberCount) members, \(sb.spareCount) spares, capacity \(formatSize(store.geometry.capacityBytes))"
        )
    }
}

struct LUN: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lun", abstract: "Create, list and delete LUNs.",
        subcommands: [LUNCreate.self, LUNList.self, LUNDelete.self])
}

struct LUNCreate: VSACommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Create a LUN.")
    @Argument(help: "The array folder or its mount point.") var target: String
    @Argument(help: "The LUN's name (its file name on the mount).") var name: String
    @Option(help: "The LUN's size (K, M, G, T); a multiple of 512 bytes.") var size: String
    @Flag(help: "Thick: a run of the array's stripes of its own, written in place (the size must fit the array; no snapshots).")
    var thick = false
    @Flag(help: "Thin (the default): blocks come from the array's pool as they are written; the size may exceed the array.")
    var thin = false

    func execute() throws(VSAError) {
        if thick && thin { throw VSAError("--thick and --thin exclude each other: a LUN is one or the other") }
        let thin = !thick
        let bytes = try CLI.size(size, "--size")
        if let problem = validateLUNName(name) { throw VSAError("\(problem): '\(name)'") }
        let (dir, _) = try resolveArray(target)
        if try runningDaemon(dir) != nil {
            _ = try control(dir, ["lun-create", name, String(bytes)] + (thin ? ["thin"] : []))
        } else {
            _ = try withOfflineLock(dir) { () throws(VSAError) in
                let store = try ArrayStore.assemble(directory: dir)
                if thin { return try ArrayDaemon.createThinLUNOffline(store: store, name: name, sizeBytes: bytes) }
                // A pool no mount has opened yet owns no segment: a thick LUN can still be placed.
                guard store.lunTable.pool == nil || store.lunTable.pool!.fresh else {
                    throw VSAError("this array has a pool, whose segments only the mounted array knows: mount it to create LUNs")
                }
                return try store.createLUN(name: name, sizeBytes: bytes)
            }
        }
        print("created \(thin ? "thin" : "thick") LUN \(name) (\(formatSize(bytes)))")
    }
}

struct LUNDelete: VSACommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete a LUN and zero its space.")
    @Argument(help: "The array folder or its mount point.") var target: String
    @Argument(help: "The LUN's name.") var name: String

    func execute() throws(VSAError) {
        let (dir, _) = try resolveArray(target)
        if try runningDaemon(dir) != nil {
            _ = try control(dir, ["lun-delete", name])
        } else {
            _ = try withOfflineLock(dir) { () throws(VSAError) in
                let store = try ArrayStore.assemble(directory: dir)
                if store.lunTable.entries.first(where: { $0.name == name })?.thin == true {
                    throw VSAError("LUN \(name) is thin: its blocks are freed through the pool, so mount the array to delete it")
                }
                return try ArrayDaemon.deleteLUNOffline(store: store, name: name)
            }
        }
        print("deleted LUN \(name)")
    }
}

struct LUNList: VSACommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the LUNs.")
    @Argument(help: "The array folder or its mount point.") var target: String
    @Flag(help: "Print one JSON object.") var json = false

    func execute() throws(VSAError) {
        let report = try statusReport(target)
        if json {
            struct Listing: Encodable { var luns: [StatusReport.LUNInfo] }
            print(CLI.json(Listing(luns: report.luns)))
            return
        }
        if report.luns.isEmpty {
            print("no LUNs; create one with `vsa lun create \(target) NAME --size SIZE`")
            return
        }
        let width = max(4, report.luns.map(\.name.count).max() ?? 4)
        print("NAME".padding(toLength: width, withPad: " ", startingAt: 0) + "  SIZE        BYTES")
        for l in report.luns {
            print(
                l.name.padding(toLength: width, withPad: " ", startingAt: 0) + "  "
                    + formatSize(l.sizeBytes).padding(toLength: 10, withPad: " ", startingAt: 0) + "  \(l.sizeBytes)")
        }
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
            "Mount options: FUSE's (allow_other, ...) and vsa's (cache=SIZE, threads=N, drive_timeout=SECONDS, cleaner_rate=SIZE per second or 0, read_realloc=on|off), comma-separated."
    ) var o: [String] = []
    @Flag(help: .hidden) var daemonChild = false

    func execute() throws(VSAError) {
        let directory = absolutePath(dir)
        let mp = absolutePath(mountpoint)
        var fuseOptions: [String] = []
        var cacheBytes: UInt64? = nil
        var fuseThreads = 4
        var driveTimeout: Double = 30
        var cleanerRate: UInt64? = nil
        var readReallocation = true
        for item in o.flatMap({ $0.split(separator: ",").map(String.init) }) {
            if item.hasPrefix("threads=") {
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
        if let cleanerRate { options.cleanerRate = cleanerRate }
        options.readReallocation = readReallocation
        if foreground || daemonChild {
            if daemonChild { setsid() }
            let daemon: ArrayDaemon
            do { daemon = try ArrayDaemon(options: options) } catch {
                if daemonChild { print("error \(error.message)"); fflush(nil) }
                throw error
            }
            if daemonChild {
                for w in daemon.warnings { print("warning \(w)") }
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
        while let w = lines.first, w.hasPrefix("warning ") {
            printError("warning: \(w.dropFirst(8))")
            lines.removeFirst()
        }
        let first = lines.first ?? ""
        if first == "ready" {
            print("mounted \(directory) at \(mountpoint)")
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

struct DriveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drive", abstract: "Fail and replace member drives of a mounted array.",
        subcommands: [DriveFail.self, DriveReplace.self])
}

/// The array folder of a mounted array, or a one-line error saying to mount it.
func mountedArray(_ target: String, _ verb: String) throws(VSAError) -> String {
    let (dir, _) = try resolveArray(target)
    guard try runningDaemon(dir) != nil else { throw VSAError("\(target) is not mounted; mount the array to \(verb)") }
    return dir
}

struct DriveFail: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "fail", abstract: "Take a member out as if it was pulled; the array runs degraded (a hot spare takes over).")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Argument(help: "The member: its index, its path or its name in the array folder (see vsa status).") var drive: String
    @Flag(help: "Fail it even if the array cannot survive that.") var force = false

    func execute() throws(VSAError) {
        let dir = try mountedArray(target, "fail a drive")
        _ = try control(dir, ["drive-fail", drive, force ? "1" : "0"])
        print("drive \(drive) failed")
    }
}

struct DriveReplace: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "replace", abstract: "Rebuild a member onto a hot spare or onto a new file or device, online.")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Argument(help: "The member: its index, its path or its name in the array folder (see vsa status).") var drive: String
    @Option(name: .customLong("with"), help: "The new drive: a file (created if absent) or a block device. Default: a hot spare.") var with: String?
    @Option(help: "Rebuild rate limit per drive (K, M, G per second; 0 = none).") var rate: String = "200M"
    @Flag(help: "Overwrite a drive that holds foreign data.") var force = false
    @Flag(help: "Show a progress bar and return when the rebuild ends.") var wait = false

    func execute() throws(VSAError) {
        let bytes = try size(rate, "--rate")
        let dir = try mountedArray(target, "replace a drive")
        let reply = try control(dir, ["drive-replace", drive, with.map(absolutePath) ?? "", force ? "1" : "0", String(bytes)])
        let parts = reply.split(separator: "\t").map(String.init)
        let member = parts.first ?? drive
        if parts.count > 2 && parts[2] == "queued" {
            print("member \(member) onto \(parts[1]): queued; its rebuild starts when the running one ends")
        } else {
            print("rebuilding member \(member) onto \(parts.count > 1 ? parts[1] : with ?? "a spare")")
        }
        guard wait else { return }
        try waitForRebuild(dir, member: Int(member))
    }
}

struct Snap: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snap", abstract: "Snapshots of thin LUNs (instant, nothing copied), linked clones and restores. Needs the array mounted.",
        subcommands: [SnapCreate.self, SnapList.self, SnapDelete.self, SnapRestore.self, SnapLink.self, SnapUnlink.self, SnapRelink.self])
}

struct SnapCreate: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "create", abstract: "Take a snapshot of a thin LUN: its contents now, kept while the LUN changes.")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Argument(help: "The thin LUN.") var lun: String
    @Argument(help: "The snapshot's name (unique among the LUN's snapshots).") var name: String
    @Option(help: "Secure: the snapshot cannot be deleted for this many days (a decimal, e.g. 0.5), and is deleted after.") var secure: String?

    func execute() throws(VSAError) {
        var seconds: UInt64 = 0
        if let secure {
            guard let days = Double(secure), days.isFinite, days > 0, days <= 36600 else {
                throw VSAError("--secure takes a number of days from more than 0 to 36600 (got '\(secure)')")
            }
            seconds = max(1, UInt64((days * 86400).rounded()))
        }
        let dir = try mountedArray(target, "take a snapshot")
        let took = try control(dir, ["snap-create", lun, name, String(seconds)]).trimmingCharacters(in: .whitespacesAndNewlines)
        print("snapshot \(lun)@\(name) taken" + (took.isEmpty ? "" : " in \(took) ms") + (secure.map { ", secure for \($0) days" } ?? ""))
    }
}

struct SnapList: VSACommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the snapshots (of one LUN, or all).")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Argument(help: "Only this LUN's snapshots.") var lun: String?
    @Flag(help: "Print one JSON object.") var json = false

    func execute() throws(VSAError) {
        _ = try mountedArray(target, "list its snapshots")
        let report = try statusReport(target)
        if let lun, !report.luns.contains(where: { $0.name == lun }) { throw VSAError("no LUN named \(lun); `vsa lun list` shows the LUNs") }
        let snapshots = (report.snapshots ?? []).filter { s in lun.map { s.lun == $0 } ?? true }
        if json {
            struct Listing: Encodable { var snapshots: [StatusReport.SnapshotInfo] }
            print(CLI.json(Listing(snapshots: snapshots)))
            return
        }
        if snapshots.isEmpty { print("no snapshots; take one with `vsa snap create \(target) LUN NAME`") }
        for s in snapshots { print(s.line) }
    }
}

/// The arguments the commands on one snapshot share.
struct SnapshotArguments: ParsableArguments {
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Argument(help: "The thin LUN.") var lun: String
    @Argument(help: "The snapshot.") var name: String
}

/// Sends a snapshot request to the daemon of a mounted array.
func snapshotRequest(_ target: String, _ verb: String, _ words: [String]) throws(VSAError) {
    _ = try control(try mountedArray(target, verb), words)
}

struct SnapDelete: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "delete", abstract: "Delete a snapshot (not while a clone is linked to it or it is secure); its unique blocks are freed.")
    @OptionGroup var snapshot: SnapshotArguments

    func execute() throws(VSAError) {
        try snapshotRequest(snapshot.target, "delete a snapshot", ["snap-delete", snapshot.lun, snapshot.name])
        print("deleted snapshot \(snapshot.lun)@\(snapshot.name)")
    }
}

struct SnapRestore: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "restore", abstract: "Make the LUN's contents the snapshot's (the LUN must be closed); the snapshot stays.")
    @OptionGroup var snapshot: SnapshotArguments

    func execute() throws(VSAError) {
        try snapshotRequest(snapshot.target, "restore a snapshot", ["snap-restore", snapshot.lun, snapshot.name])
        print("restored LUN \(snapshot.lun) from snapshot \(snapshot.name)")
    }
}

struct SnapLink: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "link", abstract: "Make a writable clone of a snapshot: a new thin LUN sharing the snapshot's blocks.")
    @OptionGroup var snapshot: SnapshotArguments
    @Argument(help: "The new LUN's name.") var newLUN: String

    func execute() throws(VSAError) {
        if let problem = validateLUNName(newLUN) { throw VSAError("\(problem): '\(newLUN)'") }
        try snapshotRequest(snapshot.target, "link a snapshot", ["snap-link", snapshot.lun, snapshot.name, newLUN])
        print("linked clone \(newLUN) to snapshot \(snapshot.lun)@\(snapshot.name)")
    }
}

struct SnapUnlink: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "unlink", abstract: "Unlink a clone: it keeps its contents as a LUN of its own, and its snapshot can be deleted.")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Argument(help: "The clone.") var clone: String

    func execute() throws(VSAError) {
        try snapshotRequest(target, "unlink a clone", ["snap-unlink", clone])
        print("unlinked clone \(clone)")
    }
}

struct SnapRelink: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "relink", abstract: "Make a linked clone's contents another snapshot's of the same LUN (the clone must be closed).")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Argument(help: "The clone.") var clone: String
    @Argument(help: "The snapshot to link it to.") var name: String

    func execute() throws(VSAError) {
        try snapshotRequest(target, "relink a clone", ["snap-relink", clone, name])
        print("relinked clone \(clone) to snapshot \(name)")
    }
}

struct DirectorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "director", abstract: "List the directors of a mounted array; fail one (its partner takes over) or restore it.",
        subcommands: [DirectorList.self, DirectorFail.self, DirectorRestore.self])
}

struct DirectorList: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "One line per director: state, what it owns, its queue, memory and messages.")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Flag(help: "Print the directors as JSON.") var json = false

    func execute() throws(VSAError) {
        let report = try statusReport(target)
        if json {
            print(CLI.json(report.directors))
            return
        }
        let header = [
            "director", "state", "acting-for", "drives", "queue", "slots-used", "write-pending", "mirrored-here", "mirror-to", "sent", "received", "bounced",
            "requests",
        ]
        var rows = [header]
        for d in report.directors {
            rows.append([
                d.id, d.state, d.actingFor.isEmpty ? "-" : d.actingFor.joined(separator: ","), d.primaryDrives.map(String.init).joined(separator: ","),
                String(d.queueDepth), String(d.usedSlots), String(d.writePendingSlots), String(d.mirroredSlots), d.mirrorTo,
                String(d.messagesSent), String(d.messagesReceived), String(d.bounced), String(d.requests),
            ])
        }
        print(table(rows))
        if report.daemon == nil { print("(not mounted: the directors start when the array is mounted)") }
    }
}

/// Columns padded to their widest cell, two spaces apart.
func table(_ rows: [[String]]) -> String {
    var widths = [Int](repeating: 0, count: rows.map(\.count).max() ?? 0)
    for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
    return rows.map { row in
        row.enumerated().map { i, cell in i == row.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
            .joined(separator: "  ")
    }.joined(separator: "\n")
}

struct DirectorFail: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "fail", abstract: "Fail a director: it is fenced, its partner replays its mirrored write-pending data and takes its work.")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Argument(help: "The director: 1a, 1b, 2a, ...") var director: String

    func execute() throws(VSAError) { try changeDirector(target, director, request: "director-fail", verb: "fail", done: "failed") }
}

struct DirectorRestore: VSACommand {
    static let configuration = CommandConfiguration(commandName: "restore", abstract: "Bring a failed director back; its work is handed back to it.")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Argument(help: "The director: 1a, 1b, 2a, ...") var director: String

    func execute() throws(VSAError) { try changeDirector(target, director, request: "director-restore", verb: "restore", done: "restored") }
}

/// Sends a director fail or restore to the daemon and prints what it did, a note a line.
func changeDirector(_ target: String, _ director: String, request: String, verb: String, done: String) throws(VSAError) {
    let dir = try mountedArray(target, "\(verb) a director")
    let reply = try control(dir, [request, director])
    print("director \(director) \(done)")
    for line in reply.split(separator: "\n") where !line.isEmpty { print("  \(line)") }
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
        var shown = 0
        while count.map({ shown < $0 }) ?? true {
            let report = try statusReport(dir)
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

/// Draws the rebuild's progress until it ends; throws if it did not complete.
/// Follows the rebuild of `member` (the running one when nil) to its end; a queued one is waited for through the
/// rebuild ahead of it.
func waitForRebuild(_ dir: String, member: Int? = nil) throws(VSAError) {
    var handOvers = 0
    let r = try follow(dir, job: "rebuild", pick: { $0.rebuild }) { r in
        let waiting = member != nil && r.member != member && r.queued?.member == member
        var line = waiting ? "waiting for member \(r.member)'s rebuild: " + progressBar(percent: r.percent) : progressBar(percent: r.percent)
        if r.bytesPerSecond > 0 { line += "  \(formatSize(r.bytesPerSecond))/s" }
        if let eta = r.etaSeconds { line += "  eta \(Int(eta.rounded(.up))) s" }
        // Between the two rebuilds the first one reads complete while the queued one starts: keep following.
        var handOver = member != nil && r.member != member && r.state == "complete" && r.queued == nil
        if handOver {
            handOvers += 1
            handOver = handOvers < 25  // 5 s: the next rebuild starts within microseconds, unless its drive failed
        }
        return (waiting ? 0 : r.percent, line, r.state == "running" || waiting || handOver)
    }
    guard r.state == "complete" else {
        throw VSAError("rebuild \(r.state)\(r.detail.map { ": \($0)" } ?? ""); see \(ArrayStore.logPath(directory: dir))")
    }
    if let member, r.member != member {
        throw VSAError("the rebuild of member \(member) did not start after member \(r.member)'s; see \(ArrayStore.logPath(directory: dir))")
    }
    print("rebuild of member \(r.member) complete")
}

/// Polls the daemon's status every 200 ms and draws the progress of one background job (`pick` finds it in the
/// report, `describe` gives its percent, progress line and whether it still runs) until it stops; returns its last
/// state. A terminal gets one line redrawn in place; anything else (a log, a test) a line per 10%.
func follow<Job>(
    _ dir: String, job: String, pick: (StatusReport) -> Job?, describe: (Job) -> (percent: Double, line: String, running: Bool)
) throws(VSAError) -> Job {
    let tty = isatty(1) != 0
    var lastDecile = -1
    while true {
        let json = try control(dir, ["status"])
        guard let report = try? JSONDecoder().decode(StatusReport.self, from: Data(json.utf8)), let current = pick(report) else {
            throw VSAError("the daemon reports no \(job); see \(ArrayStore.logPath(directory: dir))")
        }
        let (percent, line, running) = describe(current)
        let decile = Int(percent.rounded(.down)) / 10
        if tty {
            print("\r" + line + "   ", terminator: "")
            fflush(nil)
        } else if decile != lastDecile || !running {
            lastDecile = decile
            print(line)
        }
        if !running {
            if tty { print("") }
            return current
        }
        usleep(200_000)
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
        _ = try control(dir, ["scrub", repair ? "1" : "0", String(bytes)])
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

/// "[#####.....] 42.0%"
func progressBar(percent: Double) -> String {
    let width = 40
    let filled = max(0, min(width, Int(percent / 100 * Double(width))))
    let tenths = Int((percent * 10).rounded(.down))
    return "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled) + "] \(tenths / 10).\(tenths % 10)%"
}

struct Status: VSACommand {
    static let configuration = CommandConfiguration(abstract: "Show engines, directors, drives, LUNs and cache.")
    @Argument(help: "The array folder or its mount point.") var target: String
    @Flag(help: "Print one JSON object.") var json = false

    func execute() throws(VSAError) {
        let report = try statusReport(target)
        print(json ? CLI.json(report) : report.text)
    }
}

// Entry point: parse, run, and turn every failure into one line.
do {
    var command = try VSA.parseAsRoot()
    try command.run()
} catch let error as VSAError {
    printError(error.message)
    exit(1)
} catch {
    if VSA.exitCode(for: error) == .success { VSA.exit(withError: error) }
    let message = VSA.message(for: error).split(separator: "\n").first.map(String.init) ?? "invalid arguments"
    printError("\(message.trimmingWhitespace()); see `vsa --help`")
    exit(64)
}
