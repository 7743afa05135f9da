// GlobalMemory: the write-back cache (this file: the slot table, its index, bitmaps and life cycle, and fills;
// TrackCacheHostIO.swift: host reads and writes; TrackCacheDestage.swift: destage, discards, failover). Global memory is split into one portion per director; a `TrackCache` is one
// portion. Every (LUN, stripe) belongs to exactly one director (Engines.owner), and a director's work runs on one
// executor thread at a time, so a portion is never touched concurrently: lookups take no lock. A track is one data strip (stripe unit) of a LUN; a slot holds one
// track, with per-sector (512 B) valid and dirty (write-pending) bits.
//
// Slot states (transition happens in `install`, `markDirty`, `markCommitting`, `finishPass`, `markClean`, `evict`):
//   free -> clean (installed, some sectors valid) -> dirty (write-pending) -> committing (written by this destage
//   pass, its journal batch not yet durable) -> clean (the pass committed) -> free (evicted)
//   committing -> dirty (the pass could not commit: the slot goes back in the dirty queue)
// Invariants: a dirty or committing slot is never evicted; dirty bits are a subset of valid bits; the index maps each
// (LUN, track) to at most one slot. Durability: a slot stays counted write-pending (and mirrored in the partner) until
// the journal record or in-place write that holds its data is on the drives, so a flush that finds a director with
// nothing write-pending finds nothing of it in memory either (docs/ARCHITECTURE.md, "Durability contract"). No slot is
// committing outside a destage pass.
//
// Destage works a stripe at a time, over the page-aligned range that covers the stripe's dirty sectors: all its dirty
// tracks go down together. With every data strip's range in cache the write needs no reads (full-stripe write when
// all were dirty); otherwise levels with parity pick read-modify-write (old data + old P/Q of the dirty strips) or
// reconstruct-write (the missing strips), whichever reads fewer strips. A random read miss fetches just its pages
// (one that spans tracks: its tracks, in one batch); a sequential one (it starts where a recent read of the same LUN
// ended) fetches whole tracks through the rest of the stripe in one batch (read-ahead).
import ArrayModel
import BackEnd
import Buffers
import MemoryServices
import Pool
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Sets bits [first, last] of the per-sector bitmap that starts at word `base` of `bits` (one bit per sector).
@inline(__always)
func setSectorBits(_ bits: inout [UInt64], base: Int, _ first: Int, _ last: Int) {
    var s = first
    while s <= last {
        let word = s >> 6
        let lo = s & 63
        let hi = min(63, last - (word << 6))
        let mask: UInt64 = (hi == 63 ? ~0 : ((1 << UInt64(hi + 1)) - 1)) & ~((1 << UInt64(lo)) - 1)
        bits[base + word] |= mask
        s = (word + 1) << 6
    }
}

/// Whether bit `sector` of the per-sector bitmap that starts at word `base` of `bits` is set.
@inline(__always)
func testSectorBit(_ bits: [UInt64], base: Int, _ sector: Int) -> Bool { bits[base + sector >> 6] & (1 << UInt64(sector & 63)) != 0 }

/// Counters a portion publishes for `vsa status`.
public final class CacheCounters: Sendable {
    public let readHits = Atomic<UInt64>(0)
    public let readMisses = Atomic<UInt64>(0)
    public let writeHits = Atomic<UInt64>(0)
    public let writeMisses = Atomic<UInt64>(0)
    public let dirtySlots = Atomic<Int>(0)
    public let usedSlots = Atomic<Int>(0)
    public let destagedStripes = Atomic<UInt64>(0)
    public let readAheadTracks = Atomic<UInt64>(0)
    /// Read misses fetched together with others of a director's batch, one submit for all (`prefetchMisses`).
    public let batchedMisses = Atomic<UInt64>(0)
    public let writeThroughStripes = Atomic<UInt64>(0)
    /// Whole-stripe writes of thin LUNs that found no pool segment at hand and went through the cache instead.
    public let writeThroughDeferred = Atomic<UInt64>(0)
    public init() {}
}

public final class TrackCache {
    public let slotCount: Int
    public let trackBytes: Int
    public let sectorsPerTrack: Int
    let wordsPerSlot: Int
    let dataStripsPerStripe: Int
    let store: any StripeStore
    let memory: MemoryServices
    public let counters: CacheCounters
    /// Where write-pending sectors are mirrored (the partner director's memory portion); nil while the partner is
    /// out, when the director destages each write before acknowledging it. Changed only while the portion is idle.
    public internal(set) var mirror: WritePendingMirror?
    /// Where thin LUNs' tracks are read from and destaged to (nil: the array has no pool). Set only while the
    /// portion is idle (its director quiesced).
    public var pool: PoolPort?

