// Rebuild onto a new drive, on every redundant level, with host writes going on across the rebuild's progress;
// afterwards the rebuilt member must carry its share: with the other members the level can lose failed, every byte
// still reads back. Also: RAID-6 reads with two members lost (recovery through Q), and degraded assembly.
import ArrayModel
import BackEnd
import Buffers
import Daemon
import Drives
import GlobalMemory
import MemoryServices
import Metadata
import XCTest

extension CacheTests {
    func testRebuildOntoNewDriveEveryLevel() throws {
        let cases: [(RAIDLevel, Int, [Int])] = [(.raid1, 2, [0]), (.raid10, 4, [0]), (.raid5, 4, [0]), (.raid6, 5, [0, 2]), (.raid6, 6, [2, 3])]
        for (level, driveCount, othersToFail) in cases {
            try? FileManager.default.removeItem(atPath: directory)
            var rng = SplitMix(seed: 4242 + UInt64(driveCount))
            let store = try makeArray(level, drives: driveCount, stripUnit: 8192)
            let lunSize = 2 << 20
            let lun = try store.createLUN(name: "l", sizeBytes: UInt64(lunSize))
            let ref = LUNRef(lunID: lun.lunID, startStripe: lun.startStripe, sizeBytes: lun.sizeBytes)
            let memory = MemoryServices()
            let backEnd = try RAIDBackEnd(geometry: store.geometry, drives: store.drives, memory: memory, marks: BackEndMarks())
            let cache = TrackCache(slotCount: 64, store: backEnd, memory: memory, counters: CacheCounters())
            var oracle = [UInt8](repeating: 0, count: lunSize)
            let io = alignedBuffer(bytes: 65536)
            func write(_ n: Int) {
                for _ in 0..<n {
                    let count = Int(rng.next() % 30000) + 1
                    let offset = Int(rng.next() % UInt64(lunSize - count))
                    for i in 0..<count { io.base.storeBytes(of: UInt8(truncatingIfNeeded: rng.next()), toByteOffset: i, as: UInt8.self) }
                    XCTAssertTrue(cache.write(lun: ref, offsetBytes: UInt64(offset), count: count, from: io.base))
                    for i in 0..<count { oracle[offset + i] = io.base.load(fromByteOffset: i, as: UInt8.self) }
                }
                XCTAssertTrue(cache.destageAll(), "\(level): destage")
            }
            write(150)
            // Member 1 fails; the array runs degraded and takes more writes.
            store.drives[1].transition(to: .failed)
            write(50)
            // A new drive takes its place and is rebuilt stripe by stripe while writes go on around the progress.
            let path = directory + "/new-drive"
            try Drive.createFile(path: path, sizeBytes: store.drives[0].sizeBytes)
            let fresh = try Drive(path: path)
            fresh.transition(to: .rebuilding)
            backEnd.attach(member: 1, drive: fresh)
            let total = store.geometry.stripeCount
            for stripe in 0..<total {
                XCTAssertTrue(backEnd.rebuild(stripe: stripe, member: 1), "\(level)x\(driveCount): stripe \(stripe)")
                fresh.rebuiltStripes.store(stripe + 1, ordering: .releasing)
                if stripe % 97 == 0 { write(3) }
            }
            fresh.transition(to: .online)
            write(20)
            // The rebuilt member carries its share: fail the others the level can lose and read everything cold.
            var drives = store.drives
            drives[1] = fresh
            for i in othersToFail { drives[i].transition(to: .failed) }
            let coldBackEnd = try RAIDBackEnd(geometry: store.geometry, drives: drives, memory: memory, marks: BackEndMarks())
            let cold = TrackCache(slotCount: 64, store: coldBackEnd, memory: memory, counters: CacheCounters())
            for offset in stride(from: 0, to: lunSize, by: 65536) {
                XCTAssertTrue(cold.read(lun: ref, offsetBytes: UInt64(offset), count: 65536, into: io.base), "\(level) read")
                for i in 0..<65536 where io.base.load(fromByteOffset: i, as: UInt8.self) != oracle[offset + i] {
                    XCTFail("\(level)x\(driveCount): byte \(offset + i) differs after the rebuild")
                    return
                }
            }
        }
    }

