// DriveIO: one thread's batch of drive operations over its own io_uring. Callers queue reads, writes and flushes
// against drives, then `submit()` hands the batch to the kernel in one call and reaps every completion. Short
// transfers are continued; an error fails the operation and the drive it was for (an operating error becomes array
// state). The operation table is preallocated: queuing allocates nothing.
import ArrayModel
import Foundation
import SysNBD
import SysPosix
import SysURing

public final class DriveIO {
    private struct Operation {
        var kind: UInt8 = 0  // 0 read, 1 write, 2 flush, 3 punch, 4 durable write, 5 scatter read, 6 gather write
        var driveIndex: Int32 = 0
        var pointer: UnsafeMutableRawPointer? = nil
        var count: Int = 0
        var offsetBytes: UInt64 = 0
        var done: Int = 0
        /// Its last completion was reaped (or it never went to the kernel).
        var finished = true
        /// A scatter read's or gather write's buffers (the caller's, consumed as they are done) and the first one with
        /// bytes still to come.
        var vectors: UnsafeMutablePointer<iovec>? = nil
        var vectorCount = 0
        var vectorFirst = 0
        var isRead: Bool { kind == 0 || kind == 5 }
    }

    /// How long one batch may wait for a drive before the drives still owing completions are failed
    /// (`-o drive_timeout=SECONDS`, default 30; 0 waits forever). Set once at mount, before any I/O.
    nonisolated(unsafe) public static var deadlineSeconds: Double = 30
    /// The drive deadline from now, as a monotonic time (0: none), for waits on remote drives.
    static func deadlineFromNow() -> Double { deadlineSeconds > 0 ? Posix.monotonicSeconds() + deadlineSeconds : 0 }
    /// Rings given up on with operations still in the kernel: kept (never torn down) so nothing the kernel still
    /// holds goes away under it.
    nonisolated(unsafe) private static var abandonedRings: [IORing] = []
    private static let abandonLock = NSLock()

    private var ring: IORing
    /// No ring could be made after a deadline gave the last one up (the kernel out of memory for 10 s): operations
    /// run synchronously, without a deadline, until a later batch gets a new ring. Slower, never a trap.
    private var ringless = false
    private var drives: [Drive]
    private var operations: [Operation]
    private var operationCount = 0
    public let capacity: Int
    /// Operations queued since the last submit.
    public var queuedCount: Int { operationCount }

    public init(drives: [Drive], capacity: Int = 256) throws(SysError) {
        self.drives = drives
        self.capacity = capacity
        self.connections = Array(repeating: nil, count: drives.count)
        self.remoteCommands.reserveCapacity(capacity * 4)
        self.retryTags.reserveCapacity(capacity)
        self.retrying.reserveCapacity(capacity)
        self.ring = try IORing(entries: UInt32(min(capacity, 4096)).nextPowerOfTwo)
        self.operations = Array(repeating: Operation(), count: capacity)
        self.driveDelayMicros = Array(repeating: 0, count: drives.count)
        self.heldTags.reserveCapacity(capacity)
    }

    /// Puts `drive` in position `index` (a new drive taking a failed member's place). Between batches only.
    public func replace(index: Int, with drive: Drive) {
        precondition(operationCount == 0, "DriveIO: drive replaced in the middle of a batch")
        drives[index] = drive
        connections[index] = nil
    }
    /// Drives whose zero-range (hole punch) was refused in the last batch: the caller writes zeroes instead.
    public private(set) var zeroUnsupportedDrives: UInt64 = 0
    /// Drives whose synchronous page-cache I/O failed since the last submit.
    private var pageCacheFailures: UInt64 = 0
    /// Remote drives (NBD, issue 15): this DriveIO's own connection to each, made at its first operation and again
    /// after one failed; the commands of this batch on them (preallocated room: queuing allocates nothing); the drives
    /// whose durable writes need a flush after them (a server without FUA).
    private var connections: [NBDConnection?]
    private struct RemoteCommand {
        var connection: NBDConnection
        var cookie: Int64
        var tag: UInt64
        var driveIndex: Int32
        var isRead: Bool
    }
    private var remoteCommands: [RemoteCommand] = []
    /// Operations whose connection was lost (or could not be made): sent again on a new connection, with backoff,
    /// until the drive deadline. `retrying` is the list being worked through (two preallocated lists, swapped).
    private var retryTags: [UInt64] = []
    private var retrying: [UInt64] = []
    private var flushAfter: UInt64 = 0
    /// When this batch's first remote command was sent (monotonic seconds; 0: none yet): each remote drive's round
    /// trip is measured from it to its last answer.
    private var remoteBatchStart: Double = 0
    /// Where a new connection's identity check reads (`holds`), allocated at the first one.
    private var identityBuffer: UnsafeMutableRawPointer? = nil

