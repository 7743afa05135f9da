// RemoteImage: the R2 side of one replicated LUN, an NBD export of the LUN's exact size on another machine (another
// vsa's LUN file served by nbdkit or qemu-nbd, or any disk). A few connections, each used by one writer at a time:
// a synchronous replica's host write holds one from sending its data to the remote's answer, so writers on
// different FUSE threads go in parallel. Every write is FUA: on the remote's stable storage when it is answered,
// whichever connection carried it (no multi-conn needed).
import ArrayModel
import Foundation
import SysNBD
import SysPosix

#if canImport(Glibc)
    import Glibc
#endif

final class RemoteImage: @unchecked Sendable {
    let uri: String
    let sizeBytes: UInt64
    /// The export must be at least `sizeBytes` (a journal), not exactly (an image).
    private var sizeIsMinimum = false
    /// How long one remote write (or a connect) may take before the link is taken as down.
    let deadlineSeconds: Double
    private let connections: [ConnectionSlot]
    private let next = Locked(0)

    /// One connection and the lock of the writer using it (held from `send` to `finish`).
    private final class ConnectionSlot: @unchecked Sendable {
        var connection: NBDConnection?
        /// The slot's connection, made again if there is none or it died (nil when it cannot be made). Held: the lock.
        func live(uri: String, deadlineSeconds: Double) -> NBDConnection? {
            if connection == nil || connection!.isDead {
                connection = try? NBDConnection(uri: uri, deadlineSeconds: Posix.monotonicSeconds() + deadlineSeconds)
            }
            return connection
        }
        private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        init(_ connection: NBDConnection?) {
            self.connection = connection
            pthread_mutex_init(mutex, nil)
        }
        deinit {
            pthread_mutex_destroy(mutex)
            mutex.deallocate()
        }
        func lock() { pthread_mutex_lock(mutex) }
        func unlock() { pthread_mutex_unlock(mutex) }
    }

    /// Connects once (the size and that it takes writes), waiting `connectSeconds` (default: the deadline); the other
    /// connections are made as needed.
    init(uri: String, deadlineSeconds: Double, connectSeconds: Double? = nil, connectionCount: Int = 4) throws(VSAError) {
        self.uri = uri
        self.deadlineSeconds = deadlineSeconds
        let first: NBDConnection
        do { first = try NBDConnection(uri: uri, deadlineSeconds: Posix.monotonicSeconds() + min(deadlineSeconds, connectSeconds ?? deadlineSeconds)) } catch {
            throw VSAError(error.message)
        }
        guard !first.readOnly else { throw VSAError("\(uri) is served read-only; a replica's target must take writes") }
        sizeBytes = first.sizeBytes
        connections = (0..<max(1, connectionCount)).map { ConnectionSlot($0 == 0 ? first : nil) }
    }

    /// A target that does not answer now (a mount while the link is down): it must come back with `sizeBytes`
    /// (`answers`), and connections are made when it does (a URI that is not NBD's never connects).
    /// `atLeast`: a journal, which may be larger than it needs.
    init(unreachable uri: String, sizeBytes: UInt64, deadlineSeconds: Double, connectionCount: Int = 4, atLeast: Bool = false) {
        self.uri = uri
        self.deadlineSeconds = deadlineSeconds
        self.sizeBytes = sizeBytes
        sizeIsMinimum = atLeast
        connections = (0..<max(1, connectionCount)).map { _ in ConnectionSlot(nil) }
    }

    /// Commands in flight on a connection held for them (`send` ... `finish`): libnbd numbers a handle's commands
    /// in order, so they are the cookies `first...last`.
    struct Pending {
        let slot: Int
        let first: Int64
        let last: Int64
    }

    /// Sends a write (FUA) or a zeroed range (`source` nil: an NBD zero and a flush, or zeroes written where the
    /// server cannot), holding a connection until `finish`. nil when no connection could be made or a command could
    /// not be sent (the link is down).
    func send(offsetBytes: UInt64, count: Int, from source: UnsafeRawPointer?) -> Pending? {
        let slot = pick()
        connections[slot].lock()
        guard let c = connections[slot].live(uri: uri, deadlineSeconds: deadlineSeconds) else {
            connections[slot].unlock()
            return nil
        }
        var first: Int64 = -1
        var last: Int64 = -1
        func sent(_ cookie: Int64) {
            if first < 0 { first = cookie }
            last = cookie
        }
        do throws(NBDError) {
            if let source {
                sent(try c.queueWrite(from: source, count: count, offsetBytes: offsetBytes, durable: true))
            } else if c.canZero {
                sent(try c.queueZero(count: UInt64(count), offsetBytes: offsetBytes))
                sent(try c.queueFlush())
            } else {
                var done = 0
                while done < count {
                    let step = min(RemoteImage.zeroBytes, count - done)
                    sent(try c.queueWrite(from: RemoteImage.zeroes, count: step, offsetBytes: offsetBytes + UInt64(done), durable: true))
                    done += step
                }
            }
        } catch {
            connections[slot].connection = nil
            connections[slot].unlock()
            return nil
        }
        return Pending(slot: slot, first: first, last: last)
    }

