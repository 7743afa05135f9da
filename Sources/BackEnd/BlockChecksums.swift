// Block checksums: a CRC32C for every 4 KiB block the array writes to a drive, data and parity alike, kept apart
// from the block in the drive's checksum area (docs/FORMAT.md), so a torn write, a lost write or a bit flip shows as
// a mismatch when the block is read back. The CRC is seeded with the block's address (member, block number), so a
// block written to the wrong place is caught too. A stored 0 means "no checksum yet" (a new drive reads as zeroes);
// a CRC that comes out 0 is stored as 1 (a 2^-32 weakening, no ambiguity).
//
// The entries live in 4 KiB checksum pages (1024 entries: 4 MiB of one drive's data), cached in memory shared by all
// directors of the array: adjacent stripes belong to different directors, and one page covers many stripes. The
// cache is direct-mapped (frame = hash of member and page), each frame guarded by one of 256 striped locks; a miss
// reads the page through the caller's DriveIO (between batches), an eviction writes the old page back first.
//
// No lock is held across drive I/O: a thread that reads or writes a frame's page marks the frame busy and lets go of
// the lock; whoever wants that frame meanwhile waits on the lock's condition, and everyone else goes on. So a
// director stuck on a drive that stopped answering (until the drive deadline fails it) holds up only threads that
// need that very frame, not every director that touches one of the 1/256 of all frames behind the same lock.
//
// Durability: entries change in memory only once their data write is covered (journal records flushed, or a write
// intent recorded), and pages are written back lazily: at an epoch's end (`writeBack`, before the epoch block), when
// evicted, and at a clean stop. After an unclean stop recovery recomputes the entries of every block the newest
// epochs' records and intents name, from what the drives hold; everything older was written back at an epoch's end.
import ArrayModel
import Buffers
import Drives
import MemoryServices
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

public final class BlockChecksums: @unchecked Sendable {
    public static let entriesPerPage = 1024
    let layout: DriveLayout
    let geometry: ArrayGeometry
    let pagesPerDrive: Int
    public let frameCount: Int
    private let frames: Arena
    /// Per frame: which (member, page) it holds (UInt64.max: none), and whether it changed since read.
    private let tags: UnsafeMutablePointer<UInt64>
    private let dirty: UnsafeMutablePointer<Bool>
    /// Per frame: a thread is reading or writing its page without the lock; the frame is its alone until it clears
    /// this and signals the lock's condition.
    private let busy: UnsafeMutablePointer<Bool>
    private let locks: UnsafeMutablePointer<pthread_mutex_t>
    private let settled: UnsafeMutablePointer<pthread_cond_t>
    /// Tests only: called while a page is loaded, after the frame was marked busy and its lock let go (nil in the
    /// daemon). Receives the member and page.
    nonisolated(unsafe) public static var duringLoad: ((Int, Int) -> Void)? = nil
    private static let lockCount = 256
    /// Mismatches found on reads, blocks rewritten from redundancy, entries found wrong (the data was right).
    public let mismatches = Atomic<UInt64>(0)
    public let repairs = Atomic<UInt64>(0)
    public let entryRepairs = Atomic<UInt64>(0)
    public let unrecoverable = Atomic<UInt64>(0)

    /// `cacheBytes`: memory for checksum pages (each covers 4 MiB of one drive); at least one page.
    public init(geometry: ArrayGeometry, cacheBytes: Int = 32 << 20) {
        let layout = geometry.layout!
        self.layout = layout
        self.geometry = geometry
        pagesPerDrive = Int(layout.checksumBytes / 4096)
        let total = pagesPerDrive * geometry.memberCount
        frameCount = max(1, min(total, cacheBytes / 4096))
        frames = Arena(sliceBytes: 4096, sliceCount: frameCount)
        tags = .allocate(capacity: frameCount)
        tags.initialize(repeating: .max, count: frameCount)
        dirty = .allocate(capacity: frameCount)
        dirty.initialize(repeating: false, count: frameCount)
        busy = .allocate(capacity: frameCount)
        busy.initialize(repeating: false, count: frameCount)
        locks = .allocate(capacity: BlockChecksums.lockCount)
        settled = .allocate(capacity: BlockChecksums.lockCount)
        for i in 0..<BlockChecksums.lockCount {
            pthread_mutex_init(locks + i, nil)
            pthread_cond_init(settled + i, nil)
        }
    }