    deinit { if let identityBuffer { Posix.free(identityBuffer) } }
    /// What a failed read does to its drive in the next batch (one batch: `submit` puts it back to `.failDrive`).
    /// The back end's data reads ask for `.count` when the data can come from redundancy and go back to the drive,
    /// as md does with a read error: a bad sector is rewritten, and the drive is failed only when it keeps failing
    /// (more than `readErrorBudget` such errors, a count halved every hour; md's max_read_errors is 20 too). Writes, flushes, a shrunk drive and
    /// a drive that stopped answering fail it as before.
    public enum ReadErrors: Sendable {
        /// The drive is failed (every caller that cannot repair).
        case failDrive
        /// Reported in `lastReadErrors` (and in `submit`'s mask), the drive left online, nothing counted: a fast path
        /// that only gives up, for a repairing read to follow.
        case report
        /// As `.report`, and counted on the drive; past the budget, the drive is failed.
        case count
    }
    public var readErrors: ReadErrors = .failDrive
    public static let readErrorBudget: UInt64 = 20
    /// Drives whose reads failed in the last batch and were left online (`.report`, `.count`).
    public private(set) var lastReadErrors: UInt64 = 0
    /// Read operations that failed in this batch, by drive (before `submit` decides what becomes of their drives).
    private var failedReads: UInt64 = 0
    /// Injected faults (`DriveFaults`): operations held by a drive that stopped answering, and the latency each drive
    /// adds to this batch. Used only while a drive has a fault rule.
    private var heldTags: [UInt64] = []
    private var driveDelayMicros: [UInt64]
    /// The largest of them (0: no drive in the batch has latency injected; the batch does not look further).
    private var batchDelayMicros: UInt64 = 0
    /// When the batch's first operation was queued, and which drives it reads, writes and flushes (bit per drive):
    /// each drive's latency histograms get the batch's time.
    private var batchBegan: UInt64 = 0
    private var batchReads: UInt64 = 0
    private var batchWrites: UInt64 = 0
    private var batchFlushes: UInt64 = 0

    private func append(_ op: Operation) {
        if operationCount == capacity { preconditionFailure("DriveIO: more than \(capacity) operations in one batch") }
        if operationCount == 0 {
            zeroUnsupportedDrives = 0
            batchBegan = Posix.monotonicNanoseconds()
        }
        let bit: UInt64 = 1 << UInt64(op.driveIndex)
        switch op.kind {
        case 0, 5: batchReads |= bit
        case 2: batchFlushes |= bit
        default: batchWrites |= bit
        }
        operations[operationCount] = op
        let tag = UInt64(operationCount)
        operationCount += 1
        issue(tag)
    }

