import Foundation
import XCTest

/// Snapshots, linked clones and restores of thin LUNs on real mounts (docs/POOL.md, "Snapshots, clones, restore"),
/// through the CLI: contents that never change, clones that share until written, restore and relink refused while
/// the LUN is open, secure snapshots, status and --json, remounts and kill -9, and bad input refused with one line.
final class SnapshotTests: FixtureTestCase {
    override class var rootReason: String? { "real-mount tests run as root (CI does)" }

    /// Fills 8 MiB at `mib` MiB of `lun` with pattern file `pattern` (made once per test from /dev/urandom).
    func put(_ pattern: String, _ lun: String, at mib: Int = 0) {
        let r = Harness.sh(
            "dd if='\(fixture.root)/\(pattern)' of='\(fixture.mnt)/\(lun)' bs=1M seek=\(mib) count=8 conv=notrunc,fsync status=none")
        XCTAssertEqual(r.status, 0, r.stderr)
    }

    /// Whether 8 MiB at `mib` MiB of `lun` hold pattern `pattern`.
    func holds(_ lun: String, _ pattern: String, at mib: Int = 0) -> Bool {
        Harness.sh("dd if='\(fixture.mnt)/\(lun)' bs=1M skip=\(mib) count=8 status=none | cmp -s - '\(fixture.root)/\(pattern)'").status == 0
    }

    func snapshots() throws -> [[String: Any]] {
        let listing = try fixture.json("snap list '\(fixture.mnt)' --json", as: [String: Any].self)
        return try XCTUnwrap(listing["snapshots"] as? [[String: Any]])
    }

    func snapshot(_ name: String) throws -> [String: Any] { try XCTUnwrap(try snapshots().first { $0["name"] as? String == name }) }

    func refused(_ command: String, file: StaticString = #filePath, line: UInt = #line) {
        let r = fixture.vsa(command)
        XCTAssertNotEqual(r.status, 0, command, file: file, line: line)
        XCTAssertEqual(r.stderrLines.count, 1, "\(command): \(r.stderr)", file: file, line: line)
    }

