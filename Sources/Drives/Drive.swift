// Drives: the bottom of the stack. A `Drive` is one member or spare: a sparse file created by `vsa create` or an
// existing block device. All data and metadata I/O to drives goes through io_uring (`DriveIO`), with O_DIRECT and
// page-aligned buffers where the file system allows it, buffered I/O where it does not (tmpfs).
//
// Drive state machine (transition(to:) asserts the edge):
//   online -> failed     an I/O error or a failed flush; the array goes on degraded
//   failed -> online     only through rebuild (a later issue); a failure recorded in the superblocks outlives remounts
import ArrayModel
import Synchronization
import SysPosix
import SysURing

#if canImport(Glibc)
    import Glibc
#endif

public enum DriveState: UInt8, Sendable, CustomStringConvertible {
    case online = 0, failed = 1
    public var description: String { self == .online ? "online" : "failed" }
}

public final class Drive: Sendable {
    public let path: String
    public let fd: Int32
    public let sizeBytes: UInt64
    public let isBlockDevice: Bool
    public let usesDirectIO: Bool
    /// tmpfs or ramfs: memory, where a flush has nothing to make durable.
    public let isMemoryBacked: Bool
    private let stateRaw = Atomic<UInt8>(DriveState.online.rawValue)
    public let errorCount = Atomic<UInt64>(0)

    public var state: DriveState { DriveState(rawValue: stateRaw.load(ordering: .acquiring))! }

    public func transition(to next: DriveState) {
        let current = state
        precondition(current == next || current == .online || next == .online, "drive \(path): illegal \(current) -> \(next)")
        stateRaw.store(next.rawValue, ordering: .releasing)
    }

    /// Opens an existing drive for I/O. Tries O_DIRECT first and falls back to buffered I/O where the file system
    /// refuses it (tmpfs says EINVAL at open or at the first aligned read).
    public init(path: String, readOnly: Bool = false) throws(SysError) {
        self.path = path
        let access = readOnly ? O_RDONLY : O_RDWR
        var direct = true
        var fd: Int32
        do throws(SysError) {
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
        self.isMemoryBacked = !info.isBlockDevice && IORing.isMemoryBacked(fd: fd)
        self.usesDirectIO = direct && !isMemoryBacked
        self.sizeBytes = info.sizeBytes
        self.isBlockDevice = info.isBlockDevice
    }

    /// Creates a sparse drive file of `sizeBytes` (refuses to replace an existing file).
    public static func createFile(path: String, sizeBytes: UInt64) throws(SysError) {
        let fd = try Posix.open(path, flags: O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode: 0o600)
        defer { Posix.close(fd) }
        try Posix.ftruncate(fd, sizeBytes: sizeBytes)
    }

    deinit { Posix.close(fd) }
}
