// The stripe journal: its records' decoder against every flipped byte, every truncation and every field out of
// range; and the write hole itself — a degraded RAID-5 loses power between a partial-stripe write's data and its
// parity, and the strip of the missing drive must still read back right after recovery. Without the journal the
// same run reads back wrong data (checked by hand: construct the back end without `journal:`).
import ArrayModel
import Buffers
import Drives
import GlobalMemory
import MemoryServices
import Metadata
import XCTest

@testable import BackEnd

final class JournalTests: XCTestCase {
    let geometry = ArrayGeometry(
        raidLevel: .raid5, memberCount: 4, stripUnitBytes: 16384, stripeCount: 1000, dataOffsetBytes: 4 << 20,
        layout: DriveLayout(journalSliceBytes: 1 << 20, directorCount: 2, checksumBytes: 4096))
    let uuid = UUID128(high: 0x1234, low: 0x5678)

    /// A valid record header for member 1 of director 0 with a data and an intent entry.
    func sampleHeader() -> Arena {
        let block = Arena(sliceBytes: 4096, sliceCount: 1)
        encodeEntry(into: block.base, index: 0, JournalEntry(kind: .data, stripe: 7, offsetBytes: 4096, count: 8192))
        encodeEntry(into: block.base, index: 1, JournalEntry(kind: .intent, stripe: 256, offsetBytes: 0, count: 256))
        encodeRecordHeader(
            into: block.base, entryCount: 2, arrayUUID: uuid, epoch: 5, director: 0, member: 1, sequence: 9, batchMask: 0b1011,
            payloadBytes: 8192, payloadCRC: 0xABCD)
        return block
    }

    func decode(_ block: UnsafeRawPointer, count: Int = 4096) -> JournalHeader? {
        JournalHeader.decode(block, count: count, geometry: geometry, arrayUUID: uuid, director: 0, member: 1)
    }

    func testRecordHeaderRoundTrip() throws {
        let block = sampleHeader()
        let header = try XCTUnwrap(decode(block.base))
        XCTAssertEqual(header.epoch, 5)
        XCTAssertEqual(header.sequence, 9)
        XCTAssertEqual(header.batchMask, 0b1011)
        XCTAssertEqual(header.payloadBytes, 8192)
        XCTAssertEqual(header.payloadCRC, 0xABCD)
        XCTAssertEqual(
            header.entries,
            [JournalEntry(kind: .data, stripe: 7, offsetBytes: 4096, count: 8192), JournalEntry(kind: .intent, stripe: 256, offsetBytes: 0, count: 256)])
        // Another array, director or drive: not ours.
        XCTAssertNil(JournalHeader.decode(block.base, count: 4096, geometry: geometry, arrayUUID: UUID128(high: 1, low: 1), director: 0, member: 1))
        XCTAssertNil(JournalHeader.decode(block.base, count: 4096, geometry: geometry, arrayUUID: uuid, director: 1, member: 1))
        XCTAssertNil(JournalHeader.decode(block.base, count: 4096, geometry: geometry, arrayUUID: uuid, director: 0, member: 0))
    }

    func testRecordHeaderRejectsEveryFlippedByteAndTruncation() {
        let block = sampleHeader()
        for i in 0..<4096 {
            let damaged = Arena(sliceBytes: 4096, sliceCount: 1)
            damaged.base.copyMemory(from: block.base, byteCount: 4096)
            damaged.base.storeBytes(of: damaged.base.load(fromByteOffset: i, as: UInt8.self) ^ 0x10, toByteOffset: i, as: UInt8.self)
            XCTAssertNil(decode(damaged.base), "flipped byte \(i) accepted")
        }
        for n in [0, 1, 8, 127, 128, 4095] { XCTAssertNil(decode(block.base, count: n), "truncation to \(n) accepted") }
    }

    func testRecordHeaderRejectsFieldsOutOfRange() {
        // Each with a correct CRC: the field check is what refuses.
        let bad: [(JournalEntry, Int, UInt64)] = [
            (JournalEntry(kind: .data, stripe: 1000, offsetBytes: 0, count: 4096), 4096, 0b10),  // stripe beyond the array
            (JournalEntry(kind: .data, stripe: 1, offsetBytes: 12288, count: 8192), 8192, 0b10),  // past the strip
            (JournalEntry(kind: .data, stripe: 1, offsetBytes: 100, count: 4096), 4096, 0b10),  // not whole sectors
            (JournalEntry(kind: .data, stripe: 1, offsetBytes: 0, count: 4096), 8192, 0b10),  // payload size disagrees
            (JournalEntry(kind: .intent, stripe: 5, offsetBytes: 0, count: 256), 0, 0b10),  // intent not at a region
            (JournalEntry(kind: .intent, stripe: 0, offsetBytes: 0, count: 257), 0, 0b10),  // region too long
            (JournalEntry(kind: .data, stripe: 1, offsetBytes: 0, count: 4096), 4096, 0b01),  // drive not in its batch
            (JournalEntry(kind: .data, stripe: 1, offsetBytes: 0, count: 4096), 4096, 0b10010),  // batch beyond the members
        ]
        for (entry, payload, mask) in bad {
            let block = Arena(sliceBytes: 4096, sliceCount: 1)
            encodeEntry(into: block.base, index: 0, entry)
            encodeRecordHeader(
                into: block.base, entryCount: 1, arrayUUID: uuid, epoch: 1, director: 0, member: 1, sequence: 1, batchMask: mask,
                payloadBytes: payload, payloadCRC: 0)
            XCTAssertNil(decode(block.base), "\(entry) payload \(payload) mask \(mask) accepted")
            // Its CRC holds: not a torn write but damage, which recovery reports.
            guard case .damaged = JournalHeader.read(block.base, count: 4096, geometry: geometry, arrayUUID: uuid, director: 0, member: 1) else {
                return XCTFail("\(entry) payload \(payload) mask \(mask) not reported as damaged")
            }
        }
    }

