// A replica group: LUNs of this array (R1) copied to NBD exports elsewhere (R2), as SRDF copies devices in groups.
//
// Synchronous: a host write is acknowledged once the local array and the remote both have it (the remote by a FUA
// write). While the link is down, or the group is suspended, writes are acknowledged on the local array alone and
// the tracks they changed are remembered (`TrackBitmap`: SRDF's invalid tracks); resuming sends only those. While a
// synchronous group resyncs, a write to tracks already sent goes to both sides, so writes cannot outrun the resync.
// An asynchronous group's (SRDF/A: delta sets, `AsyncCycle`) is captured into a catch-up set instead, applied once
// the resync ends (`captureOrRemember`).
//
// States (`ReplicaState`):
//   syncing       -> synchronized   the resync found no changed track left (under the group lock); asynchronous:
//                                   and its catch-up set, switched then, is applied on R2
//   synchronized  -> partitioned    a remote write failed or timed out: the link is taken as down
//   syncing       -> partitioned    the same, during a resync
//   partitioned   -> syncing        the link monitor found the remote answering again
//   any           -> suspended      `vsa replica suspend`; only `resume` leaves it (-> syncing)
//   synchronized  -> syncing        a write that began in another state marked a track after the group got here
//   any           -> failed-over    `vsa replica failover`: R2 is the one written to; the LUNs here refuse writes
//   failed-over   -> failing-back   `vsa replica failback`: every track of R2 compared with the one here, and the
//                                   ones that differ (changed on either side) copied back
//   failing-back  -> synchronized   all compared; the LUNs here take writes again
import ArrayModel
import Synchronization
import SysPosix

public enum ReplicaState: UInt8, Sendable, CustomStringConvertible, Codable {
    case synchronized = 0, syncing = 1, partitioned = 2, suspended = 3, failedOver = 4, failingBack = 5
    public var description: String {
        switch self {
        case .synchronized: return "synchronized"
        case .syncing: return "syncing"
        case .partitioned: return "partitioned"
        case .suspended: return "suspended"
        case .failedOver: return "failed-over"
        case .failingBack: return "failing-back"
        }
    }
    /// R2 is the one written to: the LUNs here take no writes.
    public var writesRefused: Bool { self == .failedOver || self == .failingBack }
}

/// Changed tracks of one LUN, one bit per `trackBytes`. Guarded by its group's lock.
public struct TrackBitmap: Sendable {
    public static let trackBytes: UInt64 = 64 << 10
    public private(set) var words: [UInt64]
    public let trackCount: Int
    public private(set) var setCount = 0

    public init(sizeBytes: UInt64, allSet: Bool = false) {
        trackCount = Int((sizeBytes + Self.trackBytes - 1) / Self.trackBytes)
        words = Array(repeating: 0, count: (trackCount + 63) / 64)
        if allSet { for t in 0..<trackCount { set(t) } }
    }

    /// A saved bitmap (the folder's replicas.json), if it fits a LUN of `sizeBytes`.
    public init?(sizeBytes: UInt64, words saved: [UInt64]) {
        self.init(sizeBytes: sizeBytes)
        guard saved.count == words.count else { return nil }
        for t in 0..<trackCount where saved[t >> 6] & (1 << UInt64(t & 63)) != 0 { set(t) }
    }

    public mutating func set(_ track: Int) {
        let bit: UInt64 = 1 << UInt64(track & 63)
        if words[track >> 6] & bit == 0 {
            words[track >> 6] |= bit
            setCount += 1
        }
    }

    public mutating func clear(_ track: Int) {
        let bit: UInt64 = 1 << UInt64(track & 63)
        if words[track >> 6] & bit != 0 {
            words[track >> 6] &= ~bit
            setCount -= 1
        }
    }

    public func isSet(_ track: Int) -> Bool { words[track >> 6] & (1 << UInt64(track & 63)) != 0 }

    /// Marks the tracks a byte range touches (the range is within the LUN: the front end checked it).
    public mutating func mark(offsetBytes: UInt64, count: UInt64) {
        guard count > 0 else { return }
        let first = Int(offsetBytes / Self.trackBytes)
        let last = min(trackCount - 1, Int((offsetBytes + count - 1) / Self.trackBytes))
        guard first <= last else { return }
        for t in first...last { set(t) }
    }

    /// The first set track at or after `from`, wrapping around; nil when none is set.
    public func firstSet(from: Int) -> Int? {
        guard setCount > 0, trackCount > 0 else { return nil }
        for step in 0..<trackCount {
            let t = (from + step) % trackCount
            if words[t >> 6] == 0 {
                continue
            }
            if isSet(t) { return t }
        }
        return nil
    }
}

