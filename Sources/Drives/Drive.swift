// Drives: the bottom of the stack. A `Drive` is one member or spare: a sparse file created by `vsa create` or an
// existing block device. All data and metadata I/O to drives goes through io_uring (`DriveIO`), with O_DIRECT and
// page-aligned buffers where the file system allows it, buffered I/O where it does not (tmpfs).
//
// Drive state machine (transition(to:) refuses an illegal edge):
//   online -> failed        an I/O error, a failed flush, a vanished file, or `vsa drive fail`; the array runs degraded
//   online -> rebuilding    a spare or a new drive takes a failed member's place; it receives every write, and reads
//                           use it only below `rebuiltStripes` (the rebuild's progress)
//   rebuilding -> online    the rebuild finished
//   rebuilding -> failed    the new drive failed too
// A failed drive never comes back: the failure is recorded in the superblocks, and only a rebuild onto another drive
// (or the same file, given again with `vsa drive replace --with`) restores redundancy. A member missing at assembly
// is a placeholder drive, failed from the start.
import ArrayModel
import Synchronization
import SysNBD
import SysPosix
import SysURing

#if canImport(Glibc)
    import Glibc
#endif

/// Why a drive could not be opened or read for a probe: one line.
public struct DriveOpenError: Error, CustomStringConvertible, Sendable {
    public let description: String
}

/// The state of a remote drive's link: answering, being connected again (within the drive deadline), or given up on.
public enum RemoteLink: UInt8, Sendable, CustomStringConvertible {
    case connected = 0, reconnecting = 1, lost = 2
    public var description: String {
        switch self {
        case .connected: return "connected"
        case .reconnecting: return "reconnecting"
        case .lost: return "lost"
        }
    }
}

public enum DriveState: UInt8, Sendable, CustomStringConvertible {
    case online = 0, failed = 1, rebuilding = 2
    public var description: String {
        switch self {
        case .online: return "online"
        case .failed: return "failed"
        case .rebuilding: return "rebuilding"
        }
    }
}

public final class Drive: Sendable {
    public let path: String
    public let fd: Int32
    public let sizeBytes: UInt64
    public let isBlockDevice: Bool
    public let usesDirectIO: Bool
    /// tmpfs or ramfs: memory, where a flush has nothing to make durable. Under the simulation's fault injector
    /// such drives stand for disks: their flushes count.
    public var isMemoryBacked: Bool { memoryBackedFile && DriveFaultInjector.active == nil }
    /// Whether DriveIO copies this drive's reads and writes itself, synchronously, instead of through the ring: only
    /// memory (tmpfs, where a copy cannot hang and the ring would hand each operation to a worker thread) and the
    /// simulation's drives (its fault injector sits on that path). Every other drive, direct I/O or buffered, goes
    /// through the ring, so the drive deadline bounds it.
    public var copiesSynchronously: Bool { !usesDirectIO && (memoryBackedFile || DriveFaultInjector.active != nil) }
    private let memoryBackedFile: Bool
    private let stateRaw = Atomic<UInt8>(DriveState.online.rawValue)
    public let errorCount = Atomic<UInt64>(0)
    /// Operations that did not complete within the drive deadline (each failed the drive).
    public let timeouts = Atomic<UInt64>(0)
    /// Reads that failed without failing the drive (`DriveIO.ReadErrors`): served from redundancy and written back, as
    /// md's corrected read errors. `recentReadErrors` is the same count halved every hour (`decayReadErrors`, as md
    /// halves its own): past `DriveIO.readErrorBudget` the drive is failed.
    public let readErrors = Atomic<UInt64>(0)
    public let recentReadErrors = Atomic<UInt64>(0)
    /// A remote drive's connections made again after one was lost (by any DriveIO).
    public let reconnects = Atomic<UInt64>(0)
    /// A remote drive's link as the last DriveIO to use it found it (`RemoteLink`; local drives: none).
    let linkRaw = Atomic<UInt8>(RemoteLink.connected.rawValue)
    public var link: RemoteLink? { remoteURI == nil ? nil : RemoteLink(rawValue: linkRaw.load(ordering: .relaxed)) }
    /// A remote drive's round trip: how long its commands in a batch took to be answered, smoothed (1/8 of each new
    /// batch), in microseconds; 0 before the first.
    public let roundTripMicros = Atomic<UInt64>(0)
    /// What a remote drive must hold to be used over a new connection: `bytes` at one of `offsets` (Metadata sets the
    /// array's UUID in either superblock copy once the superblocks are written). A server that comes back blank, or
    /// serving another disk, is not this drive: `DriveIO` fails it instead of writing to it.
    private let identity = Mutex<Identity?>(nil)
    public struct Identity: Sendable {
        public let offsets: [UInt64]
        public let bytes: [UInt8]
        public init(offsets: [UInt64], bytes: [UInt8]) {
            self.offsets = offsets
            self.bytes = bytes
        }
    }
    public func expect(_ expected: Identity) { identity.withLock { $0 = expected } }
    public var expectedIdentity: Identity? { identity.withLock { $0 } }
    /// New connections to this remote drive that found another disk behind its URI (the drive was failed each time).
    public let identityMismatches = Atomic<UInt64>(0)
    /// What the server offered at the first connection: several connections may share the export's cache
    /// (multi-conn; without it every write is made durable on its own connection), and FUA.
    public let serverMultiConn: Bool
    public let serverFUA: Bool

