// Block checksums end to end over real drive files: a corrupted block is caught on read, the host gets the right data
// (from a mirror copy or rebuilt through parity) and the block is rewritten; RAID-0 answers EIO, never wrong data; a
// block written to the wrong place is caught by its address-seeded checksum; a damaged checksum entry (the data was
// right) is rewritten. Each test fails with the verification taken out (the corrupted bytes come back).
import ArrayModel
import BackEnd
import Buffers
import Drives
import GlobalMemory
import MemoryServices
import Metadata
import XCTest

final class ChecksumTests: XCTestCase {
    var directory = ""
    override func setUp() { directory = "/dev/shm/vsa-crc-\(getpid())-\(UInt32.random(in: 0...UInt32.max))" }
    override func tearDown() { try? FileManager.default.removeItem(atPath: directory) }

    struct Bed {
        let store: ArrayStore
        let ref: LUNRef
        let checksums: BlockChecksums
        let backEnd: RAIDBackEnd
        let original: Arena
        let memory = MemoryServices()
        let lunBytes = 1 << 20

        /// A cold read of the whole LUN (a fresh cache: every block comes from the drives).
        func readAll(into buffer: Arena) -> Bool {
            let cold = TrackCache(slotCount: 64, store: backEnd, memory: memory, counters: CacheCounters())
            return cold.read(lun: ref, offsetBytes: 0, count: lunBytes, into: buffer.base)
        }

        /// Overwrites `count` bytes of member `member` at `offset` behind the array's back.
        func damage(member: Int, offset: UInt64, with bytes: UnsafeRawPointer, count: Int) {
            let fd = open(store.drivePaths[member], O_RDWR)
            precondition(fd >= 0)
            precondition(pwrite(fd, bytes, count, off_t(offset)) == count)
            close(fd)
        }

        /// Garbage over the second block of data strip 0 of the LUN's third stripe, on its (first) drive: that drive,
        /// the block's place on it, and the block's offset in the LUN.
        func damageABlock() -> (member: Int, at: UInt64, lunOffset: Int) {
            let g = store.geometry
            let stripe = ref.startStripe + 2
            let member = g.dataDrive(stripe: stripe, strip: 0)
            let at = g.driveOffset(stripe: stripe) + 4096
            let garbage = alignedBuffer(bytes: 4096)
            memset(garbage.base, 0xEE, 4096)
            damage(member: member, offset: at, with: garbage.base, count: 4096)
            return (member, at, 2 * Int(g.stripeDataBytes) + 4096)
        }

        func rawRead(member: Int, offset: UInt64, count: Int, into buffer: UnsafeMutableRawPointer) {
            let fd = open(store.drivePaths[member], O_RDONLY)
            precondition(pread(fd, buffer, count, off_t(offset)) == count)
            close(fd)
        }
    }

    func makeBed(_ level: RAIDLevel, drives: Int, fresh: Bool = true) throws -> Bed {
        let store = try ArrayStore.create(
            CreateOptions(
                directory: directory, driveCount: drives, driveSizeBytes: 16 << 20, drivePaths: [], raidLevel: level, spareCount: 0,
                stripUnitBytes: 16384, cacheBytes: 16 << 20, engineCount: 1, force: false))
        let lun = try store.createLUN(name: "l", sizeBytes: 1 << 20)
        let ref = LUNRef(lunID: lun.lunID, startStripe: lun.startStripe, sizeBytes: lun.sizeBytes)
        let checksums = BlockChecksums(geometry: store.geometry)
        let memory = MemoryServices()
        let recovery = try JournalRecovery.recover(
            geometry: store.geometry, drives: store.drives, arrayUUID: store.superblock.arrayUUID, unclean: false, checksums: checksums)
        let backEnd = try RAIDBackEnd(
            geometry: store.geometry, drives: store.drives, memory: memory, marks: BackEndMarks(),
            journal: JournalOwner(arrayUUID: store.superblock.arrayUUID, director: 0, epoch: recovery.epochs[0]), checksums: checksums)
        let original = alignedBuffer(bytes: 1 << 20)
        var rng = SplitMix(seed: 77)
        for i in 0..<(1 << 20) { original.base.storeBytes(of: UInt8(truncatingIfNeeded: rng.next()), toByteOffset: i, as: UInt8.self) }
        let cache = TrackCache(slotCount: 128, store: backEnd, memory: memory, counters: CacheCounters())
        XCTAssertTrue(cache.write(lun: ref, offsetBytes: 0, count: 1 << 20, from: original.base))
        XCTAssertTrue(cache.destageAll() && backEnd.flush())
        return Bed(store: store, ref: ref, checksums: checksums, backEnd: backEnd, original: original)
    }

