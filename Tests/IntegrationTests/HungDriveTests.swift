// A drive that stops answering. One member of a RAID-5 is a real network drive: an nbdkit memory export behind its
// pause filter, seen as a file through nbdfuse. With `-o drive_timeout=2`, pausing the server must cost the array
// that member and nothing else: host writes with fsync and reads complete within a few deadlines, the member is
// failed (status counts the timeout), the hot spare takes its place and is rebuilt, and every byte reads back. The
// server is resumed before the unmount so that the requests it held complete.
import Foundation
import XCTest

final class HungDriveTests: FixtureTestCase {
    override class var rootReason: String? { "mounts FUSE file systems (nbdfuse and vsa)" }
    override class var fixtureBase: String { "/dev/shm" }

    func testDriveThatStopsAnsweringIsFailedWithinTheDeadline() throws {
        let f = fixture!
        XCTAssertEqual(Harness.sh("command -v nbdkit && command -v nbdfuse").status, 0, "nbdkit and nbdfuse are installed by make test")
        let nbd = f.root + "/nbd"
        Harness.sh("mkdir -p '\(nbd)/mnt'")
        defer {
            Harness.sh(
                """
                python3 -c "import socket; s=socket.socket(socket.AF_UNIX); s.connect('\(nbd)/ctl'); s.send(b'r')" 2>/dev/null
                fusermount3 -uz '\(nbd)/mnt' 2>/dev/null; [ -f '\(nbd)/pid' ] && kill $(cat '\(nbd)/pid') 2>/dev/null; true
                """)
        }
        // The servers outlive this shell: they get no descriptor of it (the harness reads its pipes to the end).
        let server = Harness.sh(
            "for fd in $(ls /proc/$$/fd); do [ $fd -gt 2 ] && eval \"exec $fd>&-\" 2>/dev/null; done; nbdkit -U '\(nbd)/sock' -P '\(nbd)/pid' --filter=pause memory 96M pause-control='\(nbd)/ctl' >/dev/null 2>&1 && (nbdfuse '\(nbd)/mnt/disk' --unix '\(nbd)/sock' >/dev/null 2>&1 &) && for i in $(seq 50); do [ -f '\(nbd)/mnt/disk' ] && break; sleep 0.1; done; test -f '\(nbd)/mnt/disk'",
            timeoutSeconds: 30)
        XCTAssertEqual(server.status, 0, server.stderr)
        guard server.status == 0 else { return }
        for name in ["d0", "d1", "d2", "spare"] { Harness.sh("truncate -s 96M '\(f.root)/\(name)'") }
        let drives = ["d0", "d1", "d2"].map { "--drive '\(f.root)/\($0)'" }.joined(separator: " ") + " --drive '\(nbd)/mnt/disk' --drive '\(f.root)/spare'"
        try f.create("\(drives) --spares 1 --raid 5 --stripe-unit 16K")
        XCTAssertEqual(f.vsa("lun create '\(f.dir)' l --size 64M").status, 0)
        try f.mount("-o drive_timeout=\(ProcessInfo.processInfo.environment["VSA_TEST_DRIVE_TIMEOUT"] ?? "2")")
        defer { f.unmount() }
        let r = f.root
        let m = f.mnt
        XCTAssertEqual(Harness.sh("head -c 64M /dev/urandom > \(r)/data && dd if=\(r)/data of=\(m)/l bs=1M count=32 conv=notrunc,fsync status=none").status, 0)
        let before = try f.json("status '\(m)' --json", as: [String: Any].self)
        let member3 = ((before["drives"] as? [[String: Any]]) ?? []).first { $0["index"] as? Int == 3 }
        XCTAssertEqual(member3?["state"] as? String, "online", "\(before)")

        // The server stops answering.
        let paused = Harness.sh(
            "python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); s.connect('\(nbd)/ctl'); s.send(b'p'); print(s.recv(1).decode())\"")
        XCTAssertEqual(paused.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "P", paused.stderr)
        let start = Date()
        let io = Harness.sh(
            "dd if=\(r)/data of=\(m)/l bs=1M skip=32 seek=32 count=32 conv=notrunc,fsync status=none && cmp <(dd if=\(m)/l bs=1M iflag=direct status=none) \(r)/data",
            timeoutSeconds: 120)
        let took = Date().timeIntervalSince(start)
        print("hung drive: 32 MiB written with fsync and 64 MiB read back in \(String(format: "%.1f", took)) s with member 3 paused")
        XCTAssertEqual(io.status, 0, "host I/O with a hung member: \(io.stderr)")
        XCTAssertLessThan(took, 30, "host I/O waited \(took) s behind a drive with a 2 s deadline")

        // The member is failed (timed out), the spare takes its place and is rebuilt.
        var rebuilt = false
        var last: [String: Any] = [:]
        for _ in 0..<120 {
            last = (try? f.json("status '\(m)' --json", as: [String: Any].self)) ?? [:]
            let rebuild = last["rebuild"] as? [String: Any]
            if rebuild?["state"] as? String == "complete" {
                rebuilt = true
                break
            }
            usleep(250_000)
        }
        XCTAssertTrue(rebuilt, "the spare was not rebuilt: \(last)")
        let messages = (last["messages"] as? [String]) ?? []
        XCTAssertTrue(messages.contains { $0.contains("member 3 failed") && $0.contains("past the 2.0 s drive deadline") }, "\(messages)")
        XCTAssertEqual(Harness.sh("cmp <(dd if=\(m)/l bs=1M iflag=direct status=none) \(r)/data").status, 0, "data after the rebuild")
        let text = f.vsa("status '\(m)'").stdout
        XCTAssertTrue(text.contains("optimal") || text.contains("rebuild"), text)
        // The server comes back; what it held completes against a drive the array no longer uses.
        Harness.sh("python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); s.connect('\(nbd)/ctl'); s.send(b'r'); s.recv(1)\"")
    }
}
