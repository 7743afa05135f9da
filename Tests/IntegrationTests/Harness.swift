// Real-mount test harness: runs the real `vsa` binary, mounts real FUSE file systems, and always cleans up (loop
// devices detached, mounts unmounted, daemons killed by pid, folders removed), even when a test fails.
import Foundation
import XCTest

struct CommandResult {
    var status: Int32
    var stdout: String
    var stderr: String
    var stderrLines: [String] { stderr.split(separator: "\n").map(String.init) }
}

enum Harness {
    /// The vsa binary next to the test bundle (.build/debug/vsa), or $VSA_BIN.
    static var vsa: String {
        if let path = ProcessInfo.processInfo.environment["VSA_BIN"] { return path }
        let testBinary = URL(fileURLWithPath: CommandLine.arguments.first { $0.contains(".xctest") } ?? CommandLine.arguments[0])
        var dir = testBinary.deletingLastPathComponent()
        if dir.lastPathComponent.hasSuffix(".xctest") || dir.path.contains(".xctest") {
            while dir.path.contains(".xctest") { dir = dir.deletingLastPathComponent() }
        }
        return dir.appendingPathComponent("vsa").path
    }

    /// Runs a shell command; stdin is /dev/null.
    @discardableResult
    static func sh(_ command: String, timeoutSeconds: Double = 300) -> CommandResult {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = ["-c", command]
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        var env = ProcessInfo.processInfo.environment
        env["VSA"] = vsa
        process.environment = env
        do { try process.run() } catch { return CommandResult(status: -1, stdout: "", stderr: "\(error)") }
        // Read both pipes concurrently so a chatty command cannot block on a full pipe.
        let group = DispatchGroup()
        nonisolated(unsafe) var outData = Data(), errData = Data()
        group.enter()
        DispatchQueue.global().async {
            outData = out.fileHandleForReading.readDataToEndOfFile()
            group.leave()
        }
        group.enter()
        DispatchQueue.global().async {
            errData = err.fileHandleForReading.readDataToEndOfFile()
            group.leave()
        }
        let deadline = Date(timeIntervalSinceNow: timeoutSeconds)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning {
            kill(-process.processIdentifier, SIGKILL)
            process.terminate()
        }
        process.waitUntilExit()
        group.wait()
        return CommandResult(
            status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
            stderr: String(decoding: errData, as: UTF8.self))
    }

    static var isRoot: Bool { getuid() == 0 }
}

/// One array folder and mount point for a test; `cleanUp()` undoes everything.
final class ArrayFixture {
    let root: String
    var dir: String { root + "/array" }
    var mnt: String { root + "/mnt" }

    init(name: String, base: String = "/tmp") {
        root = "\(base)/vsa-it-\(name)-\(getpid())"
        Harness.sh("rm -rf '\(root)'; mkdir -p '\(root)/mnt'")
    }

    @discardableResult
    func vsa(_ arguments: String) -> CommandResult { Harness.sh("\"$VSA\" \(arguments)") }

