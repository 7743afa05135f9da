// Scrub on the drives: every kind of damage a single bad strip can do is found, and repaired where the level can
// tell what is right; a degraded stripe is skipped, two bad strips in a RAID-6 stripe are unrecoverable.
import ArrayModel
import BackEnd
import Buffers
import Drives
import GlobalMemory
import MemoryServices
import Metadata
import XCTest

#if canImport(Glibc)
    import Glibc
#endif

extension CacheTests {
    /// Writes random bytes over `count` bytes of drive `drive` at `offset` (damage the array did not do).
    func corrupt(_ store: ArrayStore, drive: Int, offset: UInt64, count: Int = 512, seed: UInt64) {
        var rng = SplitMix(seed: seed)
        let junk = (0..<count).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let fd = open(store.drivePaths[drive], O_WRONLY)
        XCTAssertGreaterThan(fd, 0)
        XCTAssertEqual(junk.withUnsafeBytes { pwrite(fd, $0.baseAddress, count, off_t(offset)) }, count)
        close(fd)
    }

    /// An array with one LUN filled with random data, destaged; returns the data.
    func filledArray(_ level: RAIDLevel, drives: Int) throws -> (ArrayStore, LUNRef, [UInt8]) {
        try? FileManager.default.removeItem(atPath: directory)
        let store = try makeArray(level, drives: drives, stripUnit: 4096)
        let size = 256 << 10
        let lun = try store.createLUN(name: "l", sizeBytes: UInt64(size))
        let ref = LUNRef(lunID: lun.lunID, startStripe: lun.startStripe, sizeBytes: lun.sizeBytes)
        let (cache, _, _) = try makeCache(store, slots: 64)
        var rng = SplitMix(seed: UInt64(drives))
        let data = (0..<size).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        data.withUnsafeBytes { raw in
            let buffer = alignedBuffer(bytes: size)
            buffer.base.copyMemory(from: raw.baseAddress!, byteCount: size)
            XCTAssertTrue(cache.write(lun: ref, offsetBytes: 0, count: size, from: buffer.base))
        }
        XCTAssertTrue(cache.destageAll())
        return (store, ref, data)
    }

    func readBack(_ store: ArrayStore, _ ref: LUNRef) throws -> [UInt8] {
        let (cold, _, _) = try makeCache(store, slots: 64)
        let size = Int(ref.sizeBytes)
        let buffer = alignedBuffer(bytes: size)
        XCTAssertTrue(cold.read(lun: ref, offsetBytes: 0, count: size, into: buffer.base))
        return Array(UnsafeRawBufferPointer(start: buffer.base, count: size))
    }

    func testScrubFindsAndRepairsOneBadStrip() throws {
        // RAID-6: a bad data strip, a bad P and a bad Q are each located and rewritten; the data reads back intact.
        let (store, ref, data) = try filledArray(.raid6, drives: 6)
        let g = store.geometry
        let backEnd = try RAIDBackEnd(geometry: g, drives: store.drives, memory: MemoryServices(), marks: BackEndMarks())
        let stripe = ref.startStripe + 3
        for (label, drive) in [("data", g.dataDrive(stripe: stripe, strip: 2)), ("P", g.parityDrive(stripe: stripe)), ("Q", g.qDrive(stripe: stripe))] {
            corrupt(store, drive: drive, offset: g.driveOffset(stripe: stripe) + 1024, seed: UInt64(drive))
            XCTAssertEqual(backEnd.scrub(stripe: stripe, repair: false), .mismatch, label)
            XCTAssertEqual(backEnd.scrub(stripe: stripe, repair: true), label == "data" ? .repairedData : .repaired, label)
            XCTAssertEqual(backEnd.scrub(stripe: stripe, repair: false), .consistent, "\(label) after repair")
            XCTAssertEqual(try readBack(store, ref), data, "\(label): data after repair")
        }
        // Two bad strips in one stripe: no single strip explains it.
        corrupt(store, drive: g.dataDrive(stripe: stripe, strip: 0), offset: g.driveOffset(stripe: stripe), seed: 1)
        corrupt(store, drive: g.dataDrive(stripe: stripe, strip: 1), offset: g.driveOffset(stripe: stripe) + 2048, seed: 2)
        XCTAssertEqual(backEnd.scrub(stripe: stripe, repair: true), .unrecoverable)
        // A member out: nothing to compare.
        store.drives[0].transition(to: .failed)
        XCTAssertEqual(backEnd.scrub(stripe: stripe + 1, repair: false), .skipped)
    }

    func testScrubRAID5AndMirrors() throws {
        // RAID-5: a mismatch is found; repair makes parity agree with the data (which strip was wrong is unknowable).
        let (store5, ref5, _) = try filledArray(.raid5, drives: 4)
        let g5 = store5.geometry
        let backEnd5 = try RAIDBackEnd(geometry: g5, drives: store5.drives, memory: MemoryServices(), marks: BackEndMarks())
        let stripe5 = ref5.startStripe + 2
        corrupt(store5, drive: g5.parityDrive(stripe: stripe5), offset: g5.driveOffset(stripe: stripe5), seed: 9)
        XCTAssertEqual(backEnd5.scrub(stripe: stripe5, repair: false), .mismatch)
        XCTAssertEqual(backEnd5.scrub(stripe: stripe5, repair: true), .repaired)
        XCTAssertEqual(backEnd5.scrub(stripe: stripe5, repair: false), .consistent)
        XCTAssertEqual(backEnd5.scrub(stripe: stripe5 + 1, repair: false), .consistent)
        // RAID-10: a copy that disagrees with its primary gets the primary's contents.
        let (store10, ref10, data10) = try filledArray(.raid10, drives: 4)
        let g10 = store10.geometry
        let backEnd10 = try RAIDBackEnd(geometry: g10, drives: store10.drives, memory: MemoryServices(), marks: BackEndMarks())
        let stripe10 = ref10.startStripe + 5
        corrupt(store10, drive: 3, offset: g10.driveOffset(stripe: stripe10) + 512, seed: 4)
        XCTAssertEqual(backEnd10.scrub(stripe: stripe10, repair: false), .mismatch)
        XCTAssertEqual(backEnd10.scrub(stripe: stripe10, repair: true), .repaired)
        XCTAssertEqual(backEnd10.scrub(stripe: stripe10, repair: false), .consistent)
        store10.drives[2].transition(to: .failed)  // drive 3 must now serve its strip alone
        XCTAssertEqual(try readBack(store10, ref10), data10)
    }
}