    func testSnapshotsClonesRestoreAndRelinkThroughTheCLI() throws {
        try fixture.create("--drives 4 --drive-size 128M --raid 5")
        for p in ["A", "B", "C", "D"] { XCTAssertEqual(Harness.sh("head -c 8M /dev/urandom > '\(fixture.root)/\(p)'").status, 0) }
        try fixture.mount()
        let m = fixture.mnt
        XCTAssertEqual(fixture.vsa("lun create '\(m)' t --size 1T --thin").status, 0)
        XCTAssertEqual(fixture.vsa("lun create '\(m)' k --size 16M --thick").status, 0)
        put("A", "t")
        XCTAssertEqual(fixture.vsa("snap create '\(m)' t s1").status, 0)
        put("B", "t")
        XCTAssertEqual(fixture.vsa("snap create '\(m)' t s2").status, 0)
        put("C", "t", at: 64)
        XCTAssertTrue(holds("t", "B") && holds("t", "C", at: 64))
        // s1's blocks: all its own once t overwrote them; s2 shares B with t.
        XCTAssertEqual(try snapshot("s1")["uniqueBytes"] as? Int, 8 << 20)
        XCTAssertEqual(try snapshot("s2")["uniqueBytes"] as? Int, 0)
        XCTAssertEqual(try snapshot("s2")["allocatedBytes"] as? Int, 8 << 20)

        // A clone of s1 reads A; writing it changes neither s1 nor t.
        XCTAssertEqual(fixture.vsa("snap link '\(m)' t s1 c").status, 0)
        XCTAssertTrue(holds("c", "A"))
        XCTAssertEqual(Harness.sh("stat -c %s '\(m)/c'").stdout.trimmingCharacters(in: .whitespacesAndNewlines), "\(1 << 40)")
        put("D", "c")
        XCTAssertEqual(fixture.vsa("snap link '\(m)' t s1 c2").status, 0)
        XCTAssertTrue(holds("c", "D") && holds("c2", "A") && holds("t", "B"))
        let lun = try XCTUnwrap(
            (try fixture.json("status '\(m)' --json", as: [String: Any].self)["luns"] as? [[String: Any]])?.first { $0["name"] as? String == "c2" })
        XCTAssertEqual(lun["linkedTo"] as? String, "t@s1")
        XCTAssertEqual(try snapshot("s1")["linked"] as? [String], ["c", "c2"])

        // Restore: refused while t is open, then t reads A again (C at 64 MiB is gone: s1 never had it).
        let holder = open("\(m)/t", O_RDONLY)
        XCTAssertGreaterThanOrEqual(holder, 0)
        refused("snap restore '\(m)' t s1")
        close(holder)
        XCTAssertTrue(holds("t", "B"), "a refused restore changed nothing")
        // The kernel sends the release of a closed file on its own time: the restore may be refused until it comes.
        let deadline0 = Date().addingTimeInterval(10)
        while fixture.vsa("snap restore '\(m)' t s1").status != 0 && Date() < deadline0 { Thread.sleep(forTimeInterval: 0.2) }
        XCTAssertTrue(holds("t", "A"))
        XCTAssertEqual(
            Harness.sh("dd if='\(m)/t' bs=1M skip=64 count=8 status=none | tr -d '\\0' | wc -c").stdout.trimmingCharacters(in: .whitespacesAndNewlines), "0")
        XCTAssertTrue(holds("c", "D") && holds("c2", "A"), "a restore changes no clone")

        // Relink c to s2: it reads B (what was written to it is dropped).
        XCTAssertEqual(fixture.vsa("snap relink '\(m)' c s2").status, 0)
        XCTAssertTrue(holds("c", "B"))
        XCTAssertEqual(try snapshot("s2")["linked"] as? [String], ["c"])

        // Bad input: one line each, nothing changed.
        let before = try snapshots().count
        for command in [
            "snap create '\(m)' k s", "snap create '\(m)' nope s", "snap create '\(m)' t s1", "snap create '\(m)' t 'a/b'", "snap create '\(m)' t .x",
            "snap create '\(m)' t s9 --secure -1", "snap create '\(m)' t s9 --secure abc", "snap create '\(m)' t s9 --secure 99999",
            "snap delete '\(m)' t nope", "snap delete '\(m)' t s1", "snap delete '\(m)' k s1", "snap restore '\(m)' t nope",
            "snap link '\(m)' t s1 k", "snap link '\(m)' t s1 'bad/name'", "snap link '\(m)' t nope c3", "snap unlink '\(m)' t",
            "snap unlink '\(m)' nope", "snap relink '\(m)' t s1", "snap relink '\(m)' c nope", "lun delete '\(m)' t", "snap list '\(m)' nope",
            "snap create '\(fixture.dir)-missing' t s9",
        ] { refused(command) }
        XCTAssertEqual(try snapshots().count, before)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(m)/c3"))

        // Unlink: c2 keeps A as its own; s1 can go then, and every reader still sees what it saw.
        XCTAssertEqual(fixture.vsa("snap unlink '\(m)' c2").status, 0)
        XCTAssertEqual(fixture.vsa("snap delete '\(m)' t s1").status, 0)
        XCTAssertEqual(try snapshots().map { $0["name"] as? String }, ["s2"])
        XCTAssertTrue(holds("t", "A") && holds("c2", "A") && holds("c", "B"))

        // A secure snapshot: not deleted before its time, deleted by the array after it.
        XCTAssertEqual(fixture.vsa("snap create '\(m)' t sec --secure 0.00005").status, 0)
        refused("snap delete '\(m)' t sec")
        XCTAssertNotNil(try snapshot("sec")["secureUntilSeconds"] as? Int)
        let deadline = Date().addingTimeInterval(30)
        while try snapshots().contains(where: { $0["name"] as? String == "sec" }) && Date() < deadline { Thread.sleep(forTimeInterval: 0.5) }
        XCTAssertFalse(try snapshots().contains { $0["name"] as? String == "sec" }, "the expired secure snapshot was deleted")

        // Everything as it was after a clean remount, and after kill -9.
        fixture.unmount()
        try fixture.mount()
        XCTAssertTrue(holds("t", "A") && holds("c2", "A") && holds("c", "B"))
        XCTAssertEqual(try snapshots().map { $0["name"] as? String }, ["s2"])
        XCTAssertEqual(fixture.vsa("snap create '\(m)' t s3").status, 0)
        put("D", "t")
        XCTAssertTrue(fixture.killDaemon())
        try fixture.mount()
        XCTAssertTrue(holds("t", "D"))
        XCTAssertEqual(fixture.vsa("snap link '\(m)' t s3 c3").status, 0)
        XCTAssertTrue(holds("c3", "A") && holds("c", "B"))
        XCTAssertTrue(fixture.vsa("status '\(m)'").stdout.contains("t@s2"))
        // Deleting every clone and snapshot, then the LUN, gives the pool back.
        for command in [
            "lun delete '\(m)' c3", "lun delete '\(m)' c", "lun delete '\(m)' c2", "snap delete '\(m)' t s2", "snap delete '\(m)' t s3", "lun delete '\(m)' t",
        ] {
            let r = fixture.vsa(command)
            XCTAssertEqual(r.status, 0, "\(command): \(r.stderr)")
        }
        let pool = try XCTUnwrap(try fixture.json("status '\(m)' --json", as: [String: Any].self)["pool"] as? [String: Any])
        XCTAssertLessThan(try XCTUnwrap(pool["allocatedBytes"] as? Int), 2 << 20, "only the map is left")
    }

