// The delta sets of an asynchronous group (SRDF/A's cycles). Every host write of the group's LUNs is copied, as
// whole 4 KiB blocks, into the capture set; every cycle the capture set becomes the transmit set and a new capture
// set starts; the transmit set goes to R2 whole (its journal first, then the images) while the next one fills. A
// write acknowledged before a switch is in that cycle or an earlier one, and one issued after it in that cycle or a
// later one: R2, given whole sets in order, is the source as of a cycle boundary (dependent writes keep their
// order, across all the group's LUNs).
//
// Memory: an arena of `slotCount` 4 KiB slots preallocated at `replica create` (`--cache`), used as a ring. The
// capture set takes slots at the head; a block written again in the same cycle keeps its slot (writes fold). So a
// set is one arc of the ring, and its blocks and their journal records go to R2 as at most two runs, straight from
// the arena. The capture lookup is an open-addressing table tagged with the cycle: entries of older cycles are empty,
// so a switch clears nothing.
//
// The capture takes the set's lock for the copy (a write holds its track locks around its local write and its
// capture, so the local array and the capture see one order of the writes to a block). The transmit set's slots are
// read without the lock: captures only touch the capture arc and new slots at the head, which cannot reach the
// transmit arc while it is in use (the ring is full first). A closed set refuses captures: the group is not
// consistent (syncing, partitioned, suspended), and its writes are tracks in the bitmap instead.
import ArrayModel
import SysPosix

#if canImport(Glibc)
    import Glibc
#endif

final class DeltaSets: @unchecked Sendable {
    static let blockBytes = 4096
    let slotCount: Int
    /// Slot s holds the block `records[s]` names, at `arena + s * blockBytes`.
    let arena: UnsafeMutableRawPointer
    /// Per slot, its journal record: (member, block), as the journal keeps them.
    let records: UnsafeMutablePointer<JournalRecord>
    private let table: UnsafeMutablePointer<Entry>
    private let tableMask: Int
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    struct Entry {
        var key: UInt64
        var cycle: UInt64
        var slot: Int
    }

    // Under the lock. Positions count slots from the start (never wrap); a slot is a position modulo `slotCount`.
    private var captureStart: UInt64 = 0
    private var captureCount: UInt64 = 0
    private var transmitCount: UInt64 = 0
    private(set) var cycle: UInt64 = 1
    private var transmitCycle: UInt64 = 0
    private var isOpen = false
    /// When each set began (the capture) and ended (the switch: the boundary R2 is at once it is applied).
    private var captureBegan = Posix.monotonicSeconds()
    private var transmitBoundary = 0.0
    /// The boundary R2 is at (monotonic seconds), and its cycle.
    private(set) var appliedBoundary = Posix.monotonicSeconds()
    private(set) var appliedCycle: UInt64 = 0

    init(bytes: UInt64) {
        slotCount = Int(max(1, bytes / UInt64(Self.blockBytes)))
        arena = Posix.allocateAligned(bytes: slotCount * Self.blockBytes)
        records = .allocate(capacity: slotCount)
        records.initialize(repeating: JournalRecord(member: 0, block: 0), count: slotCount)
        var size = 1
        while size < 2 * slotCount { size <<= 1 }
        tableMask = size - 1
        table = .allocate(capacity: size)
        table.initialize(repeating: Entry(key: 0, cycle: 0, slot: 0), count: size)
        pthread_mutex_init(mutex, nil)
        // Touch the arena now: the first cycle's writes should not pay for its page faults.
        memset(arena, 0, slotCount * Self.blockBytes)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        table.deallocate()
        records.deallocate()
        Posix.free(arena)
    }