    deinit {
        for i in 0..<BlockChecksums.lockCount {
            pthread_mutex_destroy(locks + i)
            pthread_cond_destroy(settled + i)
        }
        locks.deallocate()
        settled.deallocate()
        busy.deallocate()
        tags.deallocate()
        dirty.deallocate()
    }

    /// The checksum a block must have: CRC32C of its 4 KiB, seeded with its address; never 0.
    @inline(__always)
    public static func checksum(_ block: UnsafeRawPointer, member: Int, blockIndex: UInt64, memory: MemoryServices) -> UInt32 {
        let crc = memory.crc32c(block, count: 4096, seed: seed(member: member, blockIndex: blockIndex))
        return crc == 0 ? 1 : crc
    }

    /// The same checksum from the block's CRC32C with seed 0, known already (a pool's summary has it): not read again.
    @inline(__always)
    public static func checksum(crc: UInt32, member: Int, blockIndex: UInt64) -> UInt32 {
        let sum = crc32c4KReseeded(crc, seed: seed(member: member, blockIndex: blockIndex))
        return sum == 0 ? 1 : sum
    }

    @inline(__always)
    static func seed(member: Int, blockIndex: UInt64) -> UInt32 {
        UInt32(truncatingIfNeeded: (blockIndex &* 0x9E37_79B9) ^ (UInt64(member) << 24) ^ 0x5641_5342)
    }

    /// The block number (within the member's data area) of the byte at `driveOffset`.
    @inline(__always)
    func blockIndex(driveOffset: UInt64) -> UInt64 { (driveOffset - geometry.dataOffsetBytes) / 4096 }

    @inline(__always)
    private func frame(member: Int, page: Int) -> Int {
        if frameCount == pagesPerDrive * geometry.memberCount { return member * pagesPerDrive + page }
        return Int(truncatingIfNeeded: ((UInt64(member) << 40 | UInt64(page)) &* 0x9E37_79B9_7F4A_7C15) >> 17) % frameCount
    }

    /// Runs `body` on the entry of `blockIndex` on `member`, with its page in memory and locked. Nil when the page
    /// could not be read (the drive failed): the caller goes on without checksums for that block.
    @inline(__always)
    private func withEntry<R>(member: Int, blockIndex: UInt64, io: DriveIO, _ body: (UnsafeMutablePointer<UInt32>, Int) -> R) -> R? {
        let page = Int(blockIndex / UInt64(BlockChecksums.entriesPerPage))
        let f = frame(member: member, page: page)
        let lock = locks + (f % BlockChecksums.lockCount)
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        let tag = UInt64(member) << 40 | UInt64(page)
        while busy[f] || tags[f] != tag {
            if busy[f] {
                waitWhileBusy(frame: f)
            } else {
                guard load(frame: f, tag: tag, member: member, page: page, io: io) else { return nil }
            }
        }
        let entries = frames.slice(f).assumingMemoryBound(to: UInt32.self)
        return body(entries + Int(blockIndex % UInt64(BlockChecksums.entriesPerPage)), f)
    }

