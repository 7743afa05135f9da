import Foundation
import XCTest

/// Drive failure, hot spares, rebuild and degraded mounts on real mounts, driven through the CLI.
final class DriveTests: FixtureTestCase {
    override class var rootReason: String? { "real-mount tests run as root (CI does)" }

    /// The array's status as JSON.
    func status() throws -> [String: Any] {
        try fixture.json("status '\(fixture.mnt)' --json", as: [String: Any].self)
    }

    func rebuildState() throws -> String? { (try status()["rebuild"] as? [String: Any])?["state"] as? String }

    /// Waits until no rebuild runs; returns its final state.
    func waitForRebuild(seconds: Int = 120) throws -> String? {
        for _ in 0..<(seconds * 10) {
            let state = try rebuildState()
            if state != "running" { return state }
            usleep(100_000)
        }
        return try rebuildState()
    }

    func driveStates() throws -> [String] { (try status()["drives"] as? [[String: Any]] ?? []).map { $0["state"] as? String ?? "?" } }

    /// A hot spare takes a failed member's place by itself while fio writes and verifies; afterwards the rebuilt
    /// member carries its share: with another member failed, every byte still reads back.
    func testSpareTakesOverUnderLoadAndCarriesItsShare() throws {
        try fixture.createMounted("--drives 5 --spares 1 --drive-size 48M --raid 5 --stripe-unit 16K", lunSize: "96M")
        let r = fixture.root
        let m = fixture.mnt
        XCTAssertEqual(Harness.sh("head -c 96M /dev/urandom > \(r)/data && dd if=\(r)/data of=\(m)/l bs=1M conv=notrunc,fsync status=none").status, 0)
        // fio overwrites and verifies the first 32 MiB while member 1 is pulled and the spare is rebuilt.
        let load = Harness.sh(
            """
            fio --name=v --filename=\(m)/l --size=32M --rw=randwrite --bs=16k --ioengine=io_uring --iodepth=8 --direct=1 \(fioVerify) --output-format=terse > \(r)/fio.out 2>&1 & F=$!
            sleep 1
            "$VSA" drive fail '\(m)' 1 || { kill $F; exit 2; }
            wait $F; rc=$?; cat \(r)/fio.out; exit $rc
            """, timeoutSeconds: 300)
        XCTAssertEqual(load.status, 0, "fio across the failure: \(load.stdout) \(load.stderr)")
        XCTAssertEqual(try waitForRebuild(), "complete")
        XCTAssertEqual(try driveStates(), ["online", "online", "online", "online"], "the spare is member 1 now, the failed drive is gone")
        XCTAssertEqual(Harness.sh("ls '\(fixture.dir)' | grep -c failed").stdout.trimmingCharacters(in: .whitespacesAndNewlines), "1")
        // The rest of the LUN (not touched by fio) must match, read with member 0 out too.
        XCTAssertEqual(fixture.vsa("drive fail '\(m)' 0").status, 0)
        let c = Harness.sh("cmp <(dd if=\(m)/l bs=1M skip=32 iflag=direct status=none) <(tail -c +$((32*1048576+1)) \(r)/data)")
        XCTAssertEqual(c.status, 0, "data differs with the rebuilt member carrying it: \(c.stdout)")
        // A second failure past RAID-5's tolerance is refused.
        let refuse = fixture.vsa("drive fail '\(m)' 2")
        XCTAssertEqual(refuse.status, 1)
        XCTAssertTrue(refuse.stderr.contains("nothing was changed"), refuse.stderr)
        fixture.unmount()
        try fixture.mount()
        let again = Harness.sh("cmp <(dd if=\(m)/l bs=1M skip=32 iflag=direct status=none) <(tail -c +$((32*1048576+1)) \(r)/data)")
        XCTAssertEqual(again.status, 0, "data differs after remount: \(again.stdout)")
    }

