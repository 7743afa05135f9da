// Superblock and LUN table: round trips, a golden-bytes pin, and rejection of every flipped byte and every truncation.
import ArrayModel
import Metadata
import XCTest

final class RecordTests: XCTestCase {
    let sample: Superblock = {
        // A 1 GiB-data drive planned as `vsa create` plans it: journal slices, checksum area, data offset.
        let plan = DriveLayout.plan(driveBytes: (1 << 30) + (32 << 20), stripUnitBytes: 65536, directorCount: 2)!
        var sb = Superblock(
            clean: true, generation: 7, arrayUUID: UUID128(high: 0x0123_4567_89AB_CDEF, low: 0x8877_6655_4433_2211),
            driveUUID: UUID128(high: 1, low: 2), driveIndex: 2, memberCount: 4, spareCount: 1, raidLevel: .raid5, role: .member,
            stripUnitBytes: 65536, engineCount: 1, dataOffsetBytes: plan.layout.dataOffsetBytes, dataBytesPerDrive: plan.dataBytesPerDrive,
            cacheBytes: 256 << 20, createdUnixSeconds: 1_700_000_000)
        sb.journalSliceBytes = plan.layout.journalSliceBytes
        sb.checksumBytes = plan.layout.checksumBytes
        return sb
    }()

    func testSuperblockRoundTrip() throws {
        let bytes = sample.encode()
        XCTAssertEqual(bytes.count, Layout.superblockRecordBytes)
        XCTAssertEqual(try Superblock.decode(bytes), sample)
    }

    func testSuperblockGoldenBytes() {
        let bytes = sample.encode()
        XCTAssertEqual(Array(bytes[0..<8]), Array("VSA-SB01".utf8))
        XCTAssertEqual(bytes[8], 2)  // format version, little-endian
        XCTAssertEqual(Array(bytes[12..<14]), [0x00, 0x02])  // record length 512
        XCTAssertEqual(bytes[20], 1)  // clean
        XCTAssertEqual(bytes[24], 7)  // generation
        XCTAssertEqual(bytes[76], 5)  // RAID level
        XCTAssertEqual(Array(bytes[80..<84]), [0x00, 0x00, 0x01, 0x00])  // stripe unit 65536
        XCTAssertEqual(Array(bytes[120..<128]), [0, 0, 0, 0, 0, 0, 0, 0])  // no failed members
        XCTAssertEqual(Array(bytes[144..<152]), [0, 0, 0, 1, 0, 0, 0, 0])  // journal slice 16 MiB (1/32 of the drive, 2 directors)
        XCTAssertTrue(bytes[128..<144].allSatisfy { $0 == 0 }, "no rebuild")
        XCTAssertTrue(bytes[160...].allSatisfy { $0 == 0 }, "reserved bytes are zero")
    }

    func testSuperblockRejectsEveryFlippedByte() {
        let bytes = sample.encode()
        for i in 0..<bytes.count {
            var damaged = bytes
            damaged[i] ^= 0x40
            XCTAssertThrowsError(try Superblock.decode(damaged), "flipped byte \(i) accepted")
        }
    }

    func testSuperblockRejectsEveryTruncation() {
        let bytes = sample.encode()
        for n in 0..<bytes.count {
            XCTAssertThrowsError(try Superblock.decode(Array(bytes[0..<n])), "truncation to \(n) accepted")
        }
    }

    func testSuperblockRejectionsNameTheProblem() {
        var foreign = sample.encode()
        foreign[0] = 0x7F
        XCTAssertThrowsError(try Superblock.decode(foreign)) { XCTAssertEqual(($0 as? RecordRejection)?.reason, "no vsa superblock magic") }
        var damaged = sample.encode()
        damaged[300] ^= 1
        XCTAssertThrowsError(try Superblock.decode(damaged)) { XCTAssertEqual(($0 as? RecordRejection)?.reason, "superblock checksum mismatch") }
    }