    /// Brings (member, page) into frame `f`, writing back what was there if it changed. The caller holds the frame's
    /// lock, which is let go during the I/O (the frame is busy meanwhile) and held again on return.
    private func load(frame f: Int, tag: UInt64, member: Int, page: Int, io: DriveIO) -> Bool {
        precondition(io.queuedCount == 0, "checksum pages are read between batches")
        let evicted = tags[f] != .max && dirty[f] ? tags[f] : nil
        tags[f] = .max
        dirty[f] = false
        let loaded = withoutLock(frame: f) {
            if let evicted {
                let oldMember = Int(evicted >> 40)
                let oldPage = Int(evicted & 0xFF_FFFF_FFFF)
                io.queueWrite(drive: oldMember, from: frames.slice(f), count: 4096, offsetBytes: layout.checksumOffsetBytes + UInt64(oldPage) * 4096)
                io.submit()
            }
            BlockChecksums.duringLoad?(member, page)
            io.queueRead(drive: member, into: frames.slice(f), count: 4096, offsetBytes: layout.checksumOffsetBytes + UInt64(page) * 4096)
            return io.submit() == 0
        }
        if loaded { tags[f] = tag }
        return loaded
    }

    /// Waits (the caller holds frame `f`'s lock, let go while waiting) until no thread does I/O on the frame.
    @inline(__always)
    private func waitWhileBusy(frame f: Int) {
        while busy[f] { pthread_cond_wait(settled + (f % BlockChecksums.lockCount), locks + (f % BlockChecksums.lockCount)) }
    }

    /// Runs `io` (drive I/O on frame `f`'s page) with the frame marked busy and its lock let go; the caller holds the
    /// lock before and after. Waiters for the frame are woken when it is done.
    @inline(__always)
    private func withoutLock<R>(frame f: Int, _ io: () -> R) -> R {
        let lock = locks + (f % BlockChecksums.lockCount)
        busy[f] = true
        pthread_mutex_unlock(lock)
        let result = io()
        pthread_mutex_lock(lock)
        busy[f] = false
        pthread_cond_broadcast(settled + (f % BlockChecksums.lockCount))
        return result
    }

    /// Blocks whose checksums are computed before a page lock is taken: the CRCs run outside the lock (directors
    /// share pages), the lock covers only the compare or the store. 64 entries fit on the stack.
    static let runBlocks = 64

    /// Walks `count` bytes at `driveOffset` of `member` in runs of blocks sharing a checksum page (at most
    /// `runBlocks`): computes the run's checksums, then calls `body` with the run's first index in the range, its
    /// length, the sums, and its entries locked. Stops when `body` returns a value.
    @inline(__always)
    private func forEachRun<R>(
        member: Int, driveOffset: UInt64, count: Int, data: UnsafeRawPointer, io: DriveIO, memory: MemoryServices,
        _ body: (Int, Int, UnsafeMutablePointer<UInt32>, UnsafeMutablePointer<UInt32>, Int) -> R?
    ) -> R? {
        let first = blockIndex(driveOffset: driveOffset)
        let blocks = count / 4096
        return withUnsafeTemporaryAllocation(of: UInt32.self, capacity: BlockChecksums.runBlocks) { sums -> R? in
            var i = 0
            while i < blocks {
                let b = first + UInt64(i)
                let run = min(blocks - i, BlockChecksums.runBlocks, BlockChecksums.entriesPerPage - Int(b % UInt64(BlockChecksums.entriesPerPage)))
                for k in 0..<run {
                    sums[k] = BlockChecksums.checksum(data + (i + k) * 4096, member: member, blockIndex: b + UInt64(k), memory: memory)
                }
                let start = i
                if let result = withEntry(member: member, blockIndex: b, io: io, { entry, f in body(start, run, sums.baseAddress!, entry, f) }) ?? nil {
                    return result
                }
                i += run
            }
            return nil
        }
    }

    /// Whether `count` bytes read from `member` at `driveOffset` (whole blocks) match their checksums; the first bad
    /// block's index within the range otherwise. Blocks with no checksum yet pass.
    public func verify(member: Int, driveOffset: UInt64, count: Int, data: UnsafeRawPointer, io: DriveIO, memory: MemoryServices) -> Int? {
        forEachRun(member: member, driveOffset: driveOffset, count: count, data: data, io: io, memory: memory) { start, run, sums, entry, _ in
            for k in 0..<run where entry[k] != 0 && entry[k] != sums[k] { return start + k }
            return nil
        }
    }