    // Slot table (structure of arrays, allocated once).
    let arena: Arena
    var slotLUN: [UInt32]
    var slotTrack: [UInt64]
    /// Thick: the array stripe holding the track. Thin: the LUN stripe (the pool maps it).
    var slotStripe: [UInt64]
    var slotThin: [Bool]
    var slotInUse: [Bool]
    var slotDirty: [Bool]
    var slotReferenced: [Bool]
    var slotInDirtyQueue: [Bool]
    /// Slots this destage pass wrote whose journal batch is not committed yet: still write-pending (counted, mirrored).
    var slotCommitting: [Bool]
    var committing: [Int32]
    var committingCount = 0
    var stripesThisPass = 0
    var validBits: [UInt64]
    var dirtyBits: [UInt64]
    /// Thin slots: pages the pool promised a block (a bit per 4 KiB page), and how many.
    var promisedBits: [UInt64]
    let promiseWordsPerSlot: Int
    /// A full pool's promise: the pages of one slot it promises, gathered before the promise is asked for.
    var freshPages: [UInt64]
    var slotPromised: [Int32]
    var hashNext: [Int32]
    var buckets: [Int32]
    let bucketMask: Int
    var freeSlots: [Int32]
    var freeCount: Int
    var clockHand = 0
    // Dirty queue: slots in the order they became dirty (a ring of slot indices).
    var dirtyQueue: [Int32]
    var dirtyHead = 0
    var dirtyTail = 0
    var dirtyQueued = 0
    public internal(set) var dirtyCount = 0
    /// Tests only: runs inside a destage pass after its stripes were written and before their journal batch commits
    /// (the window the fsync-race test holds open). Set before any I/O; nil in the daemon.
    public var beforeCommit: (() -> Void)?
    /// Tests only: runs inside a destage pass after each stripe it wrote (the simulation's scheduler may switch
    /// threads there). Nil in the daemon.
    public var afterEachStripe: (() -> Void)?

    // Destage and fill scratch: pointer table and staging strips (one per data strip of a stripe).
    let stripTable: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    let staging: Arena
    var stripeSlots: [Int32]
    // Destage has its own scratch: a slot install during a read miss may destage to make room.
    let destageTable: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    var destageSlots: [Int32]
    var slotPinned: [Bool]
    /// Slots `prefetchMisses` filled that no read has found yet: the read that finds one counts a miss, as it would
    /// have been without the batch.
    var slotPrefetched: [Bool]
    /// `prefetchMisses`' reads and the slot of each.
    let batchReads: UnsafeMutablePointer<BatchRead>
    var batchSlots: [Int32]
    // Recent read streams: where each expects its next read (LUN id, byte offset), replaced round-robin. Guessing
    // "sequential" from cached neighbours misfires once random reads have warmed the cache, and a wrong guess costs
    // a whole stripe of reads for a 4 KiB request (and, on a thin LUN, read reallocation of the stripe). A read is
    // sequential only once its stream has read `streamConfirmBytes` before it: fio's random reads (its random map
    // picks a free neighbour when its pick was read) continue some stream one read in a few hundred, and each such
    // guess read 192 KiB and wrote it again for a 4 KiB read.
    static let streamCount = 16
    static let streamConfirmBytes: UInt64 = 64 << 10
    var streamLUN: [UInt32]
    var streamNext: [UInt64]
    var streamStart: [UInt64]
    var streamVictim = 0

