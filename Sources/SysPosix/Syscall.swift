// SysPosix: the one funnel through which vsa makes plain POSIX calls (files, sockets, locks, memory).
// Policy: EINTR is retried; EFAULT and EBADF are bugs and trap; every other errno becomes a typed `SysError`.
#if canImport(Glibc)
    import Glibc
#endif

/// An operating-system error, typed by errno, with the call that produced it.
public struct SysError: Error, CustomStringConvertible, Equatable, Sendable {
    public let errno: Int32
    public let call: String
    public init(errno: Int32, call: String) {
        self.errno = errno
        self.call = call
    }
    public var description: String { "\(call): \(String(cString: strerror(errno)))" }
}

/// Runs a syscall, retrying on EINTR and typing failures.
@inline(__always)
public func syscall<T: FixedWidthInteger>(_ call: String, _ body: () -> T) throws(SysError) -> T {
    while true {
        let result = body()
        if result >= 0 { return result }
        let code = Glibc.errno
        if code == EINTR { continue }
        precondition(code != EFAULT && code != EBADF, "\(call): impossible errno \(code) (a bug in vsa)")
        throw SysError(errno: code, call: call)
    }
}

public enum Posix {
    public static func open(_ path: String, flags: Int32, mode: mode_t = 0o644) throws(SysError) -> Int32 {
        try syscall("open \(path)") { Glibc.open(path, flags, mode) }
    }

    public static func close(_ fd: Int32) {
        _ = Glibc.close(fd)
    }

    public static func fileSize(fd: Int32) throws(SysError) -> (sizeBytes: UInt64, isBlockDevice: Bool) {
        var st = stat()
        _ = try syscall("fstat") { fstat(fd, &st) }
        if (st.st_mode & S_IFMT) == S_IFBLK {
            var size: UInt64 = 0
            // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
            let request: UInt = 0x8008_1272
            _ = try syscall("ioctl BLKGETSIZE64") { ioctl(fd, request, &size) }
            return (size, true)
        }
        return (UInt64(st.st_size), false)
    }

    public static func ftruncate(_ fd: Int32, sizeBytes: UInt64) throws(SysError) {
        _ = try syscall("ftruncate") { Glibc.ftruncate(fd, off_t(sizeBytes)) }
    }