    /// Records the checksums of `count` bytes about to be written to `member` at `driveOffset` (whole blocks).
    public func update(member: Int, driveOffset: UInt64, count: Int, data: UnsafeRawPointer, io: DriveIO, memory: MemoryServices) {
        let _: Bool? = forEachRun(member: member, driveOffset: driveOffset, count: count, data: data, io: io, memory: memory) { _, run, sums, entry, f in
            for k in 0..<run where entry[k] != sums[k] {
                entry[k] = sums[k]
                dirty[f] = true
            }
            return nil
        }
    }

    /// Records the checksum of one block about to be written to `member` at `driveOffset`, from its CRC32C with seed
    /// 0 (`crc`, known already).
    public func update(member: Int, driveOffset: UInt64, crc: UInt32, io: DriveIO) {
        let b = blockIndex(driveOffset: driveOffset)
        let sum = BlockChecksums.checksum(crc: crc, member: member, blockIndex: b)
        _ = withEntry(member: member, blockIndex: b, io: io) { entry, f in
            if entry[0] != sum {
                entry[0] = sum
                dirty[f] = true
            }
        }
    }

    /// Forgets the checksums of whole stripes (they were zeroed: no checksum until written again).
    public func clear(firstStripe: UInt64, stripeCount: UInt64, io: DriveIO) {
        let perStrip = UInt64(geometry.stripUnitBytes / 4096)
        precondition(firstStripe <= geometry.stripeCount && stripeCount <= geometry.stripeCount - firstStripe, "clearing checksums outside the array")
        let end = (firstStripe + stripeCount) * perStrip
        for member in 0..<geometry.memberCount {
            var b = firstStripe * perStrip
            while b < end {
                let run = Int(min(end - b, UInt64(BlockChecksums.entriesPerPage) - b % UInt64(BlockChecksums.entriesPerPage)))
                _ = withEntry(member: member, blockIndex: b, io: io) { entry, f in
                    for k in 0..<run where entry[k] != 0 {
                        entry[k] = 0
                        dirty[f] = true
                    }
                }
                b += UInt64(run)
            }
        }
    }

    /// Writes every changed page to its drive (not flushed: the caller flushes), except pages of the members in
    /// `skipping` (failed: nothing reaches them). Between batches of `io`.
    public func writeBack(io: DriveIO, skipping: UInt64 = 0) {
        for f in 0..<frameCount {
            let lock = locks + (f % BlockChecksums.lockCount)
            pthread_mutex_lock(lock)
            waitWhileBusy(frame: f)
            if tags[f] != .max && dirty[f] && skipping & (1 << (tags[f] >> 40)) == 0 {
                let member = Int(tags[f] >> 40)
                let page = Int(tags[f] & 0xFF_FFFF_FFFF)
                // Entries that change while the page is written make it dirty again (they wait: the frame is busy).
                dirty[f] = false
                withoutLock(frame: f) {
                    io.queueWrite(drive: member, from: frames.slice(f), count: 4096, offsetBytes: layout.checksumOffsetBytes + UInt64(page) * 4096)
                    io.submit()
                }
            }
            pthread_mutex_unlock(lock)
        }
    }

    /// A new drive took `member`'s place (its checksum area was cleared): what was cached for the old drive goes.
    /// The rebuild writes the new drive's checksums as it writes its blocks.
    public func forget(member: Int) {
        for f in 0..<frameCount {
            let lock = locks + (f % BlockChecksums.lockCount)
            pthread_mutex_lock(lock)
            // A page of the old drive being read now would land after this: wait for it.
            waitWhileBusy(frame: f)
            if tags[f] != .max && Int(tags[f] >> 40) == member {
                tags[f] = .max
                dirty[f] = false
            }
            pthread_mutex_unlock(lock)
        }
    }
}