    private func issue(_ tag: UInt64) {
        let op = operations[Int(tag)]
        let drive = drives[Int(op.driveIndex)]
        // A placeholder for a member missing from the folder has no descriptor: its operations fail here, never as a
        // syscall on fd -1. A drive failed meanwhile (by another director's deadline, say) is not asked again.
        if drive.isMissing || drive.state == .failed {
            pageCacheFailures |= 1 << UInt64(op.driveIndex)
            return
        }
        if drive.faults.isArmed {
            // Flushes are delayed and held like the rest, never failed (count 0); a zero range is a write.
            let write = op.kind == 1 || op.kind == 3 || op.kind == 4 || op.kind == 6
            switch drive.faults.decide(write: write, offset: op.offsetBytes, count: op.kind == 2 ? 0 : op.count) {
            case .proceed(let delay):
                let d = Int(op.driveIndex)
                driveDelayMicros[d] = max(driveDelayMicros[d], delay)
                batchDelayMicros = max(batchDelayMicros, delay)
            case .fail:
                failed(op)
                return
            case .hang:
                heldTags.append(tag)
                return
            }
        }
        if let uri = drive.remoteURI {
            issueRemote(tag, uri: uri)
            return
        }
        if (op.kind <= 1 || op.kind >= 4) && drive.copiesSynchronously {
            copyThroughPageCache(tag)
            return
        }
        if ringless {
            runWithoutRing(tag)
            return
        }
        if op.kind == 2, let injector = DriveFaultInjector.active, !drive.usesDirectIO {
            _ = injector.flushed(path: drive.path)
            return
        }
        // In the kernel from here on: unfinished until its completion is reaped (the deadline looks for these).
        operations[Int(tag)].finished = false
        switch op.kind {
        case 0: ring.queueRead(fd: drive.fd, into: op.pointer! + op.done, count: op.count - op.done, offsetBytes: op.offsetBytes + UInt64(op.done), tag: tag)
        case 1, 4:
            ring.queueWrite(
                fd: drive.fd, from: op.pointer! + op.done, count: op.count - op.done, offsetBytes: op.offsetBytes + UInt64(op.done), tag: tag,
                durable: op.kind == 4)
        case 2: ring.queueFsync(fd: drive.fd, dataOnly: !drive.isBlockDevice, tag: tag)
        case 5:
            ring.queueReadVector(
                fd: drive.fd, vectors: op.vectors! + op.vectorFirst, count: op.vectorCount - op.vectorFirst, offsetBytes: op.offsetBytes + UInt64(op.done),
                tag: tag)
        case 6:
            ring.queueWriteVector(
                fd: drive.fd, vectors: op.vectors! + op.vectorFirst, count: op.vectorCount - op.vectorFirst, offsetBytes: op.offsetBytes + UInt64(op.done),
                tag: tag)
        default: ring.queuePunchHole(fd: drive.fd, offsetBytes: op.offsetBytes, count: UInt64(op.count), tag: tag)
        }
    }

    /// An operation failed: a read is left to `readErrors` (`submit` decides its drive), anything else fails its drive
    /// at the end of the batch.
    private func failed(_ op: Operation) {
        if op.isRead { failedReads |= 1 << UInt64(op.driveIndex) } else { pageCacheFailures |= 1 << UInt64(op.driveIndex) }
    }

    /// An operation on a remote drive: one NBD command (a scatter read or gather write: one per buffer), sent at once
    /// on this DriveIO's connection to it; `reapRemote` waits for them in `submit`. A connection that cannot be made
    /// or taken fails the operation as a failed syscall would.
    private func issueRemote(_ tag: UInt64, uri: String, deadline given: Double? = nil, again: Bool = false) {
        let op = operations[Int(tag)]
        let d = Int(op.driveIndex)
        let bit: UInt64 = 1 << UInt64(d)
        var lost = false
        do throws(NBDError) {
            if connections[d] == nil {
                // Connecting is bounded by the drive deadline too: the director's thread waits no longer for it.
                let deadline = given ?? DriveIO.deadlineFromNow()
                lost = true
                let connection = try NBDConnection(uri: uri, deadlineSeconds: deadline)
                lost = false
                if let expected = drives[d].expectedIdentity, !holds(expected, on: connection, deadline: deadline) {
                    // Not this drive any more (a server restarted blank, another disk behind the URI): failed, never
                    // written; a rebuild onto it (vsa drive replace --with) is the way back.
                    drives[d].identityMismatches.add(1, ordering: .relaxed)
                    drives[d].linkRaw.store(RemoteLink.lost.rawValue, ordering: .relaxed)
                    pageCacheFailures |= bit
                    return
                }
                connections[d] = connection
                if again { drives[d].reconnects.add(1, ordering: .relaxed) }
                drives[d].linkRaw.store(RemoteLink.connected.rawValue, ordering: .relaxed)
            }
            let c = connections[d]!
            if remoteBatchStart == 0 { remoteBatchStart = Posix.monotonicSeconds() }
            func add(_ cookie: Int64) {
                remoteCommands.append(RemoteCommand(connection: c, cookie: cookie, tag: tag, driveIndex: op.driveIndex, isRead: op.isRead))
            }
            switch op.kind {
            case 0: add(try c.queueRead(into: op.pointer!, count: op.count, offsetBytes: op.offsetBytes))
            case 1, 4:
                // Each DriveIO has its own connection to the drive. A server without multi-conn promises a flush only
                // for writes on the same connection, and another director's flush must cover this one's writes: so
                // every write to such a server is durable when it completes (FUA, or a flush on this connection).
                let durable = op.kind == 4 || !c.canMultiConn
                add(try c.queueWrite(from: op.pointer!, count: op.count, offsetBytes: op.offsetBytes, durable: durable))
                if durable && !c.canFUA { flushAfter |= bit }
            case 2: if c.canFlush { add(try c.queueFlush()) }
            case 3:
                // A server that cannot write zeroes is a file system that cannot punch holes: the caller writes them.
                guard c.canZero else {
                    zeroUnsupportedDrives |= bit
                    return
                }
                add(try c.queueZero(count: UInt64(op.count), offsetBytes: op.offsetBytes))
            default:
                var at = op.offsetBytes
                for v in 0..<op.vectorCount {
                    let vector = op.vectors![v]
                    if op.kind == 5 {
                        add(try c.queueRead(into: vector.iov_base!, count: vector.iov_len, offsetBytes: at))
                    } else {
                        add(try c.queueWrite(from: vector.iov_base!, count: vector.iov_len, offsetBytes: at, durable: !c.canMultiConn))
                        if !c.canMultiConn && !c.canFUA { flushAfter |= bit }
                    }
                    at += UInt64(vector.iov_len)
                }
            }
            operations[Int(tag)].done = op.count
        } catch {
            // A connection that could not be made, or died under the command: tried again (`reapRemote`) until the
            // deadline. A refused command on a live connection fails as a failed syscall would.
            if lost || connections[d]?.isDead == true {
                if retryTags.last != tag { retryTags.append(tag) }
                drives[d].linkRaw.store(RemoteLink.reconnecting.rawValue, ordering: .relaxed)
            } else {
                failed(op)
            }
            connections[d] = nil
        }
    }