    public init(slotCount: Int, store: any StripeStore, memory: MemoryServices, counters: CacheCounters) {
        let geometry = store.geometry
        let d = geometry.dataStripsPerStripe
        precondition(slotCount >= 2 * d + 2, "cache portion too small: \(slotCount) slots for \(d)-strip stripes")
        self.slotCount = slotCount
        self.trackBytes = geometry.stripUnitBytes
        self.sectorsPerTrack = trackBytes / sectorBytes
        self.wordsPerSlot = (sectorsPerTrack + 63) / 64
        self.dataStripsPerStripe = d
        self.store = store
        self.memory = memory
        self.counters = counters
        self.arena = Arena(sliceBytes: trackBytes, sliceCount: slotCount)
        slotLUN = Array(repeating: 0, count: slotCount)
        slotTrack = Array(repeating: 0, count: slotCount)
        slotStripe = Array(repeating: 0, count: slotCount)
        slotThin = Array(repeating: false, count: slotCount)
        slotInUse = Array(repeating: false, count: slotCount)
        slotDirty = Array(repeating: false, count: slotCount)
        slotReferenced = Array(repeating: false, count: slotCount)
        slotInDirtyQueue = Array(repeating: false, count: slotCount)
        slotCommitting = Array(repeating: false, count: slotCount)
        committing = Array(repeating: -1, count: slotCount)
        validBits = Array(repeating: 0, count: slotCount * wordsPerSlot)
        dirtyBits = Array(repeating: 0, count: slotCount * wordsPerSlot)
        promiseWordsPerSlot = (sectorsPerTrack / (4096 / sectorBytes) + 63) / 64
        promisedBits = Array(repeating: 0, count: slotCount * promiseWordsPerSlot)
        freshPages = Array(repeating: 0, count: promiseWordsPerSlot)
        slotPromised = Array(repeating: 0, count: slotCount)
        hashNext = Array(repeating: -1, count: slotCount)
        var bucketCount = 1
        while bucketCount < slotCount * 2 { bucketCount <<= 1 }
        buckets = Array(repeating: -1, count: bucketCount)
        bucketMask = bucketCount - 1
        freeSlots = (0..<slotCount).reversed().map { Int32($0) }
        freeCount = slotCount
        dirtyQueue = Array(repeating: -1, count: slotCount)
        stripTable = .allocate(capacity: d + 2)
        stripTable.initialize(repeating: nil, count: d + 2)
        staging = Arena(sliceBytes: trackBytes, sliceCount: d)
        stripeSlots = Array(repeating: -1, count: d)
        destageTable = .allocate(capacity: d + 2)
        destageTable.initialize(repeating: nil, count: d + 2)
        destageSlots = Array(repeating: -1, count: d)
        slotPinned = Array(repeating: false, count: slotCount)
        slotPrefetched = Array(repeating: false, count: slotCount)
        batchReads = .allocate(capacity: 64)
        batchSlots = Array(repeating: -1, count: 64)
        streamLUN = Array(repeating: 0, count: TrackCache.streamCount)
        streamNext = Array(repeating: UInt64.max, count: TrackCache.streamCount)
        streamStart = Array(repeating: 0, count: TrackCache.streamCount)
    }

    /// Whether a read at `offsetBytes` continues a recent read stream of the LUN that has read `streamConfirmBytes`
    /// already; records where this read ends.
    @inline(__always)
    func continuesStream(lun: UInt32, offsetBytes: UInt64, count: Int) -> Bool {
        let end = offsetBytes + UInt64(count)
        if let i = stream(expecting: offsetBytes, lun: lun) {
            streamNext[i] = end
            return offsetBytes - streamStart[i] >= TrackCache.streamConfirmBytes
        }
        streamLUN[streamVictim] = lun
        streamNext[streamVictim] = end
        streamStart[streamVictim] = offsetBytes
        streamVictim = (streamVictim + 1) % TrackCache.streamCount
        return false
    }

    /// The recent read stream of `lun` whose next read starts at `offsetBytes`, if any (nothing recorded).
    @inline(__always)
    func stream(expecting offsetBytes: UInt64, lun: UInt32) -> Int? {
        for i in 0..<TrackCache.streamCount where streamNext[i] == offsetBytes && streamLUN[i] == lun { return i }
        return nil
    }

    deinit {
        batchReads.deallocate()
        stripTable.deallocate()
        destageTable.deallocate()
    }

    // MARK: Index

    @inline(__always)
    func bucket(_ lun: UInt32, _ track: UInt64) -> Int {
        var h = track &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(lun) &* 0xC2B2_AE3D_27D4_EB4F
        h ^= h >> 29
        return Int(truncatingIfNeeded: h) & bucketMask
    }

    @inline(__always)
    public func lookup(lun: UInt32, track: UInt64) -> Int? {
        var s = buckets[bucket(lun, track)]
        while s >= 0 {
            let i = Int(s)
            if slotTrack[i] == track && slotLUN[i] == lun { return i }
            s = hashNext[i]
        }
        return nil
    }

