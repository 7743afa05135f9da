// The replica layer: a HostIOPort between the front end and the directors (beside `VolatileWriteCache`), present on
// every mount so groups can be made and deleted while the array runs. A LUN in no group costs one atomic load per
// write; reads and flushes pass straight through (a synchronous replica's remote writes are FUA already).
//
// A synchronized group's write holds the locks of the tracks it touches (striped: `trackLockCount` mutexes, taken in
// order) from sending to the remote until both sides answered, and the resync holds the same lock while it reads a
// track here and writes it there: the two sides see one order of the writes to a track, so R2 ends equal to R1
// byte for byte.
import ArrayModel
import Directors
import Foundation
import Synchronization
import SysPosix

#if canImport(Glibc)
    import Glibc
#endif

public final class ReplicationPort: HostIOPort, @unchecked Sendable {
    private let port: HostIOPort
    /// Indexed by LUN id (1...lunCountMax): the group replicating it, published with `active`.
    private let slots: [Slot]
    private static let trackLockCount = 256
    private let trackLocks: UnsafeMutablePointer<pthread_mutex_t>

    final class Slot: @unchecked Sendable {
        let active = Atomic<Bool>(false)
        /// Writes that read `active` as true and may still use `group` (delete waits for them).
        let users = Atomic<Int>(0)
        var group: ReplicaGroup?
        var lun: ReplicaLUN?
    }

    public init(port: HostIOPort, lunIDMax: Int) {
        self.port = port
        slots = (0...max(1, lunIDMax)).map { _ in Slot() }
        trackLocks = .allocate(capacity: Self.trackLockCount)
        for i in 0..<Self.trackLockCount { pthread_mutex_init(trackLocks + i, nil) }
    }

    deinit {
        for i in 0..<Self.trackLockCount { pthread_mutex_destroy(trackLocks + i) }
        trackLocks.deallocate()
    }

    /// The port below: what a resync reads a track through.
    var local: HostIOPort { port }

    // MARK: Groups

    /// Starts replicating the group's LUNs (its writes from now on go through the group).
    func activate(_ group: ReplicaGroup) {
        for l in group.luns {
            let slot = slots[Int(l.lun.lunID)]
            slot.group = group
            slot.lun = l
            slot.active.store(true, ordering: .sequentiallyConsistent)
        }
    }

    /// Stops replicating the group's LUNs; returns once no write uses the group any more.
    func deactivate(_ group: ReplicaGroup) {
        for l in group.luns {
            let slot = slots[Int(l.lun.lunID)]
            guard slot.group === group else { continue }
            slot.active.store(false, ordering: .sequentiallyConsistent)
            while slot.users.load(ordering: .sequentiallyConsistent) > 0 { usleep(1000) }
            slot.group = nil
            slot.lun = nil
        }
    }

    /// Returns once every write that read the group's state before now is done (a write counts itself a user
    /// before it reads the state, so seeing none after a change means none still acts on the old state).
    func quiesce(_ group: ReplicaGroup) {
        for l in group.luns {
            let slot = slots[Int(l.lun.lunID)]
            while slot.users.load(ordering: .sequentiallyConsistent) > 0 { usleep(200) }
        }
    }

    // MARK: Track locks

    /// Which of the striped locks, as a bit set on the stack (no allocation per write).
    typealias LockMask = (UInt64, UInt64, UInt64, UInt64)

    private static func add(_ i: Int, to mask: inout LockMask) {
        let bit: UInt64 = 1 << UInt64(i & 63)
        switch i >> 6 {
        case 0: mask.0 |= bit
        case 1: mask.1 |= bit
        case 2: mask.2 |= bit
        default: mask.3 |= bit
        }
    }

    /// The striped locks of the tracks `[offset, offset + count)` of `lun` touches, ascending and each once, taken
    /// (or released) in that order.
    private func withTrackLocks<R>(lun: UInt32, offsetBytes: UInt64, count: UInt64, _ body: () -> R) -> R {
        let first = offsetBytes / TrackBitmap.trackBytes
        let last = (offsetBytes + max(count, 1) - 1) / TrackBitmap.trackBytes
        var mask: LockMask = (0, 0, 0, 0)
        if last - first + 1 >= UInt64(Self.trackLockCount) {
            mask = (~0, ~0, ~0, ~0)  // past 256 tracks, all of them
        } else {
            for t in first...last { Self.add(Self.lockIndex(lun: lun, track: t), to: &mask) }
        }
        return withLocks(mask, body)
    }