    /// Whether a new connection's drive holds `expected`: its first 8 KiB (both superblock copies) read once, into a
    /// buffer kept for it (connecting is not per I/O). False also when the read fails or does not finish in time.
    private func holds(_ expected: Drive.Identity, on connection: NBDConnection, deadline: Double) -> Bool {
        let span = 8192
        if identityBuffer == nil { identityBuffer = Posix.allocateAligned(bytes: span) }
        let buffer = identityBuffer!
        guard connection.sizeBytes >= UInt64(span), connection.read(into: buffer, count: span, offsetBytes: 0, deadlineSeconds: deadline) == 0
        else { return false }
        return expected.offsets.contains { offset in
            guard offset + UInt64(expected.bytes.count) <= UInt64(span) else { return false }
            return expected.bytes.withUnsafeBytes { memcmp(buffer + Int(offset), $0.baseAddress!, $0.count) == 0 }
        }
    }

    /// Waits for this batch's commands on remote drives, under the drive deadline. An operation whose connection
    /// was lost is sent again on a new one, after a pause that doubles (50 ms to 1 s), until the deadline (none: for as
    /// long as it takes, as a hung local drive is waited for). A drive whose commands failed otherwise, or that is not
    /// back by the deadline (counted as a timeout), is failed as a local drive would be (failed reads: as `readErrors`
    /// says), and its connection dropped. Returns the drives to fail.
    private func reapRemote() -> UInt64 {
        var failed: UInt64 = 0
        var broken: UInt64 = 0
        let deadline = DriveIO.deadlineFromNow()
        var pause: Double = 0.05
        while true {
            var waited: UInt64 = 0
            for command in remoteCommands {
                let bit: UInt64 = 1 << UInt64(command.driveIndex)
                if waited & bit != 0 { continue }
                waited |= bit
                let drive = drives[Int(command.driveIndex)]
                if command.connection.waitAll(deadlineSeconds: deadline) {
                    guard pause == 0.05 else { continue }  // a round trip, not a reconnection
                    // An upper bound where several remote drives share a batch (they are waited for in turn).
                    let micros = UInt64(max(0, (Posix.monotonicSeconds() - remoteBatchStart) * 1_000_000))
                    let before = drive.roundTripMicros.load(ordering: .relaxed)
                    drive.roundTripMicros.store(before == 0 ? micros : (before * 7 + micros) / 8, ordering: .relaxed)
                } else if deadline > 0 && Posix.monotonicSeconds() >= deadline && !command.connection.isDead {
                    drive.timeouts.add(1, ordering: .relaxed)
                    drive.linkRaw.store(RemoteLink.lost.rawValue, ordering: .relaxed)
                    failed |= bit
                    broken |= bit
                }
            }
            for command in remoteCommands where command.connection.result(command.cookie) != 0 {
                let d = Int(command.driveIndex)
                let bit: UInt64 = 1 << UInt64(d)
                if command.connection.isDead && failed & bit == 0 {
                    if retryTags.last != command.tag { retryTags.append(command.tag) }
                    if connections[d] === command.connection { connections[d] = nil }
                    continue
                }
                broken |= bit
                if command.isRead { failedReads |= bit } else { failed |= bit }
            }
            remoteCommands.removeAll(keepingCapacity: true)
            guard !retryTags.isEmpty else { break }
            swap(&retryTags, &retrying)
            if deadline > 0 && Posix.monotonicSeconds() + pause >= deadline {
                // Not back in time: the drive is failed, as one that stopped answering.
                for tag in retrying {
                    let d = Int(operations[Int(tag)].driveIndex)
                    if failed & (1 << UInt64(d)) == 0 { drives[d].timeouts.add(1, ordering: .relaxed) }
                    drives[d].linkRaw.store(RemoteLink.lost.rawValue, ordering: .relaxed)
                    failed |= 1 << UInt64(d)
                    broken |= 1 << UInt64(d)
                }
                retrying.removeAll(keepingCapacity: true)
                break
            }
            usleep(UInt32(pause * 1_000_000))
            pause = min(1, pause * 2)
            for tag in retrying {
                let drive = drives[Int(operations[Int(tag)].driveIndex)]
                guard drive.state != .failed, let uri = drive.remoteURI else {
                    failed |= 1 << UInt64(operations[Int(tag)].driveIndex)
                    continue
                }
                issueRemote(tag, uri: uri, deadline: deadline, again: true)
            }
            retrying.removeAll(keepingCapacity: true)
        }
        // Durable writes to a server without FUA: a flush of each such drive, once its writes are done.
        let flushes = flushAfter & ~broken
        flushAfter = 0
        for d in connections.indices where flushes & (1 << UInt64(d)) != 0 {
            guard let c = connections[d], let cookie = try? c.queueFlush(), c.waitAll(deadlineSeconds: deadline), c.result(cookie) == 0 else {
                failed |= 1 << UInt64(d)
                broken |= 1 << UInt64(d)
                continue
            }
        }
        for d in connections.indices where broken & (1 << UInt64(d)) != 0 { connections[d] = nil }
        return failed
    }

