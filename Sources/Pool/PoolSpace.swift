// PoolSpace: which home owns each segment, and each segment's live blocks. The pool's one lock guards claims and
// releases (once per segment, never per I/O); a segment's live count is changed only by the home that owns it, on
// that home's executor, so it needs no lock (docs/POOL.md, "Segments").
import ArrayModel
import Synchronization

public final class PoolSpace: @unchecked Sendable {
    public static let free: UInt8 = 0xFF
    /// Not the pool's: a thick LUN or the pool area overlaps it.
    public static let reserved: UInt8 = 0xFE

    public let layout: PoolLayout
    private let owners: Locked<[UInt8]>
    /// Live blocks per segment; written only by the owning home.
    private let live: UnsafeMutablePointer<UInt32>
    /// When each segment was claimed, on `segmentClock` (0: before this mount): the cleaner's age of a segment.
    private let stamps: UnsafeMutablePointer<UInt64>
    /// Per segment, how many rebuild or scrub batches hold it (changed and read under the owners' lock): a held
    /// segment keeps its owner (not released, and not claimed while another free one is there), so the batch's
    /// stripe work, run on the owner's director, never races a home writing the segment.
    private let maintained: UnsafeMutablePointer<UInt8>
    private let clock = Atomic<UInt64>(0)
    /// Free segments, kept beside `owners` (changed under its lock) so the write path reads it without the lock.
    private let freeCount = Atomic<Int>(0)
    /// Blocks promised to write-pending pages of thin LUNs in the directors' caches (docs/POOL.md, "Space"): a host
    /// write that dirties a page no promise covers takes one, or gets ENOSPC; destaged and committed, it is given back.
    public let promisedBlocks = Atomic<Int>(0)
    /// Segments promises may not count on: the homes' reserve for checkpoints and unmaps, and the segments each home
    /// holds open (a partly written one, and the next its log names).
    public let heldBackSegments = Atomic<Int>(0)
    /// Live blocks in all segments (data and map nodes, of every version): what the pool holds. Kept beside `live`
    /// (every change of a segment's count changes it), so a promise reads it without a lock or a sum.
    private let liveTotal = Atomic<Int>(0)
    /// Segments that are the pool's (free or owned), kept beside `owners`.
    private let poolSegmentCount = Atomic<Int>(0)

    /// Every segment free except those overlapping `reservedStripes` (thick LUN runs and the pool area).
    public init(layout: PoolLayout, reservedStripes: [Range<UInt64>]) {
        self.layout = layout
        var owners = [UInt8](repeating: PoolSpace.free, count: layout.segmentCount)
        for run in reservedStripes { for s in PoolSpace.segments(overlapping: run, layout) { owners[s] = PoolSpace.reserved } }
        freeCount.store(owners.reduce(0) { $0 + ($1 == PoolSpace.free ? 1 : 0) }, ordering: .relaxed)
        poolSegmentCount.store(owners.reduce(0) { $0 + ($1 == PoolSpace.reserved ? 0 : 1) }, ordering: .relaxed)
        self.owners = Locked(owners)
        live = .allocate(capacity: max(1, layout.segmentCount))
        live.initialize(repeating: 0, count: max(1, layout.segmentCount))
        stamps = .allocate(capacity: max(1, layout.segmentCount))
        stamps.initialize(repeating: 0, count: max(1, layout.segmentCount))
        maintained = .allocate(capacity: max(1, layout.segmentCount))
        maintained.initialize(repeating: 0, count: max(1, layout.segmentCount))
    }

    deinit {
        live.deallocate()
        stamps.deallocate()
        maintained.deallocate()
    }

    /// Holds the segments array stripes `stripes` touch for a rebuild or scrub batch (see `maintained`).
    public func holdForMaintenance(_ stripes: Range<UInt64>) {
        owners.withLock { _ in for s in PoolSpace.segments(overlapping: stripes, layout) { maintained[s] &+= 1 } }
    }

    public func releaseFromMaintenance(_ stripes: Range<UInt64>) {
        owners.withLock { _ in for s in PoolSpace.segments(overlapping: stripes, layout) where maintained[s] > 0 { maintained[s] -= 1 } }
    }