    /// `vsa drive replace --with` onto a new file, slowed down, killed with SIGKILL in the middle: the next mount
    /// resumes where the superblocks say and finishes; every byte reads back, with two other members failed.
    func testRebuildResumesAfterKill() throws {
        try fixture.createMounted("--drives 5 --drive-size 64M --raid 6 --stripe-unit 16K", lunSize: "120M")
        let r = fixture.root
        let m = fixture.mnt
        XCTAssertEqual(Harness.sh("head -c 120M /dev/urandom > \(r)/data && dd if=\(r)/data of=\(m)/l bs=1M conv=notrunc,fsync status=none").status, 0)
        XCTAssertEqual(fixture.vsa("drive fail '\(m)' 3").status, 0)
        let replace = fixture.vsa("drive replace '\(m)' 3 --with '\(r)/new3' --rate 8M")
        XCTAssertEqual(replace.status, 0, replace.stderr)
        sleep(2)
        let before = try XCTUnwrap(try status()["rebuild"] as? [String: Any])
        XCTAssertEqual(before["state"] as? String, "running")
        guard let pid = fixture.daemonPID else { return XCTFail("no daemon pid") }
        kill(pid, SIGKILL)
        var waited = 0
        while kill(pid, 0) == 0 && waited < 500 { usleep(10_000); waited += 1 }
        Harness.sh("umount -l '\(m)' 2>/dev/null || fusermount3 -uz '\(m)'")
        let offline = Harness.sh("\"$VSA\" status '\(fixture.dir)' --json")
        let paused = try XCTUnwrap(
            (try JSONSerialization.jsonObject(with: Data(offline.stdout.utf8)) as? [String: Any])?["rebuild"] as? [String: Any], offline.stdout)
        XCTAssertEqual(paused["state"] as? String, "paused")
        XCTAssertGreaterThan(paused["doneStripes"] as? Int ?? 0, 0, "no progress was recorded before the kill")
        try fixture.mount()
        XCTAssertEqual(try waitForRebuild(seconds: 180), "complete")
        // Members 0 and 1 out: RAID-6 now needs the rebuilt member 3 for every stripe.
        XCTAssertEqual(fixture.vsa("drive fail '\(m)' 0").status, 0)
        XCTAssertEqual(fixture.vsa("drive fail '\(m)' 1").status, 0)
        let c = Harness.sh("cmp <(dd if=\(m)/l bs=1M iflag=direct status=none) \(r)/data")
        XCTAssertEqual(c.status, 0, "data differs after the resumed rebuild: \(c.stdout)")
    }