    /// Snapshots taken while fio writes and verifies: the LUN's data is intact, and each snapshot, linked, reads as
    /// a whole LUN whose every written block is one fio wrote (fio's verify of a clone of the last one passes).
    func testSnapshotsTakenUnderLoadKeepTheLUNIntact() throws {
        try fixture.create("--drives 4 --drive-size 128M --raid 5")
        try fixture.mount()
        let m = fixture.mnt
        XCTAssertEqual(fixture.vsa("lun create '\(m)' t --size 256M --thin").status, 0)
        let fio =
            "fio --name=v --filename='\(m)/t' --size=64M --rw=randwrite --bs=4k --iodepth=8 --ioengine=libaio --direct=1 --verify=crc32c --verify_fatal=1 --runtime=6 --time_based 2>&1 > '\(fixture.root)/fio.out'; echo $? > '\(fixture.root)/fio.rc'"
        XCTAssertEqual(Harness.sh("(\(fio)) & sleep 1").status, 0)
        var taken = 0
        let start = Date()
        while Date().timeIntervalSince(start) < 4 {
            let r = fixture.vsa("snap create '\(m)' t load\(taken)")
            XCTAssertEqual(r.status, 0, r.stderr)
            taken += 1
        }
        let deadline = Date().addingTimeInterval(120)
        while !FileManager.default.fileExists(atPath: "\(fixture.root)/fio.rc") && Date() < deadline { Thread.sleep(forTimeInterval: 0.5) }
        XCTAssertEqual(
            (try? String(contentsOfFile: "\(fixture.root)/fio.rc", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines), "0",
            (try? String(contentsOfFile: "\(fixture.root)/fio.out", encoding: .utf8)) ?? "")
        XCTAssertGreaterThan(taken, 2)
        XCTAssertEqual(try snapshots().count, taken)
        // The LUN now, as fio left it, is also the last snapshot's contents plus what came after: a snapshot taken
        // now and linked verifies as the LUN does.
        XCTAssertEqual(fixture.vsa("snap create '\(m)' t final").status, 0)
        XCTAssertEqual(fixture.vsa("snap link '\(m)' t final clone").status, 0)
        for target in ["t", "clone"] {
            let verify = Harness.sh(
                "fio --name=v --filename='\(m)/\(target)' --size=64M --rw=randwrite --bs=4k --ioengine=psync --verify=crc32c --verify_only --verify_fatal=1 2>&1"
            )
            XCTAssertEqual(verify.status, 0, "\(target): \(verify.stdout)")
        }
    }
}
