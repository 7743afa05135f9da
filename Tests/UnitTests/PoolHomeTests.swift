// A pool home (Sources/Pool/PoolHome.swift) over a real RAID back end on tmpfs drive files: writes through commits,
// checkpoints, and recovery from the drives alone (the checkpoint, then roll-forward of the log), with crashes at
// chosen points, torn commits, segments chained across, and hostile checkpoint slots.
import ArrayModel
import BackEnd
import Foundation
import MemoryServices
import Metadata
import XCTest

@testable import Pool

/// An array with no LUNs whose whole data area is the pool: the pool area at stripe 0, the rest segments.
final class PoolTestArray {
    let directory: String
    let store: ArrayStore
    let layout: PoolLayout
    var checksums: BlockChecksums
    let memory = MemoryServices()
    var backEnd: RAIDBackEnd
    var space: PoolSpace
    let tag: UInt64 = 0x5EED_7A65

    /// `base`: /dev/shm (tmpfs: buffered copies), or a disk folder such as /var/tmp, where drives use direct I/O and
    /// every buffer must be page-aligned.
    init(
        name: String, level: RAIDLevel = .raid5, drives: Int = 4, driveBytes: UInt64 = 48 << 20, stripUnitBytes: Int = 16384, homes: Int = 2,
        base: String = "/dev/shm", segmentBytes: UInt64 = PoolLayout.segmentTargetBytes
    ) throws {
        directory = "\(base)/vsa-pool-\(name)-\(getpid())"
        try? FileManager.default.removeItem(atPath: directory)
        store = try ArrayStore.create(
            CreateOptions(
                directory: directory, driveCount: drives, driveSizeBytes: driveBytes, drivePaths: [], raidLevel: level, spareCount: 0,
                stripUnitBytes: stripUnitBytes, cacheBytes: 16 << 20, engineCount: 1, force: false))
        layout = PoolLayout(geometry: store.geometry, homes: homes, areaStart: 0, versionsMax: 64, segmentBytes: segmentBytes)
        (checksums, backEnd) = try PoolTestArray.mount(store, memory: memory, unclean: false)
        space = PoolSpace(layout: layout, reservedStripes: [0..<layout.areaStripes])
    }

    /// The back end as the daemon builds it at mount: journal recovered (after an unclean stop: intent regions
    /// resynced and their checksums recomputed), director 0's journal and the block checksums.
    static func mount(_ store: ArrayStore, memory: MemoryServices, unclean: Bool) throws -> (BlockChecksums, RAIDBackEnd) {
        let checksums = BlockChecksums(geometry: store.geometry)
        let recovery = try JournalRecovery.recover(
            geometry: store.geometry, drives: store.drives, arrayUUID: store.superblock.arrayUUID, unclean: unclean, checksums: checksums)
        let owner = JournalOwner(arrayUUID: store.superblock.arrayUUID, director: 0, epoch: recovery.epochs[0])
        let backEnd = try RAIDBackEnd(
            geometry: store.geometry, drives: store.drives, memory: memory, marks: BackEndMarks(), journal: owner, checksums: checksums)
        return (checksums, backEnd)
    }

    /// A new home, checkpointed (as pool creation will do).
    func newHome(_ home: Int = 0, frames: Int = 256) -> PoolHome {
        let h = PoolHome(home: home, layout: layout, space: space, poolTag: tag, store: backEnd, memory: memory, mapFrames: frames)
        return h
    }

