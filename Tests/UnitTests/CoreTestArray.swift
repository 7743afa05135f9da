// A small array on tmpfs for tests of the core, mounted as the daemon mounts it (journal recovered, marked not clean):
// its store, its first LUN, its block checksums and one engine built by the daemon's factory (threads not started:
// requests run on the caller's thread unless a test starts them).
import ArrayModel
import BackEnd
import Directors
import Foundation
import GlobalMemory
import Metadata

struct CoreTestArray {
    let directory: String
    let store: ArrayStore
    let lun: LUNRef
    let checksums: BlockChecksums
    let engines: Engines

    init(
        name: String, level: RAIDLevel = .raid5, drives: Int = 4, driveBytes: UInt64 = 8 << 20, stripUnitBytes: Int = 4096,
        lunBytes: UInt64 = 1 << 20, slots: Int = 64
    ) throws {
        directory = "/dev/shm/vsa-\(name)-\(getpid())"
        try? FileManager.default.removeItem(atPath: directory)
        store = try ArrayStore.create(
            CreateOptions(
                directory: directory, driveCount: drives, driveSizeBytes: driveBytes, drivePaths: [], raidLevel: level, spareCount: 0,
                stripUnitBytes: stripUnitBytes, cacheBytes: 16 << 20, engineCount: 1, force: false))
        let entry = try store.createLUN(name: "l", sizeBytes: lunBytes)
        lun = LUNRef(lunID: entry.lunID, startStripe: entry.startStripe, sizeBytes: entry.sizeBytes)
        checksums = BlockChecksums(geometry: store.geometry)
        let recovery = try JournalRecovery.recover(
            geometry: store.geometry, drives: store.drives, arrayUUID: store.superblock.arrayUUID, unclean: false, checksums: checksums)
        try store.writeSuperblocks(clean: false)  // mounted, as the daemon marks it
        engines = try Simulation.makeEngines(store: store, epochs: recovery.epochs, slots: slots, checksums: checksums)
    }

    func remove() { try? FileManager.default.removeItem(atPath: directory) }
}