    /// Segments claimed so far (this mount): the clock segment ages are counted on.
    public var segmentClock: UInt64 { clock.load(ordering: .relaxed) }
    /// When segment `s` was claimed (read by its owner: the segment's stamp changes only when it is claimed).
    public func stamp(_ s: Int) -> UInt64 { stamps[s] }

    /// The segments a run of stripes touches (none for an empty run; a segment past the last whole one is not one).
    static func segments(overlapping run: Range<UInt64>, _ layout: PoolLayout) -> Range<Int> {
        guard !run.isEmpty else { return 0..<0 }
        let first = layout.segment(ofStripe: run.lowerBound)
        let last = min(layout.segmentCount - 1, layout.segment(ofStripe: run.upperBound - 1))
        return first <= last ? first..<(last + 1) : 0..<0
    }

    /// Claims a free segment for `home` (the lowest-numbered: a young pool fills from the front), leaving at least
    /// `reserve` free (host data leaves some for checkpoints and the cleaner). Nil when there is none to give.
    public func claim(home: Int, reserve: Int = 0) -> Int? {
        owners.withLock { owners in
            var free = 0
            for o in owners where o == PoolSpace.free { free += 1 }
            guard free > reserve, let any = owners.firstIndex(of: PoolSpace.free) else { return nil }
            // One no rebuild or scrub batch holds, if there is one; else the batch races this home's writes of it
            // (block checksums catch what that garbles on the member being rebuilt), rather than a write failing.
            let s = owners.indices.first { owners[$0] == PoolSpace.free && maintained[$0] == 0 } ?? any
            owners[s] = UInt8(home)
            setLive(s, 0)
            stamps[s] = clock.add(1, ordering: .relaxed).newValue
            freeCount.subtract(1, ordering: .relaxed)
            return s
        }
    }

    /// Gives `home` a segment its checkpoint or log names (recovery). False if the segment is not free: reserved,
    /// or another home's (the drives contradict each other).
    public func assign(_ segment: Int, home: Int, live count: UInt32) -> Bool {
        owners.withLock { owners in
            guard segment >= 0 && segment < owners.count else { return false }
            if owners[segment] == UInt8(home) {
                setLive(segment, count)
                return true
            }
            guard owners[segment] == PoolSpace.free else { return false }
            owners[segment] = UInt8(home)
            setLive(segment, count)
            freeCount.subtract(1, ordering: .relaxed)
            return true
        }
    }

    /// Returns a wholly dead segment to the free set (after the checkpoint that says so is durable).
    public func release(_ segment: Int, home: Int) {
        owners.withLock { owners in
            // A segment a rebuild or scrub batch holds stays the home's until a later checkpoint.
            guard owners[segment] == UInt8(home) && live[segment] == 0 && maintained[segment] == 0 else { return }
            owners[segment] = PoolSpace.free
            freeCount.add(1, ordering: .relaxed)
        }
    }

    /// Takes the segments a new thick LUN's run overlaps out of the pool, all or none: false (nothing changed) when a
    /// home owns one of them. Under the pool's lock, so no home claims one between the check and the marking.
    public func reserve(_ run: Range<UInt64>) -> Bool {
        owners.withLock { owners in
            let segments = PoolSpace.segments(overlapping: run, layout)
            guard !segments.contains(where: { owners[$0] != PoolSpace.free && owners[$0] != PoolSpace.reserved }) else { return false }
            for s in segments where owners[s] == PoolSpace.free {
                owners[s] = PoolSpace.reserved
                freeCount.subtract(1, ordering: .relaxed)
                poolSegmentCount.subtract(1, ordering: .relaxed)
            }
            return true
        }
    }

