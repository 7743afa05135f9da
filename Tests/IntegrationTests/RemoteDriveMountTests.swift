// Remote drives (issue 15) on real mounts, with their NBD servers on a second machine: a network namespace joined by
// a veth pair (scripts/nbd-lab), nbdkit serving in it over TCP. A partition is the link taken down. An array of local
// and remote drives passes fio verify; a partition of its remote member fails that member after the drive deadline,
// the local spare is rebuilt and fio verify passes across it; the old drive, back on the network, is recognised as
// stale and never trusted. Bad drive URIs get one line and change nothing.
import Foundation
import XCTest

final class RemoteDriveMountTests: FixtureTestCase {
    override class var rootReason: String? { "network namespaces and FUSE mounts need root" }
    private var lab: NBDLab!

    override func setUpWithError() throws {
        try super.setUpWithError()
        lab = try NBDLab()
    }

    override func tearDown() {
        super.tearDown()  // the mount goes first: its daemon holds connections into the lab
        lab = nil
    }

    private func drives() throws -> [[String: Any]] {
        try fixture.json("status '\(fixture.mnt)' --json", as: [String: Any].self)["drives"] as? [[String: Any]] ?? []
    }

    private func waitForRebuild(seconds: Int = 120) throws -> String? {
        for _ in 0..<(seconds * 10) {
            let state = (try fixture.json("status '\(fixture.mnt)' --json", as: [String: Any].self)["rebuild"] as? [String: Any])?["state"] as? String
            if state != "running" { return state }
            usleep(100_000)
        }
        return nil
    }

