// Assembly from the drives alone: a member the array stopped using stays out after a remount, even though its own
// superblock still looks healthy; the array comes back degraded and serves the data from the others.
import ArrayModel
import BackEnd
import Buffers
import Daemon
import Drives
import GlobalMemory
import MemoryServices
import Metadata
import XCTest

final class AssemblyTests: XCTestCase {
    func testFailedMemberIsRememberedAcrossAssembly() throws {
        let directory = NSTemporaryDirectory() + "vsa-assembly-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try? FileManager.default.removeItem(atPath: directory)
        let store = try ArrayStore.create(
            CreateOptions(
                directory: directory, driveCount: 4, driveSizeBytes: 16 << 20, drivePaths: [], raidLevel: .raid5, spareCount: 0,
                stripUnitBytes: 16384, cacheBytes: 16 << 20, engineCount: 1, force: false))
        let lun = try store.createLUN(name: "l", sizeBytes: 1 << 20)
        let ref = LUNRef(lunID: lun.lunID, startStripe: lun.startStripe, sizeBytes: lun.sizeBytes)
        let memory = MemoryServices()
        let backEnd = try RAIDBackEnd(geometry: store.geometry, drives: store.drives, memory: memory, marks: BackEndMarks())
        let cache = TrackCache(slotCount: 64, store: backEnd, memory: memory, counters: CacheCounters())
        let data = alignedBuffer(bytes: 1 << 20)
        for i in 0..<(1 << 20) { data.base.storeBytes(of: UInt8(truncatingIfNeeded: i &* 31 &+ 7), toByteOffset: i, as: UInt8.self) }
        XCTAssertTrue(cache.write(lun: ref, offsetBytes: 0, count: 1 << 20, from: data.base))
        XCTAssertTrue(cache.destageAll())
        // Drive 2 fails; the survivors record it.
        store.drives[2].transition(to: .failed)
        XCTAssertTrue(try store.recordFailures())
        XCTAssertEqual(store.superblock.failedMemberMask, 1 << 2)

        let again = try ArrayStore.assemble(directory: directory)
        XCTAssertEqual(again.drives[2].state, .failed, "a failed member came back as online")
        XCTAssertEqual(again.drives[0].state, .online)
        XCTAssertEqual(StatusReport.offline(store: again, cacheBytes: 16 << 20).array.state, "degraded")
        let coldBackEnd = try RAIDBackEnd(geometry: again.geometry, drives: again.drives, memory: memory, marks: BackEndMarks())
        let cold = TrackCache(slotCount: 64, store: coldBackEnd, memory: memory, counters: CacheCounters())
        let back = alignedBuffer(bytes: 1 << 20)
        XCTAssertTrue(cold.read(lun: ref, offsetBytes: 0, count: 1 << 20, into: back.base))
        XCTAssertEqual(memcmp(back.base, data.base, 1 << 20), 0, "degraded read differs")

        // A second failure is more than RAID-5 survives: assembly refuses.
        again.drives[0].transition(to: .failed)
        XCTAssertFalse(try again.recordFailures())
        XCTAssertThrowsError(try ArrayStore.assemble(directory: directory))
    }
}
