import ArrayModel
import Foundation
import Metadata
import XCTest

@testable import Daemon
@testable import Pool

/// What the mount does with snapshot work a stop cut short (ArrayDaemon.checkSnapshots): a snapshot only some homes
/// hold is dropped, a restore the LUN table records is finished in every home, and a clone linked to a snapshot that
/// is gone is unlinked. Homes on a real RAID-5 back end, restarted from the drives.
extension PoolHomeTests {
    func testTheMountFinishesOrUndoesSnapshotWorkCutShort() throws {
        let array = try PoolTestArray(name: "snaprecovery", homes: 2)
        var homes = [array.newHome(0), array.newHome(1)]
        for h in homes {
            h.createVersion(1, blocks: 2000)
            XCTAssertTrue(h.checkpoint())
            for b: UInt64 in 0..<40 { XCTAssertNil(write(h, 1, b, 1)) }
            XCTAssertTrue(h.commit() && h.checkpoint())
        }
        // A snapshot both homes took, then newer data.
        for h in homes {
            XCTAssertTrue(h.snapshot(1, as: 301, label: VersionLabel(lunID: 1, name: "whole", createdSeconds: 5)))
            for b: UInt64 in 0..<40 { XCTAssertNil(write(h, 1, b, 2)) }
            XCTAssertTrue(h.commit() && h.checkpoint())
        }
        // A snapshot only home 0 took before the stop.
        XCTAssertTrue(homes[0].snapshot(1, as: 302, label: VersionLabel(lunID: 1, name: "half")))
        // The LUN table: LUN 1 being restored from 301, a clone (id 3) linked to a snapshot that no home holds.
        homes[0].createVersion(3, blocks: 2000)
        homes[1].createVersion(3, blocks: 2000)
        XCTAssertTrue(homes[0].checkpoint() && homes[1].checkpoint())
        let area = PoolArea(startStripe: 0, stripeCount: array.layout.areaStripes, versionsMax: 64)
        try array.store.recordThinLUN(
            LUNEntry(lunID: 1, name: "t", sizeBytes: 1 << 30, startStripe: 0, stripeCount: 0, thin: true, pendingReset: 301), pool: area)
        try array.store.recordThinLUN(
            LUNEntry(lunID: 3, name: "c", sizeBytes: 1 << 30, startStripe: 0, stripeCount: 0, thin: true, linkedSnapshot: 999), pool: area)

        // The stop, and the mount.
        try array.restart()
        let recovered = try array.recover(homes: [0, 1])
        homes = [recovered[0]!, recovered[1]!]
        var notes: [String] = []
        try ArrayDaemon.checkSnapshots(store: array.store, homes: homes, log: { notes.append($0) })
        XCTAssertEqual(notes.count, 3, "\(notes)")
        for h in homes {
            XCTAssertNil(h.versions[302], "the half-taken snapshot is dropped")
            XCTAssertEqual(h.versions[301]?.kind, .snapshot)
            XCTAssertEqual(h.versions[301]?.label, VersionLabel(lunID: 1, name: "whole", createdSeconds: 5))
            for b: UInt64 in 0..<40 { XCTAssertEqual(read(h, 1, b), page(b, 1), "the restore was finished: block \(b)") }
        }
        let table = array.store.lunTable.entries
        XCTAssertEqual(table.first { $0.lunID == 1 }?.pendingReset, 0)
        XCTAssertEqual(table.first { $0.lunID == 3 }?.linkedSnapshot, 0)
        // A second mount has nothing left to do.
        notes = []
        try ArrayDaemon.checkSnapshots(store: array.store, homes: homes, log: { notes.append($0) })
        XCTAssertEqual(notes, [])
    }
}
