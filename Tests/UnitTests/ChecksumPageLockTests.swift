// No lock is held across drive I/O where another director can wait on it (issue 12, "hung drives"): a director
// loading a checksum page from a drive that stops answering holds up only threads that need that very frame. The
// test holds one thread inside a page load (BlockChecksums.duringLoad) and has a second thread, with its own DriveIO
// as every director has, verify a block whose page lives in another frame behind the same striped lock. Before the
// frame got its busy mark the lock was held across the read and the second thread waited for the first (red).
import ArrayModel
import BackEnd
import Drives
import Foundation
import MemoryServices
import Metadata
import XCTest

final class ChecksumPageLockTests: XCTestCase {
    func testPageLoadHoldsUpOnlyItsOwnFrame() throws {
        let directory = "/dev/shm/vsa-pagelock-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // Two 700 MiB mirrors (sparse on tmpfs): 175 pages a drive, so frames 0 and 256 (same lock) both exist.
        let store = try ArrayStore.create(
            CreateOptions(
                directory: directory, driveCount: 2, driveSizeBytes: 700 << 20, drivePaths: [], raidLevel: .raid1, spareCount: 0,
                stripUnitBytes: 65536, cacheBytes: 16 << 20, engineCount: 1, force: false))
        let checksums = BlockChecksums(geometry: store.geometry)
        let pagesPerDrive = Int(store.geometry.layout!.checksumBytes / 4096)
        XCTAssertEqual(checksums.frameCount, pagesPerDrive * 2, "the test needs the direct-mapped layout")
        XCTAssertGreaterThan(pagesPerDrive * 2, 256)
        // Frame 256 is member 1's page (256 - pagesPerDrive): same lock as member 0's page 0.
        let otherPage = 256 - pagesPerDrive
        let memory = MemoryServices()
        // Each thread verifies a zero block (its own buffer) that has no checksum yet: only the page load matters.
        @Sendable func verify(member: Int, offset: UInt64) {
            let io = try! DriveIO(drives: store.drives)
            let block = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
            defer { block.deallocate() }
            memset(block, 0, 4096)
            _ = checksums.verify(member: member, driveOffset: offset, count: 4096, data: block, io: io, memory: memory)
        }

        let inLoad = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        BlockChecksums.duringLoad = { member, page in
            guard member == 0 && page == 0 else { return }
            inLoad.signal()
            release.wait()
        }
        defer { BlockChecksums.duringLoad = nil }

        let stuck = Thread {
            verify(member: 0, offset: store.geometry.dataOffsetBytes)
        }
        stuck.start()
        XCTAssertEqual(inLoad.wait(timeout: .now() + 10), .success)

        let otherDone = DispatchSemaphore(value: 0)
        let other = Thread {
            verify(member: 1, offset: store.geometry.dataOffsetBytes + UInt64(otherPage) * UInt64(BlockChecksums.entriesPerPage) * 4096)
            otherDone.signal()
        }
        other.start()
        let result = otherDone.wait(timeout: .now() + 5)
        // The same frame: waits for the load, then sees its page.
        let sameDone = DispatchSemaphore(value: 0)
        let same = Thread {
            verify(member: 0, offset: store.geometry.dataOffsetBytes + 4096)
            sameDone.signal()
        }
        same.start()
        XCTAssertEqual(sameDone.wait(timeout: .now() + 0.5), .timedOut, "a thread read a frame while its page was being loaded")
        release.signal()
        XCTAssertEqual(result, .success, "a page load on one member held up a thread that needed another frame")
        XCTAssertEqual(sameDone.wait(timeout: .now() + 10), .success)
        if result != .success { _ = otherDone.wait(timeout: .now() + 10) }
    }
}
