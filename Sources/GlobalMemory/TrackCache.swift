// GlobalMemory: the write-back cache. Global memory is split into one portion per director; a `TrackCache` is one
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
// reconstruct-write (the missing strips), whichever reads fewer strips. A random read miss fetches just its pages;
// a sequential one (it starts where a recent read of the same LUN ended) fetches whole tracks through the rest of
// the stripe in one batch (read-ahead).
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
    public let writeThroughStripes = Atomic<UInt64>(0)
    public init() {}
}

public final class TrackCache {
    public let slotCount: Int
    public let trackBytes: Int
    public let sectorsPerTrack: Int
    private let wordsPerSlot: Int
    private let dataStripsPerStripe: Int
    private let store: any StripeStore
    private let memory: MemoryServices
    public let counters: CacheCounters
    /// Where write-pending sectors are mirrored (the partner director's memory portion); nil while the partner is
    /// out, when the director destages each write before acknowledging it. Changed only while the portion is idle.
    public private(set) var mirror: WritePendingMirror?
    /// Where thin LUNs' tracks are read from and destaged to (nil: the array has no pool). Set only while the
    /// portion is idle (its director quiesced).
    public var pool: PoolPort?

    // Slot table (structure of arrays, allocated once).
    private let arena: Arena
    private var slotLUN: [UInt32]
    private var slotTrack: [UInt64]
    /// Thick: the array stripe holding the track. Thin: the LUN stripe (the pool maps it).
    private var slotStripe: [UInt64]
    private var slotThin: [Bool]
    private var slotInUse: [Bool]
    private var slotDirty: [Bool]
    private var slotReferenced: [Bool]
    private var slotInDirtyQueue: [Bool]
    /// Slots this destage pass wrote whose journal batch is not committed yet: still write-pending (counted, mirrored).
    private var slotCommitting: [Bool]
    private var committing: [Int32]
    private var committingCount = 0
    private var stripesThisPass = 0
    private var validBits: [UInt64]
    private var dirtyBits: [UInt64]
    /// Thin slots: pages the pool promised a block (a bit per 4 KiB page), and how many.
    private var promisedBits: [UInt64]
    private let promiseWordsPerSlot: Int
    private var slotPromised: [Int32]
    private var hashNext: [Int32]
    private var buckets: [Int32]
    private let bucketMask: Int
    private var freeSlots: [Int32]
    private var freeCount: Int
    private var clockHand = 0
    // Dirty queue: slots in the order they became dirty (a ring of slot indices).
    private var dirtyQueue: [Int32]
    private var dirtyHead = 0
    private var dirtyTail = 0
    private var dirtyQueued = 0
    public private(set) var dirtyCount = 0
    /// Tests only: runs inside a destage pass after its stripes were written and before their journal batch commits
    /// (the window the fsync-race test holds open). Set before any I/O; nil in the daemon.
    public var beforeCommit: (() -> Void)?
    /// Tests only: runs inside a destage pass after each stripe it wrote (the simulation's scheduler may switch
    /// threads there). Nil in the daemon.
    public var afterEachStripe: (() -> Void)?

