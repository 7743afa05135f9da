// SysURing: a thin Swift face on liburing. One `IORing` belongs to one thread (a director's back-end adapter or the
// control plane); it is not shared, so it takes no lock. Callers queue operations tagged with a 64-bit value, submit
// them in one batch, and reap completions as (tag, result) pairs; result < 0 is -errno.
import CURing
import SysPosix

#if canImport(Glibc)
    import Glibc
#endif

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
        while true {
            if let sqe = io_uring_get_sqe(&ring) { return sqe }
            // Submission queue full: hand what we have to the kernel, then there is room again. A kernel that refuses
            // for now (out of memory) is asked again after a pause; what it cannot take stays queued.
            if submitQueued() < 0 { usleep(1000) }
        }
    }

    public func queueRead(fd: Int32, into pointer: UnsafeMutableRawPointer, count: Int, offsetBytes: UInt64, tag: UInt64) {
        let sqe = nextEntry()
        io_uring_prep_read(sqe, fd, pointer, UInt32(count), offsetBytes)
        io_uring_sqe_set_data64(sqe, tag)
        queuedCount += 1
    }

    /// A scatter read into the `count` buffers of `vectors`, which must stay as they are until it completes.
    public func queueReadVector(fd: Int32, vectors: UnsafePointer<iovec>, count: Int, offsetBytes: UInt64, tag: UInt64) {
        let sqe = nextEntry()
        io_uring_prep_readv(sqe, fd, vectors, UInt32(count), offsetBytes)
        io_uring_sqe_set_data64(sqe, tag)
        queuedCount += 1
    }

    /// A gather write from the `count` buffers of `vectors`, which must stay as they are until it completes.
    public func queueWriteVector(fd: Int32, vectors: UnsafePointer<iovec>, count: Int, offsetBytes: UInt64, tag: UInt64) {
        let sqe = nextEntry()
        io_uring_prep_writev(sqe, fd, vectors, UInt32(count), offsetBytes)
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

    /// Hands every queued operation to the kernel in one system call. Returns 0, or -errno when the kernel took none
    /// of them (they stay queued for the next call): a runtime condition, never a trap.
    @discardableResult
    public func submitQueued() -> Int32 {
        guard queuedCount > 0 else { return 0 }
        while true {
            let rc = io_uring_submit(&ring)
            if rc == -EINTR { continue }
            if rc < 0 { return rc }
            inFlightCount += Int(rc)
            queuedCount -= Int(rc)
            if queuedCount == 0 || rc == 0 { return 0 }
        }
    }

    /// Submits what is queued and reaps until nothing is in flight, calling `completion(tag, result)` for each. With
    /// a `deadlineSeconds`, gives up waiting once that long has passed without everything done, and returns how many
    /// operations are still in flight (0: all completed). Those belong to the kernel until they complete: the caller
    /// must not reuse this ring (their completions would arrive here later) nor trust their buffers.
    @discardableResult
    public func submitAndReapAll(deadlineSeconds: Double = 0, _ completion: (UInt64, Int32) -> Void) -> Int {
        // The clock is read only once there is something to wait for (a batch of page-cache copies has nothing).
        var start: Double? = nil
        func elapsed() -> Double {
            let now = Posix.monotonicSeconds()
            if start == nil { start = now }
            return now - start!
        }
        var refusals = 0
        while inFlightCount > 0 || queuedCount > 0 {
            if queuedCount > 0 && submitQueued() < 0 && inFlightCount == 0 {
                // The kernel took nothing and nothing is in flight to reap: wait a moment and ask again, within the
                // deadline (EAGAIN/ENOMEM under memory pressure).
                refusals += 1
                if deadlineSeconds > 0 && elapsed() > deadlineSeconds { return queuedCount }
                usleep(UInt32(min(refusals, 100)) * 1000)
                continue
            }
            var cqe: UnsafeMutablePointer<io_uring_cqe>? = nil
            var rc: Int32
            if deadlineSeconds > 0 {
                let left = max(0.001, deadlineSeconds - elapsed())
                var timeout = __kernel_timespec(tv_sec: Int64(left), tv_nsec: Int64((left - Double(Int64(left))) * 1e9))
                rc = io_uring_wait_cqe_timeout(&ring, &cqe, &timeout)
                if rc == -ETIME {
                    if elapsed() >= deadlineSeconds { return inFlightCount + queuedCount }
                    continue
                }
            } else {
                rc = io_uring_wait_cqe(&ring, &cqe)
            }
            if rc == -EINTR || rc == -EAGAIN { continue }
            if rc < 0 {
                // The ring itself failed (it should not): what is in flight is the caller's to give up on.
                return inFlightCount + queuedCount
            }
            // Reap every completion that is ready, not just one: fewer trips through the kernel.
            var entry = cqe
            while let current = entry {
                completion(current.pointee.user_data, current.pointee.res)
                io_uring_cqe_seen(&ring, current)
                inFlightCount -= 1
                entry = nil
                if io_uring_peek_cqe(&ring, &entry) != 0 { entry = nil }
            }
        }
        return 0
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
