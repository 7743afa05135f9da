// Damage confined to one drive never costs data on a redundant level (two drives on RAID-6). Random 4 KiB regions of
// a drive are overwritten anywhere past its superblocks and LUN tables: the journal, the checksum area (whose entries
// say what the blocks must be) and the data area, so a block and its entry can be damaged together. The array is
// assembled again, every LUN is read back exactly through the directors, a scrub with repair reports nothing
// unrecoverable, and a second scrub finds every stripe consistent. Before the fix a block whose data and entry were
// both damaged read EIO on RAID-5, and scrub could not repair it.
import ArrayModel
import BackEnd
import Buffers
import Directors
import Drives
import Foundation
import GlobalMemory
import MemoryServices
import Metadata
import XCTest

final class OneDriveDamageTests: XCTestCase {
    func testRAID1() throws { try damageAndReadBack(level: .raid1, drives: 2, damaged: 1) }
    func testRAID5() throws { try damageAndReadBack(level: .raid5, drives: 4, damaged: 1) }
    func testRAID6() throws { try damageAndReadBack(level: .raid6, drives: 5, damaged: 1) }
    func testRAID10() throws { try damageAndReadBack(level: .raid10, drives: 4, damaged: 1) }
    func testRAID6TwoDrives() throws { try damageAndReadBack(level: .raid6, drives: 6, damaged: 2) }

    private func damageAndReadBack(level: RAIDLevel, drives: Int, damaged: Int) throws {
        let directory = "/dev/shm/vsa-onedrive-\(getpid())-\(level)-\(damaged)"
        try? FileManager.default.removeItem(atPath: directory)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var rng = SplitMix(seed: UInt64(drives * 7 + damaged) ^ 0xDA4A6E)
        let store = try ArrayStore.create(
            CreateOptions(
                directory: directory, driveCount: drives, driveSizeBytes: 12 << 20, drivePaths: [], raidLevel: level, spareCount: 0,
                stripUnitBytes: 16384, cacheBytes: 16 << 20, engineCount: 1, force: false))
        // Two LUNs filling most of the array, full of random data, destaged and stopped cleanly.
        let capacity = store.geometry.capacityBytes
        let sizes = [capacity / 2 / 4096 * 4096, capacity / 3 / 4096 * 4096]
        var written: [String: [UInt8]] = [:]
        do {
            for (i, size) in sizes.enumerated() { _ = try store.createLUN(name: "lun\(i)", sizeBytes: size) }
            let engines = try start(store)
            let buffer = alignedBuffer(bytes: Int(sizes[0]))
            for entry in store.lunTable.entries {
                var bytes = [UInt8](repeating: 0, count: Int(entry.sizeBytes))
                for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: rng.next()) }
                bytes.withUnsafeBytes { buffer.base.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                XCTAssertEqual(engines.write(lun: ref(entry), offsetBytes: 0, count: bytes.count, from: buffer.base), 0)
                written[entry.name] = bytes
            }
            XCTAssertEqual(engines.flush(lun: nil), 0)
            XCTAssertEqual(engines.endEpochs(), 0)
            try store.writeSuperblocks(clean: true)
        }

        // Damage: 64 random 4 KiB regions per damaged drive, anywhere past the first MiB (superblocks and LUN tables),
        // plus the first checksum page and a data block it covers (the reproduction).
        let layout = store.geometry.layout!
        let driveBytes = store.superblock.driveBytesRequired
        var victims: [Int] = []
        while victims.count < damaged {
            let v = Int(rng.next() % UInt64(drives))
            if !victims.contains(v) { victims.append(v) }
        }
        for v in victims {
            let path = directory + "/drive-\(v)"
            var regions: [UInt64] = [layout.checksumOffsetBytes, store.geometry.dataOffsetBytes + 4096 * (rng.next() % 64)]
            for _ in 0..<64 { regions.append(DriveLayout.journalOffsetBytes + (rng.next() % ((driveBytes - DriveLayout.journalOffsetBytes) / 4096)) * 4096) }
            for offset in regions { Fuzz.write(path, at: offset, (0..<4096).map { _ in UInt8(truncatingIfNeeded: rng.next()) }) }
        }

        // Assembled again from the drives: everything reads back exactly.
        let again = try ArrayStore.assemble(directory: directory)
        let checksums = BlockChecksums(geometry: again.geometry)
        let engines = try start(again, checksums: checksums)
        let buffer = alignedBuffer(bytes: 64 << 10)
        for entry in again.lunTable.entries {
            var offset = 0
            while offset < Int(entry.sizeBytes) {
                let n = min(64 << 10, Int(entry.sizeBytes) - offset)
                XCTAssertEqual(engines.read(lun: ref(entry), offsetBytes: UInt64(offset), count: n, into: buffer.base), 0, "\(entry.name) at \(offset)")
                let expected = written[entry.name]!
                let same = expected[offset..<(offset + n)].withUnsafeBytes { memcmp($0.baseAddress!, buffer.base, n) == 0 }
                XCTAssertTrue(same, "\(level) with \(damaged) damaged drive(s): \(entry.name) at \(offset) reads back wrong")
                offset += n
            }
        }
        XCTAssertEqual(checksums.unrecoverable.load(ordering: .relaxed), 0)

        // Scrub with repair: nothing unrecoverable; a second scrub finds every stripe consistent.
        let placement = placementOf(again)
        var outcomes: [ScrubOutcome: Int] = [:]
        engines.scrub(stripes: 0..<again.geometry.stripeCount, repair: true, placement: placement) { _, outcome in outcomes[outcome, default: 0] += 1 }
        XCTAssertNil(outcomes[.unrecoverable], "\(level): \(outcomes)")
        XCTAssertNil(outcomes[.unreadable], "\(level): \(outcomes)")
        // Reads that went to a damaged copy saw it; scrub sees the rest (mirrors' second copies are not read otherwise).
        let seen = checksums.mismatches.load(ordering: .relaxed) + UInt64(outcomes[.repaired] ?? 0) + UInt64(outcomes[.repairedData] ?? 0)
        XCTAssertGreaterThan(seen, 0, "the damage was never seen")
        outcomes = [:]
        engines.scrub(stripes: 0..<again.geometry.stripeCount, repair: false, placement: placement) { _, outcome in outcomes[outcome, default: 0] += 1 }
        XCTAssertEqual(outcomes, [.consistent: Int(again.geometry.stripeCount)], "\(level): the second scrub")
        XCTAssertEqual(engines.endEpochs(), 0)
    }

    private func ref(_ e: LUNEntry) -> LUNRef { LUNRef(lunID: e.lunID, startStripe: e.startStripe, sizeBytes: e.sizeBytes) }

    private func start(_ store: ArrayStore, checksums: BlockChecksums? = nil) throws -> Engines {
        let checksums = checksums ?? BlockChecksums(geometry: store.geometry)
        let recovery = try JournalRecovery.recover(
            geometry: store.geometry, drives: store.drives, arrayUUID: store.superblock.arrayUUID, unclean: !store.wasClean, checksums: checksums)
        return try Simulation.makeEngines(store: store, epochs: recovery.epochs, slots: 64, checksums: checksums)
    }

    private func placementOf(_ store: ArrayStore) -> Engines.Placement {
        let entries = store.lunTable.entries
        return { stripe in
            entries.first { stripe >= $0.startStripe && stripe < $0.startStripe + $0.stripeCount }.map {
                StripeHolder(lunID: $0.lunID, startStripe: $0.startStripe)
            }
        }
    }
}