/// One replicated LUN: its id and size here, and its R2.
final class ReplicaLUN: @unchecked Sendable {
    let name: String
    let lun: LUNRef
    let image: RemoteImage
    /// Its place in the group (the member number in an asynchronous group's journal records).
    var member = 0
    init(name: String, lun: LUNRef, image: RemoteImage) {
        self.name = name
        self.lun = lun
        self.image = image
    }
}

/// What an asynchronous group has besides: its delta sets, its journal on R2's side, its cycle.
final class AsyncCycle: @unchecked Sendable {
    let sets: DeltaSets
    let journal: Journal
    let cycleSeconds: Double
    /// `--apply r2`: what the group's thread waits for R2's receiver to stamp (its thread only).
    var waiting: ReceiverWait?
    /// Since when the receiver has been silent while the group waits for it (bits of monotonic seconds; 0: not
    /// waiting), for status.
    let receiverSilentSince = Atomic<UInt64>(0)
    init(sets: DeltaSets, journal: Journal, cycleSeconds: Double) {
        self.sets = sets
        self.journal = journal
        self.cycleSeconds = cycleSeconds
    }
    deinit { journal.release() }

    /// Starts waiting for R2's receiver to stamp `nonce` (the group's thread).
    func wait(for nonce: UInt64, applied: Bool, forSet: Bool) {
        let now = Posix.monotonicSeconds()
        waiting = ReceiverWait(nonce: nonce, applied: applied, forSet: forSet, heard: nil, since: now)
        receiverSilentSince.store(now.bitPattern, ordering: .relaxed)
    }

    func stopWaiting() {
        waiting = nil
        receiverSilentSince.store(0, ordering: .relaxed)
    }

    enum Heard { case done, waiting, silent }

    /// Reads the receiver's stamp once: `done` when it names what the group waits for, `silent` when it has not
    /// changed for the journal's deadline, nil when the journal cannot be read (the link).
    func hearReceiver() -> Heard? {
        guard var w = waiting else { return .done }
        let stamp: ReceiverStamp?
        do { stamp = try journal.readStamp() } catch { return nil }
        if let stamp, (w.applied ? stamp.applied : stamp.saw) == w.nonce {
            stopWaiting()
            return .done
        }
        let now = Posix.monotonicSeconds()
        if stamp != w.heard {
            w.heard = stamp
            w.since = now
            waiting = w
            receiverSilentSince.store(now.bitPattern, ordering: .relaxed)
        }
        return now - w.since > journal.journal.deadlineSeconds ? .silent : .waiting
    }

    /// Seconds R2's receiver has said nothing while the group waits for it (nil when it is not waiting).
    var receiverSilentSeconds: Double? {
        let since = receiverSilentSince.load(ordering: .relaxed)
        return since == 0 ? nil : max(0, Posix.monotonicSeconds() - Double(bitPattern: since))
    }
}

/// R1 waiting for R2's receiver: for its stamp to name `nonce` as applied (a set R1 staged, `forSet`, or the pending
/// set the journal holds) or as seen (the header as it is, before R1 writes the images itself). `heard` is the stamp
/// as last read, `since` when it last changed: a receiver that says nothing for the deadline is taken as gone.
struct ReceiverWait {
    let nonce: UInt64
    let applied: Bool
    let forSet: Bool
    var heard: ReceiverStamp?
    var since: Double
}

/// A group at run time: its LUNs, state, changed tracks and counters. The lock guards `bitmaps`, `inFlight` and the
/// state's changes; the state is also an atomic, so a synchronized group's writes read it without the lock.
public final class ReplicaGroup: @unchecked Sendable {
    public let name: String
    public let mode: String
    let luns: [ReplicaLUN]
    /// Asynchronous groups only (SRDF/A): writes go to delta sets, not straight to R2.
    let async: AsyncCycle?
    let stateRaw = Atomic<UInt8>(ReplicaState.syncing.rawValue)
    /// lunID -> changed tracks; (lunID, track) pairs a resync is sending now.
    let tracks: Locked<Tracks>
    struct Tracks {
        var bitmaps: [UInt32: TrackBitmap]
        var inFlight: Set<UInt64> = []
        /// A resync has nothing left to send: no track marked, none on its way.
        var nothingToSend: Bool { inFlight.isEmpty && bitmaps.values.allSatisfy { $0.setCount == 0 } }
    }
    /// Since when the group has not been synchronized (the bits of monotonic seconds), set as it leaves
    /// synchronized (or starts elsewhere): the lag in seconds.
    private let outOfSyncSince = Atomic<UInt64>(0)
    public let writesSent = Atomic<UInt64>(0)
    public let bytesSent = Atomic<UInt64>(0)
    public let resyncedBytes = Atomic<UInt64>(0)
    public let partitions = Atomic<UInt64>(0)
    /// Asynchronous: times the capture set filled and the group dropped to changed tracks.
    public let deltaSetOverflows = Atomic<UInt64>(0)
    /// Failback: tracks compared, and bytes copied back from R2 (the tracks that differed).
    public let failbackComparedTracks = Atomic<UInt64>(0)
    public let failbackCopiedBytes = Atomic<UInt64>(0)
    /// Set by delete and unmount: its resync thread ends.
    let stopping = Atomic<Bool>(false)
    /// Passes of the group's thread through its loop (each looks at the state once): a failover waits for two, so
    /// that nothing the thread was writing to R2 before (a resync's batch, a catch-up set) lands after it returns.
    let threadPasses = Atomic<UInt64>(0)