    /// Writes junk over the first unit of every data strip of array stripe `stripe`, through the back end (so the
    /// checksums agree: a hostile image, not rot).
    func writeJunk(stripe: UInt64) -> Bool {
        let (unit, d) = (store.geometry.stripUnitBytes, store.geometry.dataStripsPerStripe)
        let junk = UnsafeMutableRawPointer.allocate(byteCount: unit * d, alignment: 4096)
        defer { junk.deallocate() }
        memset(junk, 0x5A, unit * d)
        let strips = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: d)
        defer { strips.deallocate() }
        for i in 0..<d { strips[i] = junk + i * unit }
        return backEnd.writeStripe(stripe: stripe, strips: strips, dirtyMask: (1 << UInt64(d)) - 1, offsetBytes: 0, count: unit, allNew: true)
    }

    /// What a crash leaves: the drives. A new back end and space, as after a restart.
    func restart() throws {
        (checksums, backEnd) = try PoolTestArray.mount(store, memory: memory, unclean: true)
        space = PoolSpace(layout: layout, reservedStripes: [0..<layout.areaStripes])
    }

    /// One home, loaded and its recovery finished (the other homes, if any, loaded already).
    func recover(_ home: Int = 0, frames: Int = 256) throws -> PoolHome { try recover(homes: [home], frames: frames)[home]! }

    /// Several homes the way a mount recovers them: all loaded, then each one's checkpoint.
    func recover(homes order: [Int], frames: Int = 256) throws -> [Int: PoolHome] {
        var homes: [Int: PoolHome] = [:]
        for h in order {
            homes[h] = try PoolHome.load(home: h, layout: layout, space: space, poolTag: tag, store: backEnd, memory: memory, mapFrames: frames)
        }
        for h in order { try homes[h]!.finishRecovery() }
        return homes
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }
}

final class PoolHomeTests: XCTestCase {
    /// A page whose every byte says which (block, version) it is.
    func page(_ block: UInt64, _ version: UInt32) -> [UInt8] {
        var p = [UInt8](repeating: 0, count: 4096)
        for i in 0..<512 {
            let v = (block &* 0x9E37_79B9 &+ UInt64(version) &* 0x85EB_CA6B &+ UInt64(i)) | 1
            withUnsafeBytes(of: v.littleEndian) { for k in 0..<8 { p[i * 8 + k] = $0[k] } }
        }
        return p
    }

    func read(_ h: PoolHome, _ id: UInt32, _ block: UInt64) -> [UInt8]? {
        var out = [UInt8](repeating: 0xEE, count: 4096)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { buffer.deallocate() }
        guard h.read(id, block: block, into: buffer) else { return nil }
        out.withUnsafeMutableBytes { $0.baseAddress!.copyMemory(from: buffer, byteCount: 4096) }
        return out
    }

    func write(_ h: PoolHome, _ id: UInt32, _ block: UInt64, _ version: UInt32) -> PoolFailure? {
        page(block, version).withUnsafeBytes { h.write(id, block: block, from: $0.baseAddress!) }
    }

    func testWritesCommitsAndCheckpointsReadBackAfterARestart() throws {
        // On a disk folder: direct I/O, so every buffer the pool hands the drives must be page-aligned.
        let array = try PoolTestArray(name: "basic", base: "/var/tmp")
        XCTAssertTrue(array.store.drives[0].usesDirectIO || !FileManager.default.fileExists(atPath: "/var/tmp"), "the drives do direct I/O")
        let h = array.newHome()
        h.createVersion(1, blocks: 100_000)
        XCTAssertTrue(h.checkpoint())
        var rng = SplitMix(seed: 3)
        var oracle: [UInt64: UInt32] = [:]
        for round in 1...6 {
            for _ in 0..<400 {
                let b = UInt64.random(in: 0..<100_000, using: &rng) / (round % 2 == 0 ? 1 : 97)  // some overwrites
                let v = UInt32(round * 1000 + oracle.count)
                XCTAssertNil(write(h, 1, b, v))
                oracle[b] = v
            }
            XCTAssertNil(h.unmap(1, block: 5, count: 3))
            for b: UInt64 in 5..<8 { oracle[b] = nil }
            XCTAssertTrue(h.commit())
            if round % 2 == 0 { XCTAssertTrue(h.checkpoint()) }
        }
        for (b, v) in oracle { XCTAssertEqual(read(h, 1, b), page(b, v), "block \(b)") }
        XCTAssertEqual(read(h, 1, 6), [UInt8](repeating: 0, count: 4096), "unmapped reads zeroes")
        XCTAssertEqual(h.versions[1]!.mapped, UInt64(oracle.count))
        let written = h.commitsWritten
        // The drives alone: the last checkpoint (round 6) and nothing to roll forward.
        try array.restart()
        let r = try array.recover()
        XCTAssertEqual(r.rolledForward, 0)
        for (b, v) in oracle { XCTAssertEqual(read(r, 1, b), page(b, v), "block \(b) after restart") }
        XCTAssertEqual(r.versions[1]!.mapped, UInt64(oracle.count))
        XCTAssertGreaterThan(written, 20)
    }