    func unlinkFromIndex(_ slot: Int) {
        let unlinked = unlinkFromChain(slot, bucket: bucket(slotLUN[slot], slotTrack[slot]), buckets: &buckets, next: &hashNext)
        precondition(unlinked, "slot \(slot) missing from the cache index")
    }

    @inline(__always)
    public func slotData(_ slot: Int) -> UnsafeMutableRawPointer { arena.slice(slot) }

    // MARK: Bitmaps

    @inline(__always) func testBit(_ bits: [UInt64], _ slot: Int, _ sector: Int) -> Bool {
        testSectorBit(bits, base: slot * wordsPerSlot, sector)
    }

    func setBits(_ bits: inout [UInt64], _ slot: Int, _ first: Int, _ last: Int) {
        setSectorBits(&bits, base: slot * wordsPerSlot, first, last)
    }

    func allValid(_ slot: Int, _ first: Int, _ last: Int) -> Bool {
        for s in first...last where !testBit(validBits, slot, s) { return false }
        return true
    }

    func setFullyValid(_ slot: Int) { setBits(&validBits, slot, 0, sectorsPerTrack - 1) }

    // MARK: Slot life cycle

    /// Claims a slot for (lun, track); nil when every slot is write-pending and none can be destaged.
    func install(lun: UInt32, track: UInt64, stripe: UInt64, thin: Bool) -> Int? {
        guard let slot = allocateSlot() else { return nil }
        slotLUN[slot] = lun
        slotTrack[slot] = track
        slotStripe[slot] = stripe
        slotThin[slot] = thin
        slotInUse[slot] = true
        slotDirty[slot] = false
        slotReferenced[slot] = true
        slotPrefetched[slot] = false
        for w in 0..<wordsPerSlot {
            validBits[slot * wordsPerSlot + w] = 0
            dirtyBits[slot * wordsPerSlot + w] = 0
        }
        let b = bucket(lun, track)
        hashNext[slot] = buckets[b]
        buckets[b] = Int32(slot)
        counters.usedSlots.store(slotCount - freeCount, ordering: .relaxed)
        return slot
    }

    func evict(_ slot: Int) {
        precondition(slotInUse[slot] && !slotDirty[slot], "evicting a dirty or free slot")
        unlinkFromIndex(slot)
        slotInUse[slot] = false
        freeSlots[freeCount] = Int32(slot)
        freeCount += 1
        counters.usedSlots.store(slotCount - freeCount, ordering: .relaxed)
    }

    /// A free slot: from the free list, else CLOCK over clean slots, else destage until one is clean.
    func allocateSlot() -> Int? {
        while true {
            if freeCount > 0 {
                freeCount -= 1
                return Int(freeSlots[freeCount])
            }
            for _ in 0..<(2 * slotCount) {
                let s = clockHand
                clockHand = (clockHand + 1) % slotCount
                if !slotInUse[s] || slotDirty[s] || slotPinned[s] { continue }
                if slotReferenced[s] {
                    slotReferenced[s] = false
                    continue
                }
                evict(s)
                freeCount -= 1
                return Int(freeSlots[freeCount])
            }
            // Every slot is write-pending: destage synchronously (backpressure on the host).
            // If nothing can go down (more failed drives than the level tolerates), the host gets EIO.
            if destage(stripeBudget: 4) == 0 { return nil }
        }
    }

    func markDirty(_ slot: Int, _ first: Int, _ last: Int) {
        setBits(&dirtyBits, slot, first, last)
        // Mirrored before the write is acknowledged (the caller answers the host after this returns).
        mirror?.record(
            slot: slot, lun: slotLUN[slot], track: slotTrack[slot], lunStart: slotStripe[slot] - slotTrack[slot] / UInt64(dataStripsPerStripe),
            thin: slotThin[slot], first: first, last: last, from: slotData(slot), memory: memory)
        if !slotDirty[slot] {
            slotDirty[slot] = true
            dirtyCount += 1
            counters.dirtySlots.store(dirtyCount, ordering: .relaxed)
        }
        if !slotInDirtyQueue[slot] { queueDirty(slot) }
    }

    /// Appends `slot` to the dirty queue (each slot is queued at most once).
    func queueDirty(_ slot: Int) {
        slotInDirtyQueue[slot] = true
        dirtyQueue[dirtyTail] = Int32(slot)
        dirtyTail = (dirtyTail + 1) % slotCount
        dirtyQueued += 1
    }