    /// Halves `recentReadErrors` (the daemon calls it once an hour).
    public func decayReadErrors() {
        var value = recentReadErrors.load(ordering: .relaxed)
        while true {
            let (exchanged, original) = recentReadErrors.compareExchange(expected: value, desired: value / 2, ordering: .relaxed)
            if exchanged { return }
            value = original
        }
    }
    /// Faults injected into this drive while it runs (`vsa inject`); none normally.
    public let faults = DriveFaults()
    /// How long the batches of I/O this drive took part in took, by kind (LatencyHistogram.swift): the back end's
    /// view of the drive, recorded once per batch by `DriveIO.submit`.
    public let latency = IOLatency()

    public var state: DriveState { DriveState(rawValue: stateRaw.load(ordering: .acquiring))! }

    /// Stripes [0, rebuiltStripes) of a rebuilding drive hold their data; above it the drive is write-only.
    public let rebuiltStripes = Atomic<UInt64>(0)
    /// No file behind it: a member missing at assembly.
    public var isMissing: Bool { fd < 0 && remoteURI == nil }

    /// Moves to `next` if that edge is legal from the current state; returns whether it did. Another thread may fail
    /// the drive at any moment (an I/O error), so the check and the move are one compare-exchange: a failure is never
    /// overwritten, and an illegal edge is refused rather than trusted.
    @discardableResult
    public func transition(to next: DriveState) -> Bool {
        while true {
            let current = state
            if current == next { return true }
            let legal = (current == .online && next != .online) || (current == .rebuilding && next != .rebuilding)
            guard legal else { return false }
            if stateRaw.compareExchange(expected: current.rawValue, desired: next.rawValue, ordering: .acquiringAndReleasing).exchanged { return true }
        }
    }

    /// Moves from exactly `current` to `next`; false if the drive is in another state by now.
    @discardableResult
    public func transition(from current: DriveState, to next: DriveState) -> Bool {
        stateRaw.compareExchange(expected: current.rawValue, desired: next.rawValue, ordering: .acquiringAndReleasing).exchanged
    }

    /// Whether reads of `stripe` may use this drive.
    @inline(__always)
    public func isReadable(stripe: UInt64) -> Bool {
        let s = state
        return s == .online || (s == .rebuilding && stripe < rebuiltStripes.load(ordering: .acquiring))
    }

    /// Whether writes go to this drive.
    @inline(__always)
    public var isWritable: Bool { state != .failed }

    /// A drive on another machine, served over NBD (issue 15): its URI. Each `DriveIO` that uses it opens its own
    /// connection (SysNBD), as each has its own ring; `fd` is -1.
    public let remoteURI: String?

    /// Connects once to a drive served over NBD, to learn its size and that it answers (`DriveIO` connects again for
    /// its own I/O). A URI is input: only nbd:// and nbd+unix:// are taken.
    public init(uri: String, readOnly: Bool = false) throws(NBDError) {
        let connection = try NBDConnection(uri: uri, deadlineSeconds: Drive.connectDeadline())
        guard readOnly || !connection.readOnly else { throw NBDError(message: "\(uri) is served read-only; a drive must take writes", errno: EROFS) }
        self.path = uri
        self.remoteURI = uri
        self.fd = -1
        self.sizeBytes = connection.sizeBytes
        self.isBlockDevice = false
        // Never the page-cache path: its I/O goes over the connection, under the drive deadline.
        self.usesDirectIO = true
        self.memoryBackedFile = false
        self.serverMultiConn = connection.canMultiConn
        self.serverFUA = connection.canFUA
    }

    /// When connecting to a remote drive outside DriveIO (opening it, probing its superblock) gives up: the drive
    /// deadline, or 10 s where none is set. An unreachable server must not hold `vsa create` or an assembly forever.
    static func connectDeadline() -> Double {
        Posix.monotonicSeconds() + (DriveIO.deadlineSeconds > 0 ? DriveIO.deadlineSeconds : 10)
    }

    /// Whether a drive argument, or the target of an array folder's drive-N entry, names an NBD export rather than a
    /// file. Anything with a scheme is taken as a URI, so that one vsa cannot speak is refused by name (NBDConnection)
    /// instead of looked for as a file.
    public static func isURI(_ locator: String) -> Bool { locator.contains("://") }