    func testTheLogRollsForwardAcrossSegmentsAndStopsAtATornCommit() throws {
        let array = try PoolTestArray(name: "roll")
        let h = array.newHome()
        h.createVersion(7, blocks: 1 << 20)
        XCTAssertTrue(h.checkpoint())
        // Enough data to fill several segments (4 MiB each), committed (acknowledged), no checkpoint after.
        var oracle: [UInt64: UInt32] = [:]
        for i in 0..<3000 {
            let b = UInt64(i * 7 % 5000)
            XCTAssertNil(write(h, 7, b, UInt32(i)))
            oracle[b] = UInt32(i)
            if i % 100 == 99 { XCTAssertTrue(h.commit()) }
        }
        XCTAssertTrue(h.commit())
        XCTAssertGreaterThan(array.space.owned(by: 0).count, 2, "the log spans segments")
        // Written but not committed: the crash may keep it or not; here one of its blocks is torn.
        for i in 0..<10 { XCTAssertNil(write(h, 7, UInt64(9000 + i), 1)) }
        let tornPBA = h.map.lookup(7, block: 9003)!.pba
        XCTAssertTrue(h.commit())
        var garbage = [UInt8](repeating: 0xA5, count: 4096)
        let (stripe, strip, offset) = array.layout.location(tornPBA)
        let drive = array.store.geometry.dataDrive(stripe: stripe, strip: strip)
        let fd = open(array.store.drives[drive].path, O_WRONLY)
        XCTAssertEqual(pwrite(fd, &garbage, 4096, off_t(array.store.geometry.driveOffset(stripe: stripe)) + off_t(offset)), 4096)
        close(fd)
        try array.restart()
        let r = try array.recover()
        XCTAssertGreaterThan(r.rolledForward, 30)
        for (b, v) in oracle { XCTAssertEqual(read(r, 7, b), page(b, v), "acknowledged block \(b)") }
        for i in 0..<10 { XCTAssertEqual(read(r, 7, UInt64(9000 + i)), [UInt8](repeating: 0, count: 4096), "the torn commit is not replayed") }
        // And the recovered home goes on: new writes, another restart.
        XCTAssertNil(write(r, 7, 9003, 2))
        XCTAssertTrue(r.commit())
        try array.restart()
        let r2 = try array.recover()
        XCTAssertEqual(read(r2, 7, 9003), page(9003, 2))
        XCTAssertEqual(read(r2, 7, 0), page(0, oracle[0]!))
    }

    func testACrashBeforeTheCommitLosesOnlyWhatWasNotCommitted() throws {
        let array = try PoolTestArray(name: "crash", level: .raid6, drives: 6)
        let h = array.newHome(1)
        h.createVersion(3, blocks: 50_000)
        XCTAssertTrue(h.checkpoint())
        for b: UInt64 in 0..<200 { XCTAssertNil(write(h, 3, b, 1)) }
        XCTAssertTrue(h.commit())
        for b: UInt64 in 0..<200 { XCTAssertNil(write(h, 3, b, 2)) }  // some commits went down, the last is open
        try array.restart()
        let r = try array.recover(1)
        for b: UInt64 in 0..<200 {
            let got = read(r, 3, b)
            XCTAssertTrue(got == page(b, 1) || got == page(b, 2), "block \(b) holds a version that was written, whole")
        }
    }