    /// Drives in memory (tmpfs; `Drive.copiesSynchronously`): io_uring cannot complete buffered I/O on them inline
    /// and hands every operation to an io-wq worker thread, a wake-up and two context switches per I/O that cost more
    /// than the copy itself. So their reads and writes are done here, synchronously, as the copy they are (memory
    /// does not hang); flushes still go through the ring. Buffered drives on real storage (file systems without
    /// O_DIRECT) go through the ring like direct ones, under the drive deadline.
    private func copyThroughPageCache(_ tag: UInt64) {
        let op = operations[Int(tag)]
        let fd = drives[Int(op.driveIndex)].fd
        if let injector = DriveFaultInjector.active, injector.failingPath == drives[Int(op.driveIndex)].path {
            pageCacheFailures |= 1 << UInt64(op.driveIndex)
            return
        }
        do throws(SysError) {
            if op.kind == 0 || op.kind == 5 {
                let n =
                    op.kind == 0
                    ? try Posix.pread(fd, op.pointer!, count: op.count, offset: op.offsetBytes)
                    : try Posix.preadv(fd, op.vectors!, count: op.vectorCount, offset: op.offsetBytes)
                if n < op.count { pageCacheFailures |= 1 << UInt64(op.driveIndex) }  // end of file: the drive shrank
            } else if let injector = DriveFaultInjector.active {
                let path = drives[Int(op.driveIndex)].path
                let landed = injector.beforeWrite(path: path, fd: fd, offset: op.offsetBytes, count: op.count, durable: op.kind == 4)
                if op.kind == 6 {
                    // A torn gather write: its buffers in turn, as far as the bytes that land.
                    var at = 0
                    for v in 0..<op.vectorCount where at < landed {
                        let n = min(op.vectors![v].iov_len, landed - at)
                        try Posix.pwrite(fd, op.vectors![v].iov_base!, count: n, offset: op.offsetBytes + UInt64(at))
                        at += n
                    }
                } else if landed > 0 {
                    try Posix.pwrite(fd, op.pointer!, count: landed, offset: op.offsetBytes)
                }
            } else if op.kind == 6 {
                try Posix.pwritev(fd, op.vectors!, count: op.vectorCount, offset: op.offsetBytes)
            } else {
                try Posix.pwrite(fd, op.pointer!, count: op.count, offset: op.offsetBytes)
                // A durable write on a page-cache drive that keeps data (not tmpfs): the flush makes it so.
                if op.kind == 4 && !drives[Int(op.driveIndex)].isMemoryBacked { try Posix.fsync(fd) }
            }
            operations[Int(tag)].done = op.count
        } catch {
            failed(op)
        }
    }

