// SysNBD: a thin Swift face on libnbd, the NBD client library (remote drives, issue 15). One `NBDConnection` is one
// connection to one export, owned by one thread at a time, like an `IORing`. Commands are asynchronous: a queue call
// hands libnbd the command and returns its cookie; `wait` drives the connection (libnbd's own poll loop on its socket)
// until every command given is done or a deadline passes; `result` says how each one ended. No callbacks, no thread,
// and nothing allocated here per command (libnbd keeps its own small record of each command in flight).
import CNBD
import SysPosix

#if canImport(Glibc)
    import Glibc
#endif

/// What libnbd said, in one line.
public struct NBDError: Error, CustomStringConvertible, Sendable {
    public let message: String
    /// The errno libnbd reported (0: none).
    public let errno: Int32
    public var description: String { message }
    public init(message: String, errno: Int32) {
        self.message = message
        self.errno = errno
    }

    /// libnbd's last error on this thread, with what was being done.
    static func last(_ doing: String) -> NBDError {
        let text = nbd_get_error().map { String(cString: $0) } ?? "unknown error"
        return NBDError(message: "\(doing): \(text)", errno: nbd_get_errno())
    }
}

public final class NBDConnection {
    private let handle: OpaquePointer
    public let uri: String
    public let sizeBytes: UInt64
    /// The server takes writes that are durable when they complete (FUA), flushes, and several connections to the
    /// same export that see each other's writes (multi-conn).
    public let canFUA: Bool
    public let canFlush: Bool
    /// The server writes zeroes without data sent (NBD_CMD_WRITE_ZEROES).
    public let canZero: Bool
    public let canMultiConn: Bool
    public let readOnly: Bool
    /// Each connection's socket receive buffer (SO_RCVBUF): room for several of the largest replies a drive gets.
    static let receiveBufferBytes: Int32 = 4 << 20