    public var state: ReplicaState { ReplicaState(rawValue: stateRaw.load(ordering: .acquiring))! }

    init(name: String, mode: String, luns: [ReplicaLUN], bitmaps: [UInt32: TrackBitmap], state: ReplicaState, async: AsyncCycle? = nil) {
        self.name = name
        self.mode = mode
        self.luns = luns
        self.async = async
        for (i, l) in luns.enumerated() { l.member = i }
        self.tracks = Locked(Tracks(bitmaps: bitmaps))
        stateRaw.store(state.rawValue, ordering: .releasing)
        outOfSyncSince.store(Posix.monotonicSeconds().bitPattern, ordering: .relaxed)
    }

    /// How long the group has not been synchronized, in seconds (0 when it is); an asynchronous group that is
    /// consistent: how far R2's cycle boundary is behind (0 when no delta set waits).
    public var lagSeconds: Double {
        if state == .synchronized { return async?.sets.lag.seconds ?? 0 }
        return max(0, Posix.monotonicSeconds() - Double(bitPattern: outOfSyncSince.load(ordering: .relaxed)))
    }

    /// The state as status names it: an asynchronous group that is synchronized is "consistent" (R2 is the source
    /// at a cycle boundary, not at this instant).
    public var stateName: String { async != nil && state == .synchronized ? "consistent" : state.description }

    /// Changes the state (the group's lock held: `t`). An asynchronous group's delta sets are open while it is
    /// consistent (and while it resyncs, once its thread has opened them: `openForResync`) and closed as it leaves:
    /// their blocks become changed tracks, except on the way from consistent to failed-over, where the group's thread
    /// still sends them (a planned failover leaves R2 equal to R1).
    func moveState(to next: ReplicaState, _ t: inout Tracks) {
        // Captures are taken before the state says consistent, so no write sees it and finds the sets closed.
        if next == .synchronized && state != .synchronized { async?.sets.open() }
        let before = ReplicaState(rawValue: stateRaw.exchange(next.rawValue, ordering: .acquiringAndReleasing))!
        if next == .partitioned && before != .partitioned { partitions.add(1, ordering: .relaxed) }
        if before == .synchronized && next != .synchronized {
            outOfSyncSince.store(Posix.monotonicSeconds().bitPattern, ordering: .relaxed)
        }
        guard async != nil, before != next, next != .synchronized else { return }
        // A resync's catch-up set is not kept: R2 is a mix until the resync ends.
        dropDeltaSets(keep: next == .failedOver && before == .synchronized, &t)
    }

    /// Closes the delta sets; unless `keep`, their blocks become changed tracks (the group's lock held: `t`).
    func dropDeltaSets(keep: Bool, _ t: inout Tracks) {
        guard let sets = async?.sets else { return }
        sets.close(drop: !keep) { member, block in
            guard member < luns.count else { return }
            t.bitmaps[luns[member].lun.lunID]?.mark(offsetBytes: block * UInt64(DeltaSets.blockBytes), count: UInt64(DeltaSets.blockBytes))
        }
    }

    /// Whether a synchronous group's resync has nothing left to send of the tracks a write touches (none is changed
    /// or on its way), the group still syncing (or synchronized since): the write can go to both sides, as when synchronized. Called with
    /// the write's track locks held, so no resync sends these tracks until the write is done.
    func tracksSent(lun: UInt32, offsetBytes: UInt64, count: UInt64) -> Bool {
        tracks.withLock { t in
            guard state == .syncing || state == .synchronized else { return false }
            let first = offsetBytes / TrackBitmap.trackBytes
            let last = (offsetBytes + max(count, 1) - 1) / TrackBitmap.trackBytes
            return (first...last).allSatisfy { Self.trackSent(t, lun: lun, track: $0) }
        }
    }

