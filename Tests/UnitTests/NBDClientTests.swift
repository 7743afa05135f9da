// SysNBD against a real NBD server (nbdkit's memory plugin on a Unix socket): what a remote drive will be built on
// (issue 15). Batches of asynchronous reads, writes (durable ones with FUA) and flushes complete and read back; a
// command past the export's end fails alone; a URI that is not NBD's, or names nothing, is one line; a server that
// dies mid-batch fails the commands in flight, within the deadline, never a hang.
import Foundation
import SysNBD
import SysPosix
import XCTest

/// nbdkit's memory plugin on a Unix socket in a fresh folder, for as long as the test holds it.
final class NBDKitServer {
    let folder: String
    let uri: String
    private let process = Process()

    /// `plugin`: nbdkit's plugin and its arguments (default: memory of `size`); `socket`: where to listen (default: a
    /// fresh folder's).
    init(size: String = "64M", filters: [String] = [], parameters: [String] = [], plugin: [String]? = nil, socket given: String? = nil) throws {
        folder = NSTemporaryDirectory() + "vsa-nbd-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let socket = given ?? folder + "/nbd.sock"
        unlink(socket)
        uri = "nbd+unix:///?socket=\(socket)"
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["nbdkit", "--foreground", "--exit-with-parent", "--unix", socket] + filters + (plugin ?? ["memory", size]) + parameters
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        for _ in 0..<500 where !FileManager.default.fileExists(atPath: socket) { usleep(10_000) }
        XCTAssertTrue(FileManager.default.fileExists(atPath: socket), "nbdkit did not start")
    }

    /// Kills the server (SIGKILL: nbdkit waits for its clients to go on SIGTERM, and a server that dies is the
    /// fault the tests want).
    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: folder)
    }
}

final class NBDClientTests: XCTestCase {
    private var server: NBDKitServer?
    private var folder: String { server?.folder ?? "/nonexistent" }

    private func startServer(size: String = "64M", filters: [String] = [], parameters: [String] = []) throws -> String {
        server = try NBDKitServer(size: size, filters: filters, parameters: parameters)
        return server!.uri
    }

    override func tearDown() { server = nil }

    func testBatchesOfReadsWritesAndFlushesCompleteAndReadBack() throws {
        let connection = try NBDConnection(uri: try startServer())
        XCTAssertEqual(connection.sizeBytes, 64 << 20)
        XCTAssertTrue(connection.canFlush)
        let blocks = 64
        let source = UnsafeMutableRawPointer.allocate(byteCount: blocks * 4096, alignment: 4096)
        let target = UnsafeMutableRawPointer.allocate(byteCount: blocks * 4096, alignment: 4096)
        defer {
            source.deallocate()
            target.deallocate()
        }
        for i in 0..<(blocks * 4096) { source.storeBytes(of: UInt8(truncatingIfNeeded: i &* 31 &+ i >> 12), toByteOffset: i, as: UInt8.self) }
        var cookies: [Int64] = []
        for b in 0..<blocks {
            cookies.append(try connection.queueWrite(from: source + b * 4096, count: 4096, offsetBytes: UInt64(b) * 1_048_576, durable: b % 2 == 0))
        }
        cookies.append(try connection.queueFlush())
        XCTAssertTrue(connection.waitAll(deadlineSeconds: 0))
        XCTAssertEqual(connection.inFlight, 0)
        for c in cookies { XCTAssertEqual(connection.result(c), 0) }
        cookies.removeAll()
        for b in 0..<blocks {
            cookies.append(try connection.queueRead(into: target + b * 4096, count: 4096, offsetBytes: UInt64(b) * 1_048_576))
        }
        XCTAssertTrue(connection.waitAll(deadlineSeconds: 0))
        for c in cookies { XCTAssertEqual(connection.result(c), 0) }
        XCTAssertEqual(memcmp(source, target, blocks * 4096), 0)
    }

    func testACommandPastTheEndFailsAloneAndBadURIsAreOneLine() throws {
        let connection = try NBDConnection(uri: try startServer(size: "1M"))
        let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { page.deallocate() }
        let good = try connection.queueRead(into: page, count: 4096, offsetBytes: 0)
        // libnbd refuses a range past the export's end before sending it (or the server fails it): either way, an
        // error for that command, not for the connection.
        let past: Int64? = try? connection.queueRead(into: page, count: 4096, offsetBytes: 1 << 20)
        XCTAssertTrue(connection.waitAll(deadlineSeconds: 0))
        XCTAssertEqual(connection.result(good), 0)
        if let past { XCTAssertNotEqual(connection.result(past), 0) }
        // The connection goes on.
        let flush = try connection.queueFlush()
        XCTAssertTrue(connection.waitAll(deadlineSeconds: 0))
        XCTAssertEqual(connection.result(flush), 0)

        for uri in ["/tmp/file", "http://host/x", "nbd+unix:///?socket=/nonexistent/sock", "file:///etc/passwd", "nbd+unix:///?socket=" + folder] {
            XCTAssertThrowsError(try NBDConnection(uri: uri), uri) { error in
                let line = (error as? NBDError)?.message ?? ""
                XCTAssertFalse(line.isEmpty, uri)
                XCTAssertFalse(line.contains("\n"), line)
            }
        }
    }

    func testAServerThatNeverGreetsCannotHoldAConnectPastItsDeadline() throws {
        // A socket that is listened on and never accepted: the connection is made, the NBD handshake never comes.
        let folder = NSTemporaryDirectory() + "vsa-nbd-silent-\(getpid())"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let socket = folder + "/silent.sock"
        let listener = Process()
        listener.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        listener.arguments = [
            "python3", "-c", "import socket, sys, time\ns = socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen()\ntime.sleep(60)", socket,
        ]
        try listener.run()
        defer {
            listener.terminate()
            listener.waitUntilExit()
        }
        for _ in 0..<500 where !FileManager.default.fileExists(atPath: socket) { usleep(10_000) }
        let began = Date()
        XCTAssertThrowsError(try NBDConnection(uri: "nbd+unix:///?socket=\(socket)", deadlineSeconds: Posix.monotonicSeconds() + 1)) { error in
            XCTAssertEqual((error as? NBDError)?.errno, ETIMEDOUT, "\(error)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(began), 3)
    }

    func testAServerThatDiesMidBatchFailsItsCommandsWithinTheDeadline() throws {
        // Every write takes the server 3 s (nbdkit's delay filter): the batch is surely in flight when it dies.
        let connection = try NBDConnection(uri: try startServer(filters: ["--filter=delay"], parameters: ["delay-write=3"]))
        let page = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { page.deallocate() }
        var cookies: [Int64] = []
        for i in 0..<16 { cookies.append(try connection.queueWrite(from: page, count: 1 << 20, offsetBytes: UInt64(i) << 20, durable: true)) }
        XCTAssertFalse(connection.waitAll(deadlineSeconds: Posix.monotonicSeconds() + 0.3), "done before the delay")
        let began = Date()
        server?.stop()
        _ = connection.waitAll(deadlineSeconds: Posix.monotonicSeconds() + 5)
        XCTAssertLessThan(Date().timeIntervalSince(began), 6)
        for c in cookies { XCTAssertNotEqual(connection.result(c), 0, "a write to a dead server succeeded") }
    }
}