    /// A failover: the failed director's memory of its home (dirty map nodes, the commit it was filling) is gone, and
    /// the director taking over loads the home from the drives while the other home goes on. What was committed is
    /// there, the open commit's pages are not (the mirror replays them), live counts match, and the home writes on.
    /// A home the drives cannot give back is empty, answers nothing, and writes no checkpoint over what is there.
    func testAFailoverLoadsTheFailedDirectorsHomeFromTheDrives() throws {
        let array = try PoolTestArray(name: "reload")
        let (a, b) = (array.newHome(0), array.newHome(1))
        for h in [a, b] {
            h.createVersion(5, blocks: 40_000)
            XCTAssertTrue(h.checkpoint())
        }
        for blk: UInt64 in 0..<300 { XCTAssertNil(write(a, 5, blk, 1)) }
        XCTAssertTrue(a.checkpoint())
        for blk: UInt64 in 0..<300 where blk % 3 == 0 { XCTAssertNil(write(a, 5, blk, 2)) }
        XCTAssertTrue(a.commit())  // committed after the checkpoint: replayed by the roll-forward
        for blk: UInt64 in 0..<40 { XCTAssertNil(write(a, 5, blk, 3)) }  // the commit being filled: lost
        for blk: UInt64 in 0..<100 { XCTAssertNil(write(b, 5, blk, 7)) }
        XCTAssertTrue(b.commit())
        let bLive = array.space.owned(by: 1).map { array.space.liveBlocks($0) }.reduce(0, +)
        try a.reloadFromDrives()
        XCTAssertGreaterThan(a.rolledForward, 0)
        for blk: UInt64 in 0..<300 {
            let got = read(a, 5, blk)
            let committed = page(blk, blk % 3 == 0 ? 2 : 1)
            if blk < 40 && got == page(blk, 3) { continue }  // a full commit of the open pages may have gone down
            XCTAssertEqual(got, committed, "block \(blk)")
        }
        XCTAssertEqual(array.space.owned(by: 1).map { array.space.liveBlocks($0) }.reduce(0, +), bLive, "the other home untouched")
        for blk: UInt64 in 0..<100 { XCTAssertEqual(read(b, 5, blk), page(blk, 7)) }
        for blk: UInt64 in 0..<40 { XCTAssertNil(write(a, 5, blk, 4)) }
        XCTAssertTrue(a.commit())
        XCTAssertTrue(a.checkpoint() && b.checkpoint())
        let live = (0..<2).map { h in array.space.owned(by: h).map { array.space.liveBlocks($0) }.reduce(0, +) }
        // A restart finds both homes as they are now, with the same live blocks (data and map nodes).
        try array.restart()
        let r = try array.recover(homes: [0, 1])
        XCTAssertEqual((0..<2).map { h in array.space.owned(by: h).map { array.space.liveBlocks($0) }.reduce(0, +) }, live)
        for blk: UInt64 in 0..<40 { XCTAssertEqual(read(r[0]!, 5, blk), page(blk, 4)) }
        for blk: UInt64 in 0..<100 { XCTAssertEqual(read(r[1]!, 5, blk), page(blk, 7)) }
        // Both checkpoint slots damaged: the reload fails, the home is empty and lost, and nothing is checkpointed.
        let h0 = r[0]!
        for slot in 0..<2 { XCTAssertTrue(array.writeJunk(stripe: array.layout.slotStart(home: 0, slot: slot))) }
        XCTAssertThrowsError(try h0.reloadFromDrives())
        XCTAssertTrue(h0.lost)
        XCTAssertNil(read(h0, 5, 0), "a lost home answers nothing")
        XCTAssertFalse(h0.checkpoint(), "a lost home writes no checkpoint")
    }

    func testHostileCheckpointSlotsAreRefusedOrTheOtherSlotIsUsed() throws {
        let array = try PoolTestArray(name: "hostile")
        let h = array.newHome()
        h.createVersion(1, blocks: 1000)
        XCTAssertTrue(h.checkpoint())
        XCTAssertNil(write(h, 1, 10, 1))
        XCTAssertTrue(h.commit())
        XCTAssertTrue(h.checkpoint())  // slot 1 now, slot 0 the older
        XCTAssertNil(write(h, 1, 11, 1))
        XCTAssertTrue(h.commit())
        // Damage the newer slot's tables (through the back end, so checksums agree: a hostile image, not rot).
        let tableStripe = array.layout.slotStart(home: 0, slot: 1) + 1
        XCTAssertTrue(array.writeJunk(stripe: tableStripe))
        try array.restart()
        // The older checkpoint: its log then holds block 10's commit, but also names the newer checkpoint's nodes
        // (skipped) and nothing after the newer one (another checkpoint number): block 11 is lost with the slot.
        let r = try array.recover()
        XCTAssertEqual(read(r, 1, 10), page(10, 1))
        XCTAssertEqual(read(r, 1, 11), [UInt8](repeating: 0, count: 4096), "what followed the damaged checkpoint went with it")
        // Both slots bad: one line.
        let other = array.layout.slotStart(home: 0, slot: 0)
        for s in [other, tableStripe - 1] { XCTAssertTrue(array.writeJunk(stripe: s)) }
        try array.restart()
        XCTAssertThrowsError(try array.recover()) { error in
            XCTAssertEqual((error as? VSAError)?.message, "pool home 0: no valid checkpoint in either slot")
        }
    }