    func testCorruptedBlockIsReadRightAndRepairedOnEveryRedundantLevel() throws {
        for (level, drives) in [(RAIDLevel.raid5, 4), (.raid6, 5), (.raid1, 2), (.raid10, 4)] {
            try? FileManager.default.removeItem(atPath: directory)
            let bed = try makeBed(level, drives: drives)
            let (member, at, lunOffset) = bed.damageABlock()
            let garbage = alignedBuffer(bytes: 4096)
            let back = alignedBuffer(bytes: 1 << 20)
            XCTAssertTrue(bed.readAll(into: back), "\(level)")
            XCTAssertEqual(memcmp(back.base, bed.original.base, 1 << 20), 0, "\(level): the host got the damaged bytes")
            XCTAssertEqual(bed.checksums.mismatches.load(ordering: .relaxed), 1, "\(level)")
            XCTAssertEqual(bed.checksums.repairs.load(ordering: .relaxed), 1, "\(level)")
            // The drive holds the right block again.
            bed.rawRead(member: member, offset: at, count: 4096, into: garbage.base)
            XCTAssertEqual(memcmp(garbage.base, bed.original.base + lunOffset, 4096), 0, "\(level): not rewritten")
        }
    }

    /// A director's batch of random read misses (TrackCache.prefetchMisses, on for arrays with a remote drive) goes
    /// to the drives in one submit; a range that fails its checksum is given back, and the read of it goes the usual
    /// way (rebuilt through parity and repaired), never the damaged bytes.
    func testABatchOfReadMissesIsReadTogetherAndGivesBackWhatFailsItsChecksum() throws {
        let bed = try makeBed(.raid5, drives: 4)
        let (member, at, damagedOffset) = bed.damageABlock()
        let garbage = alignedBuffer(bytes: 4096)
        let counters = CacheCounters()
        let cache = TrackCache(slotCount: 64, store: bed.backEnd, memory: bed.memory, counters: counters)
        // Five tracks missed whole (one holds the damaged block), a second read of one of them, one read across two
        // tracks: the first five go in the batch, the damaged one is given back.
        let reads: [(Int, Int)] = [
            (0, 4096), (5 * 16384 + 8192, 4096), (9 * 16384, 8192), (damagedOffset, 4096), (20 * 16384, 4096),
            (5 * 16384 + 8192, 4096), (16384 - 2048, 4096),
        ]
        cache.prefetchMisses(count: reads.count) { i in (bed.ref, UInt64(reads[i].0), reads[i].1) }
        XCTAssertEqual(counters.batchedMisses.load(ordering: .relaxed), 4)
        XCTAssertEqual(bed.checksums.mismatches.load(ordering: .relaxed), 0, "the batch repairs nothing: the read does")
        let back = alignedBuffer(bytes: 8192)
        for (offset, count) in reads {
            XCTAssertTrue(cache.read(lun: bed.ref, offsetBytes: UInt64(offset), count: count, into: back.base))
            XCTAssertEqual(memcmp(back.base, bed.original.base + offset, count), 0, "offset \(offset)")
        }
        XCTAssertEqual(bed.checksums.mismatches.load(ordering: .relaxed), 1)
        XCTAssertEqual(bed.checksums.repairs.load(ordering: .relaxed), 1)
        // Each batched track counts one miss (as it would have without the batch), the second read of one a hit; the
        // read across two tracks misses the first (the batch read only the pages asked for), which fetches the second
        // with it: a hit.
        XCTAssertEqual(counters.readHits.load(ordering: .relaxed), 2)
        XCTAssertEqual(counters.readMisses.load(ordering: .relaxed), 6)
        bed.rawRead(member: member, offset: at, count: 4096, into: garbage.base)
        XCTAssertEqual(memcmp(garbage.base, bed.original.base + damagedOffset, 4096), 0, "the damaged block was not rewritten")
    }