    /// RAID-6 with two members failed: the second replacement is accepted while the first rebuild runs (it used to be
    /// refused, leaving the array one failure from loss for a whole extra rebuild): its drive takes writes at once,
    /// status shows both, the queue survives an unmount, and the second rebuild follows the first. Then both new
    /// members carry their share: with two other members failed, every byte reads back.
    func testSecondReplacementIsQueuedBehindTheFirst() throws {
        try fixture.createMounted("--drives 6 --drive-size 64M --raid 6 --stripe-unit 16K", lunSize: "160M")
        let r = fixture.root
        let m = fixture.mnt
        XCTAssertEqual(Harness.sh("head -c 160M /dev/urandom > \(r)/data && dd if=\(r)/data of=\(m)/l bs=1M count=96 conv=notrunc,fsync status=none").status, 0)
        XCTAssertEqual(fixture.vsa("drive fail '\(m)' 1").status, 0)
        XCTAssertEqual(fixture.vsa("drive fail '\(m)' 3").status, 0)
        let first = fixture.vsa("drive replace '\(m)' 1 --with '\(r)/new1' --rate 6M")
        XCTAssertEqual(first.status, 0, first.stderr)
        let second = fixture.vsa("drive replace '\(m)' 3 --with '\(r)/new3' --rate 0")
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertTrue(second.stdout.contains("queued"), second.stdout)
        // A third is refused with one line; so is replacing the member being rebuilt.
        XCTAssertNotEqual(fixture.vsa("drive replace '\(m)' 3 --with '\(r)/new3b'").status, 0)
        let busy = fixture.vsa("drive replace '\(m)' 1 --with '\(r)/new1b'")
        XCTAssertTrue(busy.status != 0 && busy.stderrLines.count == 1, busy.stderr)
        let rebuild = try XCTUnwrap(try status()["rebuild"] as? [String: Any])
        XCTAssertEqual(rebuild["member"] as? Int, 1)
        XCTAssertEqual((rebuild["queued"] as? [String: Any])?["member"] as? Int, 3, "\(rebuild)")
        XCTAssertTrue(fixture.vsa("status '\(m)'").stdout.contains("queued"))
        // Writes reach both new drives meanwhile; the queue survives an unmount.
        XCTAssertEqual(Harness.sh("dd if=\(r)/data of=\(m)/l bs=1M skip=96 seek=96 count=64 conv=notrunc,fsync status=none").status, 0)
        fixture.unmount()
        let offline = try fixture.json("status '\(fixture.dir)' --json", as: [String: Any].self)
        let paused = try XCTUnwrap(offline["rebuild"] as? [String: Any], "\(offline)")
        XCTAssertEqual((paused["queued"] as? [String: Any])?["member"] as? Int, 3, "\(paused)")
        try fixture.mount()
        for _ in 0..<600 {
            let now = try status()["rebuild"] as? [String: Any]
            if now?["member"] as? Int == 3 && now?["state"] as? String == "complete" { break }
            usleep(200_000)
        }
        let done = try XCTUnwrap(try status()["rebuild"] as? [String: Any])
        XCTAssertEqual(done["member"] as? Int, 3, "\(done)")
        XCTAssertEqual(done["state"] as? String, "complete", "\(done)")
        XCTAssertEqual(try driveStates().prefix(6).filter { $0 != "online" }, [])
        // Members 0 and 2 out: RAID-6 now needs both rebuilt members for every stripe.
        XCTAssertEqual(fixture.vsa("drive fail '\(m)' 0").status, 0)
        XCTAssertEqual(fixture.vsa("drive fail '\(m)' 2").status, 0)
        XCTAssertEqual(Harness.sh("cmp <(dd if=\(m)/l bs=1M iflag=direct status=none) \(r)/data").status, 0, "data differs after both rebuilds")
    }

    /// A member file missing at mount: a degraded mount with a warning; `vsa drive replace --wait` rebuilds onto a
    /// new file with a progress report and the array is optimal again, across a remount.
    func testMissingDriveMountsDegradedAndIsReplaced() throws {
        try fixture.createMounted("--drives 4 --drive-size 48M --raid 5", lunSize: "64M")
        let r = fixture.root
        let m = fixture.mnt
        XCTAssertEqual(Harness.sh("head -c 64M /dev/urandom > \(r)/data && dd if=\(r)/data of=\(m)/l bs=1M conv=notrunc,fsync status=none").status, 0)
        fixture.unmount()
        Harness.sh("mv '\(fixture.dir)/drive-2' '\(r)/drive-2.away'")
        let mount = fixture.vsa("mount '\(fixture.dir)' '\(m)'")
        XCTAssertEqual(mount.status, 0, mount.stderr)
        XCTAssertTrue(mount.stderr.contains("warning: member 2 is missing"), mount.stderr)
        XCTAssertEqual((try status()["array"] as? [String: Any])?["state"] as? String, "degraded")
        XCTAssertEqual(Harness.sh("cmp <(dd if=\(m)/l bs=1M iflag=direct status=none) \(r)/data").status, 0, "degraded read differs")
        // Bad replacements are refused and change nothing.
        Harness.sh("head -c 64M /dev/urandom > \(r)/foreign")
        let foreign = fixture.vsa("drive replace '\(m)' 2 --with '\(r)/foreign'")
        XCTAssertEqual(foreign.status, 1)
        XCTAssertTrue(foreign.stderr.contains("refusing to overwrite"), foreign.stderr)
        let live = fixture.vsa("drive replace '\(m)' 2 --with '\(fixture.dir)/drive-0'")
        XCTAssertEqual(live.status, 1)
        XCTAssertTrue(live.stderr.contains("already drive 0"), live.stderr)
        Harness.sh("truncate -s 8M \(r)/small")
        XCTAssertEqual(fixture.vsa("drive replace '\(m)' 2 --with '\(r)/small'").status, 1)
        XCTAssertEqual(fixture.vsa("drive replace '\(m)' nosuch --with '\(r)/x'").status, 1)
        XCTAssertEqual(try driveStates()[2], "failed")
        // The real replacement, with a progress report.
        let replace = fixture.vsa("drive replace '\(m)' 2 --with '\(r)/new2' --rate 0 --wait")
        XCTAssertEqual(replace.status, 0, replace.stderr)
        XCTAssertTrue(replace.stdout.contains("100.0%") && replace.stdout.contains("complete"), replace.stdout)
        XCTAssertEqual((try status()["array"] as? [String: Any])?["state"] as? String, "optimal")
        fixture.unmount()
        // The old drive coming back is stale: the newer superblocks win and it is left alone.
        Harness.sh("mv '\(r)/drive-2.away' '\(fixture.dir)/drive-2'")
        let remount = fixture.vsa("mount '\(fixture.dir)' '\(m)'")
        XCTAssertEqual(remount.status, 0, remount.stderr)
        XCTAssertTrue(remount.stderr.contains("stale"), remount.stderr)
        XCTAssertEqual((try status()["array"] as? [String: Any])?["state"] as? String, "optimal")
        XCTAssertEqual(fixture.vsa("drive fail '\(m)' 0").status, 0)
        XCTAssertEqual(Harness.sh("cmp <(dd if=\(m)/l bs=1M iflag=direct status=none) \(r)/data").status, 0, "data differs after replace + remount")
    }

