// Recovery never launders rot. A block written in an earlier epoch (its checksum entry written back when that epoch
// ended) rots on one member while a later write puts a write intent on its region; the daemon dies; the intent
// resync at the next mount must keep the copy or strip that passes its checksum and rebuild the rotted one, not copy
// the rot over the good mirror (RAID-1) or fold it into new parity (RAID-5), then checksum it as if it were right.
// Red before the fix: the rot read back as data, with no error.
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

final class ResyncRotTests: XCTestCase {
    func testRAID1ResyncKeepsTheCopyThatPasses() throws { try rotInsideIntentRegion(level: .raid1, drives: 2) }
    func testRAID5ResyncRebuildsTheStripThatFails() throws { try rotInsideIntentRegion(level: .raid5, drives: 4) }
    func testRAID6ResyncRebuildsTheStripThatFails() throws { try rotInsideIntentRegion(level: .raid6, drives: 5) }

    private func rotInsideIntentRegion(level: RAIDLevel, drives: Int) throws {
        // Mount 1: the whole LUN written and its epoch ended (data and checksum pages on the drives), then a new write
        // that records an intent on region 0 (a full stripe on parity levels, any write on mirrors), made durable, and
        // the daemon dies before its epoch ends: after this the array is not clean and region 0 must be resynced.
        let array = try CoreTestArray(
            name: "resync-rot-\(level)", level: level, drives: drives, driveBytes: 16 << 20, stripUnitBytes: 16384, lunBytes: 2 << 20)
        defer { array.remove() }
        let directory = array.directory
        var store = array.store
        let lun = array.lun
        let g = store.geometry
        var engines = array.engines
        var rng = SplitMix(seed: UInt64(drives))
        let original = alignedBuffer(bytes: 2 << 20)
        for i in 0..<(2 << 20) { original.base.storeBytes(of: UInt8(truncatingIfNeeded: rng.next()), toByteOffset: i, as: UInt8.self) }
        XCTAssertEqual(engines.write(lun: lun, offsetBytes: 0, count: 2 << 20, from: original.base), 0)
        XCTAssertEqual(engines.flush(lun: lun), 0)
        XCTAssertEqual(engines.endEpochs(), 0)
        let stripeBytes = Int(g.stripeDataBytes)
        XCTAssertEqual(engines.write(lun: lun, offsetBytes: 0, count: stripeBytes, from: original.base), 0)
        XCTAssertEqual(engines.flush(lun: lun), 0)
        let intents = engines.directors.reduce(UInt64(0)) { $0 + $1.marks.journalIntents.load(ordering: .relaxed) }
        XCTAssertGreaterThan(intents, 0, "the second write recorded no intent")
        _ = engines  // dies here: no endEpochs, no clean mark

        // Rot: 4 KiB of stripe 5's first data strip on its (first) drive changes behind the array's back.
        let rotStripe = lun.startStripe + 5
        let rotDrive = g.dataDrive(stripe: rotStripe, strip: 0)
        XCTAssertLessThan(rotStripe, DriveLayout.intentRegionStripes, "the rot lies in the intent's region")
        Fuzz.write(directory + "/drive-\(rotDrive)", at: g.driveOffset(stripe: rotStripe) + 8192, (0..<4096).map { _ in UInt8(truncatingIfNeeded: rng.next()) })

        // Mount 2: recovery resyncs region 0; the rotted strip must be rebuilt, not trusted.
        store = try ArrayStore.assemble(directory: directory)
        XCTAssertFalse(store.wasClean)
        let checksums = BlockChecksums(geometry: g)
        let recovery = try JournalRecovery.recover(
            geometry: g, drives: store.drives, arrayUUID: store.superblock.arrayUUID, unclean: true, checksums: checksums)
        XCTAssertGreaterThan(recovery.resyncedRegions, 0)
        XCTAssertEqual(recovery.resyncRepairedStrips, 1, "\(level): the rotted strip was not found")
        engines = try Simulation.makeEngines(store: store, epochs: recovery.epochs, slots: 64, checksums: checksums)
        let back = alignedBuffer(bytes: 2 << 20)
        XCTAssertEqual(engines.read(lun: lun, offsetBytes: 0, count: 2 << 20, into: back.base), 0)
        XCTAssertEqual(memcmp(back.base, original.base, 2 << 20), 0, "\(level): recovery laundered the rot into the data")
        XCTAssertEqual(checksums.unrecoverable.load(ordering: .relaxed), 0)
        XCTAssertEqual(engines.endEpochs(), 0)
    }
}
