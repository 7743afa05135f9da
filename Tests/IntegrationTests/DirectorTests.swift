import Foundation
import XCTest

/// Director failover on real mounts, driven through the CLI: a director fails, its partner replays the write-pending
/// data mirrored in its memory and takes its stripes; the host sees no error and nothing acknowledged is lost.
final class DirectorTests: FixtureTestCase {
    override class var rootReason: String? { "real-mount tests run as root (CI does)" }

    func directors() throws -> [[String: Any]] {
        try fixture.json("director list '\(fixture.mnt)' --json", as: [[String: Any]].self)
    }

    func director(_ id: String) throws -> [String: Any] { try XCTUnwrap(try directors().first { $0["id"] as? String == id }, "no director \(id)") }

    func same(_ lun: String, _ data: String, megabytes: Int) -> CommandResult {
        Harness.sh("cmp <(dd if=\(fixture.mnt)/\(lun) bs=1M count=\(megabytes) iflag=direct status=none) \(fixture.root)/\(data)")
    }

    /// Writes that are only write-pending (no fsync) survive the failure of their director: its partner holds them
    /// in its mirror and replays them. Without the mirror, or without the replay, they would be gone.
    func testWritePendingDataSurvivesItsDirector() throws {
        try fixture.create("--drives 4 --drive-size 48M --raid 5 --stripe-unit 16K --cache 64M")
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' l --size 32M").status, 0)
        // The directors wait a minute, idle, before they destage: the data stays write-pending for the test.
        try fixture.mount("", environment: "VSA_IDLE_DESTAGE_MS=60000")
        let r = fixture.root
        // 4 KiB direct writes: each one lands in a slot as write-pending, nothing is destaged yet.
        XCTAssertEqual(
            Harness.sh("head -c 8M /dev/urandom > \(r)/data && dd if=\(r)/data of=\(fixture.mnt)/l bs=4k oflag=direct conv=notrunc status=none").status, 0)
        let pair = try directors()
        let a = pair[0]
        let b = pair[1]
        XCTAssertGreaterThan(a["writePendingSlots"] as? Int ?? 0, 0, "\(a)")
        XCTAssertEqual(a["writePendingSlots"] as? Int, b["mirroredSlots"] as? Int, "1a's write-pending slots are mirrored in 1b")
        XCTAssertEqual(b["writePendingSlots"] as? Int, a["mirroredSlots"] as? Int, "1b's write-pending slots are mirrored in 1a")
        XCTAssertEqual(a["mirrorTo"] as? String, "1b")

        let fail = fixture.vsa("director fail '\(fixture.mnt)' 1a")
        XCTAssertEqual(fail.status, 0, fail.stderr)
        XCTAssertTrue(fail.stdout.contains("1b replayed") && !fail.stdout.contains("replayed 0 bytes"), fail.stdout)
        let after = try director("1b")
        XCTAssertEqual(after["actingFor"] as? [String], ["1a", "1b"])
        XCTAssertEqual(after["mirrorTo"] as? String, "none", "with its partner out, 1b destages each write before acknowledging it")
        XCTAssertEqual(try director("1a")["state"] as? String, "failed")
        XCTAssertEqual(same("l", "data", megabytes: 8).status, 0, "write-pending data of the failed director was lost")

        // Writes go on while 1a is out (write-through on 1b); then both fail: EIO, nothing acknowledged lost.
        XCTAssertEqual(
            Harness.sh("head -c 4M /dev/urandom > \(r)/more && dd if=\(r)/more of=\(fixture.mnt)/l bs=4k seek=2048 oflag=direct conv=notrunc status=none")
                .status, 0)
        XCTAssertEqual(Harness.sh("cat \(r)/data > \(r)/expected && dd if=\(r)/more of=\(r)/expected bs=1M seek=8 conv=notrunc status=none").status, 0)
        XCTAssertEqual(fixture.vsa("director fail '\(fixture.mnt)' 1b").status, 0)
        let dead = Harness.sh("dd if=\(fixture.mnt)/l of=/dev/null bs=4k count=1 iflag=direct")
        XCTAssertNotEqual(dead.status, 0, "no director online, yet a read succeeded")
        XCTAssertTrue(dead.stderr.contains("Input/output error"), dead.stderr)
        XCTAssertEqual(fixture.vsa("director restore '\(fixture.mnt)' 1b").status, 0)
        XCTAssertEqual(same("l", "expected", megabytes: 12).status, 0)
        XCTAssertEqual(fixture.vsa("director restore '\(fixture.mnt)' 1a").status, 0)
        XCTAssertEqual(try director("1a")["actingFor"] as? [String], ["1a"])
        XCTAssertEqual(try director("1a")["mirrorTo"] as? String, "1b")
        XCTAssertEqual(same("l", "expected", megabytes: 12).status, 0)

        // Bad input: one line, nothing changed.
        for (arguments, message) in [
            ("fail '\(fixture.mnt)' 3a", "no director 3a"), ("fail '\(fixture.mnt)' x", "not a director id"), ("restore '\(fixture.mnt)' 1a", "not failed"),
        ] {
            let bad = fixture.vsa("director \(arguments)")
            XCTAssertEqual(bad.status, 1, arguments)
            XCTAssertTrue(bad.stderr.contains(message) && bad.stderr.split(separator: "\n").count == 1, bad.stderr)
        }
        XCTAssertEqual(try directors().map { $0["state"] as? String }, ["online", "online"])
        fixture.unmount()
        try fixture.mount()
        XCTAssertEqual(same("l", "expected", megabytes: 12).status, 0, "data differs after remount")
        let top = fixture.vsa("top '\(fixture.mnt)' --count 2")
        XCTAssertEqual(top.status, 0, top.stderr)
        XCTAssertTrue(top.stdout.contains("mirror-to") && top.stdout.contains("1b"), top.stdout)
    }