    func testAFullPoolRefusesNewBlocksAndFreedSegmentsComeBack() throws {
        let array = try PoolTestArray(name: "full", driveBytes: 24 << 20)
        let h = array.newHome()
        h.createVersion(1, blocks: 1 << 22)  // far more than the pool holds: thin
        XCTAssertTrue(h.checkpoint())
        let poolSegments = array.space.poolSegments
        var written: UInt64 = 0
        while written < 1 << 22 {
            if let failure = write(h, 1, written, 1) {
                XCTAssertEqual(failure, .noSpace)
                break
            }
            written += 1
            if written % 500 == 0 { XCTAssertTrue(h.commit()) }
            if written % 5000 == 0 { XCTAssertTrue(h.checkpoint()) }
        }
        XCTAssertTrue(h.commit())
        XCTAssertGreaterThan(written, UInt64((poolSegments - h.dataReserve - 2) * array.layout.blocksPerSegment * 3 / 4), "most of the pool was used")
        for b in 0..<written { XCTAssertEqual(read(h, 1, b).map { $0 == page(b, 1) }, true, "block \(b) reads back in a full pool") }
        // Free it all: the segments come back at the checkpoints, and writes go on.
        XCTAssertNil(h.unmap(1, block: 0, count: written))
        XCTAssertTrue(h.commit())
        XCTAssertTrue(h.checkpoint())
        XCTAssertTrue(h.checkpoint())
        XCTAssertGreaterThan(array.space.freeSegments, poolSegments / 2)
        for b: UInt64 in 0..<1000 { XCTAssertNil(write(h, 1, b, 2)) }
        XCTAssertTrue(h.commit())
        try array.restart()
        let r = try array.recover()
        XCTAssertEqual(read(r, 1, 999), page(999, 2))
        XCTAssertEqual(read(r, 1, 1000), [UInt8](repeating: 0, count: 4096))
    }