    func testAMixedArrayRidesOutAPartitionOfItsRemoteMemberAndTheDriveComesBackStale() throws {
        let r = fixture.root
        XCTAssertEqual(Harness.sh("for i in 0 1 2 3; do truncate -s 64M \(r)/d$i; done").status, 0)
        let uri = try lab.serve(port: 10809, "memory 64M")
        // Members 0-2 local, member 3 remote; the spare (the last drive given) local.
        try fixture.create("--raid 5 --stripe-unit 16K --drive \(r)/d0 --drive \(r)/d1 --drive \(r)/d2 --drive '\(uri)' --drive \(r)/d3 --spares 1")
        XCTAssertEqual(Harness.sh("readlink '\(fixture.dir)/drive-3'").stdout.trimmingCharacters(in: .whitespacesAndNewlines), uri, "the folder keeps the URI")
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' l --size 96M --thick").status, 0)
        try fixture.mount("-o drive_timeout=3")
        let m = fixture.mnt
        let remote = try XCTUnwrap(try drives()[3]["remote"] as? [String: Any])
        XCTAssertEqual(remote["uri"] as? String, uri)
        XCTAssertEqual(remote["link"] as? String, "connected")

        // fio verify across the whole LUN, the remote member carrying its share.
        let first = Harness.sh(
            "fio --name=v --filename=\(m)/l --size=96M --rw=randwrite --bs=16k --ioengine=io_uring --iodepth=8 --direct=1 --fsync=32 \(fioVerify) --output-format=terse",
            timeoutSeconds: 300)
        XCTAssertEqual(first.status, 0, "fio verify with a remote member: \(first.stdout) \(first.stderr)")
        let text = fixture.vsa("status '\(m)'").stdout
        XCTAssertTrue(text.contains("remote \(uri)  connected"), text)
        // Cold (mounted again), read back at random by many at once: a director's batch of misses is read together
        // (one submit, the round trips overlapping), and every block is what fio wrote.
        fixture.unmount()
        try fixture.mount("-o drive_timeout=3")
        let cold = Harness.sh(
            "fio --name=v --filename=\(m)/l --size=96M --rw=randread --bs=4k --ioengine=io_uring --iodepth=64 --direct=1 --io_size=24M --output-format=terse >/dev/null && fio --name=v --filename=\(m)/l --size=96M --rw=randwrite --bs=16k --ioengine=io_uring --iodepth=32 --direct=1 --verify=crc32c --verify_only=1 --verify_state_save=0 --output-format=terse",
            timeoutSeconds: 300)
        XCTAssertEqual(cold.status, 0, "fio verify, cold, with a remote member: \(cold.stdout) \(cold.stderr)")
        let cache = try XCTUnwrap(try fixture.json("status '\(m)' --json", as: [String: Any].self)["cache"] as? [String: Any])
        XCTAssertGreaterThan(cache["batchedMisses"] as? Int ?? 0, 0, "no director read a batch of misses together: \(cache)")

        // The link goes down while fio writes (fsyncs make the writes reach the drives): past the 3 s deadline the
        // member is failed, the local spare takes its place and is rebuilt, and fio verifies what it wrote.
        let load = Harness.sh(
            """
            fio --name=v --filename=\(m)/l --size=48M --rw=randwrite --bs=16k --ioengine=io_uring --iodepth=8 --direct=1 --fsync=8 \(fioVerify) --output-format=terse > \(r)/fio.out 2>&1 & F=$!
            sleep 0.5
            '\(NBDLab.script)' cut \(lab.name)
            wait $F; rc=$?; cat \(r)/fio.out; exit $rc
            """, timeoutSeconds: 300)
        XCTAssertEqual(load.status, 0, "fio across the partition: \(load.stdout) \(load.stderr)")
        XCTAssertEqual(try waitForRebuild(), "complete")
        let after = try drives()
        XCTAssertEqual(after.map { $0["state"] as? String }, ["online", "online", "online", "online"], "\(after)")
        XCTAssertNil(after[3]["remote"], "the local spare is member 3 now")
        let retired = Harness.sh("readlink '\(fixture.dir)'/drive-*.failed").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(retired, uri, "the remote drive's entry is retired")
        let verify = Harness.sh(
            "fio --name=v --filename=\(m)/l --size=48M --rw=read --bs=16k --ioengine=io_uring --iodepth=8 --direct=1 --verify=crc32c --verify_only=1 --verify_state_save=0 --output-format=terse",
            timeoutSeconds: 300)
        XCTAssertEqual(verify.status, 0, "nothing fio wrote before the partition was lost: \(verify.stdout) \(verify.stderr)")

        // The link comes back. Put back in the folder, the old drive answers with older data: stale, never used.
        lab.heal()
        fixture.unmount()
        XCTAssertEqual(Harness.sh("cd '\(fixture.dir)' && mv drive-3.failed drive-9").status, 0)
        let mount = fixture.vsa("mount '\(fixture.dir)' '\(m)' -o drive_timeout=3")
        XCTAssertEqual(mount.status, 0, mount.stderr)
        XCTAssertTrue(mount.stderr.contains("drive-9") && mount.stderr.contains("stale"), mount.stderr)
        let states = try drives()
        XCTAssertEqual(states.map { $0["state"] as? String }, ["online", "online", "online", "online"], "\(states)")
        let again = Harness.sh(
            "fio --name=v --filename=\(m)/l --size=48M --rw=read --bs=16k --ioengine=io_uring --iodepth=8 --direct=1 --verify=crc32c --verify_only=1 --verify_state_save=0 --output-format=terse",
            timeoutSeconds: 300)
        XCTAssertEqual(again.status, 0, "after the stale drive came back: \(again.stdout) \(again.stderr)")
        // Given back on purpose, it is rebuilt from the others, not trusted: member 2 onto it.
        let replace = fixture.vsa("drive replace '\(m)' 2 --with '\(uri)' --wait")
        XCTAssertEqual(replace.status, 0, replace.stderr)
        let rebuilt = try drives()
        XCTAssertEqual((rebuilt[2]["remote"] as? [String: Any])?["uri"] as? String, uri, "\(rebuilt)")
        XCTAssertEqual(rebuilt.map { $0["state"] as? String }, ["online", "online", "online", "online"])
        let last = Harness.sh(
            "fio --name=v --filename=\(m)/l --size=48M --rw=read --bs=16k --ioengine=io_uring --iodepth=8 --direct=1 --verify=crc32c --verify_only=1 --verify_state_save=0 --output-format=terse",
            timeoutSeconds: 300)
        XCTAssertEqual(last.status, 0, "after the rebuild onto the remote drive: \(last.stdout) \(last.stderr)")
    }