    /// Whether the resync has nothing left to send of one track (not changed, not on its way).
    private static func trackSent(_ t: Tracks, lun: UInt32, track: UInt64) -> Bool {
        guard let bitmap = t.bitmaps[lun], track < UInt64(bitmap.trackCount), !bitmap.isSet(Int(track)) else { return false }
        return t.inFlight.isEmpty || !t.inFlight.contains(UInt64(lun) << 40 | track)
    }

    /// An asynchronous group's write, done here (`wrote`: it succeeded), under its track locks: captured into the
    /// delta sets (`capture(offset, count)`, a part of the write) where R2 is to get it from them, else its tracks
    /// remembered. R2 gets it from the sets when the group is consistent, or, while it resyncs, for the tracks the
    /// resync has sent (the resync's catch-up set: applied once the resync ends, it brings R2 to a cycle boundary);
    /// the write's part on tracks still to send only marks them. Decided and captured under the group's lock, so no
    /// state change, and no opening or dropping of the sets, comes between.
    ///
    /// Invariant: the sets never hold a block of a track the resync has still to send. Such a block, applied after
    /// the resync, would put older data over the newer copy the resync sent. So a track is marked only while it is
    /// marked (or on its way) already, or together with dropping every set (the blocks turn into their tracks): a
    /// capture that did not take (the sets full, an edge block that could not be read back), or a write that failed
    /// here.
    func captureOrRemember(lun: UInt32, offsetBytes: UInt64, count: UInt64, wrote: Bool, capture: (UInt64, UInt64) -> DeltaSets.Capture) {
        tracks.withLock { t in
            let now = state
            var result = DeltaSets.Capture.closed
            if wrote && now == .synchronized {
                result = capture(offsetBytes, count)
                if result == .captured {
                    writesSent.add(1, ordering: .relaxed)
                    bytesSent.add(count, ordering: .relaxed)
                    return
                }
            }
            if !wrote || now != .syncing {
                t.bitmaps[lun]?.mark(offsetBytes: offsetBytes, count: count)
                // The capture set cannot hold the cycle's writes (the link is slower than they come): the group drops
                // to changed tracks and resyncs, as SRDF/A does when its cache fills.
                if result == .full { deltaSetOverflows.add(1, ordering: .relaxed) }
                if now == .synchronized {
                    moveState(to: .syncing, &t)  // drops the sets
                } else if now == .syncing {
                    dropDeltaSets(keep: false, &t)
                }
                return
            }
            // Resyncing: the write in runs of tracks, each sent already (captured) or not (marked).
            let trackBytes = TrackBitmap.trackBytes
            let end = offsetBytes + count
            var position = offsetBytes
            var captured: UInt64 = 0
            var drop = false
            while position < end {
                let sent = Self.trackSent(t, lun: lun, track: position / trackBytes)
                var runEnd = min(end, (position / trackBytes + 1) * trackBytes)
                while runEnd < end && Self.trackSent(t, lun: lun, track: runEnd / trackBytes) == sent { runEnd = min(end, runEnd + trackBytes) }
                let outcome = sent ? capture(position, runEnd - position) : .closed
                if outcome == .captured {
                    captured += runEnd - position
                } else {
                    t.bitmaps[lun]?.mark(offsetBytes: position, count: runEnd - position)
                    if sent {
                        // A track the resync had sent is marked again: the sets may hold older blocks of it.
                        drop = true
                        if outcome == .full { deltaSetOverflows.add(1, ordering: .relaxed) }
                    }
                }
                position = runEnd
            }
            if drop { dropDeltaSets(keep: false, &t) }
            if captured > 0 {
                writesSent.add(1, ordering: .relaxed)
                bytesSent.add(captured, ordering: .relaxed)
            }
        }
    }

    /// A write's tracks could not go to the remote (or the group does not send them now): remembered for the resync.
    /// A group that got to synchronized since the write began goes back to syncing, so the resync sends them.
    func remember(lun: UInt32, offsetBytes: UInt64, count: UInt64, linkDown: Bool) {
        tracks.withLock { t in
            t.bitmaps[lun]?.mark(offsetBytes: offsetBytes, count: count)
            if state.writesRefused { return }
            // An asynchronous group's writes come here only when they read another state before it resynced (its
            // own writes go through `captureOrRemember`): the catch-up set may hold a block of a track marked now.
            if async != nil && state == .syncing { dropDeltaSets(keep: false, &t) }
            if linkDown {
                if state != .suspended { moveState(to: .partitioned, &t) }
            } else if state == .synchronized {
                moveState(to: .syncing, &t)
            }
        }
    }
}