    /// A run of blocks goes from the drives straight to the pages it is read into (a scatter read per strip), on
    /// buffered drives (tmpfs: preadv) and direct ones (disk: io_uring readv); a block that fails its checksum or a
    /// failed drive sends the run down the back end's full read path, which repairs or rebuilds it.
    func testARunIsReadStraightToItsPagesAndADamagedBlockIsStillRepaired() throws {
        for base in ["/dev/shm", "/var/tmp"] {
            let array = try PoolTestArray(name: "run", base: base)
            let h = array.newHome()
            h.createVersion(1, blocks: 10_000)
            XCTAssertTrue(h.checkpoint())
            let perStripe = array.layout.blocksPerStripe
            for b in 0..<UInt64(perStripe) { XCTAssertNil(write(h, 1, b, 7)) }
            XCTAssertTrue(h.commit())
            // The longest run of consecutive blocks among the first ones: written together, so consecutive in the log.
            let start = h.entry(1, block: 0)!.pba
            var count = 1
            while count < perStripe, let e = h.entry(1, block: UInt64(count)), e.pba == start + UInt64(count),
                (start + UInt64(count)) % UInt64(perStripe) != 0
            {
                count += 1
            }
            XCTAssertGreaterThan(count, 2 * array.layout.blocksPerRow, "a run spanning rows (\(base))")
            let pages = UnsafeMutableRawPointer.allocate(byteCount: count * 4096, alignment: 4096)
            defer { pages.deallocate() }
            func readRunBackwards() -> Bool {
                memset(pages, 0xEE, count * 4096)
                // Page k of the run lands in slot count - 1 - k: nothing about the run's order survives but the pointers.
                guard h.readRun(start, count: count, pages: { pages + (count - 1 - $0) * 4096 }) else { return false }
                for k in 0..<count where memcmp(pages + (count - 1 - k) * 4096, page(UInt64(k), 7), 4096) != 0 {
                    XCTFail("block \(k) of the run (\(base))")
                    return false
                }
                return true
            }
            let copiesBefore = array.memory.counters.copyCount
            XCTAssertTrue(readRunBackwards())
            XCTAssertEqual(array.memory.counters.copyCount, copiesBefore, "no block copied on the way (\(base))")
            XCTAssertEqual(array.checksums.mismatches.load(ordering: .relaxed), 0)
            // Rot in the run's third block, on its drive: found, read from parity, repaired in place.
            let geometry = array.store.geometry
            let d = array.layout.blocksPerRow
            let j = Int((start + 2) % UInt64(perStripe))
            let stripe = (start + 2) / UInt64(perStripe)
            let drive = geometry.dataDrive(stripe: stripe, strip: j % d)
            let fd = open(array.store.drives[drive].path, O_WRONLY)
            XCTAssertGreaterThanOrEqual(fd, 0)
            XCTAssertEqual(pwrite(fd, [UInt8](repeating: 0x42, count: 4096), 4096, off_t(geometry.driveOffset(stripe: stripe) + UInt64(j / d * 4096))), 4096)
            close(fd)
            XCTAssertTrue(readRunBackwards(), "a damaged block is read right (\(base))")
            XCTAssertEqual(array.checksums.mismatches.load(ordering: .relaxed), 1)
            XCTAssertEqual(array.checksums.repairs.load(ordering: .relaxed), 1)
            XCTAssertTrue(readRunBackwards())
            XCTAssertEqual(array.checksums.mismatches.load(ordering: .relaxed), 1, "repaired on the drive: no second mismatch")
            // A failed drive: the run is rebuilt from the others.
            _ = array.store.drives[(drive + 1) % geometry.memberCount].transition(to: .failed)
            XCTAssertTrue(readRunBackwards(), "a run read degraded (\(base))")
        }
    }