    /// Each bad drive URI is one line, and leaves no array behind (and another array's drive untouched).
    func testBadDriveURIsAreOneLineAndChangeNothing() throws {
        let r = fixture.root
        XCTAssertEqual(Harness.sh("for i in 0 1 2; do truncate -s 64M \(r)/d$i; done").status, 0)
        let good = try lab.serve(port: 10809, "memory 64M")
        let small = try lab.serve(port: 10810, "memory 4M")
        let readOnly = try lab.serve(port: 10811, "-r memory 64M")
        let locals = "--drive \(r)/d0 --drive \(r)/d1"
        // Another array takes `good`.
        XCTAssertEqual(fixture.vsa("create '\(r)/other' --raid 1 --drive \(r)/d2 --drive '\(good)'").status, 0)
        let before = Harness.sh("nbdcopy '\(good)' - | md5sum").stdout
        let cases: [(String, String)] = [
            ("nbd://\(lab.address):1/", "cannot connect"),
            ("nbds://\(lab.address)/x", "not an NBD URI"),
            ("nbd+vsock:///x", "not an NBD URI"),
            ("nbd+unix:///x?socket=\(r)/nonexistent.sock", "cannot connect"),
            (small, "must be at least"),
            (readOnly, "read-only"),
            (good, "belongs to vsa array"),
        ]
        for (uri, expected) in cases {
            let c = fixture.vsa("create '\(fixture.dir)' --raid 5 \(locals) --drive '\(uri)'")
            XCTAssertEqual(c.status, 1, uri)
            XCTAssertEqual(c.stderrLines.count, 1, "\(uri): \(c.stderr)")
            XCTAssertTrue(c.stderr.contains(expected), "\(uri): \(c.stderr)")
            XCTAssertFalse(ArrayFixtureFiles.holdsDriveEntries(fixture.dir), "\(uri): an array was left behind")
        }
        let twice = fixture.vsa("create '\(fixture.dir)' --raid 1 --drive '\(small)' --drive '\(small)'")
        XCTAssertTrue(twice.status == 1 && twice.stderr.contains("named twice"), twice.stderr)
        XCTAssertEqual(Harness.sh("nbdcopy '\(good)' - | md5sum").stdout, before, "the other array's drive was written")

        // On a mounted array: replacing onto a drive too small, another array's, or one of its own members.
        let mine = try lab.serve(port: 10812, "memory 64M")
        try fixture.create("--raid 5 --force \(locals) --drive \(r)/d2 --drive '\(mine)'")
        try fixture.mount()
        for (member, uri, expected) in [(3, small, "needs at least"), (0, good, "belongs to vsa array"), (0, mine, "already drive 3")] {
            let c = fixture.vsa("drive replace '\(fixture.mnt)' \(member) --with '\(uri)'")
            XCTAssertEqual(c.status, 1, uri)
            XCTAssertEqual(c.stderrLines.count, 1, "\(uri): \(c.stderr)")
            XCTAssertTrue(c.stderr.contains(expected), "\(uri): \(c.stderr)")
        }
        XCTAssertEqual(try drives().map { $0["state"] as? String }, ["online", "online", "online", "online"])
        XCTAssertEqual(Harness.sh("ls '\(fixture.dir)' | grep -c '^drive-'").stdout.trimmingCharacters(in: .whitespacesAndNewlines), "4")
    }
}

/// What a folder holds, for tests that check nothing was made.
enum ArrayFixtureFiles {
    static func holdsDriveEntries(_ dir: String) -> Bool {
        Harness.sh("ls '\(dir)' 2>/dev/null | grep -q '^drive-'").status == 0
    }
}