    // Destage and fill scratch: pointer table and staging strips (one per data strip of a stripe).
    private let stripTable: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    private let staging: Arena
    private var stripeSlots: [Int32]
    // Destage has its own scratch: a slot install during a read miss may destage to make room.
    private let destageTable: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    private let destageStaging: Arena
    private var destageSlots: [Int32]
    private var slotPinned: [Bool]
    // Recent read streams: where each expects its next read (LUN id, byte offset), replaced round-robin. Guessing
    // "sequential" from cached neighbours misfires once random reads have warmed the cache, and a wrong guess costs
    // a whole stripe of reads for a 4 KiB request.
    private static let streamCount = 16
    private var streamLUN: [UInt32]
    private var streamNext: [UInt64]
    private var streamVictim = 0

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
        destageStaging = Arena(sliceBytes: trackBytes, sliceCount: d)
        destageSlots = Array(repeating: -1, count: d)
        slotPinned = Array(repeating: false, count: slotCount)
        streamLUN = Array(repeating: 0, count: TrackCache.streamCount)
        streamNext = Array(repeating: UInt64.max, count: TrackCache.streamCount)
    }

    /// Whether a read at `offsetBytes` continues a recent read stream of the LUN; records where this read ends.
    @inline(__always)
    private func continuesStream(lun: UInt32, offsetBytes: UInt64, count: Int) -> Bool {
        let end = offsetBytes + UInt64(count)
        for i in 0..<TrackCache.streamCount where streamNext[i] == offsetBytes && streamLUN[i] == lun {
            streamNext[i] = end
            return true
        }
        streamLUN[streamVictim] = lun
        streamNext[streamVictim] = end
        streamVictim = (streamVictim + 1) % TrackCache.streamCount
        return false
    }

    deinit {
        stripTable.deallocate()
        destageTable.deallocate()
    }

    // MARK: Index

    @inline(__always)
    private func bucket(_ lun: UInt32, _ track: UInt64) -> Int {
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

    private func unlinkFromIndex(_ slot: Int) {
        let unlinked = unlinkFromChain(slot, bucket: bucket(slotLUN[slot], slotTrack[slot]), buckets: &buckets, next: &hashNext)
        precondition(unlinked, "slot \(slot) missing from the cache index")
    }

    @inline(__always)
    public func slotData(_ slot: Int) -> UnsafeMutableRawPointer { arena.slice(slot) }

    // MARK: Bitmaps

    @inline(__always) private func testBit(_ bits: [UInt64], _ slot: Int, _ sector: Int) -> Bool {
        testSectorBit(bits, base: slot * wordsPerSlot, sector)
    }

    private func setBits(_ bits: inout [UInt64], _ slot: Int, _ first: Int, _ last: Int) {
        setSectorBits(&bits, base: slot * wordsPerSlot, first, last)
    }

    private func allValid(_ slot: Int, _ first: Int, _ last: Int) -> Bool {
        for s in first...last where !testBit(validBits, slot, s) { return false }
        return true
    }

    private func setFullyValid(_ slot: Int) { setBits(&validBits, slot, 0, sectorsPerTrack - 1) }

    // MARK: Slot life cycle

    /// Claims a slot for (lun, track); nil when every slot is write-pending and none can be destaged.
    private func install(lun: UInt32, track: UInt64, stripe: UInt64, thin: Bool) -> Int? {
        guard let slot = allocateSlot() else { return nil }
        slotLUN[slot] = lun
        slotTrack[slot] = track
        slotStripe[slot] = stripe
        slotThin[slot] = thin
        slotInUse[slot] = true
        slotDirty[slot] = false
        slotReferenced[slot] = true
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

    private func evict(_ slot: Int) {
        precondition(slotInUse[slot] && !slotDirty[slot], "evicting a dirty or free slot")
        unlinkFromIndex(slot)
        slotInUse[slot] = false
        freeSlots[freeCount] = Int32(slot)
        freeCount += 1
        counters.usedSlots.store(slotCount - freeCount, ordering: .relaxed)
    }

    /// A free slot: from the free list, else CLOCK over clean slots, else destage until one is clean.
    private func allocateSlot() -> Int? {
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

    private func markDirty(_ slot: Int, _ first: Int, _ last: Int) {
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
    private func queueDirty(_ slot: Int) {
        slotInDirtyQueue[slot] = true
        dirtyQueue[dirtyTail] = Int32(slot)
        dirtyTail = (dirtyTail + 1) % slotCount
        dirtyQueued += 1
    }

    /// Takes the oldest entry off the dirty queue. The slot may have gone clean since (destaged with a neighbour of
    /// its stripe, or discarded): callers skip those.
    private func popDirty() -> Int {
        let slot = Int(dirtyQueue[dirtyHead])
        dirtyHead = (dirtyHead + 1) % slotCount
        dirtyQueued -= 1
        slotInDirtyQueue[slot] = false
        return slot
    }

    private func markClean(_ slot: Int) {
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
    private let pageSectors = 4096 / sectorBytes

    @inline(__always) private func pageAlignedRange(_ first: Int, _ last: Int) -> (first: Int, last: Int) {
        (first - first % pageSectors, min(sectorsPerTrack - 1, last - last % pageSectors + pageSectors - 1))
    }

    /// Whether any of sectors [first, last] of `slot` has its bit set in `bits` (valid or dirty).
    private func anyBit(_ bits: [UInt64], _ slot: Int, _ first: Int, _ last: Int) -> Bool {
        for s in first...last where testBit(bits, slot, s) { return true }
        return false
    }

    private func anyValid(_ slot: Int, _ first: Int, _ last: Int) -> Bool { anyBit(validBits, slot, first, last) }

    /// Makes sectors [first, last] of `slot` valid: reads their pages and merges the sectors the cache lacks.
    private func fill(_ slot: Int, _ first: Int, _ last: Int) -> Bool {
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
    private func readStrips(
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
    private func mergeInvalid(_ slot: Int, from source: UnsafeMutableRawPointer, _ first: Int, _ last: Int) {
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

    // MARK: Host I/O (called by the owning director)

    /// The part of a byte range that falls in one track: the track, the byte offset in it, the length, and the first
    /// and last sectors it touches.
    @inline(__always)
    private func span(_ position: UInt64, _ remaining: Int) -> (track: UInt64, inTrack: Int, length: Int, first: Int, last: Int) {
        let track = position / UInt64(trackBytes)
        let inTrack = Int(position % UInt64(trackBytes))
        let length = min(remaining, trackBytes - inTrack)
        return (track, inTrack, length, inTrack / sectorBytes, (inTrack + length - 1) / sectorBytes)
    }

    /// Copies `count` bytes of the LUN at `offsetBytes` into `target`. The range must lie in one stripe.
    public func read(lun: LUNRef, offsetBytes: UInt64, count: Int, into target: UnsafeMutableRawPointer) -> Bool {
        let sequential = continuesStream(lun: lun.lunID, offsetBytes: offsetBytes, count: count)
        var done = 0
        while done < count {
            let (track, inTrack, length, first, last) = span(offsetBytes + UInt64(done), count - done)
            var slot = lookup(lun: lun.lunID, track: track)
            if let s = slot, allValid(s, first, last) {
                counters.readHits.add(1, ordering: .relaxed)
                slotReferenced[s] = true
            } else {
                counters.readMisses.add(1, ordering: .relaxed)
                guard let filled = readMiss(lun: lun, track: track, existing: slot, first: first, last: last, sequential: sequential || done > 0) else {
                    return false
                }
                slot = filled
            }
            memory.copy(from: slotData(slot!) + inTrack, to: target + done, byteCount: length)
            done += length
        }
        return true
    }

    /// Fetches what a read missed. A random read fetches just its pages; a sequential one (it continues a read stream,
    /// or it is the second track of a read that spans tracks) fetches the rest of its track and the following tracks
    /// of its stripe in one batch (read-ahead).
    private func readMiss(lun: LUNRef, track: UInt64, existing: Int?, first: Int, last: Int, sequential: Bool) -> Int? {
        let d = UInt64(dataStripsPerStripe)
        let stripe = lun.startStripe + track / d
        let firstStrip = Int(track % d)
        if !sequential {
            // Random: only the pages asked for.
            var slot = existing
            if slot == nil { slot = install(lun: lun.lunID, track: track, stripe: stripe, thin: lun.thin) }
            guard let slot else { return nil }
            guard fill(slot, first, last) else {
                if !slotDirty[slot] && !anyValid(slot, 0, sectorsPerTrack - 1) { evict(slot) }
                return nil
            }
            return slot
        }
        let lastStrip = dataStripsPerStripe - 1
        let lunTracks = (lun.sizeBytes + UInt64(trackBytes) - 1) / UInt64(trackBytes)
        var mask: UInt64 = 0
        var merge: UInt64 = 0
        // First claim the slots (an install may destage to make room, so pin what is claimed), then aim the reads.
        if let existing { slotPinned[existing] = true }
        for strip in firstStrip...lastStrip {
            let t = track - UInt64(firstStrip) + UInt64(strip)
            if t >= lunTracks { break }
            var slot = strip == firstStrip ? existing : lookup(lun: lun.lunID, track: t)
            if strip != firstStrip && slot != nil { continue }  // already cached: read-ahead skips it
            if slot == nil { slot = install(lun: lun.lunID, track: t, stripe: stripe, thin: lun.thin) }
            if slot == nil {
                if strip == firstStrip {
                    if let existing { slotPinned[existing] = false }
                    return nil
                }
                break  // no room for read-ahead: read what is claimed
            }
            slotPinned[slot!] = true
            stripeSlots[strip] = Int32(slot!)
            mask |= 1 << UInt64(strip)
        }
        for strip in firstStrip...lastStrip where mask & (1 << UInt64(strip)) != 0 {
            let slot = Int(stripeSlots[strip])
            slotPinned[slot] = false
            let partial = anyValid(slot, 0, sectorsPerTrack - 1)
            stripTable[strip] = partial ? staging.slice(strip) : slotData(slot)
            if partial { merge |= 1 << UInt64(strip) }
        }
        if mask.nonzeroBitCount > 1 { counters.readAheadTracks.add(UInt64(mask.nonzeroBitCount - 1), ordering: .relaxed) }
        let ok = readStrips(lun: lun.lunID, thin: lun.thin, stripe: stripe, stripMask: mask, 0, trackBytes, stripTable)
        for strip in firstStrip...lastStrip where mask & (1 << UInt64(strip)) != 0 {
            let slot = Int(stripeSlots[strip])
            if ok {
                if merge & (1 << UInt64(strip)) != 0 { mergeInvalid(slot, from: staging.slice(strip), 0, sectorsPerTrack - 1) }
                setFullyValid(slot)
            } else if !slotDirty[slot] && !anyValid(slot, 0, sectorsPerTrack - 1) {
                evict(slot)
            }
        }
        return ok ? Int(stripeSlots[firstStrip]) : nil
    }

    /// Copies `count` bytes from `source` (or zeroes when nil) into the LUN at `offsetBytes`; write-back.
    public func write(lun: LUNRef, offsetBytes: UInt64, count: Int, from source: UnsafeRawPointer?) -> Bool {
        writeBack(lun: lun, offsetBytes: offsetBytes, count: count, from: source) == 0
    }

    /// `write`, answering 0, EIO, or ENOSPC when a thin LUN's pool cannot promise a block for a page this write
    /// makes write-pending (`replaying`: a failover's replay of acknowledged writes, promised regardless).
    public func writeBack(lun: LUNRef, offsetBytes: UInt64, count: Int, from source: UnsafeRawPointer?, replaying: Bool = false) -> Int32 {
        var done = 0
        while done < count {
            let (track, inTrack, length, first, last) = span(offsetBytes + UInt64(done), count - done)
            let slot: Int
            if let s = lookup(lun: lun.lunID, track: track) {
                slot = s
                counters.writeHits.add(1, ordering: .relaxed)
                slotReferenced[s] = true
            } else {
                counters.writeMisses.add(1, ordering: .relaxed)
                guard let s = install(lun: lun.lunID, track: track, stripe: lun.startStripe + track / UInt64(dataStripsPerStripe), thin: lun.thin) else {
                    return EIO
                }
                slot = s
            }
            if lun.thin {
                guard promisePages(slot, first, last, inTrack: inTrack, length: length, zero: source == nil, force: replaying) else {
                    // Nothing of this track changed; an untouched slot goes back.
                    if !slotDirty[slot] && !anyValid(slot, 0, sectorsPerTrack - 1) { evict(slot) }
                    return ENOSPC
                }
            }
            // A write that covers part of a sector needs the rest of that sector first.
            let headPartial = inTrack % sectorBytes != 0 && !testBit(validBits, slot, first)
            let tailPartial = (inTrack + length) % sectorBytes != 0 && !testBit(validBits, slot, last)
            if headPartial { guard fill(slot, first, first) else { return EIO } }
            if tailPartial && !testBit(validBits, slot, last) { guard fill(slot, last, last) else { return EIO } }
            // The host data into the slot and, when mirrored, the slot's sectors into the partner's memory: two
            // service requests queued in order and run together before the write is acknowledged.
            if let source {
                memory.submit(.copy(from: source + done, to: slotData(slot) + inTrack, byteCount: length))
            } else {
                memory.submit(.zero(slotData(slot) + inTrack, byteCount: length))
            }
            setBits(&validBits, slot, first, last)
            markDirty(slot, first, last)
            memory.execute()
            done += length
        }
        return 0
    }

    /// A thin LUN's slot: the pool promises a block to every page of sectors [first, last] that has no promise yet,
    /// except pages this write wholly zeroes (their destage unmaps). False: the pool cannot (ENOSPC).
    private func promisePages(_ slot: Int, _ first: Int, _ last: Int, inTrack: Int, length: Int, zero: Bool, force: Bool) -> Bool {
        guard let pool else { return false }
        let base = slot * promiseWordsPerSlot
        let pageBytes = pageSectors * sectorBytes
        @inline(__always) func needs(_ page: Int) -> Bool {
            !testSectorBit(promisedBits, base: base, page) && !(zero && page * pageBytes >= inTrack && (page + 1) * pageBytes <= inTrack + length)
        }
        var needed = 0
        for page in (first / pageSectors)...(last / pageSectors) where needs(page) { needed += 1 }
        guard needed > 0 else { return true }
        guard pool.promise(needed, lunID: slotLUN[slot], lunStripe: slotStripe[slot], force: force) else { return false }
        for page in (first / pageSectors)...(last / pageSectors) where needs(page) { setSectorBits(&promisedBits, base: base, page, page) }
        slotPromised[slot] += Int32(needed)
        return true
    }

    /// Whether a write of `count` bytes at `offsetBytes` from `source` can go straight to the drives: it covers one
    /// whole stripe, and the buffer suits every drive (direct I/O needs 4 KiB alignment; FUSE's buffers are not).
    @inline(__always)
    public func canWriteThrough(offsetBytes: UInt64, count: Int, from source: UnsafeRawPointer?) -> Bool {
        guard let source, count == trackBytes * dataStripsPerStripe, offsetBytes % UInt64(count) == 0 else { return false }
        // Parity kernels want 32-byte aligned sources; direct I/O wants 4 KiB.
        let address = UInt(bitPattern: source)
        return address % 4096 == 0 || (address % 32 == 0 && !store.needsAlignedBuffers)
    }

    /// Write-through of one whole stripe from the host's buffer: staging it in slots would only add a copy (and, for
    /// a thin LUN, a mirror copy) and a destage (sequential writes are rarely read back soon). A thick LUN's stripe
    /// goes to its place with parity from the request itself, nothing read (a stripe the journal takes is committed
    /// here: no destage pass follows to do it). A thin LUN's pages go straight into its home's commit (the one copy
    /// redirect-on-write makes), written before this returns. Either way a host flush still flushes the drives.
    /// Slots holding tracks of the stripe are forgotten after, write-pending or not: every sector is superseded.
    /// Returns 0, ENOSPC (a thin LUN's pool could not promise the blocks, even after cleaning) or EIO.
    public func writeThrough(lun: LUNRef, offsetBytes: UInt64, from source: UnsafeRawPointer) -> Int32 {
        let d = dataStripsPerStripe
        let firstTrack = offsetBytes / UInt64(trackBytes)
        precondition(firstTrack % UInt64(d) == 0, "write-through of a partial stripe")
        for strip in 0..<d { destageTable[strip] = UnsafeMutableRawPointer(mutating: source) + strip * trackBytes }
        counters.writeThroughStripes.add(1, ordering: .relaxed)
        // The drives first, then the slots: until the new data is down, write-pending slots of the stripe stay
        // counted, so an fsync meanwhile still waits for this director (and a failed write loses nothing older).
        if lun.thin {
            guard let pool else { return EIO }
            if let failure = pool.writeStripe(lunID: lun.lunID, lunStripe: firstTrack / UInt64(d), strips: destageTable) {
                return failure == .noSpace ? ENOSPC : EIO
            }
        } else {
            let stripe = lun.startStripe + firstTrack / UInt64(d)
            guard
                store.writeStripe(stripe: stripe, strips: destageTable, dirtyMask: (1 << UInt64(d)) - 1, offsetBytes: 0, count: trackBytes, allNew: true),
                store.commitJournal()
            else {
                return EIO
            }
        }
        for strip in 0..<d {
            if let slot = lookup(lun: lun.lunID, track: firstTrack + UInt64(strip)) {
                precondition(!slotPinned[slot], "write-through over a pinned slot")
                markClean(slot)
                evict(slot)
            }
        }
        return 0
    }

    // MARK: Destage

    /// Destages up to `stripeBudget` stripes, oldest write-pending first. Returns how many went down.
    @discardableResult
    public func destage(stripeBudget: Int) -> Int {
        var destaged = 0
        while destaged < stripeBudget && dirtyQueued > 0 {
            let slot = popDirty()
            guard slotInUse[slot] && slotDirty[slot] && !slotCommitting[slot] else { continue }
            if destageStripe(containing: slot) {
                destaged += 1
                afterEachStripe?()
            } else {
                // Could not destage (too many failed drives): keep it write-pending and stop for now.
                queueDirty(slot)
                break
            }
        }
        // The pass's journaled stripes go down as one batch: one flush for all of them. Only then are they clean.
        return finishPass() ? destaged : 0
    }

    /// Ends a destage pass: commits the journal batch holding the pass's writes, then marks their slots clean (the
    /// mirror copies go with it). A batch that cannot commit (the array lost more members than it survives) leaves
    /// them write-pending, back in the dirty queue. Returns whether the commit held.
    private func finishPass() -> Bool {
        if stripesThisPass > 0 { beforeCommit?() }
        stripesThisPass = 0
        var committed = store.commitJournal()
        // Thin LUNs' pages this pass gave the pool: its commit makes them durable.
        if let pool, pool.hasUncommitted { committed = pool.commit() && committed }
        for i in 0..<committingCount {
            let slot = Int(committing[i])
            slotCommitting[slot] = false
            if committed {
                markClean(slot)
            } else if !slotInDirtyQueue[slot] {
                queueDirty(slot)
            }
        }
        committingCount = 0
        return committed
    }

    /// A slot whose stripe this pass wrote: clean once the pass's journal batch is durable (`finishPass`).
    private func markCommitting(_ slot: Int) {
        precondition(slotDirty[slot] && !slotCommitting[slot], "committing a slot that is not write-pending")
        slotCommitting[slot] = true
        committing[committingCount] = Int32(slot)
        committingCount += 1
    }

    /// Destages every write-pending slot (of one LUN, or all). Returns false if some could not go down.
    public func destageAll(lunID: UInt32? = nil) -> Bool {
        // Every write-pending slot is in the dirty queue, so walking it costs what is dirty, not the whole portion:
        // an fsync after one small write does one stripe's work. The walk also drops the entries of slots that went
        // clean (else they pile up and every fsync walks them); other LUNs' slots and failures go back in order.
        var ok = true
        for _ in 0..<dirtyQueued {
            let slot = popDirty()
            guard slotInUse[slot] && slotDirty[slot] && !slotCommitting[slot] else { continue }
            if lunID == nil || slotLUN[slot] == lunID! {
                if destageStripe(containing: slot) {
                    afterEachStripe?()
                    continue
                }
                ok = false
            }
            queueDirty(slot)
        }
        return finishPass() && ok
    }

    /// The range of sectors with write-pending data in `slot` (nil when none).
    private func dirtyRange(_ slot: Int) -> (first: Int, last: Int)? {
        var first = -1
        var last = -1
        let base = slot * wordsPerSlot
        for w in 0..<wordsPerSlot where dirtyBits[base + w] != 0 {
            let word = dirtyBits[base + w]
            if first < 0 { first = w * 64 + word.trailingZeroBitCount }
            last = w * 64 + 63 - word.leadingZeroBitCount
        }
        return first < 0 ? nil : (first, last)
    }

    /// Writes one stripe: all its write-pending tracks together, over the page-aligned range that covers their
    /// dirty sectors. Levels with parity choose read-modify-write or reconstruct-write by which reads less.
    private func destageStripe(containing slot: Int) -> Bool {
        if slotThin[slot] { return destageThin(containing: slot) }
        let d = dataStripsPerStripe
        let lun = slotLUN[slot]
        let stripe = slotStripe[slot]
        let baseTrack = slotTrack[slot] - slotTrack[slot] % UInt64(d)
        var dirtyMask: UInt64 = 0
        var first = Int.max
        var last = -1
        for strip in 0..<d {
            let s = lookup(lun: lun, track: baseTrack + UInt64(strip)) ?? -1
            destageSlots[strip] = Int32(s)
            if s >= 0 && slotDirty[s] && !slotCommitting[s], let range = dirtyRange(s) {
                dirtyMask |= 1 << UInt64(strip)
                first = min(first, range.first)
                last = max(last, range.last)
            }
        }
        precondition(dirtyMask != 0, "destaging a stripe with nothing write-pending")
        (first, last) = pageAlignedRange(first, last)
        let offset = first * sectorBytes
        let count = (last - first + 1) * sectorBytes
        // Strips whose range is not wholly in cache: the ones a reconstruct-write would have to read.
        var missingMask: UInt64 = 0
        for strip in 0..<d {
            let s = Int(destageSlots[strip])
            if s < 0 || !allValid(s, first, last) { missingMask |= 1 << UInt64(strip) }
        }
        let ok: Bool
        if store.hasParity && missingMask != 0 && store.canReadModifyWrite(stripe: stripe)
            && dirtyMask.nonzeroBitCount + store.geometry.parityStripsPerStripe < missingMask.nonzeroBitCount
        {
            ok = readModifyWrite(stripe: stripe, dirtyMask: dirtyMask, missingMask: missingMask, first: first, last: last)
        } else {
            ok = reconstructWrite(stripe: stripe, dirtyMask: dirtyMask, missingMask: missingMask, first: first, last: last)
        }
        guard ok else { return false }
        for strip in 0..<d where dirtyMask & (1 << UInt64(strip)) != 0 { markCommitting(Int(destageSlots[strip])) }
        counters.destagedStripes.add(1, ordering: .relaxed)
        stripesThisPass += 1
        return true
    }

    /// A thin LUN's stripe: every page that holds write-pending sectors goes to the pool, whole (completed from the
    /// pool first where the slot lacks some of its sectors): new blocks, nothing read for parity. Durable at the
    /// pass's commit (`finishPass`).
    private func destageThin(containing slot: Int) -> Bool {
        guard let pool else { return false }
        let d = dataStripsPerStripe
        let lun = slotLUN[slot]
        let lunStripe = slotStripe[slot]
        let baseTrack = slotTrack[slot] - slotTrack[slot] % UInt64(d)
        var any = false
        for strip in 0..<d {
            guard let s = lookup(lun: lun, track: baseTrack + UInt64(strip)), slotDirty[s] && !slotCommitting[s] else { continue }
            var first = 0
            while first < sectorsPerTrack {
                let last = first + pageSectors - 1
                if anyBit(dirtyBits, s, first, last) {
                    if !allValid(s, first, last) { guard fill(s, first, last) else { return false } }
                    guard
                        pool.writePage(
                            lunID: lun, lunStripe: lunStripe, strip: strip, offsetBytes: first * sectorBytes, from: slotData(s) + first * sectorBytes) == nil
                    else { return false }
                }
                first += pageSectors
            }
            markCommitting(s)
            any = true
        }
        precondition(any, "destaging a stripe with nothing write-pending")
        counters.destagedStripes.add(1, ordering: .relaxed)
        stripesThisPass += 1
        return true
    }

    /// Reads the old range of the dirty strips and of parity, completes the dirty slots from it, writes the delta.
    private func readModifyWrite(stripe: UInt64, dirtyMask: UInt64, missingMask: UInt64, first: Int, last: Int) -> Bool {
        let offset = first * sectorBytes
        let count = (last - first + 1) * sectorBytes
        guard store.readOld(stripe: stripe, dirtyMask: dirtyMask, offsetBytes: offset, count: count) else {
            // A drive failed since the choice (or during the reads); nothing has changed yet: write it degraded.
            return reconstructWrite(stripe: stripe, dirtyMask: dirtyMask, missingMask: missingMask, first: first, last: last)
        }
        for strip in 0..<dataStripsPerStripe where dirtyMask & (1 << UInt64(strip)) != 0 {
            let s = Int(destageSlots[strip])
            mergeInvalid(s, from: store.oldData(strip: strip), first, last)
            setBits(&validBits, s, first, last)
            destageTable[strip] = slotData(s) + offset
        }
        return store.writeDelta(stripe: stripe, strips: destageTable, dirtyMask: dirtyMask, offsetBytes: offset, count: count)
    }

    /// Brings every strip's range into memory (reading what the cache lacks) and writes dirty strips and parity.
    /// Without parity only the dirty strips matter.
    private func reconstructWrite(stripe: UInt64, dirtyMask: UInt64, missingMask: UInt64, first: Int, last: Int) -> Bool {
        let offset = first * sectorBytes
        let count = (last - first + 1) * sectorBytes
        let readMask = store.hasParity ? missingMask : missingMask & dirtyMask
        for strip in 0..<dataStripsPerStripe {
            let s = Int(destageSlots[strip])
            if readMask & (1 << UInt64(strip)) != 0 {
                destageTable[strip] = destageStaging.slice(strip)
            } else if s >= 0 {
                destageTable[strip] = slotData(s) + offset
            } else {
                destageTable[strip] = nil
            }
        }
        if readMask != 0 {
            guard store.readStrips(stripe: stripe, stripMask: readMask, offsetBytes: offset, count: count, targets: destageTable) else { return false }
            for strip in 0..<dataStripsPerStripe where readMask & (1 << UInt64(strip)) != 0 {
                let s = Int(destageSlots[strip])
                guard s >= 0 else { continue }  // not cached: parity uses the staging copy
                mergeInvalid(s, from: destageStaging.slice(strip), first, last)
                setBits(&validBits, s, first, last)
                destageTable[strip] = slotData(s) + offset
            }
        }
        // Whether every sector of every strip's range is write-pending: then nothing older rides along.
        var allNew = dirtyMask.nonzeroBitCount == dataStripsPerStripe
        for strip in 0..<dataStripsPerStripe where allNew {
            let s = Int(destageSlots[strip])
            for sector in first...last where !testBit(dirtyBits, s, sector) {
                allNew = false
                break
            }
        }
        return store.writeStripe(stripe: stripe, strips: destageTable, dirtyMask: dirtyMask, offsetBytes: offset, count: count, allNew: allNew)
    }

    /// Forgets what the cache read of one stripe of a LUN (a scrub rewrote a data strip there): clean slots go, and a
    /// write-pending slot keeps only its write-pending sectors.
    public func forgetClean(lunID: UInt32, lunStripe: UInt64) {
        let d = UInt64(dataStripsPerStripe)
        for strip in 0..<d {
            guard let slot = lookup(lun: lunID, track: lunStripe * d + strip), !slotPinned[slot] else { continue }
            if slotDirty[slot] {
                for w in 0..<wordsPerSlot { validBits[slot * wordsPerSlot + w] = dirtyBits[slot * wordsPerSlot + w] }
            } else {
                evict(slot)
            }
        }
    }

    /// Forgets every slot of a LUN, write-pending or not (the LUN is being deleted).
    /// Drops the LUN's tracks in LUN stripes `stripes`, write-pending or not (a thin LUN's stripes being unmapped:
    /// what the cache held of them is superseded). Not for thick LUNs, whose slots name array stripes.
    public func discard(lunID: UInt32, stripes: Range<UInt64>) {
        func drop(_ slot: Int) {
            precondition(slotThin[slot] && !slotCommitting[slot] && !slotPinned[slot], "discarding a thick, committing or pinned slot")
            markClean(slot)
            evict(slot)
        }
        // A short range (fstrim sends one per free extent) looks its tracks up; a long one walks the slots once.
        let d = UInt64(dataStripsPerStripe)
        if stripes.count * Int(d) < slotCount - freeCount {
            for track in (stripes.lowerBound * d)..<(stripes.upperBound * d) {
                if let slot = lookup(lun: lunID, track: track) { drop(slot) }
            }
            return
        }
        for slot in 0..<slotCount where slotInUse[slot] && slotLUN[slot] == lunID && stripes.contains(slotStripe[slot]) { drop(slot) }
    }

    public func discard(lunID: UInt32) {
        for slot in 0..<slotCount where slotInUse[slot] && slotLUN[slot] == lunID {
            markClean(slot)
            evict(slot)
        }
    }

    // MARK: Failover (called only while the owning director is idle: its executor role held by the caller)

    /// Mirrors write-pending data into `mirror` from now on (nil: no mirror, the partner is out). Nothing may be
    /// write-pending when the mirror changes: what is dirty now was mirrored in the old place, or not at all.
    public func setMirror(_ mirror: WritePendingMirror?) {
        precondition(dirtyCount == 0, "changing the mirror with \(dirtyCount) write-pending slots")
        precondition(mirror == nil || mirror!.slotCount == slotCount, "a mirror must have a slot per cache slot")
        mirror?.reset()
        self.mirror = mirror
    }

    /// Destages the stripe that holds `offsetBytes` of the LUN if it has write-pending data, and commits the journal:
    /// a write acknowledged while the partner is out is on the drives first.
    public func destageStripe(lunID: UInt32, offsetBytes: UInt64) -> Bool {
        let d = UInt64(dataStripsPerStripe)
        let baseTrack = offsetBytes / UInt64(trackBytes) / d * d
        for strip in 0..<d {
            if let slot = lookup(lun: lunID, track: baseTrack + strip), slotDirty[slot] {
                guard destageStripe(containing: slot) else { return false }
                return finishPass()
            }
        }
        return true
    }

    /// Forgets the clean slots of the LUN stripes `moved` says went to another director (failover or restore): a
    /// director caches only what it owns, so a later owner change never meets stale copies. Destage first.
    public func forget(moved: (_ lunID: UInt32, _ lunStripe: UInt64) -> Bool) {
        let d = UInt64(dataStripsPerStripe)
        for slot in 0..<slotCount where slotInUse[slot] && moved(slotLUN[slot], slotTrack[slot] / d) {
            precondition(!slotDirty[slot] && !slotPinned[slot], "forgetting a write-pending slot")
            evict(slot)
        }
    }

    /// Drops everything, write-pending or not: the director was fenced and its memory portion is gone (its
    /// write-pending data lives on in the partner's mirror, which the partner replays).
    public func reset() {
        // The mirror link goes first (the partner's copy was replayed, or is kept for its replay: markClean must not
        // drop it); a restore pairs the portion again through setMirror, which empties the mirror.
        mirror = nil
        for slot in 0..<slotCount where slotInUse[slot] {
            markClean(slot)
            slotPinned[slot] = false
            evict(slot)
        }
        precondition(dirtyCount == 0, "reset left write-pending slots")
        while dirtyQueued > 0 { _ = popDirty() }
        for i in 0..<TrackCache.streamCount { streamNext[i] = UInt64.max }
    }

    public var writePendingSlots: Int { dirtyCount }
    /// Entries in the dirty queue (write-pending slots, plus any that went clean and are not yet popped).
    public var dirtyQueueLength: Int { dirtyQueued }
}