    /// Blocks written with `write(borrowing:)` go down from their writers' pages (a gather write per strip, parity row
    /// by row), with no copy; what the open commit still borrows when the call ends is copied in, so the pages may
    /// change after; a stripe the journal took in this epoch is gathered and journaled. Every RAID level with a
    /// pool, on tmpfs and direct-I/O drives: read back, after a restart, and degraded (parity and copies right).
    func testBorrowedPagesAreWrittenFromWhereTheyLieAndCopiedOnlyWhenTheCallEnds() throws {
        for (level, drives) in [(RAIDLevel.raid5, 4), (.raid6, 5), (.raid10, 4), (.raid1, 2), (.raid0, 3)] {
            for base in ["/dev/shm", "/var/tmp"] {
                let what = "\(level) on \(base)"
                let array = try PoolTestArray(name: "gather", level: level, drives: drives, base: base)
                var h = array.newHome()
                h.createVersion(1, blocks: 10_000)
                XCTAssertTrue(h.checkpoint())
                let perStripe = array.layout.blocksPerStripe
                let count = 3 * perStripe + perStripe / 2
                let pages = UnsafeMutableRawPointer.allocate(byteCount: count * 4096, alignment: 4096)
                defer { pages.deallocate() }
                for b in 0..<count { page(UInt64(b), 3).withUnsafeBytes { (pages + b * 4096).copyMemory(from: $0.baseAddress!, byteCount: 4096) } }
                // The first half: commits fill and go down from the pages themselves.
                let copiesBefore = array.memory.counters.copyCount
                for b in 0..<count / 2 { XCTAssertNil(h.write(1, block: UInt64(b), borrowing: pages + b * 4096), what) }
                XCTAssertEqual(array.memory.counters.copyCount, copiesBefore, "no block copied into a commit (\(what))")
                // The call ends with a commit open: its borrowed blocks are copied in, and the pages may change.
                h.keepBorrowedPages()
                memset(pages, 0xAB, count / 2 * 4096)
                XCTAssertTrue(h.commit(), what)
                // The stripes the log goes to next, journaled in this epoch (a partial write of one strip's first
                // page): the commits there are gathered into staging and journaled, not written in place.
                let next = h.entry(1, block: UInt64(count / 2 - 1))!.pba / UInt64(perStripe) + 1
                let journaledBefore = array.backEnd.marks.journalBytes.load(ordering: .relaxed)
                if level != .raid0 && level != .raid1 && level != .raid10 {
                    for s in next...(next + 1) { XCTAssertTrue(writeOnePage(array, stripe: s), what) }
                    XCTAssertTrue(array.backEnd.commitJournal())
                }
                let journaledAfterJunk = array.backEnd.marks.journalBytes.load(ordering: .relaxed)
                for b in count / 2..<count { XCTAssertNil(h.write(1, block: UInt64(b), borrowing: pages + b * 4096), what) }
                h.keepBorrowedPages()
                XCTAssertTrue(h.commit(), what)
                if level == .raid5 || level == .raid6 {
                    XCTAssertGreaterThan(journaledAfterJunk, journaledBefore, what)
                    XCTAssertGreaterThan(array.backEnd.marks.journalBytes.load(ordering: .relaxed), journaledAfterJunk, "a journaled stripe's commit (\(what))")
                }
                memset(pages + count / 2 * 4096, 0xCD, (count - count / 2) * 4096)
                func checkAll(_ h: PoolHome, _ when: String) {
                    for b in 0..<UInt64(count) where read(h, 1, b) != page(b, 3) {
                        XCTFail("block \(b) \(when) (\(what))")
                        return
                    }
                }
                checkAll(h, "read back")
                XCTAssertEqual(array.checksums.mismatches.load(ordering: .relaxed), 0, what)
                // Parity and copies as written (before a restart, whose intent resync would recompute them).
                let stripes = Set((0..<UInt64(count)).map { h.entry(1, block: $0)!.pba / UInt64(perStripe) })
                for s in stripes.sorted() { XCTAssertEqual(array.backEnd.scrub(stripe: s, repair: false), .consistent, "stripe \(s) (\(what))") }
                try array.restart()
                h = try array.recover()
                checkAll(h, "after a restart")
                XCTAssertEqual(array.checksums.mismatches.load(ordering: .relaxed), 0, what)
                if level != .raid0 {
                    _ = array.store.drives[1].transition(to: .failed)
                    checkAll(h, "with a drive failed")
                }
            }
        }
    }

    /// A journaled write of junk to the first page of data strip 0 of `stripe` (only that strip: not all new).
    func testACommitRunningIntoTheNextStripeGoesDownWithTheOneBeforeInOneWritePerDrive() throws {
        let array = try PoolTestArray(name: "span", level: .raid5, drives: 4, base: "/dev/shm")
        var h = array.newHome()
        let counting = CountingStore(array.backEnd)
        h.store = counting
        h.createVersion(1, blocks: 10_000)
        XCTAssertTrue(h.checkpoint())
        let perStripe = array.layout.blocksPerStripe
        // A commit of a few rows, so the next one starts mid-stripe.
        for b in 0..<10 { XCTAssertNil(write(h, 1, UInt64(b), 1)) }
        XCTAssertTrue(h.commit())
        counting.reset()
        // Two stripes' worth: the first commit fills its stripe and is held, the second fills the next stripe and
        // goes down with it (one gather write per drive for both), the third is the rest.
        for b in 10..<(10 + 2 * perStripe) { XCTAssertNil(write(h, 1, UInt64(b), 1)) }
        XCTAssertEqual(counting.spanningWrites, 1, "the held commit went down with the next one")
        XCTAssertEqual(counting.writes, 1)
        XCTAssertTrue(h.commit())
        XCTAssertEqual(counting.writes, 2, "the last commit on its own")
        // A held commit is written before its stripe is read: fill to the end of a stripe, then read what it holds.
        counting.reset()
        var b = UInt64(10 + 2 * perStripe)
        while counting.writes == 0 && !h.holdsACommit {
            XCTAssertNil(write(h, 1, b, 2))
            b += 1
        }
        // The last block written opened the next commit: the one before it ends the held stripe.
        XCTAssertTrue(h.holdsACommit)
        XCTAssertEqual(read(h, 1, b - 2), page(b - 2, 2), "a held block reads back")
        XCTAssertFalse(h.holdsACommit, "written by the read")
        XCTAssertTrue(h.commit())
        for block in 0..<b where read(h, 1, block) != page(block, block < 10 + UInt64(2 * perStripe) ? 1 : 2) {
            XCTFail("block \(block)")
            break
        }
        let stripes = Set((0..<b).map { h.entry(1, block: $0)!.pba / UInt64(perStripe) })
        for s in stripes.sorted() { XCTAssertEqual(array.backEnd.scrub(stripe: s, repair: false), .consistent, "stripe \(s)") }
        try array.restart()
        h = try array.recover()
        for block in 0..<b where read(h, 1, block) != page(block, block < 10 + UInt64(2 * perStripe) ? 1 : 2) {
            XCTFail("block \(block) after a restart")
            break
        }
        XCTAssertEqual(array.checksums.mismatches.load(ordering: .relaxed), 0)
    }