    /// Takes the locks `mask` names in ascending order (every holder of several takes them so: no deadlock), runs
    /// `body`, and lets them go.
    private func withLocks<R>(_ mask: LockMask, _ body: () -> R) -> R {
        func each(_ action: (Int) -> Void) {
            withUnsafeBytes(of: mask) { raw in
                for w in 0..<4 {
                    var bits = raw.load(fromByteOffset: w * 8, as: UInt64.self)
                    while bits != 0 {
                        action(w << 6 | bits.trailingZeroBitCount)
                        bits &= bits - 1
                    }
                }
            }
        }
        each { pthread_mutex_lock(trackLocks + $0) }
        defer { each { pthread_mutex_unlock(trackLocks + $0) } }
        return body()
    }

    private static func lockIndex(lun: UInt32, track: UInt64) -> Int {
        Int((track &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(lun) &* 0xBF58_476D_1CE4_E5B9) >> 56) % trackLockCount
    }

    // MARK: HostIOPort

    public func read(lun: LUNRef, offsetBytes: UInt64, count: Int, into target: UnsafeMutableRawPointer) -> Int32 {
        port.read(lun: lun, offsetBytes: offsetBytes, count: count, into: target)
    }

    public func flush(lun: LUNRef?) -> Int32 { port.flush(lun: lun) }

    public func write(lun: LUNRef, offsetBytes: UInt64, count: Int, from source: UnsafeRawPointer) -> Int32 {
        replicated(lun: lun, offsetBytes: offsetBytes, count: UInt64(count), source: source) {
            port.write(lun: lun, offsetBytes: offsetBytes, count: count, from: source)
        }
    }

    public func zero(lun: LUNRef, offsetBytes: UInt64, count: UInt64) -> Int32 {
        replicated(lun: lun, offsetBytes: offsetBytes, count: count, source: nil) {
            port.zero(lun: lun, offsetBytes: offsetBytes, count: count)
        }
    }

    /// A write (or zeroed range: `source` nil) of a LUN: straight down when it is in no group; else to both sides
    /// when its group is synchronized (the remote's answer awaited before the host's), or down with its tracks
    /// remembered.
    @inline(__always)
    private func replicated(lun: LUNRef, offsetBytes: UInt64, count: UInt64, source: UnsafeRawPointer?, local: () -> Int32) -> Int32 {
        let id = Int(lun.lunID)
        guard id < slots.count else { return local() }
        let slot = slots[id]
        guard slot.active.load(ordering: .acquiring) else { return local() }
        slot.users.add(1, ordering: .sequentiallyConsistent)
        defer { slot.users.subtract(1, ordering: .sequentiallyConsistent) }
        guard slot.active.load(ordering: .sequentiallyConsistent), let group = slot.group, let replica = slot.lun else { return local() }
        let state = group.state
        // Failed over: R2 is the one written to, and a write here would be lost at failback (or undo R2's).
        if state.writesRefused { return EROFS }
        if let cycle = group.async, state == .synchronized || state == .syncing {
            // Asynchronous, consistent or resyncing: written here, then copied into the capture set if R2 is to get
            // it from there (else its tracks remembered), under the track locks (the array and the capture see one
            // order of the writes to a block).
            return withTrackLocks(lun: lun.lunID, offsetBytes: offsetBytes, count: count) {
                let rc = local()
                group.captureOrRemember(lun: lun.lunID, offsetBytes: offsetBytes, count: count, wrote: rc == 0) { at, bytes in
                    capture(cycle.sets, replica, offsetBytes: at, count: bytes, source: source.map { $0 + Int(at - offsetBytes) })
                }
                return rc
            }
        }
        if state == .syncing {
            // A synchronous group's resync: a write to tracks it has already sent (or never had to) goes to both
            // sides, as when synchronized. Writes that never stop then cannot outrun the resync: they add no track
            // to what it has left, and it ends while they go on (SRDF/S sends new writes while it copies invalid
            // tracks). A write to a track still to be sent only marks it again.
            return withTrackLocks(lun: lun.lunID, offsetBytes: offsetBytes, count: count) {
                guard group.tracksSent(lun: lun.lunID, offsetBytes: offsetBytes, count: count) else {
                    let rc = local()
                    group.remember(lun: lun.lunID, offsetBytes: offsetBytes, count: count, linkDown: false)
                    return rc
                }
                return mirrored(group, replica, offsetBytes: offsetBytes, count: count, source: source, local: local)
            }
        }
        if state != .synchronized {
            // Tracks are marked after the local write: a resync that reads the track before it lands sends it again.
            let rc = local()
            group.remember(lun: lun.lunID, offsetBytes: offsetBytes, count: count, linkDown: false)
            return rc
        }
        return withTrackLocks(lun: lun.lunID, offsetBytes: offsetBytes, count: count) {
            mirrored(group, replica, offsetBytes: offsetBytes, count: count, source: source, local: local)
        }
    }