    func testSuperblockRebuildFields() throws {
        var rebuilding = sample
        rebuilding.rebuildMember = 3
        rebuilding.rebuildCheckpoint = 1000
        let bytes = rebuilding.encode()
        XCTAssertEqual(Array(bytes[128..<132]), [4, 0, 0, 0])  // member + 1
        XCTAssertEqual(Array(bytes[136..<138]), [0xE8, 0x03])  // checkpoint 1000
        XCTAssertEqual(try Superblock.decode(bytes), rebuilding)
        // A rebuild member beyond the members, one recorded as failed, a checkpoint beyond the stripes or without a
        // rebuild: each is rejected by name (with a correct CRC, so the field check is what refuses).
        func rejects(_ change: (inout Superblock) -> Void, _ reason: String) {
            var sb = sample
            change(&sb)
            XCTAssertThrowsError(try Superblock.decode(sb.encode())) { XCTAssertTrue(($0 as? RecordRejection)?.reason.contains(reason) == true, "\($0)") }
        }
        rejects({ $0.rebuildMember = 4 }, "rebuild member")
        rejects(
            {
                $0.rebuildMember = 1
                $0.failedMemberMask = 1 << 1
            }, "rebuild member")
        rejects(
            {
                $0.rebuildMember = 1
                $0.rebuildCheckpoint = $0.dataBytesPerDrive / 65536 + 1
            }, "checkpoint beyond")
        rejects({ $0.rebuildCheckpoint = 5 }, "without a rebuild")
        rejects({ $0.journalSliceBytes = 1 << 19 }, "journal size")
        rejects({ $0.journalSliceBytes = 128 << 20 }, "journal size")
        rejects({ $0.checksumBytes = 4096 }, "checksum area")
        rejects({ $0.dataOffsetBytes += 1 << 20 }, "data offset")
    }

    func testLUNTableRoundTripAndRejection() throws {
        let table = LUNTable(
            generation: 3, arrayUUID: sample.arrayUUID,
            entries: [
                LUNEntry(lunID: 1, name: "lun0", sizeBytes: 1 << 30, startStripe: 0, stripeCount: 5462),
                LUNEntry(lunID: 2, name: "db.v2", sizeBytes: 512 << 20, startStripe: 5462, stripeCount: 2731),
                LUNEntry(lunID: 3, name: "thin", sizeBytes: 10 << 40, startStripe: 0, stripeCount: 0, thin: true, versionsPending: true),
                LUNEntry(lunID: 5, name: "clone", sizeBytes: 10 << 40, startStripe: 0, stripeCount: 0, thin: true, linkedSnapshot: 300, pendingReset: 301),
            ], pool: PoolArea(startStripe: 8193, stripeCount: 12, versionsMax: 4096, fresh: true))
        let bytes = table.encode()
        XCTAssertEqual(bytes.count, Layout.lunHeaderBytes + 4 * Layout.lunEntryBytes)
        XCTAssertEqual(bytes[8], 4)  // format version 4: thin LUNs, the pool area, clones' links and restores
        XCTAssertEqual(bytes[Layout.lunHeaderBytes + 2 * Layout.lunEntryBytes + 92], 3)  // thin, versions pending
        XCTAssertEqual(try LUNTable.decode(bytes), table)
        // A snapshot id that is a LUN id, or a thick LUN linked: not a table a vsa wrote.
        let geometry = ArrayGeometry(raidLevel: .raid5, memberCount: 4, stripUnitBytes: 65536, stripeCount: 10000, dataOffsetBytes: 0)
        XCTAssertNoThrow(try table.validate(geometry: geometry))
        var bad = table
        bad.entries[3].linkedSnapshot = 7
        XCTAssertThrowsError(try bad.validate(geometry: geometry))
        bad = table
        bad.entries[0].pendingReset = 300
        XCTAssertThrowsError(try bad.validate(geometry: geometry))
        for i in 0..<bytes.count {
            var damaged = bytes
            damaged[i] ^= 0x01
            XCTAssertThrowsError(try LUNTable.decode(damaged), "flipped byte \(i) accepted")
        }
        for n in 0..<bytes.count {
            XCTAssertThrowsError(try LUNTable.decode(Array(bytes[0..<n])), "truncation to \(n) accepted")
        }
    }
}