    /// fio writes and verifies two LUNs, one thick and one thin, while 1a and 1b fail and come back in turn: no
    /// error (the thin LUN's write-pending pages, replayed by the partner, keep their pool promises), and after a
    /// remount every block still verifies.
    func testFioVerifiesWhileDirectorsFailAndRestore() throws {
        try fixture.create("--drives 4 --drive-size 64M --raid 5 --stripe-unit 16K --cache 32M")
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' a --size 48M --thick").status, 0)
        try fixture.mount()
        let m = fixture.mnt
        XCTAssertEqual(fixture.vsa("lun create '\(m)' b --size 48M --thin").status, 0)
        let r = fixture.root
        func job(_ lun: String, _ extra: String = "") -> String {
            "fio --name=\(lun) --filename=\(m)/\(lun) --size=40M --rw=randwrite --bs=8k --ioengine=io_uring --iodepth=8 --direct=1 --randseed=\(lun == "a" ? 7 : 9) \(fioVerify) --output-format=terse \(extra) > \(r)/fio-\(lun).out 2>&1"
        }
        let load = Harness.sh(
            """
            \(job("a")) & A=$!
            \(job("b")) & B=$!
            sleep 0.5
            for round in 1 2 3; do
              for d in 1a 1b; do
                "$VSA" director fail '\(m)' $d > /dev/null || { echo "fail $d"; exit 3; }
                sleep 0.4
                "$VSA" director restore '\(m)' $d > /dev/null || { echo "restore $d"; exit 3; }
                sleep 0.3
              done
            done
            wait $A; ra=$?; wait $B; rb=$?
            cat \(r)/fio-a.out \(r)/fio-b.out
            [ $ra -eq 0 ] && [ $rb -eq 0 ]
            """, timeoutSeconds: 600)
        XCTAssertEqual(load.status, 0, "fio across director failures: \(load.stdout) \(load.stderr)")
        let list = try directors()
        XCTAssertGreaterThan(list.map { $0["bounced"] as? Int ?? 0 }.reduce(0, +) + list.map { $0["takeovers"] as? Int ?? 0 }.reduce(0, +), 0)
        XCTAssertGreaterThan(list.map { $0["messagesReceived"] as? Int ?? 0 }.reduce(0, +), 0, "pieces crossed the virtual switch")
        // Every promise of a pool block was given back once the thin LUN's pages went down, failovers or not.
        XCTAssertEqual(Harness.sh("sync '\(m)/b'").status, 0)
        let pool = try XCTUnwrap(try fixture.json("status '\(m)' --json", as: [String: Any].self)["pool"] as? [String: Any])
        XCTAssertEqual(pool["promisedBytes"] as? Int, 0, "\(pool)")
        fixture.unmount()
        try fixture.mount()
        for lun in ["a", "b"] {
            let verify = Harness.sh(job(lun, "--verify_only") + "; rc=$?; cat \(r)/fio-\(lun).out; exit $rc")
            XCTAssertEqual(verify.status, 0, "LUN \(lun) after remount: \(verify.stdout)")
        }
    }