    /// Opens the drive `locator` names: a file, a block device, or an NBD export. The error is one line.
    public static func open(_ locator: String) throws(DriveOpenError) -> Drive {
        if isURI(locator) {
            do { return try Drive(uri: locator) } catch { throw DriveOpenError(description: error.message) }
        }
        do { return try Drive(path: locator) } catch { throw DriveOpenError(description: "\(error)") }
    }

    /// The first `count` bytes of the drive `locator` names, read without opening it for I/O (superblock probes of
    /// drives that may belong to someone else). A file shorter than `count` gives what it has.
    public static func readHead(_ locator: String, count: Int) throws(DriveOpenError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        if isURI(locator) {
            let connection: NBDConnection
            do { connection = try NBDConnection(uri: locator, deadlineSeconds: connectDeadline()) } catch {
                throw DriveOpenError(description: error.message)
            }
            let n = Int(min(UInt64(count), connection.sizeBytes))
            guard n > 0 else { return [] }
            let rc = bytes.withUnsafeMutableBytes { connection.read(into: $0.baseAddress!, count: n, offsetBytes: 0, deadlineSeconds: connectDeadline()) }
            guard rc == 0 else {
                throw DriveOpenError(
                    description: rc == ETIMEDOUT
                        ? "\(locator): no answer to a read within the deadline" : "\(locator): read failed: \(String(cString: strerror(rc)))")
            }
            return Array(bytes[0..<n])
        }
        let fd: Int32
        do { fd = try Posix.open(locator, flags: O_RDONLY | O_CLOEXEC) } catch { throw DriveOpenError(description: "\(error)") }
        defer { Posix.close(fd) }
        let n: Int
        do { n = try bytes.withUnsafeMutableBytes { raw throws(SysError) in try Posix.pread(fd, raw.baseAddress!, count: raw.count, offset: 0) } } catch {
            throw DriveOpenError(description: "\(error)")
        }
        return Array(bytes[0..<n])
    }

    /// A member that is missing from the array folder: failed, never opened.
    public init(missingPath path: String) {
        self.path = path
        self.remoteURI = nil
        self.fd = -1
        self.sizeBytes = 0
        self.isBlockDevice = false
        self.serverMultiConn = false
        self.serverFUA = false
        self.usesDirectIO = false
        self.memoryBackedFile = false
        stateRaw.store(DriveState.failed.rawValue, ordering: .releasing)
    }

    /// Opens an existing drive for I/O. Tries O_DIRECT first (unless `directIO` is false: tests of buffered drives)
    /// and falls back to buffered I/O where the file system refuses it (tmpfs says EINVAL at open or at the first
    /// aligned read).
    public init(path: String, readOnly: Bool = false, directIO: Bool = true) throws(SysError) {
        self.path = path
        self.remoteURI = nil
        let access = readOnly ? O_RDONLY : O_RDWR
        var direct = directIO
        var fd: Int32
        do throws(SysError) {
            guard direct else { throw SysError(errno: EINVAL, call: "open") }  // buffered asked for: the fallback below
            fd = try Posix.open(path, flags: access | openDirectFlag | O_CLOEXEC)
            let probe = Posix.allocateAligned(bytes: 4096)
            defer { Posix.free(probe) }
            do throws(SysError) { _ = try Posix.pread(fd, probe, count: 4096, offset: 0) } catch {
                guard error.errno == EINVAL else { throw error }
                Posix.close(fd)
                direct = false
                fd = try Posix.open(path, flags: access | O_CLOEXEC)
            }
        } catch {
            guard error.errno == EINVAL else { throw error }
            direct = false
            fd = try Posix.open(path, flags: access | O_CLOEXEC)
        }
        let info: (sizeBytes: UInt64, isBlockDevice: Bool)
        do { info = try Posix.fileSize(fd: fd) } catch {
            Posix.close(fd)
            throw error
        }
        self.fd = fd
        // tmpfs accepts O_DIRECT (since Linux 6.6) but it is still the page cache underneath: io_uring cannot complete
        // its I/O inline either way, so memory-backed drives are treated as buffered (DriveIO copies synchronously).
        // A block device's node lives on devtmpfs, which says nothing about the device itself.
        self.memoryBackedFile = !info.isBlockDevice && IORing.isMemoryBacked(fd: fd)
        self.serverMultiConn = false
        self.serverFUA = false
        self.usesDirectIO = direct && !memoryBackedFile
        self.sizeBytes = info.sizeBytes
        self.isBlockDevice = info.isBlockDevice
    }

    /// Creates a sparse drive file of `sizeBytes` (refuses to replace an existing file).
    public static func createFile(path: String, sizeBytes: UInt64) throws(SysError) {
        let fd = try Posix.open(path, flags: O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode: 0o600)
        defer { Posix.close(fd) }
        try Posix.ftruncate(fd, sizeBytes: sizeBytes)
    }

    deinit { if fd >= 0 { Posix.close(fd) } }
}
