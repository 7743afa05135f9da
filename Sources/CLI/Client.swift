// The `vsa` command's side of an array: where it is (folder or mount point), whether a daemon serves it, and the
// control socket (a typed `ControlRequest` through `ControlClient`, both shared with the daemon).
import ArgumentParser
import ArrayModel
import Control
import Daemon
import Foundation
import Metadata
import SysPosix

#if canImport(Glibc)
    import Glibc
#endif

/// A drive given on the command line: an NBD URI as it is, a path made absolute (the daemon runs elsewhere).
func driveArgument(_ argument: String) -> String { argument.contains("://") ? argument : absolutePath(argument) }

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
func control(_ directory: String, _ request: ControlRequest) throws(VSAError) -> String {
    try ControlClient.send(request, directory: directory)
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
        let json = try control(dir, .status)
        guard let report = try? JSONDecoder().decode(StatusReport.self, from: Data(json.utf8)) else {
            throw VSAError("the daemon's status could not be read; see \(ArrayStore.logPath(directory: dir))")
        }
        return report
    }
    let store = try ArrayStore.assemble(directory: dir)
    return StatusReport.offline(store: store, cacheBytes: store.superblock.cacheBytes)
}

/// The array folder of a mounted array, or a one-line error saying to mount it.
func mountedArray(_ target: String, _ verb: String) throws(VSAError) -> String {
    let (dir, _) = try resolveArray(target)
    guard try runningDaemon(dir) != nil else { throw VSAError("\(target) is not mounted; mount the array to \(verb)") }
    return dir
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
        let json = try control(dir, .status)
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