    /// Connects to `uri`: `nbd://HOST[:PORT]/EXPORT` or `nbd+unix:///EXPORT?socket=PATH`. Only those two schemes
    /// are taken (no TLS, no URI that names a local file to run): a drive's URI is input. The connection and the
    /// server's handshake are driven here until `deadlineSeconds` (monotonic; 0: none): a host that does not answer,
    /// or a server that never greets, cannot hold the caller past it.
    public init(uri: String, deadlineSeconds: Double = 0) throws(NBDError) {
        guard NBDConnection.isNBDURI(uri) else {
            throw NBDError(message: "\(uri.prefix(200)) is not an NBD URI (nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH)", errno: EINVAL)
        }
        guard let h = nbd_create() else { throw NBDError.last("nbd_create") }
        handle = h
        self.uri = uri
        func fail(_ doing: String) -> NBDError {
            let error = NBDError.last(doing)
            nbd_close(h)
            return error
        }
        // libnbd zeroes every read buffer before the read by default (a guard for callers that use a failed read's
        // buffer): a memset of every byte read, 7% of the daemon's time in 1M reads. A failed read's buffer is never
        // used here (the strip comes from another copy or parity, or the host gets EIO).
        guard nbd_set_uri_allow_local_file(h, false) == 0, nbd_set_uri_allow_tls(h, LIBNBD_TLS_DISABLE) == 0, nbd_set_pread_initialize(h, false) == 0
        else {
            throw fail("setting up the connection")
        }
        guard nbd_aio_connect_uri(h, uri) == 0 else { throw fail("cannot connect to \(uri.prefix(200))") }
        while nbd_aio_is_connecting(h) == 1 {
            var timeout: Int32 = 1000
            if deadlineSeconds > 0 {
                let left = deadlineSeconds - Posix.monotonicSeconds()
                guard left > 0 else {
                    nbd_close(h)
                    throw NBDError(message: "cannot connect to \(uri.prefix(200)): no answer within the deadline", errno: ETIMEDOUT)
                }
                timeout = Int32(min(1000, max(1, left * 1000)))
            }
            guard nbd_poll(h, timeout) >= 0 else { throw fail("cannot connect to \(uri.prefix(200))") }
        }
        guard nbd_aio_is_ready(h) == 1 else { throw fail("cannot connect to \(uri.prefix(200))") }
        // A receive buffer that holds several replies whole. Left to autotuning, a connection that mostly carried
        // small replies keeps a window smaller than one large reply: with 128 KiB strips the server sent 80 KiB of a
        // strip and waited for the window, and 1M reads of a RAID-5 over NBD drives fell from 1,079 to 333 MiB/s (p99
        // 107 ms). The kernel caps it at net.core.rmem_max. No Nagle either: a request (28 bytes) must not wait for
        // the ACK of the one before it. Unix sockets refuse TCP_NODELAY, harmlessly.
        let fd = nbd_aio_get_fd(h)
        if fd >= 0 {
            var receiveBytes = Self.receiveBufferBytes
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &receiveBytes, socklen_t(MemoryLayout<Int32>.size))
            var on: Int32 = 1
            _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
        }
        let size = nbd_get_size(h)
        guard size >= 0 else { throw fail("cannot read the size of \(uri.prefix(200))") }
        sizeBytes = UInt64(size)
        canFUA = nbd_can_fua(h) == 1
        canFlush = nbd_can_flush(h) == 1
        canZero = nbd_can_zero(h) == 1
        canMultiConn = nbd_can_multi_conn(h) == 1
        readOnly = nbd_is_read_only(h) == 1
    }

    deinit {
        // A connection given up with commands still unanswered (a timeout, a partition) is closed abortively: its
        // socket is reset and what it still holds to send is dropped. A plain close would leave the kernel sending
        // it once the link is back: a write the caller already took as failed (and did again, or superseded, on
        // another connection) would land late over newer data.
        if nbd_aio_in_flight(handle) > 0 || nbd_aio_is_dead(handle) == 1 {
            let fd = nbd_aio_get_fd(handle)
            if fd >= 0 {
                var abort = linger(l_onoff: 1, l_linger: 0)
                setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort, socklen_t(MemoryLayout<linger>.size))
            }
        }
        nbd_close(handle)
    }

    /// Queues a read of `count` bytes at `offsetBytes` into `pointer` (which must stay valid until it completes).
    public func queueRead(into pointer: UnsafeMutableRawPointer, count: Int, offsetBytes: UInt64) throws(NBDError) -> Int64 {
        let cookie = vsa_nbd_aio_pread(handle, pointer, count, offsetBytes)
        guard cookie >= 0 else { throw NBDError.last("read of \(count) bytes at \(offsetBytes)") }
        return cookie
    }

    /// Queues a write; `durable`: complete only once it is on stable storage (FUA; a flush after it where the server has
    /// no FUA is the caller's to queue).
    public func queueWrite(from pointer: UnsafeRawPointer, count: Int, offsetBytes: UInt64, durable: Bool) throws(NBDError) -> Int64 {
        let cookie = vsa_nbd_aio_pwrite(handle, pointer, count, offsetBytes, durable && canFUA ? vsa_nbd_flag_fua() : 0)
        guard cookie >= 0 else { throw NBDError.last("write of \(count) bytes at \(offsetBytes)") }
        return cookie
    }

    /// Queues a write of zeroes (the server may punch a hole), as a hole punched in a file drive.
    public func queueZero(count: UInt64, offsetBytes: UInt64) throws(NBDError) -> Int64 {
        let cookie = vsa_nbd_aio_zero(handle, count, offsetBytes)
        guard cookie >= 0 else { throw NBDError.last("zero of \(count) bytes at \(offsetBytes)") }
        return cookie
    }

    public func queueFlush() throws(NBDError) -> Int64 {
        let cookie = vsa_nbd_aio_flush(handle)
        guard cookie >= 0 else { throw NBDError.last("flush") }
        return cookie
    }

    /// The connection is gone (the server closed it, or it broke): nothing more goes over it.
    public var isDead: Bool { nbd_aio_is_dead(handle) == 1 || nbd_aio_is_closed(handle) == 1 }

    /// Commands still waiting for the server's answer.
    public var inFlight: Int { Int(max(0, nbd_aio_in_flight(handle))) }

    /// Drives the connection until no command waits for the server, or `deadlineSeconds` (monotonic; 0: none)
    /// passes. Returns false when the deadline passed or the connection died first; `result` then says how each
    /// command ended (ETIMEDOUT: not yet).
    public func waitAll(deadlineSeconds: Double) -> Bool {
        while nbd_aio_in_flight(handle) > 0 {
            var timeout: Int32 = -1
            if deadlineSeconds > 0 {
                let left = deadlineSeconds - Posix.monotonicSeconds()
                if left <= 0 { return false }
                timeout = Int32(min(1000, max(1, left * 1000)))
            }
            if nbd_poll(handle, timeout) < 0 { return false }
        }
        return true
    }

    /// Waits (as `waitAll`) for commands `first...last` (libnbd numbers a handle's commands in order; `first` < 0:
    /// none) and retires them: true when every one succeeded in time.
    public func waitFor(_ first: Int64, through last: Int64, deadlineSeconds: Double) -> Bool {
        var ok = waitAll(deadlineSeconds: deadlineSeconds)
        if first >= 0 {
            for cookie in first...last where result(cookie) != 0 { ok = false }
        }
        return ok
    }

    /// The schemes a connection is made to: `nbd://` and `nbd+unix://` (no TLS, nothing that names a program to run).
    public static func isNBDURI(_ uri: String) -> Bool { uri.hasPrefix("nbd://") || uri.hasPrefix("nbd+unix://") }

    /// Reads `count` bytes at `offsetBytes` into `target` and waits for them until `deadlineSeconds` (monotonic; 0:
    /// none): 0, or an errno (ETIMEDOUT when the answer did not come in time). For probes and checks, not the data
    /// path (that queues many and waits once). After a failure the connection is to be dropped: an answer that comes
    /// late would still land in `target`.
    public func read(into target: UnsafeMutableRawPointer, count: Int, offsetBytes: UInt64, deadlineSeconds: Double) -> Int32 {
        let cookie: Int64
        do { cookie = try queueRead(into: target, count: count, offsetBytes: offsetBytes) } catch { return error.errno == 0 ? EIO : error.errno }
        guard waitAll(deadlineSeconds: deadlineSeconds) else { return isDead ? ENOTCONN : ETIMEDOUT }
        return result(cookie)
    }

    /// How command `cookie` ended: 0, or an errno (ENOTCONN when the connection died, ETIMEDOUT when it is not done).
    /// Retires the command.
    public func result(_ cookie: Int64) -> Int32 {
        switch nbd_aio_command_completed(handle, UInt64(cookie)) {
        case 1: return 0
        case 0: return ETIMEDOUT
        default:
            let e = nbd_get_errno()
            return e == 0 ? EIO : e
        }
    }
}