    /// A synchronous write to both sides (its track locks held): sent to the remote, written here, and answered once
    /// both have it. Zeroed ranges larger than a request go as one NBD zero; writes as one FUA write.
    @inline(__always)
    private func mirrored(
        _ group: ReplicaGroup, _ replica: ReplicaLUN, offsetBytes: UInt64, count: UInt64, source: UnsafeRawPointer?, local: () -> Int32
    ) -> Int32 {
        let pending = replica.image.send(offsetBytes: offsetBytes, count: Int(count), from: source)
        let rc = local()
        let sent = pending.map { replica.image.finish($0) } ?? false
        if !sent {
            group.remember(lun: replica.lun.lunID, offsetBytes: offsetBytes, count: count, linkDown: true)
        } else if rc != 0 {
            // The remote took what the array here refused: the tracks go across again from here.
            group.remember(lun: replica.lun.lunID, offsetBytes: offsetBytes, count: count, linkDown: false)
        } else {
            group.writesSent.add(1, ordering: .relaxed)
            group.bytesSent.add(count, ordering: .relaxed)
        }
        return rc
    }

    /// Copies the blocks a write (or zeroed range: `source` nil) touched into the capture set, whole: the ones it
    /// covers from its data (or zeroes), the ones it covers in part read back from the array (it is written there
    /// already, and the track locks keep others off it).
    private func capture(_ sets: DeltaSets, _ replica: ReplicaLUN, offsetBytes: UInt64, count: UInt64, source: UnsafeRawPointer?) -> DeltaSets.Capture {
        let blockBytes = UInt64(DeltaSets.blockBytes)
        guard count > 0 else { return .captured }
        let first = offsetBytes / blockBytes
        let blocks = Int((offsetBytes + count - 1) / blockBytes - first + 1)
        let headPartial = offsetBytes % blockBytes != 0 || count < blockBytes
        let tailPartial = (offsetBytes + count) % blockBytes != 0
        if !headPartial && !tailPartial {
            return sets.capture(member: replica.member, firstBlock: first, count: blocks) { i in
                source.map { $0 + i * DeltaSets.blockBytes } ?? DeltaSets.zeroBlock
            }
        }
        // A write that is not whole blocks (rare: the kernel sends pages): its first and last blocks read back.
        return withUnsafeTemporaryAllocation(byteCount: 2 * DeltaSets.blockBytes, alignment: 4096) { edges -> DeltaSets.Capture in
            let head = edges.baseAddress!
            let tail = head + DeltaSets.blockBytes
            if headPartial, port.read(lun: replica.lun, offsetBytes: first * blockBytes, count: DeltaSets.blockBytes, into: head) != 0 { return .closed }
            if tailPartial, blocks > 1 || !headPartial,
                port.read(lun: replica.lun, offsetBytes: (first + UInt64(blocks) - 1) * blockBytes, count: DeltaSets.blockBytes, into: tail) != 0
            {
                return .closed
            }
            return sets.capture(member: replica.member, firstBlock: first, count: blocks) { i in
                if i == 0 && headPartial { return UnsafeRawPointer(head) }
                if i == blocks - 1 && tailPartial { return UnsafeRawPointer(blocks == 1 && headPartial ? head : tail) }
                let at = (first + UInt64(i)) * blockBytes - offsetBytes
                return source.map { $0 + Int(at) } ?? DeltaSets.zeroBlock
            }
        }
    }

    // MARK: Resync

    /// Tracks a resync keeps in flight: read here, then written there together (one flush per image), under all
    /// their track locks. One at a time, a resync could not outrun writes that dirty more than a track per round trip.
    static let resyncTracksMax = 16

