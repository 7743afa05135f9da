// Sizes, names and the RAID layout tables (md's left-symmetric rotation).
import ArrayModel
import XCTest

final class ModelTests: XCTestCase {
    func testWhichFailuresEachLevelSurvives() {
        XCTAssertTrue(RAIDLevel.raid0.survives(outMask: 0, memberCount: 3))
        XCTAssertFalse(RAIDLevel.raid0.survives(outMask: 0b1, memberCount: 3))
        XCTAssertTrue(RAIDLevel.raid1.survives(outMask: 0b011, memberCount: 3))
        XCTAssertFalse(RAIDLevel.raid1.survives(outMask: 0b111, memberCount: 3))
        XCTAssertTrue(RAIDLevel.raid5.survives(outMask: 0b0100, memberCount: 4))
        XCTAssertFalse(RAIDLevel.raid5.survives(outMask: 0b0101, memberCount: 4))
        XCTAssertTrue(RAIDLevel.raid6.survives(outMask: 0b10001, memberCount: 5))
        XCTAssertFalse(RAIDLevel.raid6.survives(outMask: 0b10101, memberCount: 5))
        // RAID-10: one member per mirror pair may go, never both of a pair.
        XCTAssertTrue(RAIDLevel.raid10.survives(outMask: 0b1001, memberCount: 4))
        XCTAssertTrue(RAIDLevel.raid10.survives(outMask: 0b010101, memberCount: 6))
        XCTAssertFalse(RAIDLevel.raid10.survives(outMask: 0b0011, memberCount: 4))
        XCTAssertFalse(RAIDLevel.raid10.survives(outMask: 0b1100, memberCount: 4))
    }

    func testSizeParsing() {
        XCTAssertEqual(parseSize("4096"), 4096)
        XCTAssertEqual(parseSize("64K"), 65536)
        XCTAssertEqual(parseSize("64k"), 65536)
        XCTAssertEqual(parseSize("1M"), 1 << 20)
        XCTAssertEqual(parseSize("1G"), 1 << 30)
        XCTAssertEqual(parseSize("2T"), 2 << 40)
        XCTAssertEqual(parseSize("1.5G"), 3 << 29)
        XCTAssertEqual(parseSize("512MiB"), 512 << 20)
        XCTAssertEqual(parseSize("8KB"), 8192)
        for bad in ["", "K", "abc", "1X", "-1", "1.3", "99999999999T", "1..5G", " "] {
            XCTAssertNil(parseSize(bad), "'\(bad)' should not parse")
        }
    }

    func testLUNNames() {
        XCTAssertNil(validateLUNName("lun0"))
        XCTAssertNil(validateLUNName("db-data_1.v2"))
        XCTAssertNotNil(validateLUNName(""))
        XCTAssertNotNil(validateLUNName(".hidden"))
        XCTAssertNotNil(validateLUNName("a/b"))
        XCTAssertNotNil(validateLUNName(String(repeating: "x", count: 65)))
    }

    func testRAID5LeftSymmetricTable() {
        // md's left-symmetric layout on 4 drives: rows are stripes, entries the drive of data strips 0,1,2 and P.
        let g = ArrayGeometry(raidLevel: .raid5, memberCount: 4, stripUnitBytes: 65536, stripeCount: 100, dataOffsetBytes: 1 << 20)
        let expected: [([Int], Int)] = [([0, 1, 2], 3), ([3, 0, 1], 2), ([2, 3, 0], 1), ([1, 2, 3], 0), ([0, 1, 2], 3)]
        for (stripe, row) in expected.enumerated() {
            XCTAssertEqual(g.parityDrive(stripe: UInt64(stripe)), row.1, "P of stripe \(stripe)")
            XCTAssertEqual((0..<3).map { g.dataDrive(stripe: UInt64(stripe), strip: $0) }, row.0, "data of stripe \(stripe)")
        }
        XCTAssertEqual(g.stripeDataBytes, 3 * 65536)
        XCTAssertEqual(g.driveOffset(stripe: 2), (1 << 20) + 2 * 65536)
    }

    func testRAID6AndMirrorsLayout() {
        let g6 = ArrayGeometry(raidLevel: .raid6, memberCount: 5, stripUnitBytes: 4096, stripeCount: 10, dataOffsetBytes: 0)
        for s in 0..<10 {
            let stripe = UInt64(s)
            var used = Set([g6.parityDrive(stripe: stripe), g6.qDrive(stripe: stripe)])
            for i in 0..<3 { used.insert(g6.dataDrive(stripe: stripe, strip: i)) }
            XCTAssertEqual(used.count, 5, "every drive used once in stripe \(s)")
        }
        let g10 = ArrayGeometry(raidLevel: .raid10, memberCount: 4, stripUnitBytes: 4096, stripeCount: 10, dataOffsetBytes: 0)
        XCTAssertEqual(g10.dataStripsPerStripe, 2)
        XCTAssertEqual(g10.copyDrives(stripe: 3, strip: 1), 2...3)
        let g1 = ArrayGeometry(raidLevel: .raid1, memberCount: 3, stripUnitBytes: 4096, stripeCount: 10, dataOffsetBytes: 0)
        XCTAssertEqual(g1.copyDrives(stripe: 0, strip: 0), 0...2)
        XCTAssertEqual(g1.capacityBytes, 10 * 4096)
    }

    func testDirectorNames() {
        XCTAssertEqual((0..<4).map { DirectorID(index: $0).description }, ["1a", "1b", "2a", "2b"])
    }
}