    /// Takes the oldest entry off the dirty queue. The slot may have gone clean since (destaged with a neighbour of
    /// its stripe, or discarded): callers skip those.
    func popDirty() -> Int {
        let slot = Int(dirtyQueue[dirtyHead])
        dirtyHead = (dirtyHead + 1) % slotCount
        dirtyQueued -= 1
        slotInDirtyQueue[slot] = false
        return slot
    }

    func markClean(_ slot: Int) {
        guard slotDirty[slot] else { return }
        precondition(!slotCommitting[slot], "a committing slot marked clean outside its pass")
        mirror?.drop(slot: slot)
        slotDirty[slot] = false
        for w in 0..<wordsPerSlot { dirtyBits[slot * wordsPerSlot + w] = 0 }
        // A thin slot's pages are in the pool now (or dropped): their promises go back.
        if slotPromised[slot] > 0 {
            pool?.keep(Int(slotPromised[slot]))
            slotPromised[slot] = 0
            for w in 0..<promiseWordsPerSlot { promisedBits[slot * promiseWordsPerSlot + w] = 0 }
        }
        dirtyCount -= 1
        counters.dirtySlots.store(dirtyCount, ordering: .relaxed)
    }

    // MARK: Fill

    /// Sectors per 4 KiB page: drive I/O is whole pages so O_DIRECT works on 4K-sector devices too.
    let pageSectors = 4096 / sectorBytes

    @inline(__always) func pageAlignedRange(_ first: Int, _ last: Int) -> (first: Int, last: Int) {
        (first - first % pageSectors, min(sectorsPerTrack - 1, last - last % pageSectors + pageSectors - 1))
    }

    /// Whether any of sectors [first, last] of `slot` has its bit set in `bits` (valid or dirty).
    func anyBit(_ bits: [UInt64], _ slot: Int, _ first: Int, _ last: Int) -> Bool {
        for s in first...last where testBit(bits, slot, s) { return true }
        return false
    }

    func anyValid(_ slot: Int, _ first: Int, _ last: Int) -> Bool { anyBit(validBits, slot, first, last) }

    /// Makes sectors [first, last] of `slot` valid: reads their pages and merges the sectors the cache lacks.
    func fill(_ slot: Int, _ first: Int, _ last: Int) -> Bool {
        let range = pageAlignedRange(first, last)
        let strip = Int(slotTrack[slot] % UInt64(dataStripsPerStripe))
        let offset = range.first * sectorBytes
        let count = (range.last - range.first + 1) * sectorBytes
        let merge = anyValid(slot, range.first, range.last)
        stripTable[strip] = merge ? staging.slice(strip) : slotData(slot) + offset
        guard readStrips(lun: slotLUN[slot], thin: slotThin[slot], stripe: slotStripe[slot], stripMask: 1 << UInt64(strip), offset, count, stripTable) else {
            return false
        }
        if merge { mergeInvalid(slot, from: staging.slice(strip), range.first, range.last) }
        setBits(&validBits, slot, range.first, range.last)
        return true
    }

    /// Reads a stripe range from the back end (thick: array stripe `stripe`) or the pool (thin: LUN stripe `stripe`).
    @inline(__always)
    func readStrips(
        lun: UInt32, thin: Bool, stripe: UInt64, stripMask: UInt64, _ offset: Int, _ count: Int, _ targets: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    ) -> Bool {
        if thin {
            guard let pool else { return false }
            return pool.readStrips(lunID: lun, lunStripe: stripe, stripMask: stripMask, offsetBytes: offset, count: count, targets: targets)
        }
        return store.readStrips(stripe: stripe, stripMask: stripMask, offsetBytes: offset, count: count, targets: targets)
    }

    /// Copies into `slot` the sectors of [first, last] that are not valid there, from `source` (which holds sector
    /// `first` at its start).
    func mergeInvalid(_ slot: Int, from source: UnsafeRawPointer, _ first: Int, _ last: Int) {
        var s = first
        while s <= last {
            if testBit(validBits, slot, s) {
                s += 1
                continue
            }
            var e = s
            while e + 1 <= last && !testBit(validBits, slot, e + 1) { e += 1 }
            memory.copy(from: source + (s - first) * sectorBytes, to: slotData(slot) + s * sectorBytes, byteCount: (e - s + 1) * sectorBytes)
            s = e + 1
        }
    }
}