    /// Sends up to `resyncTracksMax` changed tracks of the group to its remote: taken off the bitmap (noted in
    /// flight), read here and written there under their track locks (`buffer` holds them all). Returns false when
    /// nothing was left to send, or the link failed (the tracks are marked again).
    func resyncSome(_ group: ReplicaGroup, buffer: UnsafeMutableRawPointer, cursor: inout Int) -> Bool {
        // The next changed tracks, any LUN of the group (a small list once per batch: the group's thread, not a write).
        var picked: [(replica: ReplicaLUN, track: Int)] = []
        group.tracks.withLock { t in
            for l in group.luns {
                var from = cursor
                while picked.count < Self.resyncTracksMax, let track = t.bitmaps[l.lun.lunID]?.firstSet(from: from) {
                    t.bitmaps[l.lun.lunID]!.clear(track)
                    t.inFlight.insert(UInt64(l.lun.lunID) << 40 | UInt64(track))
                    picked.append((l, track))
                    from = track + 1
                }
            }
        }
        guard let lastPicked = picked.last else { return false }
        cursor = lastPicked.track + 1
        func span(_ p: (replica: ReplicaLUN, track: Int)) -> (offset: UInt64, count: Int) {
            let offset = UInt64(p.track) * TrackBitmap.trackBytes
            return (offset, Int(min(TrackBitmap.trackBytes, p.replica.lun.sizeBytes - offset)))
        }
        var mask: LockMask = (0, 0, 0, 0)
        for p in picked { Self.add(Self.lockIndex(lun: p.replica.lun.lunID, track: UInt64(p.track)), to: &mask) }
        let sent = withLocks(mask) { () -> Bool in
            for (i, p) in picked.enumerated() {
                let (offset, count) = span(p)
                guard port.read(lun: p.replica.lun, offsetBytes: offset, count: count, into: buffer + i * Int(TrackBitmap.trackBytes)) == 0 else {
                    return false
                }
            }
            // Each LUN's tracks to its image on one connection, then one flush there.
            for l in group.luns where picked.contains(where: { $0.replica === l }) {
                var i = 0
                let ok = l.image.writeRuns { () -> (UInt64, Int, UnsafeRawPointer)? in
                    while i < picked.count {
                        defer { i += 1 }
                        guard picked[i].replica === l else { continue }
                        let (offset, count) = span(picked[i])
                        return (offset, count, UnsafeRawPointer(buffer + i * Int(TrackBitmap.trackBytes)))
                    }
                    return nil
                }
                guard ok else { return false }
            }
            return true
        }
        group.tracks.withLock { t in
            for p in picked {
                t.inFlight.remove(UInt64(p.replica.lun.lunID) << 40 | UInt64(p.track))
                if !sent { t.bitmaps[p.replica.lun.lunID]?.set(p.track) }
            }
            if !sent && group.state != .suspended && !group.state.writesRefused { group.moveState(to: .partitioned, &t) }
        }
        if sent { group.resyncedBytes.add(picked.reduce(0) { $0 + UInt64(span($1).count) }, ordering: .relaxed) }
        return sent
    }

    /// Failback, one track: R2's copy read and compared with the one here; when they differ (written on either side
    /// since they last matched) R2's is written here, below the replica layer. Returns false when R2 could not be
    /// read or the write here failed (the failback waits and tries the track again).
    func failBackOne(_ replica: ReplicaLUN, track: Int, group: ReplicaGroup, remote: UnsafeMutableRawPointer, here: UnsafeMutableRawPointer) -> Bool {
        let offset = UInt64(track) * TrackBitmap.trackBytes
        let count = Int(min(TrackBitmap.trackBytes, replica.lun.sizeBytes - offset))
        return withTrackLocks(lun: replica.lun.lunID, offsetBytes: offset, count: UInt64(count)) { () -> Bool in
            guard replica.image.read(offsetBytes: offset, count: count, into: remote),
                port.read(lun: replica.lun, offsetBytes: offset, count: count, into: here) == 0
            else { return false }
            group.failbackComparedTracks.add(1, ordering: .relaxed)
            guard memcmp(remote, here, count) != 0 else { return true }
            guard port.write(lun: replica.lun, offsetBytes: offset, count: count, from: remote) == 0 else { return false }
            group.failbackCopiedBytes.add(UInt64(count), ordering: .relaxed)
            return true
        }
    }

    /// An asynchronous group's resync with nothing left to send (no track marked or in flight): its catch-up set
    /// is switched, under the group's lock so that no write marks a track in between. R2 plus that set is then the
    /// source at the switch (an empty one: R2 is the source as of now). False when something is left.
    func drainedResync(_ group: ReplicaGroup, switching sets: DeltaSets) -> Bool {
        group.tracks.withLock { t in
            guard group.state == .syncing, t.nothingToSend else { return false }
            sets.switchCycle()
            return true
        }
    }

    /// Moves a syncing group to synchronized when nothing is left to send (under its lock, so no write marks a
    /// track in between).
    func finishResync(_ group: ReplicaGroup) -> Bool {
        group.tracks.withLock { t in
            guard group.state == .syncing, t.nothingToSend else { return false }
            group.moveState(to: .synchronized, &t)
            return true
        }
    }
}