    /// The batch's time goes to the latency histograms of each drive it read, wrote or flushed.
    private func recordBatchLatency() {
        guard batchReads | batchWrites | batchFlushes != 0 else { return }
        let took = Posix.monotonicNanoseconds() &- batchBegan
        for d in drives.indices {
            let bit: UInt64 = 1 << UInt64(d)
            if batchReads & bit != 0 { drives[d].latency.reads.record(nanoseconds: took) }
            if batchWrites & bit != 0 { drives[d].latency.writes.record(nanoseconds: took) }
            if batchFlushes & bit != 0 { drives[d].latency.flushes.record(nanoseconds: took) }
        }
        batchReads = 0
        batchWrites = 0
        batchFlushes = 0
    }

    /// Operations held by drives that stopped answering (an injected `hang`): each goes ahead once its drive's rule is
    /// cleared; when the drive deadline passes first, its drive is failed, as the deadline fails a drive whose
    /// operations the kernel still holds. No deadline (0): they wait as long as the drive hangs.
    private func waitOutHungDrives() {
        let began = Posix.monotonicSeconds()
        while !heldTags.isEmpty {
            let waiting = heldTags
            heldTags.removeAll(keepingCapacity: true)
            for tag in waiting {
                let drive = drives[Int(operations[Int(tag)].driveIndex)]
                if drive.faults.isHung && drive.state != .failed { heldTags.append(tag) } else { issue(tag) }
            }
            guard !heldTags.isEmpty else { return }
            if DriveIO.deadlineSeconds > 0 && Posix.monotonicSeconds() - began >= DriveIO.deadlineSeconds {
                for tag in heldTags {
                    let d = Int(operations[Int(tag)].driveIndex)
                    drives[d].timeouts.add(1, ordering: .relaxed)
                    pageCacheFailures |= 1 << UInt64(d)
                }
                heldTags.removeAll(keepingCapacity: true)
                return
            }
            usleep(10_000)
        }
    }

    /// The latency injected into this batch's drives: the batch completes when the slowest of them would have. A
    /// drive whose latency reaches the drive deadline is failed after the deadline, as one that slow would be.
    private func sleepInjectedLatency() -> UInt64 {
        let longest = batchDelayMicros
        guard longest > 0 else { return 0 }
        batchDelayMicros = 0
        let deadline = DriveIO.deadlineSeconds > 0 ? UInt64(DriveIO.deadlineSeconds * 1_000_000) : UInt64.max
        usleep(UInt32(min(longest, deadline, DriveFaultRule.maxMicros)))
        var failed: UInt64 = 0
        for d in driveDelayMicros.indices {
            if driveDelayMicros[d] >= deadline {
                failed |= 1 << UInt64(d)
                drives[d].timeouts.add(1, ordering: .relaxed)
            }
            driveDelayMicros[d] = 0
        }
        return failed
    }

    /// Tests only: behaves as after a deadline when no new ring could be made.
    func giveUpRingForTesting() { ringless = true }
    var hasRing: Bool { !ringless }

    /// One operation done here and now, for a DriveIO that has no ring (see `ringless`). Failures fail the drive as a
    /// ring completion would. A zero range is left to the caller, who writes zeroes (as on file systems that cannot
    /// punch holes).
    private func runWithoutRing(_ tag: UInt64) {
        let op = operations[Int(tag)]
        let drive = drives[Int(op.driveIndex)]
        switch op.kind {
        case 0, 1, 4, 5, 6:
            // The page-cache drives' synchronous copy (a durable write is followed by an fsync there).
            copyThroughPageCache(tag)
        case 2:
            do throws(SysError) {
                if drive.isBlockDevice { try Posix.fsync(drive.fd) } else { try Posix.fdatasync(drive.fd) }
            } catch {
                pageCacheFailures |= 1 << UInt64(op.driveIndex)
            }
        default:
            zeroUnsupportedDrives |= 1 << UInt64(op.driveIndex)
        }
    }