    /// Runs `vsa ARGUMENTS` (a `--json` command) and parses what it prints as `T`; the output is the failure message.
    func json<T>(_ arguments: String, as type: T.Type) throws -> T {
        let text = vsa(arguments).stdout
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? T, text)
    }

    /// Creates the array; a failure fails the test (a broken `create` must never leave CI green).
    func create(_ arguments: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let r = vsa("create '\(dir)' \(arguments)")
        guard r.status == 0 else {
            XCTFail("vsa create \(arguments) failed: \(r.stderr)", file: file, line: line)
            throw NSError(domain: "create", code: 1)
        }
    }

    /// Creates the array with `createArguments`, a thick LUN named `l` of `lunSize` (these tests are about the
    /// array's RAID, drives and directors under a LUN with a fixed place; thin LUNs have tests of their own), and
    /// mounts it.
    func createMounted(_ createArguments: String, lunSize: String, file: StaticString = #filePath, line: UInt = #line) throws {
        try create(createArguments, file: file, line: line)
        let r = vsa("lun create '\(dir)' l --size \(lunSize) --thick")
        XCTAssertEqual(r.status, 0, "lun create: \(r.stderr)", file: file, line: line)
        try mount()
    }

    /// Mounts the array; `environment` ("NAME=value ...") goes to the daemon.
    func mount(_ extra: String = "", environment: String = "") throws {
        let r = Harness.sh("\(environment) \"$VSA\" mount '\(dir)' '\(mnt)' \(extra)")
        XCTAssertEqual(r.status, 0, "mount: \(r.stderr)")
        if r.status != 0 { throw NSError(domain: "mount", code: 1) }
    }

    /// `vsa mount ARRAY MOUNTPOINT -o OPTIONS` (this fixture's by default) is refused with one line that contains
    /// `expected`, and nothing is mounted.
    func expectMountRefused(
        _ options: String, _ expected: String, array: String? = nil, mountpoint: String? = nil, file: StaticString = #filePath, line: UInt = #line
    ) {
        let target = mountpoint ?? mnt
        let r = vsa("mount '\(array ?? dir)' '\(target)' -o \(options)")
        XCTAssertNotEqual(r.status, 0, options, file: file, line: line)
        XCTAssertEqual(r.stderrLines.count, 1, "\(options): \(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.stderr.contains(expected), "\(options): \(r.stderr)", file: file, line: line)
        XCTAssertNotEqual(Harness.sh("mountpoint -q '\(target)'").status, 0, "\(options): mounted", file: file, line: line)
    }

    func unmount() {
        let r = vsa("unmount '\(mnt)'")
        XCTAssertEqual(r.status, 0, "unmount: \(r.stderr)")
    }

    var daemonPID: Int32? {
        guard let text = try? String(contentsOfFile: dir + "/array.lock", encoding: .utf8) else { return nil }
        return Int32(text.split(separator: " ").first ?? "")
    }

    /// The daemon dies by SIGKILL (no destage, no clean mark), and its dead mount is taken away. False if there was
    /// no daemon to kill.
    @discardableResult
    func killDaemon() -> Bool {
        guard let pid = daemonPID else { return false }
        kill(pid, SIGKILL)
        var waited = 0
        while kill(pid, 0) == 0 && waited < 500 {
            usleep(10_000)
            waited += 1
        }
        Harness.sh("umount -l '\(mnt)' 2>/dev/null || fusermount3 -uz '\(mnt)'")
        return true
    }

    func cleanUp() {
        // Loop devices on our files, then our mount, then the daemon, then the files.
        Harness.sh(
            """
            for f in '\(mnt)'/*; do [ -f "$f" ] || continue; for d in $(losetup -j "$f" -O NAME -n 2>/dev/null); do losetup -d $d; done; done
            grep -q ' \(root)/' /proc/mounts && for m in $(grep ' \(root)/' /proc/mounts | awk '{print $2}' | sort -r); do umount -l "$m" 2>/dev/null; done
            mountpoint -q '\(mnt)' && ("$VSA" unmount '\(mnt)' || fusermount3 -uz '\(mnt)' || umount -l '\(mnt)')
            true
            """, timeoutSeconds: 120)
        if let pid = daemonPID, kill(pid, 0) == 0 {
            var waited = 0
            while kill(pid, 0) == 0 && waited < 300 { usleep(20_000); waited += 1 }
            if kill(pid, 0) == 0 { kill(pid, SIGKILL) }
        }
        Harness.sh("mountpoint -q '\(mnt)' && umount -l '\(mnt)'; rm -rf '\(root)'")
    }
}

/// A test case with a fresh `ArrayFixture` per test, cleaned up after it. Subclasses that need root say so.
class FixtureTestCase: XCTestCase {
    var fixture: ArrayFixture!
    /// Why the tests need root, or nil when they run as any user.
    class var rootReason: String? { nil }
    /// Where the fixture's drives and mount point live (/dev/shm puts the drives on tmpfs).
    class var fixtureBase: String { "/tmp" }

    override func setUpWithError() throws {
        if let reason = Self.rootReason, !Harness.isRoot { throw XCTSkip(reason) }
        guard FileManager.default.fileExists(atPath: Harness.vsa) else {
            XCTFail("no vsa binary at \(Harness.vsa): build it first (make test does)")
            throw NSError(domain: "vsa", code: 1)
        }
        fixture = ArrayFixture(name: name.split(separator: " ").last!.dropLast().description, base: Self.fixtureBase)
    }

    override func tearDown() {
        fixture?.cleanUp()
    }
}

/// A second machine for remote drives (scripts/nbd-lab): a network namespace joined by a veth pair, nbdkit servers in
/// it. Taken down (servers killed, namespace removed) when the test lets go of it.
final class NBDLab {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("scripts/nbd-lab").path
    let name: String
    let address: String

    init() throws {
        name = "t\(getpid() % 1_000_000)"
        Harness.sh("'\(Self.script)' down \(name)")
        let r = Harness.sh("'\(Self.script)' up \(name)")
        guard r.status == 0 else {
            XCTFail("nbd-lab up: \(r.stderr)")
            throw NSError(domain: "nbd-lab", code: 1)
        }
        address = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Starts nbdkit on `port` with `arguments` (filters, plugin, parameters); returns its URI (export "").
    @discardableResult
    func serve(port: Int, _ arguments: String) throws -> String {
        let r = Harness.sh("'\(Self.script)' serve \(name) \(port) \(arguments)")
        guard r.status == 0 else {
            XCTFail("nbd-lab serve \(port) \(arguments): \(r.stderr)")
            throw NSError(domain: "nbd-lab", code: 1)
        }
        return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func stop(port: Int) { Harness.sh("'\(Self.script)' stop \(name) \(port)") }
    /// A partition: the link goes down; `heal` brings it back.
    func cut() { XCTAssertEqual(Harness.sh("'\(Self.script)' cut \(name)").status, 0) }
    func heal() { XCTAssertEqual(Harness.sh("'\(Self.script)' heal \(name)").status, 0) }

    deinit { Harness.sh("'\(Self.script)' down \(name)") }
}