    /// RAID-6 with two members lost, every pair (data+data, data+P, data+Q, P+Q across the rotation): reads come
    /// back through P and Q, and writes keep working.
    func testRAID6ReadsWithEveryPairOfMembersLost() throws {
        let drives = 6
        for a in 0..<drives {
            for b in (a + 1)..<drives {
                try? FileManager.default.removeItem(atPath: directory)
                let store = try makeArray(.raid6, drives: drives, stripUnit: 4096)
                let lunSize = 512 << 10
                let lun = try store.createLUN(name: "l", sizeBytes: UInt64(lunSize))
                let ref = LUNRef(lunID: lun.lunID, startStripe: lun.startStripe, sizeBytes: lun.sizeBytes)
                let (cache, _, _) = try makeCache(store, slots: 64)
                let data = alignedBuffer(bytes: lunSize)
                var rng = SplitMix(seed: UInt64(a * 10 + b))
                for i in 0..<lunSize { data.base.storeBytes(of: UInt8(truncatingIfNeeded: rng.next()), toByteOffset: i, as: UInt8.self) }
                XCTAssertTrue(cache.write(lun: ref, offsetBytes: 0, count: lunSize, from: data.base))
                XCTAssertTrue(cache.destageAll())
                store.drives[a].transition(to: .failed)
                store.drives[b].transition(to: .failed)
                let (cold, _, marks) = try makeCache(store, slots: 64)
                let back = alignedBuffer(bytes: lunSize)
                XCTAssertTrue(cold.read(lun: ref, offsetBytes: 0, count: lunSize, into: back.base), "members \(a),\(b) lost: read failed")
                XCTAssertEqual(memcmp(back.base, data.base, lunSize), 0, "members \(a),\(b) lost: data differs")
                XCTAssertGreaterThan(marks.degradedReads.load(ordering: .relaxed), 0)
            }
        }
    }

    /// RAID-10 loses one member of each mirror pair and still serves everything, across assembly; losing both
    /// members of a pair is refused.
    func testRAID10SurvivesOneMemberPerPair() throws {
        let (store, ref, data) = try filledArray(.raid10, drives: 6)
        store.drives[0].transition(to: .failed)
        store.drives[3].transition(to: .failed)
        store.drives[5].transition(to: .failed)
        XCTAssertTrue(try store.recordFailures())
        XCTAssertEqual(try readBack(store, ref), data)
        let again = try ArrayStore.assemble(directory: directory)
        XCTAssertEqual(StatusReport.offline(store: again, cacheBytes: 16 << 20).array.state, "degraded")
        XCTAssertEqual(try readBack(again, ref), data)
        again.drives[1].transition(to: .failed)  // the other half of pair 0
        XCTAssertFalse(try again.recordFailures())
        XCTAssertThrowsError(try ArrayStore.assemble(directory: directory))
    }

    /// A member missing from the folder assembles as failed (with a warning) when the level allows; a replacement
    /// attached in its place wins over the old drive when that comes back (newer superblocks); two missing is an error.
    func testDegradedAssemblyAndStaleDrive() throws {
        let store = try makeArray(.raid5, drives: 4)
        _ = try store.createLUN(name: "l", sizeBytes: 1 << 20)
        let away = directory + "-drive-2"
        try? FileManager.default.removeItem(atPath: away)
        defer { try? FileManager.default.removeItem(atPath: away) }
        try FileManager.default.moveItem(atPath: directory + "/drive-2", toPath: away)
        let degraded = try ArrayStore.assemble(directory: directory)
        XCTAssertEqual(degraded.drives[2].state, .failed)
        XCTAssertTrue(degraded.drives[2].isMissing)
        XCTAssertTrue(degraded.assemblyWarnings.contains { $0.contains("member 2 is missing") }, "\(degraded.assemblyWarnings)")
        try degraded.writeSuperblocks(clean: false)
        XCTAssertEqual(degraded.superblock.failedMemberMask, 1 << 2)
        // A replacement takes member 2's place.
        let replacement = try degraded.prepareReplacement(member: 2, path: directory + "-new2", force: false)
        let entry = replacement.entry
        defer { try? FileManager.default.removeItem(atPath: directory + "-new2") }
        XCTAssertTrue(replacement.createdEntry)
        try degraded.attach(member: 2, drive: replacement.drive, path: entry)
        XCTAssertEqual(degraded.superblock.rebuildMember, 2)
        try degraded.recordRebuildProgress(stripes: 5)
        // The old drive comes back: stale, left alone; the replacement is member 2, rebuilding from stripe 5.
        try FileManager.default.moveItem(atPath: away, toPath: directory + "/drive-2")
        let again = try ArrayStore.assemble(directory: directory)
        XCTAssertEqual(again.drives[2].state, .rebuilding)
        XCTAssertEqual(again.drives[2].rebuiltStripes.load(ordering: .relaxed), 5)
        XCTAssertEqual(again.drivePaths[2], entry)
        XCTAssertTrue(again.assemblyWarnings.contains { $0.contains("stale") }, "\(again.assemblyWarnings)")
        // Two members missing: more than RAID-5 survives.
        try FileManager.default.removeItem(atPath: directory + "/drive-0")
        try FileManager.default.removeItem(atPath: directory + "/drive-1")
        XCTAssertThrowsError(try ArrayStore.assemble(directory: directory)) { error in
            XCTAssertTrue("\(error)".contains("missing"), "\(error)")
        }
    }
}