    /// The deadline passed with operations still in the kernel: their drives are failed (the array goes on
    /// degraded), the pages a stuck read would fill are replaced under it (the kernel pinned the old ones for direct
    /// I/O, so a late completion lands in pages nobody uses any more), and this batch's ring is given up for a new
    /// one (its late completions must never be taken for a later batch's). Returns the drives failed.
    private func abandonStuckOperations() -> UInt64 {
        var failed: UInt64 = 0
        for i in 0..<operationCount where !operations[i].finished {
            let op = operations[i]
            failed |= 1 << UInt64(op.driveIndex)
            drives[Int(op.driveIndex)].timeouts.add(1, ordering: .relaxed)
            if op.kind == 0, let pointer = op.pointer { Posix.replacePages(covering: pointer, count: op.count) }
            if op.kind == 5, let vectors = op.vectors {
                for v in op.vectorFirst..<op.vectorCount { Posix.replacePages(covering: vectors[v].iov_base!, count: vectors[v].iov_len) }
            }
            operations[i].finished = true
        }
        let old = ring
        DriveIO.abandonLock.withLock { DriveIO.abandonedRings.append(old) }
        ringless = true
        var attempts = 0
        while attempts < 1000 {
            if let fresh = try? IORing(entries: old.entries) {
                ring = fresh
                ringless = false
                break
            }
            attempts += 1
            usleep(10_000)  // out of memory for a moment: try again; the caller is failing drives anyway
        }
        return failed
    }

    public func queueRead(drive: Int, into pointer: UnsafeMutableRawPointer, count: Int, offsetBytes: UInt64) {
        precondition(count > 0 && offsetBytes % UInt64(sectorBytes) == 0 && count % sectorBytes == 0, "drive reads are whole sectors")
        append(Operation(kind: 0, driveIndex: Int32(drive), pointer: pointer, count: count, offsetBytes: offsetBytes))
    }

    /// A scatter read of `count` bytes from `offsetBytes` into the `vectorCount` buffers of `vectors` in turn (whole
    /// sectors each). The vectors are the caller's scratch: they must stay until the batch is submitted, and are
    /// consumed (advanced as bytes arrive).
    public func queueReadVector(drive: Int, vectors: UnsafeMutablePointer<iovec>, vectorCount: Int, count: Int, offsetBytes: UInt64) {
        appendVector(kind: 5, drive: drive, vectors: vectors, vectorCount: vectorCount, count: count, offsetBytes: offsetBytes)
    }

    /// A scatter read (kind 5) or gather write (kind 6).
    private func appendVector(kind: UInt8, drive: Int, vectors: UnsafeMutablePointer<iovec>, vectorCount: Int, count: Int, offsetBytes: UInt64) {
        precondition(count > 0 && offsetBytes % UInt64(sectorBytes) == 0 && count % sectorBytes == 0, "drive I/O is whole sectors")
        precondition((0..<vectorCount).reduce(0) { $0 + vectors[$1].iov_len } == count, "a vector's buffers add up to its count")
        var op = Operation(kind: kind, driveIndex: Int32(drive), count: count, offsetBytes: offsetBytes)
        op.vectors = vectors
        op.vectorCount = vectorCount
        append(op)
    }

    public func queueWrite(drive: Int, from pointer: UnsafeRawPointer, count: Int, offsetBytes: UInt64) {
        precondition(count > 0 && offsetBytes % UInt64(sectorBytes) == 0 && count % sectorBytes == 0, "drive writes are whole sectors")
        append(Operation(kind: 1, driveIndex: Int32(drive), pointer: UnsafeMutableRawPointer(mutating: pointer), count: count, offsetBytes: offsetBytes))
    }

    /// A gather write of `count` bytes at `offsetBytes` from the `vectorCount` buffers of `vectors` in turn (whole
    /// sectors each). The vectors are the caller's scratch, as for `queueReadVector`; the buffers must stay as they are
    /// until the batch is submitted.
    public func queueWriteVector(drive: Int, vectors: UnsafeMutablePointer<iovec>, vectorCount: Int, count: Int, offsetBytes: UInt64) {
        appendVector(kind: 6, drive: drive, vectors: vectors, vectorCount: vectorCount, count: count, offsetBytes: offsetBytes)
    }