    private func writeOnePage(_ array: PoolTestArray, stripe: UInt64) -> Bool {
        let d = array.store.geometry.dataStripsPerStripe
        let junk = UnsafeMutableRawPointer.allocate(byteCount: 4096 * d, alignment: 4096)
        defer { junk.deallocate() }
        memset(junk, 0x5A, 4096 * d)
        let strips = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: d)
        defer { strips.deallocate() }
        for i in 0..<d { strips[i] = junk + i * 4096 }
        return array.backEnd.writeStripe(stripe: stripe, strips: strips, dirtyMask: 1, offsetBytes: 0, count: 4096, allNew: false)
    }
}

/// A back end that counts a pool home's gather writes, and those that span two stripes.
final class CountingStore: StripeStore {
    let inner: RAIDBackEnd
    var writes = 0
    var spanningWrites = 0
    init(_ inner: RAIDBackEnd) { self.inner = inner }
    func reset() { (writes, spanningWrites) = (0, 0) }
    var geometry: ArrayGeometry { inner.geometry }
    var needsAlignedBuffers: Bool { inner.needsAlignedBuffers }
    func readStrips(stripe: UInt64, stripMask: UInt64, offsetBytes: Int, count: Int, targets: UnsafeMutablePointer<UnsafeMutableRawPointer?>) -> Bool {
        inner.readStrips(stripe: stripe, stripMask: stripMask, offsetBytes: offsetBytes, count: count, targets: targets)
    }
    func readPages(stripe: UInt64, stripMask: UInt64, offsetBytes: Int, count: Int, pages: UnsafeMutablePointer<UnsafeMutableRawPointer?>) -> Bool {
        inner.readPages(stripe: stripe, stripMask: stripMask, offsetBytes: offsetBytes, count: count, pages: pages)
    }
    func writeStripe(stripe: UInt64, strips: UnsafeMutablePointer<UnsafeMutableRawPointer?>, dirtyMask: UInt64, offsetBytes: Int, count: Int, allNew: Bool)
        -> Bool
    {
        inner.writeStripe(stripe: stripe, strips: strips, dirtyMask: dirtyMask, offsetBytes: offsetBytes, count: count, allNew: allNew)
    }
    func writePages(
        stripe: UInt64, offsetBytes: Int, count: Int, nextCount: Int, pages: UnsafeMutablePointer<UnsafeMutableRawPointer?>, crcs: UnsafePointer<UInt32>?
    ) -> Bool {
        writes += 1
        if nextCount > 0 { spanningWrites += 1 }
        return inner.writePages(stripe: stripe, offsetBytes: offsetBytes, count: count, nextCount: nextCount, pages: pages, crcs: crcs)
    }
    func destage(
        stripe: UInt64, strips: UnsafeMutablePointer<UnsafeMutableRawPointer?>, dirtyMask: UInt64, cachedMask: UInt64, offsetBytes: Int, count: Int,
        allNew: Bool, complete: (_ strip: Int, _ old: UnsafeRawPointer) -> Void
    ) -> Bool {
        inner.destage(
            stripe: stripe, strips: strips, dirtyMask: dirtyMask, cachedMask: cachedMask, offsetBytes: offsetBytes, count: count, allNew: allNew,
            complete: complete)
    }
    func flush() -> Bool { inner.flush() }
    func commitJournal() -> Bool { inner.commitJournal() }
}