    /// A drive file truncated, and another deleted, while mounted: both members are failed within a second or so,
    /// and RAID-6 serves every byte from the other three.
    func testShrunkAndVanishedDriveFilesFailTheirMembers() throws {
        try fixture.createMounted("--drives 5 --drive-size 40M --raid 6", lunSize: "64M")
        let r = fixture.root
        let m = fixture.mnt
        XCTAssertEqual(Harness.sh("head -c 64M /dev/urandom > \(r)/data && dd if=\(r)/data of=\(m)/l bs=1M conv=notrunc,fsync status=none").status, 0)
        Harness.sh("truncate -s 20M '\(fixture.dir)/drive-1' && rm '\(fixture.dir)/drive-3'")
        var states: [String] = []
        for _ in 0..<50 {
            states = try driveStates()
            if states[1] == "failed" && states[3] == "failed" { break }
            usleep(100_000)
        }
        XCTAssertEqual(states, ["online", "failed", "online", "failed", "online"])
        XCTAssertEqual(Harness.sh("cmp <(dd if=\(m)/l bs=1M iflag=direct status=none) \(r)/data").status, 0, "degraded read differs")
        XCTAssertTrue(Harness.sh("grep -c 'shrank\\|vanished' '\(fixture.dir)/vsa.log'").stdout.hasPrefix("2"))
    }

    /// Two members missing from a RAID-5: a clear error, nothing written.
    func testTooManyMissingDrivesIsAClearError() throws {
        try fixture.create("--drives 4 --drive-size 32M --raid 5")
        Harness.sh("mv '\(fixture.dir)/drive-1' '\(fixture.root)/d1' && mv '\(fixture.dir)/drive-3' '\(fixture.root)/d3'")
        let before = Harness.sh("sha256sum '\(fixture.dir)'/drive-*").stdout
        let mount = fixture.vsa("mount '\(fixture.dir)' '\(fixture.mnt)'")
        XCTAssertEqual(mount.status, 1)
        XCTAssertTrue(mount.stderr.contains("is missing") && mount.stderr.contains("cannot run without it"), mount.stderr)
        XCTAssertEqual(mount.stderr.split(separator: "\n").count, 1, mount.stderr)
        XCTAssertEqual(Harness.sh("sha256sum '\(fixture.dir)'/drive-*").stdout, before, "a refused mount wrote to the drives")
        XCTAssertEqual(fixture.vsa("drive fail '\(fixture.dir)' 0").status, 1, "drive fail on an array that is not mounted")
    }
}
