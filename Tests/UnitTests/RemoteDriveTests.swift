// A drive served over NBD is a Drive like any other (issue 15, step 2): one DriveIO batch reads, writes (durable
// ones with FUA), gathers, scatters, zeroes and flushes a remote drive and a local one side by side, through the
// same submit; a remote drive that stops answering is failed within the drive deadline, with the timeout counted; its
// read errors follow the batch's read-error mode (kept within the budget when the back end repairs them); a URI that
// is not NBD's is refused in one line.
import Buffers
import Drives
import Foundation
import SysNBD
import SysPosix
import XCTest

final class RemoteDriveTests: XCTestCase {
    private var servers: [NBDKitServer] = []
    private var folder = ""

    override func setUp() {
        folder = NSTemporaryDirectory() + "vsa-remote-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    }

    override func tearDown() {
        servers = []
        DriveIO.deadlineSeconds = 30
        try? FileManager.default.removeItem(atPath: folder)
    }

    private func remote(_ filters: [String] = [], _ parameters: [String] = []) throws -> Drive {
        let server = try NBDKitServer(size: "16M", filters: filters, parameters: parameters)
        servers.append(server)
        return try Drive(uri: server.uri)
    }

    private func local() throws -> Drive {
        let path = folder + "/local-\(servers.count)"
        try Drive.createFile(path: path, sizeBytes: 16 << 20)
        return try Drive(path: path)
    }

    func testARemoteDriveAndALocalOneInOneBatch() throws {
        let drives = [try local(), try remote()]
        XCTAssertEqual(drives[1].sizeBytes, 16 << 20)
        XCTAssertNotNil(drives[1].remoteURI)
        XCTAssertFalse(drives[1].isMissing)
        let io = try DriveIO(drives: drives)
        let data = alignedBuffer(bytes: 8 * 4096)
        for i in 0..<(8 * 4096) { data.base.storeBytes(of: UInt8(truncatingIfNeeded: i &* 7 &+ i >> 12), toByteOffset: i, as: UInt8.self) }
        var gather = [iovec](repeating: iovec(), count: 4)
        for d in 0..<2 {
            io.queueWrite(drive: d, from: data.base, count: 4096, offsetBytes: 0)
            io.queueDurableWrite(drive: d, from: data.base + 4096, count: 4096, offsetBytes: 1 << 20)
            io.queueZeroRange(drive: d, offsetBytes: 2 << 20, count: 8192)
        }
        XCTAssertEqual(io.submit(), 0)
        for k in 0..<4 { gather[k] = iovec(iov_base: data.base + (k + 2) * 4096, iov_len: 4096) }
        gather.withUnsafeMutableBufferPointer { vectors in
            for d in 0..<2 { io.queueWriteVector(drive: d, vectors: vectors.baseAddress!, vectorCount: 4, count: 4 * 4096, offsetBytes: 4 << 20) }
            XCTAssertEqual(io.submit(), 0)
        }
        for d in 0..<2 { io.queueFlush(drive: d) }
        XCTAssertEqual(io.submit(), 0)
        // Read back on both: plain reads and a scatter read; the zeroed range reads as zeroes.
        let back = alignedBuffer(bytes: 16 * 4096)
        memset(back.base, 0xEE, 16 * 4096)
        var scatter = [iovec](repeating: iovec(), count: 8)
        scatter.withUnsafeMutableBufferPointer { vectors in
            for d in 0..<2 {
                let at = back.base + d * 8 * 4096
                io.queueRead(drive: d, into: at, count: 4096, offsetBytes: 0)
                io.queueRead(drive: d, into: at + 4096, count: 4096, offsetBytes: 1 << 20)
                io.queueRead(drive: d, into: at + 6 * 4096, count: 8192, offsetBytes: 2 << 20)
                for k in 0..<4 { vectors[d * 4 + k] = iovec(iov_base: at + (k + 2) * 4096, iov_len: 4096) }
                io.queueReadVector(drive: d, vectors: vectors.baseAddress! + d * 4, vectorCount: 4, count: 4 * 4096, offsetBytes: 4 << 20)
            }
            XCTAssertEqual(io.submit(), 0)
        }
        for d in 0..<2 {
            let at = back.base + d * 8 * 4096
            XCTAssertEqual(memcmp(at, data.base, 6 * 4096), 0, "drive \(d)")
            XCTAssertTrue((0..<8192).allSatisfy { at.load(fromByteOffset: 6 * 4096 + $0, as: UInt8.self) == 0 }, "drive \(d): zeroed range")
        }
        XCTAssertEqual(drives[1].state, .online)
    }

    func testARemoteDriveThatStopsAnsweringIsFailedWithinTheDeadline() throws {
        // Reads take the server 30 s (nbdkit's delay filter): the 1 s deadline comes first.
        let drive = try remote(["--filter=delay"], ["delay-read=30"])
        DriveIO.deadlineSeconds = 1
        let io = try DriveIO(drives: [drive])
        let page = alignedBuffer(bytes: 1 * 4096)
        let began = Date()
        io.queueRead(drive: 0, into: page.base, count: 4096, offsetBytes: 0)
        XCTAssertEqual(io.submit(), 1)
        XCTAssertLessThan(Date().timeIntervalSince(began), 5)
        XCTAssertEqual(drive.state, .failed)
        XCTAssertEqual(drive.timeouts.load(ordering: .relaxed), 1)
    }

    func testRemoteReadErrorsFollowTheBatchsMode() throws {
        let drive = try remote(["--filter=error"], ["error=EIO", "error-pread-rate=1"])
        let io = try DriveIO(drives: [drive])
        let page = alignedBuffer(bytes: 1 * 4096)
        io.readErrors = .count
        io.queueRead(drive: 0, into: page.base, count: 4096, offsetBytes: 0)
        XCTAssertEqual(io.submit(), 1)
        XCTAssertEqual(io.lastReadErrors, 1)
        XCTAssertEqual(drive.state, .online, "a repairing read keeps its drive")
        XCTAssertEqual(drive.readErrors.load(ordering: .relaxed), 1)
        // The next batch connects again, and writes still work.
        io.queueWrite(drive: 0, from: page.base, count: 4096, offsetBytes: 0)
        XCTAssertEqual(io.submit(), 0)
        io.queueRead(drive: 0, into: page.base, count: 4096, offsetBytes: 0)
        XCTAssertEqual(io.submit(), 1)
        XCTAssertEqual(drive.state, .failed, "outside a repairing batch a read error fails the drive")
    }

    func testAServerThatCannotWriteZeroesIsAskedForZeroesWritten() throws {
        let drive = try remote(["--filter=nozero"], ["zeromode=none"])
        let io = try DriveIO(drives: [drive])
        io.queueZeroRange(drive: 0, offsetBytes: 0, count: 8192)
        XCTAssertEqual(io.submit(), 0)
        XCTAssertEqual(io.zeroUnsupportedDrives, 1, "as a file system that cannot punch holes: the caller writes zeroes")
        XCTAssertEqual(drive.state, .online)
    }

    func testALostConnectionIsMadeAgainWithinTheDeadlineAndTheDriveFailedPastIt() throws {
        // The drive is a file served by nbdkit: the server can go and come back with the same data.
        let disk = folder + "/disk"
        try Drive.createFile(path: disk, sizeBytes: 16 << 20)
        let socket = folder + "/nbd.sock"
        servers.append(try NBDKitServer(plugin: ["file", disk], socket: socket))
        let drive = try Drive(uri: "nbd+unix:///?socket=\(socket)")
        DriveIO.deadlineSeconds = 5
        let io = try DriveIO(drives: [drive])
        let page = alignedBuffer(bytes: 2 * 4096)
        memset(page.base, 0x5A, 4096)
        io.queueWrite(drive: 0, from: page.base, count: 4096, offsetBytes: 0)
        XCTAssertEqual(io.submit(), 0)
        // The server goes; another comes up on the same socket half a second later, while the write waits for it.
        // (The servers are started and stopped on this thread: Foundation's Process waits on the thread that ran it.)
        servers[0].stop()
        memset(page.base + 4096, 0xA5, 4096)
        nonisolated(unsafe) var failedDrives: UInt64 = 99
        let written = DispatchSemaphore(value: 0)
        nonisolated(unsafe) let writerIO = io
        let writer = Thread {
            writerIO.queueWrite(drive: 0, from: page.base + 4096, count: 4096, offsetBytes: 4096)
            failedDrives = writerIO.submit()
            written.signal()
        }
        writer.start()
        usleep(500_000)
        servers.append(try NBDKitServer(plugin: ["file", disk], socket: socket))
        XCTAssertEqual(written.wait(timeout: .now() + 10), .success, "the write never finished")
        XCTAssertEqual(failedDrives, 0, "the write waits for the server to come back, then goes")
        XCTAssertGreaterThanOrEqual(drive.reconnects.load(ordering: .relaxed), 1)
        XCTAssertEqual(drive.state, .online)
        let back = alignedBuffer(bytes: 2 * 4096)
        io.queueRead(drive: 0, into: back.base, count: 2 * 4096, offsetBytes: 0)
        XCTAssertEqual(io.submit(), 0)
        XCTAssertEqual(memcmp(back.base, page.base, 2 * 4096), 0)
        // It goes for good: past the deadline the drive is failed, as one that stopped answering.
        servers[1].stop()
        DriveIO.deadlineSeconds = 1
        let began = Date()
        io.queueRead(drive: 0, into: back.base, count: 4096, offsetBytes: 0)
        XCTAssertEqual(io.submit(), 1)
        XCTAssertLessThan(Date().timeIntervalSince(began), 4)
        XCTAssertEqual(drive.state, .failed)
        XCTAssertGreaterThanOrEqual(drive.timeouts.load(ordering: .relaxed), 1)
    }

    /// A server that comes back blank on the same socket within the deadline is not the drive it was: the new
    /// connection finds no identity on it, the drive is failed and nothing is written to the newcomer.
    func testAServerBackBlankWithinTheDeadlineIsNotTakenForTheDrive() throws {
        let socket = folder + "/nbd.sock"
        servers.append(try NBDKitServer(size: "16M", socket: socket))
        let drive = try Drive(uri: "nbd+unix:///?socket=\(socket)")
        DriveIO.deadlineSeconds = 5
        let io = try DriveIO(drives: [drive])
        let page = alignedBuffer(bytes: 8192)
        memset(page.base, 0, 8192)
        memcpy(page.base + 32, "this-array-uuid!", 16)
        io.queueWrite(drive: 0, from: page.base, count: 8192, offsetBytes: 0)
        XCTAssertEqual(io.submit(), 0)
        drive.expect(Drive.Identity(offsets: [32, 4096 + 32], bytes: Array("this-array-uuid!".utf8)))
        // The server dies and another, blank, comes up on the same socket.
        servers[0].stop()
        servers.append(try NBDKitServer(size: "16M", plugin: ["memory", "16M"], socket: socket))
        io.queueWrite(drive: 0, from: page.base, count: 4096, offsetBytes: 65536)
        XCTAssertEqual(io.submit(), 1, "a blank server is not the drive")
        XCTAssertEqual(drive.identityMismatches.load(ordering: .relaxed), 1)
        XCTAssertEqual(drive.link, .lost)
        let check = try NBDConnection(uri: "nbd+unix:///?socket=\(socket)")
        let back = alignedBuffer(bytes: 4096)
        memset(back.base, 0xEE, 4096)
        let cookie = try check.queueRead(into: back.base, count: 4096, offsetBytes: 65536)
        XCTAssertTrue(check.waitAll(deadlineSeconds: 0))
        XCTAssertEqual(check.result(cookie), 0)
        XCTAssertEqual((0..<4096).allSatisfy { back.base.load(fromByteOffset: $0, as: UInt8.self) == 0 }, true, "the newcomer was written")
    }

    func testAURIThatIsNotNBDsIsOneLine() {
        for uri in ["nbds://host/x", "nbd+vsock:///x", "/dev/sda", "nbd+unix:///x?socket=/nonexistent"] {
            XCTAssertThrowsError(try Drive(uri: uri), uri)
        }
    }
}