    /// A deleted thick LUN's segments return to the pool, except those another thick run or the pool area still
    /// overlaps (`stillReserved`).
    public func unreserve(_ run: Range<UInt64>, stillReserved: [Range<UInt64>] = []) {
        owners.withLock { owners in
            for s in PoolSpace.segments(overlapping: run, layout) where owners[s] == PoolSpace.reserved {
                let segment = layout.firstStripe(segment: s)..<layout.firstStripe(segment: s + 1)
                if !stillReserved.contains(where: { $0.overlaps(segment) }) {
                    owners[s] = PoolSpace.free
                    freeCount.add(1, ordering: .relaxed)
                    poolSegmentCount.add(1, ordering: .relaxed)
                }
            }
        }
    }

    /// Frees every segment of `home` (a recovery attempt that failed gives back what it assigned).
    public func forget(home: Int) {
        owners.withLock { owners in
            for s in owners.indices where owners[s] == UInt8(home) {
                owners[s] = PoolSpace.free
                setLive(s, 0)
                freeCount.add(1, ordering: .relaxed)
            }
        }
    }

    public func owner(_ segment: Int) -> UInt8 { owners.withLock { $0[segment] } }

    /// The segments `home` owns, in order.
    public func owned(by home: Int) -> [Int] {
        owners.withLock { owners in owners.indices.filter { owners[$0] == UInt8(home) } }
    }

    public var freeSegments: Int { freeCount.load(ordering: .relaxed) }

    /// Promises `count` blocks to write-pending pages if what the pool holds, with every promise, stays within its
    /// capacity (`capacityBlocks`: what is left once the segments held back and the cleaner's spare segments are
    /// set aside); `force` promises regardless (a failover's replay of pages a host already had acknowledged). No
    /// lock. A promise is of space, not of a free segment now: the dead blocks of partly used segments are what the
    /// cleaner turns into free ones, and the spare segments are what it needs to do so at any fill.
    public func promise(_ count: Int, force: Bool = false) -> Bool {
        var promised = promisedBlocks.load(ordering: .relaxed)
        while true {
            if !force {
                guard liveTotal.load(ordering: .relaxed) + promised + count <= capacityBlocks else { return false }
            }
            let (done, seen) = promisedBlocks.compareExchange(expected: promised, desired: promised + count, ordering: .relaxed)
            if done { return true }
            promised = seen
        }
    }

    /// Segments kept out of the pool's size for the cleaner (as an SSD keeps spare area): a tenth of what host data may
    /// use, two per home at least. A pool full of live data then still has a tenth of its segments' worth of dead
    /// blocks and free segments, so overwrites (each a new block, the old one dead) go on at any fill, the cleaner
    /// gaining about a tenth of every segment it moves at worst, more as overwrites age the segments unevenly.
    public var spareSegments: Int { PoolSpace.spare(ofUsable: usableSegments, homes: layout.homes) }

    private static func spare(ofUsable usable: Int, homes: Int) -> Int { min(usable, max(2 * homes, usable / 10)) }

    /// Segments host data may use: the pool's, less those held back.
    private var usableSegments: Int { max(0, poolSegmentCount.load(ordering: .relaxed) - heldBackSegments.load(ordering: .relaxed)) }

    /// What the pool can hold, in blocks: the segments host data may use less the spare ones, each counted as the
    /// blocks promises count on.
    public var capacityBlocks: Int {
        let usable = usableSegments
        return (usable - PoolSpace.spare(ofUsable: usable, homes: layout.homes)) * promisableBlocksPerSegment
    }

    /// Whether some version shares blocks with another (a snapshot, a clone, a zombie). The cleaner moves only blocks
    /// one version owns, so a segment holding a shared block keeps its dead blocks until the sharing ends: then dead
    /// blocks are not all free space, and promises also stay within the free segments (`PoolPort.promise`). Set by
    /// the daemon (true before a snapshot or clone is made, looked at again after deletes and once a second); true
    /// until it has looked.
    public let sharing = Atomic<Bool>(true)

    /// The share of the segments host data may use that is free, with promised blocks counted as used: what the
    /// cleaner's policy and read reallocation go by.
    public var freeFraction: Double {
        let held = heldBackSegments.load(ordering: .relaxed)
        let usable = max(1, poolSegments - held)
        let promised = (max(0, promisedBlocks.load(ordering: .relaxed)) + layout.blocksPerSegment - 1) / layout.blocksPerSegment
        return Double(max(0, freeSegments - held - promised)) / Double(usable)
    }