    func testRAID0CorruptionIsAnErrorNeverWrongData() throws {
        let bed = try makeBed(.raid0, drives: 2)
        let g = bed.store.geometry
        let garbage = alignedBuffer(bytes: 512)
        memset(garbage.base, 0x11, 512)
        bed.damage(member: 1, offset: g.driveOffset(stripe: bed.ref.startStripe) + 512, with: garbage.base, count: 512)
        let back = alignedBuffer(bytes: 1 << 20)
        XCTAssertFalse(bed.readAll(into: back), "RAID-0 returned a block that fails its checksum")
        XCTAssertEqual(bed.checksums.unrecoverable.load(ordering: .relaxed), 1)
    }

    func testMisdirectedWriteIsCaught() throws {
        let bed = try makeBed(.raid5, drives: 4)
        let g = bed.store.geometry
        // Block 0 of a strip lands where block 1 should be (a write to the wrong address): contents valid, place wrong.
        let stripe = bed.ref.startStripe + 1
        let member = g.dataDrive(stripe: stripe, strip: 1)
        let block = alignedBuffer(bytes: 4096)
        bed.rawRead(member: member, offset: g.driveOffset(stripe: stripe), count: 4096, into: block.base)
        bed.damage(member: member, offset: g.driveOffset(stripe: stripe) + 4096, with: block.base, count: 4096)
        let back = alignedBuffer(bytes: 1 << 20)
        XCTAssertTrue(bed.readAll(into: back))
        XCTAssertEqual(memcmp(back.base, bed.original.base, 1 << 20), 0)
        XCTAssertEqual(bed.checksums.repairs.load(ordering: .relaxed), 1)
    }

    func testDamagedChecksumEntryIsRewrittenNotTheData() throws {
        let bed = try makeBed(.raid5, drives: 4)
        let g = bed.store.geometry
        // The pages go to the drives (an epoch ends), then a fresh checksum cache reads them back.
        XCTAssertTrue(bed.backEnd.advanceEpoch())
        let fresh = BlockChecksums(geometry: g)
        let memory = MemoryServices()
        let backEnd = try RAIDBackEnd(geometry: g, drives: bed.store.drives, memory: memory, marks: BackEndMarks(), checksums: fresh)
        let stripe = bed.ref.startStripe
        let member = g.dataDrive(stripe: stripe, strip: 0)
        // The entry of that member's first block of the stripe: 4 bytes at the checksum area.
        let entry = g.layout!.checksumOffsetBytes + (g.driveOffset(stripe: stripe) - g.dataOffsetBytes) / 4096 * 4
        let wrong: [UInt8] = [1, 2, 3, 4]
        wrong.withUnsafeBytes { bed.damage(member: member, offset: entry, with: $0.baseAddress!, count: 4) }
        let cold = TrackCache(slotCount: 64, store: backEnd, memory: memory, counters: CacheCounters())
        let back = alignedBuffer(bytes: 1 << 20)
        XCTAssertTrue(cold.read(lun: bed.ref, offsetBytes: 0, count: 1 << 20, into: back.base))
        XCTAssertEqual(memcmp(back.base, bed.original.base, 1 << 20), 0)
        XCTAssertEqual(fresh.entryRepairs.load(ordering: .relaxed), 1)
        XCTAssertEqual(fresh.repairs.load(ordering: .relaxed), 0)
    }
}
