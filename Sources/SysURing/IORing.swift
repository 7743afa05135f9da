// SysURing: a thin Swift face on liburing. One `IORing` belongs to one thread (a director's back-end adapter or the
// control plane); it is not shared, so it takes no lock. Callers queue operations tagged with a 64-bit value, submit
// them in one batch, and reap completions as (tag, result) pairs; result < 0 is -errno.
import CURing
import SysPosix

public final class IORing {
    private var ring = io_uring()
    public let entries: UInt32
    /// Operations queued but not yet handed to the kernel.
    public private(set) var queuedCount = 0
    /// Operations submitted whose completion has not been reaped.
    public private(set) var inFlightCount = 0

    public init(entries: UInt32) throws(SysError) {
        self.entries = entries
        let rc = io_uring_queue_init(entries, &ring, 0)
        if rc < 0 { throw SysError(errno: -rc, call: "io_uring_queue_init") }
    }

    deinit { io_uring_queue_exit(&ring) }

    private func nextEntry() -> UnsafeMutablePointer<io_uring_sqe> {
        if let sqe = io_uring_get_sqe(&ring) { return sqe }
        // Submission queue full: hand what we have to the kernel, then there is room again.
        submitQueued()
        guard let sqe = io_uring_get_sqe(&ring) else { preconditionFailure("io_uring: no submission entry after submit") }
        return sqe
    }

    public func queueRead(fd: Int32, into pointer: UnsafeMutableRawPointer, count: Int, offsetBytes: UInt64, tag: UInt64) {
        let sqe = nextEntry()
        io_uring_prep_read(sqe, fd, pointer, UInt32(count), offsetBytes)
        io_uring_sqe_set_data64(sqe, tag)
        queuedCount += 1
    }

    /// `durable`: the write is on stable storage when it completes (RWF_DSYNC), with no flush of anything else.
    public func queueWrite(fd: Int32, from pointer: UnsafeRawPointer, count: Int, offsetBytes: UInt64, tag: UInt64, durable: Bool = false) {
        let sqe = nextEntry()
        io_uring_prep_write(sqe, fd, pointer, UInt32(count), offsetBytes)
        if durable { vsa_sqe_make_durable(sqe) }
        io_uring_sqe_set_data64(sqe, tag)
        queuedCount += 1
    }

    /// fdatasync when `dataOnly`, else fsync.
    public func queueFsync(fd: Int32, dataOnly: Bool, tag: UInt64) {
        let sqe = nextEntry()
        io_uring_prep_fsync(sqe, fd, dataOnly ? UInt32(IORING_FSYNC_DATASYNC) : 0)
        io_uring_sqe_set_data64(sqe, tag)
        queuedCount += 1
    }

    /// Punches a hole (reads back as zeroes) without changing the file size.
    public func queuePunchHole(fd: Int32, offsetBytes: UInt64, count: UInt64, tag: UInt64) {
        let sqe = nextEntry()
        io_uring_prep_fallocate(sqe, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off_t(offsetBytes), off_t(count))
        io_uring_sqe_set_data64(sqe, tag)
        queuedCount += 1
    }

    /// Hands every queued operation to the kernel in one system call.
    public func submitQueued() {
        guard queuedCount > 0 else { return }
        while true {
            let rc = io_uring_submit(&ring)
            if rc == -EINTR || rc == -EAGAIN || rc == -EBUSY { continue }
            precondition(rc >= 0, "io_uring_submit failed: \(Posix.errnoDescription(-rc))")
            inFlightCount += Int(rc)
            queuedCount -= Int(rc)
            if queuedCount == 0 { return }
        }
    }

    /// Submits what is queued and reaps until nothing is in flight, calling `completion(tag, result)` for each.
    public func submitAndReapAll(_ completion: (UInt64, Int32) -> Void) {
        submitQueued()
        while inFlightCount > 0 {
            var cqe: UnsafeMutablePointer<io_uring_cqe>? = nil
            let rc = io_uring_wait_cqe(&ring, &cqe)
            if rc == -EINTR || rc == -EAGAIN { continue }
            precondition(rc == 0, "io_uring_wait_cqe failed: \(Posix.errnoDescription(-rc))")
            // Reap every completion that is ready, not just one: fewer trips through the kernel.
            var entry = cqe
            while let current = entry {
                completion(current.pointee.user_data, current.pointee.res)
                io_uring_cqe_seen(&ring, current)
                inFlightCount -= 1
                entry = nil
                if io_uring_peek_cqe(&ring, &entry) != 0 { entry = nil }
            }
            if queuedCount > 0 { submitQueued() }
        }
    }
}

extension IORing {
    /// Whether `fd` lives on tmpfs or ramfs: memory, where io_uring hands every read and write to an io-wq worker
    /// thread instead of completing it inline.
    public static func isMemoryBacked(fd: Int32) -> Bool {
        var st = statfs()
        guard fstatfs(fd, &st) == 0 else { return false }
        return st.f_type == 0x0102_1994 || st.f_type == 0x8584_58F6  // TMPFS_MAGIC, RAMFS_MAGIC
    }
}