    func testEpochBlockRejectsEveryFlippedByte() {
        let block = Arena(sliceBytes: 4096, sliceCount: 1)
        JournalEpochBlock.encode(into: block.base, arrayUUID: uuid, director: 3, epoch: 42)
        XCTAssertEqual(JournalEpochBlock.decode(block.base, arrayUUID: uuid, director: 3), 42)
        XCTAssertNil(JournalEpochBlock.decode(block.base, arrayUUID: uuid, director: 2))
        for i in 0..<64 {
            let damaged = Arena(sliceBytes: 4096, sliceCount: 1)
            damaged.base.copyMemory(from: block.base, byteCount: 4096)
            damaged.base.storeBytes(of: damaged.base.load(fromByteOffset: i, as: UInt8.self) ^ 0x01, toByteOffset: i, as: UInt8.self)
            XCTAssertNil(JournalEpochBlock.decode(damaged.base, arrayUUID: uuid, director: 3), "flipped byte \(i) accepted")
        }
    }

    /// The write hole, closed: RAID-5 with member 2 failed; a 4 KiB write to stripe 0's strip on member 0 loses
    /// power after its journal records are flushed, with the data write torn and the parity write never made. The
    /// strip member 2 held is only in parity now, and must read back as it was.
    func testDegradedPowerCutBetweenDataAndParity() throws {
        let directory = "/dev/shm/vsa-journal-\(getpid())"
        try? FileManager.default.removeItem(atPath: directory)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let injector = DriveFaultInjector(seed: 3)
        injector.lossPercent = 0
        injector.tornSectors = 4
        DriveFaultInjector.active = injector
        defer { DriveFaultInjector.active = nil }

        var store = try ArrayStore.create(
            CreateOptions(
                directory: directory, driveCount: 4, driveSizeBytes: 16 << 20, drivePaths: [], raidLevel: .raid5, spareCount: 0,
                stripUnitBytes: 16384, cacheBytes: 16 << 20, engineCount: 1, force: false))
        let lun = try store.createLUN(name: "l", sizeBytes: 1 << 20)
        let ref = LUNRef(lunID: lun.lunID, startStripe: lun.startStripe, sizeBytes: lun.sizeBytes)
        let g = store.geometry
        XCTAssertEqual(g.parityDrive(stripe: lun.startStripe), 3 - Int(lun.startStripe % 4))
        let memory = MemoryServices()
        func mount() throws -> (RAIDBackEnd, TrackCache) {
            let recovery = try JournalRecovery.recover(
                geometry: store.geometry, drives: store.drives, arrayUUID: store.superblock.arrayUUID, unclean: !store.wasClean)
            try store.writeSuperblocks(clean: false)
            let backEnd = try RAIDBackEnd(
                geometry: store.geometry, drives: store.drives, memory: memory, marks: BackEndMarks(),
                journal: JournalOwner(arrayUUID: store.superblock.arrayUUID, director: 0, epoch: recovery.epochs[0]))
            return (backEnd, TrackCache(slotCount: 64, store: backEnd, memory: memory, counters: CacheCounters()))
        }
        var (backEnd, cache) = try mount()
        // The whole LUN gets known contents, durably.
        let original = alignedBuffer(bytes: 1 << 20)
        var rng = SplitMix(seed: 11)
        for i in 0..<(1 << 20) { original.base.storeBytes(of: UInt8(truncatingIfNeeded: rng.next()), toByteOffset: i, as: UInt8.self) }
        XCTAssertTrue(cache.write(lun: ref, offsetBytes: 0, count: 1 << 20, from: original.base))
        XCTAssertTrue(cache.destageAll() && backEnd.flush())

        // Member 2 fails. Stripe 0's data strip there is strip `lost`; the host writes 4 KiB into the strip on member 0.
        let stripe = lun.startStripe
        let lost = (0..<g.dataStripsPerStripe).first { g.dataDrive(stripe: stripe, strip: $0) == 2 }!
        let written = (0..<g.dataStripsPerStripe).first { g.dataDrive(stripe: stripe, strip: $0) == 0 }!
        store.drives[2].transition(to: .failed)
        _ = try store.recordFailures()
        let fresh = alignedBuffer(bytes: 4096)
        memset(fresh.base, 0x5A, 4096)
        XCTAssertTrue(cache.write(lun: ref, offsetBytes: UInt64(written * g.stripUnitBytes), count: 4096, from: fresh.base))
        // Two journal records (member 0 and the parity drive) land; the third write, the data in place, is torn;
        // the parity write after it never happens. (Without a journal the data write is the first.)
        injector.writesBeforeCut = backEnd.hasJournal ? 3 : 1
        _ = cache.destageAll()
        XCTAssertTrue(injector.cut, "the power cut fell inside the destage")
        injector.losePower()

        store = try ArrayStore.assemble(directory: directory)
        XCTAssertFalse(store.wasClean)
        (backEnd, cache) = try mount()
        let back = alignedBuffer(bytes: 16384)
        XCTAssertTrue(cache.read(lun: ref, offsetBytes: UInt64(lost * g.stripUnitBytes), count: 16384, into: back.base))
        XCTAssertEqual(memcmp(back.base, original.base + lost * g.stripUnitBytes, 16384), 0, "the lost member's strip reads back wrong: the write hole")
        XCTAssertTrue(cache.read(lun: ref, offsetBytes: UInt64(written * g.stripUnitBytes), count: 4096, into: back.base))
        XCTAssertEqual(memcmp(back.base, fresh.base, 4096), 0, "the journaled write was replayed")
    }
}