    /// With two engines, failing both directors of engine 1 moves its stripes to engine 2; the data stays readable.
    func testBothDirectorsOfAnEngineFailOverToTheOtherEngine() throws {
        try fixture.createMounted("--drives 4 --drive-size 48M --raid 5 --stripe-unit 16K --engines 2 --cache 64M", lunSize: "32M")
        let r = fixture.root
        XCTAssertEqual(
            Harness.sh("head -c 8M /dev/urandom > \(r)/data && dd if=\(r)/data of=\(fixture.mnt)/l bs=4k oflag=direct conv=notrunc status=none").status, 0)
        XCTAssertEqual(fixture.vsa("director fail '\(fixture.mnt)' 1a").status, 0)
        XCTAssertEqual(fixture.vsa("director fail '\(fixture.mnt)' 1b").status, 0)
        let acting = try directors().flatMap { $0["actingFor"] as? [String] ?? [] }.sorted()
        XCTAssertEqual(acting, ["1a", "1b", "2a", "2b"], "every home has an acting director")
        XCTAssertEqual(try director("1a")["actingFor"] as? [String], [])
        XCTAssertEqual(same("l", "data", megabytes: 8).status, 0)
        XCTAssertEqual(Harness.sh("dd if=\(r)/data of=\(fixture.mnt)/l bs=64k seek=128 oflag=direct conv=notrunc,fsync status=none").status, 0)
        XCTAssertEqual(fixture.vsa("director restore '\(fixture.mnt)' 1b").status, 0)
        XCTAssertEqual(fixture.vsa("director restore '\(fixture.mnt)' 1a").status, 0)
        XCTAssertEqual(Harness.sh("cmp <(dd if=\(fixture.mnt)/l bs=1M skip=8 count=8 iflag=direct status=none) \(r)/data").status, 0)
        XCTAssertEqual(same("l", "data", megabytes: 8).status, 0)
    }

    /// What an fsync acknowledged while a director was out survives the daemon's SIGKILL: the next mount recovers
    /// both directors' journal slices.
    func testFsyncedWritesWithADirectorOutSurviveAKilledDaemon() throws {
        try fixture.createMounted("--drives 4 --drive-size 48M --raid 5 --stripe-unit 16K", lunSize: "32M")
        let r = fixture.root
        let m = fixture.mnt
        XCTAssertEqual(Harness.sh("head -c 16M /dev/urandom > \(r)/data").status, 0)
        XCTAssertEqual(fixture.vsa("director fail '\(m)' 1b").status, 0)
        XCTAssertEqual(Harness.sh("dd if=\(r)/data of=\(m)/l bs=12k count=682 oflag=direct conv=notrunc,fsync status=none").status, 0)
        XCTAssertEqual(fixture.vsa("director restore '\(m)' 1b").status, 0)
        XCTAssertEqual(fixture.vsa("director fail '\(m)' 1a").status, 0)
        XCTAssertEqual(
            Harness.sh("dd if=\(r)/data of=\(m)/l bs=12k skip=682 seek=682 oflag=direct conv=notrunc,fsync status=none").status, 0)
        guard fixture.killDaemon() else { return XCTFail("no daemon pid") }
        try fixture.mount()
        XCTAssertEqual(same("l", "data", megabytes: 16).status, 0, "fsynced data lost after the kill")
        XCTAssertEqual(try directors().map { $0["state"] as? String }, ["online", "online"], "a mount starts every director")
    }
}