    private func withLock<R>(_ body: () -> R) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body()
    }

    enum Capture { case captured, closed, full }

    /// Copies blocks `firstBlock ..< firstBlock + count` of `member` into the capture set: block i from
    /// `block(i)` (a whole 4 KiB block). All or none: a set too full for them takes none (the group then drops to
    /// tracks, as SRDF/A does when its cache fills).
    func capture(member: Int, firstBlock: UInt64, count: Int, block: (Int) -> UnsafeRawPointer) -> Capture {
        withLock {
            guard isOpen else { return .closed }
            // More blocks than the ring has room for even if all fold (a large zeroed range): full at once.
            if UInt64(count) > UInt64(slotCount) - transmitCount { return .full }
            // Room for the worst case (no block folds), checked before anything is copied.
            let used = captureCount + transmitCount
            if used + UInt64(count) > UInt64(slotCount) {
                var missing = 0
                for i in 0..<count where find(key(member, firstBlock + UInt64(i))) == nil { missing += 1 }
                if used + UInt64(missing) > UInt64(slotCount) { return .full }
            }
            for i in 0..<count {
                let k = key(member, firstBlock + UInt64(i))
                let slot: Int
                if let s = find(k) {
                    slot = s
                } else {
                    slot = Int((captureStart + captureCount) % UInt64(slotCount))
                    captureCount += 1
                    insert(k, slot: slot)
                    records[slot] = JournalRecord(member: UInt32(member), block: firstBlock + UInt64(i))
                }
                memcpy(arena + slot * Self.blockBytes, block(i), Self.blockBytes)
            }
            return .captured
        }
    }

    @inline(__always) private func key(_ member: Int, _ block: UInt64) -> UInt64 { UInt64(member) << 48 | block }

    /// Where a key's probe starts: its bits mixed (the member's high bits into the low ones), then the product's high
    /// half.
    @inline(__always) private func home(_ key: UInt64) -> Int {
        Int(truncatingIfNeeded: ((key ^ key >> 29) &* 0x9E37_79B9_7F4A_7C15) >> 32) & tableMask
    }

    private func find(_ key: UInt64) -> Int? {
        var i = home(key)
        while table[i].cycle == cycle {
            if table[i].key == key { return table[i].slot }
            i = (i + 1) & tableMask
        }
        return nil
    }

    private func insert(_ key: UInt64, slot: Int) {
        var i = home(key)
        while table[i].cycle == cycle { i = (i + 1) & tableMask }
        table[i] = Entry(key: key, cycle: cycle, slot: slot)
    }

    /// A set to send: its cycle, first slot and slot count (an arc of the ring).
    struct Set {
        let cycle: UInt64
        let start: Int
        let count: Int
    }

    /// The transmit set, if there is one.
    var transmitting: Set? {
        withLock {
            transmitCount == 0 ? nil : Set(cycle: transmitCycle, start: Int((captureStart - transmitCount) % UInt64(slotCount)), count: Int(transmitCount))
        }
    }

    /// Bytes in the capture and transmit sets (not yet on R2), and seconds since the boundary R2 is at (0 when
    /// nothing waits).
    var lag: (bytes: UInt64, seconds: Double) {
        withLock {
            let waiting = captureCount + transmitCount
            return (waiting * UInt64(Self.blockBytes), waiting == 0 ? 0 : max(0, Posix.monotonicSeconds() - appliedBoundary))
        }
    }

    /// Bytes in the transmit set (on their way to R2).
    var transmitBytes: UInt64 { withLock { transmitCount * UInt64(Self.blockBytes) } }

    var captureAge: Double { withLock { Posix.monotonicSeconds() - captureBegan } }

    /// The cycle switch: the capture set becomes the transmit set (only when the last one is on R2) and a new
    /// capture set starts. Writes wait on the lock for that instant. An empty capture set makes an empty switch: R2
    /// is the source as of now.
    func switchCycle() {
        withLock {
            guard transmitCount == 0 else { return }
            let now = Posix.monotonicSeconds()
            if captureCount == 0 {
                appliedBoundary = now
                appliedCycle = cycle
            } else {
                transmitCount = captureCount
                transmitCycle = cycle
                transmitBoundary = now
                captureStart += captureCount
                captureCount = 0
            }
            cycle += 1
            captureBegan = now
        }
    }

    /// The transmit set of `cycle` is on R2 (its images flushed): its slots are free.
    func transmitted(cycle done: UInt64) {
        withLock {
            guard transmitCount > 0, transmitCycle == done else { return }
            transmitCount = 0
            appliedCycle = done
            appliedBoundary = transmitBoundary
        }
    }

    /// Captures are taken from now (the group is consistent: R2 is at a cycle boundary with nothing pending). Sets
    /// a resync opened stay as they are: the catch-up set was sent, and what was captured since is the next cycle's.
    func open() {
        withLock {
            guard !isOpen else { return }
            isOpen = true
            captureBegan = Posix.monotonicSeconds()
            appliedBoundary = captureBegan
            // R2 is the source as of now: the boundary of a cycle of its own.
            appliedCycle = cycle
            cycle += 1
        }
    }

    /// Captures are taken from now, while a resync runs (R2 a mix): the writes to tracks it has sent, or never had
    /// to, make its catch-up set, switched when the resync has nothing left and applied after it. R2's boundary is
    /// left as it is: R2 is at none until then.
    func openForResync() {
        withLock {
            guard !isOpen else { return }
            isOpen = true
            captureBegan = Posix.monotonicSeconds()
            cycle += 1  // a cycle of its own: no table entry of an older set is taken for one of it
        }
    }

    /// Captures are refused from now. `drop`: both sets are emptied, and `each` is given every block they held
    /// (member, block) so its track can be remembered instead.
    func close(drop: Bool, _ each: (Int, UInt64) -> Void) {
        withLock {
            isOpen = false
            guard drop else { return }
            if captureCount + transmitCount > 0 { dropCount += 1 }
            let first = captureStart - transmitCount
            for p in first..<(captureStart + captureCount) {
                let r = records[Int(p % UInt64(slotCount))]
                each(Int(r.member), r.block)
            }
            captureStart += captureCount
            captureCount = 0
            transmitCount = 0
            cycle += 1
        }
    }

    /// Times sets that held blocks were dropped to changed tracks.
    private var dropCount = 0
    var drops: Int { withLock { dropCount } }

    var isEmpty: Bool { withLock { captureCount == 0 && transmitCount == 0 } }

    /// What status shows: the capture cycle and the one R2 is at.
    var cycles: (capture: UInt64, applied: UInt64) { withLock { (cycle, appliedCycle) } }

    /// A zero block: what a zeroed range's blocks are captured from (shared, never written).
    nonisolated(unsafe) static let zeroBlock: UnsafeRawPointer = {
        let p = Posix.allocateAligned(bytes: blockBytes)
        memset(p, 0, blockBytes)
        return UnsafeRawPointer(p)
    }()
}
