// A DriveIO whose ring was given up after a deadline and that could not get a new one (the kernel out of memory for
// 10 s) runs its operations synchronously instead of trapping (issue 12: runtime conditions are never
// preconditions). Reads, writes, durable writes and flushes on a direct-I/O drive file must all still do what they
// say, a zero range is handed back to be written as zeroes, and a failure still fails only that drive.
import Buffers
import Foundation
import XCTest

@testable import Drives

final class DriveIOWithoutRingTests: XCTestCase {
    var directory = ""
    override func setUp() { directory = NSTemporaryDirectory() + "vsa-driveio-\(getpid())-\(UInt32.random(in: 0...UInt32.max))" }
    override func tearDown() { try? FileManager.default.removeItem(atPath: directory) }

    /// A 4 MiB drive file in the temporary directory (ext4 here and in CI, not tmpfs: direct I/O needs a real file
    /// system), opened with or without O_DIRECT.
    private func makeDrive(directIO: Bool) throws -> Drive {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try Drive.createFile(path: directory + "/drive-0", sizeBytes: 4 << 20)
        return try Drive(path: directory + "/drive-0", directIO: directIO)
    }

    /// 64 KiB of a pattern written at 1 MiB, 4 KiB of it durable at 2 MiB, then a flush, in one batch: the block.
    private func writePattern(_ io: DriveIO, seed: Int) -> Arena {
        let block = alignedBuffer(bytes: 64 << 10)
        for i in 0..<(64 << 10) { block.base.storeBytes(of: UInt8(truncatingIfNeeded: i &* seed &+ 7), toByteOffset: i, as: UInt8.self) }
        io.queueWrite(drive: 0, from: block.base, count: 64 << 10, offsetBytes: 1 << 20)
        io.queueDurableWrite(drive: 0, from: block.base, count: 4096, offsetBytes: 2 << 20)
        io.queueFlush(drive: 0)
        XCTAssertEqual(io.submit(), 0)
        return block
    }

    func testEveryOperationRunsWithoutARing() throws {
        let drive = try makeDrive(directIO: true)
        XCTAssertTrue(drive.usesDirectIO, "the test needs a drive file with direct I/O (not tmpfs)")
        let io = try DriveIO(drives: [drive])
        io.giveUpRingForTesting()
        let block = writePattern(io, seed: 31)
        // The next batch gets a ring again where the kernel can make one; take it away again.
        XCTAssertTrue(io.hasRing)
        io.giveUpRingForTesting()
        let back = alignedBuffer(bytes: 64 << 10)
        io.queueRead(drive: 0, into: back.base, count: 64 << 10, offsetBytes: 1 << 20)
        XCTAssertEqual(io.submit(), 0)
        XCTAssertEqual(memcmp(back.base, block.base, 64 << 10), 0)
        // No hole punching without a ring: the caller is told to write zeroes instead.
        io.giveUpRingForTesting()
        io.queueZeroRange(drive: 0, offsetBytes: 1 << 20, count: 64 << 10)
        XCTAssertEqual(io.submit(), 0)
        XCTAssertEqual(io.zeroUnsupportedDrives, 1)
        XCTAssertEqual(drive.state, .online)
        // A read past the end of the drive: the drive fails, the process does not.
        io.giveUpRingForTesting()
        io.queueRead(drive: 0, into: back.base, count: 8192, offsetBytes: (4 << 20) - 4096)
        XCTAssertEqual(io.submit(), 1)
        XCTAssertEqual(drive.state, .failed)
    }

    /// A buffered drive on real storage (a file system without O_DIRECT, here forced) goes through the ring like a
    /// direct one, so the drive deadline bounds it; it used to be copied synchronously, with no deadline at all.
    func testBufferedDriveOnRealStorageGoesThroughTheRing() throws {
        let drive = try makeDrive(directIO: false)
        XCTAssertFalse(drive.usesDirectIO)
        XCTAssertFalse(drive.copiesSynchronously, "a buffered drive on ext4 must go through the ring")
        let io = try DriveIO(drives: [drive])
        let block = writePattern(io, seed: 13)
        let back = alignedBuffer(bytes: 64 << 10)
        io.queueRead(drive: 0, into: back.base, count: 64 << 10, offsetBytes: 1 << 20)
        XCTAssertEqual(io.submit(), 0)
        XCTAssertEqual(memcmp(back.base, block.base, 64 << 10), 0)
        XCTAssertEqual(drive.state, .online)
    }
}