    /// What a server that cannot write zeroes is sent instead (shared, never written).
    private static let zeroBytes = 1 << 20
    nonisolated(unsafe) private static let zeroes: UnsafeRawPointer = {
        let p = Posix.allocateAligned(bytes: zeroBytes)
        memset(p, 0, zeroBytes)
        return UnsafeRawPointer(p)
    }()

    /// Waits for sent commands under the deadline and lets their connection go; whether the remote has them all (on
    /// a server without FUA, a flush on the same connection follows).
    func finish(_ pending: Pending) -> Bool {
        let slot = pending.slot
        defer { connections[slot].unlock() }
        guard let c = connections[slot].connection else { return false }
        let deadline = Posix.monotonicSeconds() + deadlineSeconds
        var ok = c.waitFor(pending.first, through: pending.last, deadlineSeconds: deadline)
        if ok && !c.canFUA, let flush = try? c.queueFlush() {
            ok = c.waitAll(deadlineSeconds: deadline) && c.result(flush) == 0
        }
        // A connection that failed a command is not used again: the next send makes a new one.
        if !ok { connections[slot].connection = nil }
        return ok
    }

    /// A write the caller waits for: `send` and `finish`.
    func write(offsetBytes: UInt64, count: Int, from source: UnsafeRawPointer?) -> Bool {
        guard let pending = send(offsetBytes: offsetBytes, count: count, from: source) else { return false }
        return finish(pending)
    }

    /// Writes runs `next` gives (offset, bytes, from) on one connection held throughout, at most 64 commands and
    /// 8 MiB in flight (each wait is for those, under the deadline: a slow link that moves 8 MiB per deadline keeps
    /// going), then flushes that connection: true when they are all on the remote's stable storage. An asynchronous
    /// group's delta sets go this way (not FUA each: one flush covers a set).
    func writeRuns(_ next: () -> (UInt64, Int, UnsafeRawPointer)?) -> Bool {
        let slot = connections[pick()]
        slot.lock()
        defer { slot.unlock() }
        guard let c = slot.live(uri: uri, deadlineSeconds: deadlineSeconds) else { return false }
        var first: Int64 = -1
        var last: Int64 = -1
        var bytesInFlight = 0
        /// Waits for the commands queued since the last wait; false if one failed or the deadline passed.
        func drain() -> Bool {
            bytesInFlight = 0
            guard first >= 0 else { return true }
            defer { first = -1 }
            return c.waitFor(first, through: last, deadlineSeconds: Posix.monotonicSeconds() + deadlineSeconds)
        }
        func queue(_ cookie: Int64) {
            if first < 0 { first = cookie }
            last = cookie
        }
        var ok = true
        do throws(NBDError) {
            runs: while let (offset, bytes, from) = next() {
                var done = 0
                while done < bytes {
                    let step = min(4 << 20, bytes - done)
                    queue(try c.queueWrite(from: from + done, count: step, offsetBytes: offset + UInt64(done), durable: false))
                    done += step
                    bytesInFlight += step
                    if c.inFlight >= 64 || bytesInFlight >= 8 << 20, !drain() {
                        ok = false
                        break runs
                    }
                }
            }
            if ok { ok = drain() }
            if ok && c.canFlush {
                queue(try c.queueFlush())
                ok = drain()
            }
        } catch {
            ok = false
        }
        // A connection that failed a command is not used again: the next user makes a new one.
        if !ok { slot.connection = nil }
        return ok
    }

    /// Reads from the remote (a check, not a data path: failover and tests); false if it failed.
    func read(offsetBytes: UInt64, count: Int, into target: UnsafeMutableRawPointer) -> Bool {
        let slot = connections[pick()]
        slot.lock()
        defer { slot.unlock() }
        guard let c = slot.live(uri: uri, deadlineSeconds: deadlineSeconds) else { return false }
        let ok = c.read(into: target, count: count, offsetBytes: offsetBytes, deadlineSeconds: Posix.monotonicSeconds() + deadlineSeconds) == 0
        if !ok { slot.connection = nil }
        return ok
    }

    /// Whether the remote answers now (a new connection made and dropped): the link monitor's probe.
    func answers() -> Bool {
        guard let c = try? NBDConnection(uri: uri, deadlineSeconds: Posix.monotonicSeconds() + min(deadlineSeconds, 5)) else { return false }
        return (c.sizeBytes == sizeBytes || (sizeIsMinimum && c.sizeBytes > sizeBytes)) && !c.readOnly
    }

    /// Connections are taken round robin: a writer waits for the one it is given, so writers spread over all of
    /// them.
    private func pick() -> Int {
        next.withLock { n in
            n = (n + 1) % connections.count
            return n
        }
    }
}