    /// Reads exactly `count` bytes unless end of file comes first; returns bytes read.
    public static func pread(_ fd: Int32, _ pointer: UnsafeMutableRawPointer, count: Int, offset: UInt64) throws(SysError) -> Int {
        var done = 0
        while done < count {
            let n = try syscall("pread") { Glibc.pread(fd, pointer + done, count - done, off_t(offset) + off_t(done)) }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// A scatter read: fills the `count` buffers of `vectors` in turn from `offset`, continuing short reads. The
    /// vectors are consumed (advanced past what was read). Returns the bytes read, fewer only at end of file.
    public static func preadv(_ fd: Int32, _ vectors: UnsafeMutablePointer<iovec>, count: Int, offset: UInt64) throws(SysError) -> Int {
        var done = 0
        var first = 0
        while first < count {
            // At most UIO_MAXIOV (1024) buffers a call.
            let n = try syscall("preadv") { Glibc.preadv(fd, vectors + first, Int32(min(count - first, 1024)), off_t(offset) + off_t(done)) }
            if n == 0 { break }
            done += n
            first = advance(vectors, first: first, count: count, by: n)
        }
        return done
    }

    /// A gather write: writes the `count` buffers of `vectors` in turn from `offset`, continuing short writes. The
    /// vectors are consumed (advanced past what was written).
    public static func pwritev(_ fd: Int32, _ vectors: UnsafeMutablePointer<iovec>, count: Int, offset: UInt64) throws(SysError) {
        var done = 0
        var first = 0
        while first < count {
            // At most UIO_MAXIOV (1024) buffers a call.
            let n = try syscall("pwritev") { Glibc.pwritev(fd, vectors + first, Int32(min(count - first, 1024)), off_t(offset) + off_t(done)) }
            // Nothing written and no error: the device takes no more (never spin on it).
            guard n > 0 else { throw SysError(errno: EIO, call: "pwritev wrote nothing") }
            done += n
            first = advance(vectors, first: first, count: count, by: n)
        }
    }

    /// Moves a vector list past `bytes` transferred from entry `first` on: whole entries are skipped, a partly done
    /// one starts where the transfer stopped. Returns the first entry with bytes left (`count` when none).
    public static func advance(_ vectors: UnsafeMutablePointer<iovec>, first: Int, count: Int, by bytes: Int) -> Int {
        var i = first
        var left = bytes
        while i < count && left >= vectors[i].iov_len {
            left -= vectors[i].iov_len
            i += 1
        }
        if i < count && left > 0 {
            vectors[i].iov_base = vectors[i].iov_base! + left
            vectors[i].iov_len -= left
        }
        return i
    }

    public static func pwrite(_ fd: Int32, _ pointer: UnsafeRawPointer, count: Int, offset: UInt64) throws(SysError) {
        var done = 0
        while done < count {
            let n = try syscall("pwrite") { Glibc.pwrite(fd, pointer + done, count - done, off_t(offset) + off_t(done)) }
            // Nothing written and no error: the device takes no more (never spin on it).
            guard n > 0 else { throw SysError(errno: EIO, call: "pwrite wrote nothing") }
            done += n
        }
    }

    /// BLKZEROOUT on a block device; false when the device cannot (the caller writes zeroes).
    public static func zeroOut(fd: Int32, offsetBytes: UInt64, count: UInt64) -> Bool {
        var range: (UInt64, UInt64) = (offsetBytes, count)
        // BLKZEROOUT = _IO(0x12, 127)
        return ioctl(fd, 0x127F, &range) == 0
    }

    public static func fsync(_ fd: Int32) throws(SysError) {
        _ = try syscall("fsync") { Glibc.fsync(fd) }
    }

    /// fdatasync: the file's data (and what reading it back needs) on stable storage.
    public static func fdatasync(_ fd: Int32) throws(SysError) {
        _ = try syscall("fdatasync") { Glibc.fdatasync(fd) }
    }

    /// Takes an exclusive, non-blocking advisory lock; returns false when another process holds it.
    public static func tryLockExclusive(_ fd: Int32) throws(SysError) -> Bool {
        while true {
            if flock(fd, LOCK_EX | LOCK_NB) == 0 { return true }
            let code = Glibc.errno
            if code == EINTR { continue }
            if code == EWOULDBLOCK { return false }
            throw SysError(errno: code, call: "flock")
        }
    }

    /// Page-aligned, zeroed memory that is never freed by ARC: arenas live for the life of the mount.
    public static func allocateAligned(bytes: Int, alignment: Int = 4096) -> UnsafeMutableRawPointer {
        var pointer: UnsafeMutableRawPointer? = nil
        let rc = posix_memalign(&pointer, alignment, max(bytes, alignment))
        precondition(rc == 0 && pointer != nil, "out of memory allocating \(bytes) bytes")
        memset(pointer!, 0, max(bytes, alignment))
        return pointer!
    }

    public static func free(_ pointer: UnsafeMutableRawPointer) { Glibc.free(pointer) }

    /// Puts fresh pages under the whole pages covering [pointer, pointer + count), keeping the bytes outside that range.
    /// For a buffer a stuck direct read still targets: the kernel pinned the old pages, so when the read completes at
    /// last it fills those, not memory the array has reused. (Arenas are page-aligned, whole pages.)
    public static func replacePages(covering pointer: UnsafeMutableRawPointer, count: Int) {
        let page = 4096
        let start = UInt(bitPattern: pointer) & ~UInt(page - 1)
        let end = (UInt(bitPattern: pointer) + UInt(count) + UInt(page - 1)) & ~UInt(page - 1)
        let length = Int(end - start)
        let base = UnsafeMutableRawPointer(bitPattern: start)!
        let keep = UnsafeMutableRawPointer.allocate(byteCount: length, alignment: page)
        defer { keep.deallocate() }
        keep.copyMemory(from: base, byteCount: length)
        let mapped = mmap(base, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
        precondition(mapped == base, "mmap MAP_FIXED over a buffer failed: \(errnoDescription(Glibc.errno))")
        let head = Int(UInt(bitPattern: pointer) - start)
        base.copyMemory(from: keep, byteCount: head)
        let tail = head + count
        (base + tail).copyMemory(from: keep + tail, byteCount: length - tail)
    }

    /// Seconds on the monotonic clock (for deadlines; never goes back).
    public static func monotonicSeconds() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }

    /// The monotonic clock in nanoseconds (the vDSO: no system call), for latencies.
    @inline(__always)
    public static func monotonicNanoseconds() -> UInt64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return UInt64(t.tv_sec) &* 1_000_000_000 &+ UInt64(t.tv_nsec)
    }

    public static var processID: Int32 { getpid() }
    public static var userID: UInt32 { getuid() }
    public static var groupID: UInt32 { getgid() }

    public static func isProcessAlive(_ pid: Int32) -> Bool {
        kill(pid, 0) == 0 || Glibc.errno == EPERM
    }

    /// Blocks SIGINT, SIGTERM and SIGHUP for this thread and the threads it starts, so that `awaitStopSignal` takes
    /// them (a foreground loop that ends cleanly between two steps, not in the middle of one).
    public static func blockStopSignals() {
        var set = stopSignals()
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Waits up to `seconds` for SIGINT, SIGTERM or SIGHUP (blocked first with `blockStopSignals`): true if one came.
    public static func awaitStopSignal(seconds: Double) -> Bool {
        var set = stopSignals()
        let bounded = min(max(seconds, 0), 3600)
        var timeout = timespec(tv_sec: Int(bounded), tv_nsec: Int((bounded - bounded.rounded(.down)) * 1e9))
        return sigtimedwait(&set, nil, &timeout) > 0
    }

    private static func stopSignals() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&set, signal) }
        return set
    }

    public static func errnoDescription(_ code: Int32) -> String { String(cString: strerror(code)) }

    /// syncfs(2) on the file system holding `path`: the kernel writes back every dirty page it caches for it. Glibc
    /// declares syncfs only under _GNU_SOURCE, so it is looked up by name. Returns 0 or an errno.
    public static func syncFileSystem(path: String) -> Int32 {
        typealias SyncFS = @convention(c) (Int32) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "syncfs") else { return ENOSYS }
        let fd = Glibc.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return errno }
        defer { Glibc.close(fd) }
        return unsafeBitCast(symbol, to: SyncFS.self)(fd) == 0 ? 0 : errno
    }

    /// Whether `text` is a numeric IPv4 address (inet_pton: four decimal parts, nothing else).
    public static func isIPv4Address(_ text: String) -> Bool {
        var address = in_addr()
        return inet_pton(AF_INET, text, &address) == 1
    }

    /// Whether `text` is a numeric IPv6 address, without brackets.
    public static func isIPv6Address(_ text: String) -> Bool {
        var address = in6_addr()
        return inet_pton(AF_INET6, text, &address) == 1
    }
}

/// O_DIRECT (0o40000 on x86-64 and arm64 Linux); Glibc hides it without _GNU_SOURCE.
public let openDirectFlag: Int32 = 0o40000