    /// Read reallocation (`PoolPort.readStrips`): on unless the mount says `-o read_realloc=off`.
    public let readReallocation = Atomic<Bool>(true)

    /// Whether every promise fits in the free segments not held back (the bound while versions share blocks).
    public var promisesFitFreeSegments: Bool {
        promisedBlocks.load(ordering: .relaxed) <= (freeSegments - heldBackSegments.load(ordering: .relaxed)) * promisableBlocksPerSegment
    }

    /// Victims being cleaned, in every home: each may need a segment to finish in (`takeVictimRoom`).
    private let victimsInProgress = Atomic<Int>(0)

    /// Counts one more victim in progress if the free segments above `floor` (what the cleaner leaves to checkpoints)
    /// cover every victim in progress and this one, a segment each: a victim's live blocks fit in one, so every victim
    /// started can be finished, whatever the other homes do (host data stops above the floor with a segment per home
    /// to spare). A cleaner that starts victims it cannot finish stops with all of them half moved and no room left.
    public func takeVictimRoom(floor: Int) -> Bool {
        var count = victimsInProgress.load(ordering: .relaxed)
        while true {
            guard freeSegments - floor > count else { return false }
            let (done, seen) = victimsInProgress.compareExchange(expected: count, desired: count + 1, ordering: .relaxed)
            if done { return true }
            count = seen
        }
    }

    /// Whether a victim could be started now.
    public func hasVictimRoom(floor: Int) -> Bool { freeSegments - floor > victimsInProgress.load(ordering: .relaxed) }

    /// A victim is done (or given up): its room is no longer counted.
    public func giveVictimRoom() {
        let left = victimsInProgress.subtract(1, ordering: .relaxed).newValue
        assert(left >= 0, "more victims finished than started")
    }

    /// Live blocks in all segments.
    public var liveBlocksTotal: Int { liveTotal.load(ordering: .relaxed) }

    /// Blocks of a segment promises count on: each stripe also carries a commit's summary and the padding of its
    /// last row (a row, at most, in a stripe filled by one commit); more padding (a commit per fsync) is dead space
    /// the cleaner takes back, and writes that find no room clean first.
    public var promisableBlocksPerSegment: Int {
        // A stripe of one row has no padding: a commit there ends when the row is full (the summary and what follows).
        let perStripe = layout.rowsPerStripe > 1 ? layout.blocksPerRow : 1
        return max(1, layout.blocksPerSegment - Int(layout.stripesPerSegment) * perStripe)
    }

    /// Gives back promises whose pages were committed or dropped.
    public func keep(_ count: Int) {
        let left = promisedBlocks.subtract(count, ordering: .relaxed).newValue
        assert(left >= 0, "more promises given back than made")
    }
    /// Segments that are the pool's (free or owned).
    public var poolSegments: Int { poolSegmentCount.load(ordering: .relaxed) }

    // Owner-only (the home's executor): live counts.
    @inline(__always) public func liveBlocks(_ segment: Int) -> UInt32 { live[segment] }
    @inline(__always) func addLive(_ segment: Int) {
        live[segment] += 1
        liveTotal.add(1, ordering: .relaxed)
    }

    /// Sets a segment's live count (claimed, assigned by recovery, forgotten), the total with it.
    private func setLive(_ segment: Int, _ count: UInt32) {
        liveTotal.add(Int(count) - Int(live[segment]), ordering: .relaxed)
        live[segment] = count
    }
    /// A free of a block its segment does not count as live: the drives' tables disagree with the map (damage, or a
    /// hostile image). Counted, never trusted into an underflow.
    public let inconsistencies = Atomic<Int>(0)
    /// Returns whether the segment has no live block left.
    @discardableResult
    @inline(__always) func removeLive(_ segment: Int) -> Bool {
        if live[segment] == 0 {
            inconsistencies.add(1, ordering: .relaxed)
            return true
        }
        live[segment] -= 1
        liveTotal.subtract(1, ordering: .relaxed)
        return live[segment] == 0
    }
}