    /// A write that is durable when the batch completes (RWF_DSYNC / FUA): no flush of the drive's other writes needed.
    public func queueDurableWrite(drive: Int, from pointer: UnsafeRawPointer, count: Int, offsetBytes: UInt64) {
        precondition(count > 0 && offsetBytes % UInt64(sectorBytes) == 0 && count % sectorBytes == 0, "drive writes are whole sectors")
        append(Operation(kind: 4, driveIndex: Int32(drive), pointer: UnsafeMutableRawPointer(mutating: pointer), count: count, offsetBytes: offsetBytes))
    }

    public func queueFlush(drive: Int) {
        append(Operation(kind: 2, driveIndex: Int32(drive)))
    }

    /// Makes the byte range read back as zeroes (files: punch a hole).
    public func queueZeroRange(drive: Int, offsetBytes: UInt64, count: Int) {
        append(Operation(kind: 3, driveIndex: Int32(drive), count: count, offsetBytes: offsetBytes))
    }

    /// Submits the batch and waits for all of it. Returns a bit set of the drives whose operations failed
    /// (bit i = drive index i); those drives have been moved to `failed`.
    @discardableResult
    public func submit() -> UInt64 {
        if !heldTags.isEmpty { waitOutHungDrives() }
        var failedDrives: UInt64 = pageCacheFailures
        pageCacheFailures = 0
        while true {
            var again = false
            let stuck = ring.submitAndReapAll(deadlineSeconds: DriveIO.deadlineSeconds) { tag, result in
                let index = Int(tag)
                operations[index].finished = true
                let op = operations[index]
                if result < 0 {
                    // A file system that cannot punch holes is not a failed drive: the caller writes zeroes instead.
                    if op.kind == 3 && (result == -95 || result == -19) {
                        zeroUnsupportedDrives |= 1 << UInt64(op.driveIndex)
                        return
                    }
                    failed(op)
                    return
                }
                if op.kind <= 1 || op.kind >= 4 {
                    if result == 0 {
                        // End of file inside the data area: the drive shrank under us. Never invent zeroes.
                        failedDrives |= 1 << UInt64(op.driveIndex)
                        return
                    }
                    operations[index].done += Int(result)
                    if op.kind >= 5 {
                        operations[index].vectorFirst = Posix.advance(op.vectors!, first: op.vectorFirst, count: op.vectorCount, by: Int(result))
                    }
                    if operations[index].done < op.count {
                        issue(tag)
                        again = true
                    }
                }
            }
            if stuck > 0 {
                failedDrives |= abandonStuckOperations()
                break
            }
            if !again { break }
        }
        operationCount = 0
        if !remoteCommands.isEmpty || flushAfter != 0 || !retryTags.isEmpty { failedDrives |= reapRemote() }
        remoteBatchStart = 0
        failedDrives |= sleepInjectedLatency()
        recordBatchLatency()
        failedDrives |= pageCacheFailures
        pageCacheFailures = 0
        // Failed reads: the drive fails, unless the caller repairs them and the drive is within its budget.
        lastReadErrors = 0
        if failedReads != 0 {
            for i in 0..<drives.count where failedReads & ~failedDrives & (1 << UInt64(i)) != 0 {
                let bit: UInt64 = 1 << UInt64(i)
                switch readErrors {
                case .failDrive: failedDrives |= bit
                case .report: lastReadErrors |= bit
                case .count:
                    drives[i].readErrors.add(1, ordering: .relaxed)
                    if drives[i].recentReadErrors.add(1, ordering: .relaxed).newValue > DriveIO.readErrorBudget {
                        failedDrives |= bit
                    } else {
                        lastReadErrors |= bit
                    }
                }
            }
            failedReads = 0
        }
        readErrors = .failDrive
        if ringless, let fresh = try? IORing(entries: ring.entries) {
            ring = fresh
            ringless = false
        }
        if failedDrives != 0 {
            for i in 0..<drives.count where failedDrives & (1 << UInt64(i)) != 0 {
                drives[i].errorCount.add(1, ordering: .relaxed)
                drives[i].transition(to: .failed)
            }
        }
        return failedDrives | lastReadErrors
    }
}

extension UInt32 {
    var nextPowerOfTwo: UInt32 {
        var v: UInt32 = 1
        while v < self { v <<= 1 }
        return v
    }
}
