// Replication of LUNs to NBD exports on a second machine (issue 15): a network namespace joined by a veth pair
// (scripts/nbd-lab) with nbdkit serving the R2 images in it. A synchronous group copies every write before the host
// hears of it; a partition (the link taken down) turns it partitioned, the changed tracks are remembered, and when
// the link heals only those go across; suspend and resume do the same by hand. R2 ends equal to R1 byte for byte.
// After the source daemon is killed, no write an fsync acknowledged is missing on R2. Bad input is one line.
import Foundation
import XCTest

/// What replication tests share: a lab (a second network namespace), and the group as `vsa replica list` has it.
class ReplicaTestCase: FixtureTestCase {
    override class var rootReason: String? { "network namespaces and FUSE mounts need root" }
    override class var fixtureBase: String { "/dev/shm" }
    var lab: NBDLab!

    override func setUpWithError() throws {
        try super.setUpWithError()
        lab = try NBDLab()
    }

    override func tearDown() {
        super.tearDown()
        lab = nil
    }

    func group(_ name: String = "g") throws -> [String: Any]? {
        let list = try fixture.json("replica list '\(fixture.mnt)' --json", as: [String: Any].self)
        return (list["replicas"] as? [[String: Any]])?.first { $0["name"] as? String == name }
    }

    /// Waits for the group to reach `state`; returns the group as it was then.
    @discardableResult
    func waitFor(_ state: String, _ name: String = "g", seconds: Int = 60, file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        var last: [String: Any] = [:]
        for _ in 0..<(seconds * 10) {
            last = try group(name) ?? [:]
            if last["state"] as? String == state { return last }
            usleep(100_000)
        }
        XCTFail("group never got \(state): \(last)", file: file, line: line)
        return last
    }

    /// Whether the LUN file and its R2 hold the same bytes.
    /// Each `vsa replica create` (its arguments after the mount point) fails with one line holding the expected
    /// words, and no group is left behind.
    func refuseCreates(_ refusals: [(String, String)], file: StaticString = #filePath, line: UInt = #line) throws {
        for (arguments, expected) in refusals {
            let c = fixture.vsa("replica create '\(fixture.mnt)' \(arguments)")
            XCTAssertEqual(c.status, 1, arguments, file: file, line: line)
            XCTAssertEqual(c.stderrLines.count, 1, "\(arguments): \(c.stderr)", file: file, line: line)
            XCTAssertTrue(c.stderr.contains(expected), "\(arguments): \(c.stderr)", file: file, line: line)
        }
        XCTAssertNil(try group(), "a refused create left a group", file: file, line: line)
    }

    /// Starts nbdkit here (not in the lab) on a unix socket, with `arguments` (plugin and its parameters), its pid in
    /// `pidfile`. The server keeps none of our descriptors: the test's Process would otherwise wait for it to exit.
    func serveHere(socket: String, pidfile: String, _ arguments: String, file: StaticString = #filePath, line: UInt = #line) {
        let serve = Harness.sh(
            "for fd in /proc/$$/fd/*; do fd=${fd##*/}; [ $fd -gt 2 ] && eval \"exec $fd>&-\"; done; nbdkit --unix \(socket) --pidfile \(pidfile) \(arguments) </dev/null >/dev/null 2>&1; sleep 0.3"
        )
        XCTAssertEqual(serve.status, 0, serve.stderr, file: file, line: line)
    }

    func same(_ lun: String, _ uri: String) -> Bool {
        Harness.sh("cmp <(dd if='\(fixture.mnt)/\(lun)' bs=1M iflag=direct status=none) <(nbdcopy '\(uri)' -)").status == 0
    }
}

final class ReplicationTests: ReplicaTestCase {

    func testASynchronousGroupRidesOutAPartitionAndASuspendAndEndsByteForByte() throws {
        try fixture.create("--drives 4 --drive-size 64M --raid 5 --stripe-unit 16K")
        for l in ["a", "b"] { XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' \(l) --size 32M --thick").status, 0) }
        try fixture.mount("-o drive_timeout=3")
        let m = fixture.mnt
        let r = fixture.root
        XCTAssertEqual(Harness.sh("head -c 32M /dev/urandom > \(r)/seed && dd if=\(r)/seed of=\(m)/a bs=1M conv=notrunc,fsync status=none").status, 0)
        let uriA = try lab.serve(port: 10809, "memory 32M")
        let uriB = try lab.serve(port: 10810, "memory 32M")
        let small = try lab.serve(port: 10811, "memory 16M")

        // Bad input first: one line each, and no group made.
        let refusals: [(String, String)] = [
            ("g --luns a,b --to '\(uriA)'", "one --to URI per LUN"),
            ("g --luns a --to '\(small)'", "the same size"),
            ("g --luns nope --to '\(uriA)'", "no LUN named nope"),
            ("g --luns a,a --to '\(uriA),\(uriB)'", "named twice"),
            ("g --luns a --to 'nbd://\(lab.address):1/'", "cannot connect"),
            ("g --luns a --to 'nbds://\(lab.address)/x'", "not an NBD URI"),
            ("'bad name' --luns a --to '\(uriA)'", "replica group name"),
            ("g --luns a --to '\(uriA)' --mode sideways", "--mode must be sync or async"),
        ]
        try refuseCreates(refusals)
        // A LUN replicated to itself: its own file on this mount, served back by nbdkit.
        let socket = "/tmp/vsa-own-\(getpid()).sock"
        serveHere(socket: socket, pidfile: "\(r)/own.pid", "file '\(m)/a'")
        let itself = fixture.vsa("replica create '\(m)' g --luns a --to 'nbd+unix:///?socket=\(socket)'")
        Harness.sh("kill $(cat \(r)/own.pid); rm -f \(socket)")
        XCTAssertEqual(itself.status, 1)
        XCTAssertTrue(itself.stderr.contains("cannot be replicated to itself"), itself.stderr)
        XCTAssertEqual(Harness.sh("cmp \(r)/seed \(m)/a").status, 0, "the probe changed the LUN")

        // The group: a full sync, then fio's writes go to both sides.
        let made = fixture.vsa("replica create '\(m)' g --luns a,b --to '\(uriA),\(uriB)' --mode sync")
        XCTAssertEqual(made.status, 0, made.stderr)
        try waitFor("synchronized")
        XCTAssertTrue(same("a", uriA) && same("b", uriB), "not equal after the first sync")
        let taken = fixture.vsa("replica create '\(m)' h --luns b --to '\(uriA)'")
        XCTAssertTrue(taken.status == 1 && taken.stderr.contains("already replicated"), taken.stderr)
        let delete = fixture.vsa("lun delete '\(m)' a")
        XCTAssertTrue(delete.status == 1 && delete.stderr.contains("replicated by group g"), delete.stderr)
        let fio = Harness.sh(
            "fio --name=a --filename=\(m)/a --name=b --filename=\(m)/b --size=16M --rw=randwrite --bs=4k --ioengine=io_uring --iodepth=8 --direct=1 \(fioVerify) --output-format=terse",
            timeoutSeconds: 300)
        XCTAssertEqual(fio.status, 0, fio.stdout + fio.stderr)
        XCTAssertEqual(try group()?["state"] as? String, "synchronized")
        XCTAssertTrue(same("a", uriA) && same("b", uriB), "R2 differs after synchronous writes")

        // A partition: the first write waits out the deadline, then the group is partitioned and writes go on here.
        lab.cut()
        XCTAssertEqual(Harness.sh("dd if=/dev/urandom of=\(m)/b bs=64k count=16 seek=100 oflag=direct conv=notrunc,fsync status=none").status, 0)
        let partitioned = try waitFor("partitioned")
        XCTAssertGreaterThan(partitioned["lagBytes"] as? Int ?? 0, 0)
        let before = try XCTUnwrap(partitioned["resyncedBytes"] as? Int)
        XCTAssertEqual(Harness.sh("dd if=/dev/urandom of=\(m)/a bs=64k count=8 seek=3 oflag=direct conv=notrunc status=none").status, 0)
        lab.heal()
        let healed = try waitFor("synchronized")
        let resent = (healed["resyncedBytes"] as? Int ?? 0) - before
        XCTAssertGreaterThan(resent, 0)
        XCTAssertLessThanOrEqual(resent, 32 * 65536, "only the changed tracks go across (\(resent) bytes)")
        XCTAssertTrue(same("a", uriA) && same("b", uriB), "R2 differs after the partition healed")

        // Suspend and resume by hand; the group survives a clean remount and sends nothing it need not.
        XCTAssertEqual(fixture.vsa("replica suspend '\(m)' g").status, 0)
        XCTAssertEqual(Harness.sh("dd if=/dev/urandom of=\(m)/a bs=64k count=4 seek=200 oflag=direct conv=notrunc status=none").status, 0)
        let suspended = try XCTUnwrap(try group())
        XCTAssertEqual(suspended["state"] as? String, "suspended")
        XCTAssertEqual(suspended["lagBytes"] as? Int, 4 * 65536)
        XCTAssertTrue(fixture.vsa("status '\(m)'").stdout.contains("replica group g (sync)  suspended"))
        fixture.unmount()
        try fixture.mount("-o drive_timeout=3")
        XCTAssertEqual(try group()?["state"] as? String, "suspended", "suspended stays suspended")
        XCTAssertEqual(try group()?["lagBytes"] as? Int, 4 * 65536, "the changed tracks survive a clean stop")
        XCTAssertEqual(fixture.vsa("replica resume '\(m)' g").status, 0)
        try waitFor("synchronized")
        XCTAssertTrue(same("a", uriA) && same("b", uriB), "R2 differs after the resume")

        // A resync under writes that do not stop: every track changed while suspended, then fio writes both LUNs at
        // random, as fast as it can, while the resync runs. Writes to tracks already sent go to both sides, so the
        // resync ends while fio still writes (writes that only marked tracks would keep it syncing for good).
        XCTAssertEqual(fixture.vsa("replica suspend '\(m)' g").status, 0)
        XCTAssertEqual(Harness.sh("dd if=/dev/urandom of=\(m)/a bs=1M count=32 oflag=direct conv=notrunc status=none").status, 0)
        let busy = Process()
        busy.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        busy.arguments = [
            "fio", "--name=a", "--filename=\(m)/a", "--name=b", "--filename=\(m)/b", "--size=32M", "--rw=randwrite", "--bs=4k",
            "--ioengine=io_uring", "--iodepth=8", "--direct=1", "--time_based", "--runtime=25", "--output-format=terse",
        ]
        busy.standardOutput = FileHandle.nullDevice
        busy.standardError = FileHandle.nullDevice
        try busy.run()
        usleep(500_000)
        XCTAssertEqual(fixture.vsa("replica resume '\(m)' g").status, 0)
        let underWrites = try waitFor("synchronized", seconds: 20)
        XCTAssertTrue(busy.isRunning, "the resync ended only once the writes stopped: \(underWrites)")
        busy.waitUntilExit()
        XCTAssertEqual(busy.terminationStatus, 0, "fio failed")
        XCTAssertEqual(try group()?["state"] as? String, "synchronized")
        XCTAssertTrue(same("a", uriA) && same("b", uriB), "R2 differs after a resync under writes")
        XCTAssertEqual(fixture.vsa("replica delete '\(m)' g").status, 0)
        XCTAssertNil(try group())
        XCTAssertEqual(fixture.vsa("lun delete '\(m)' a").status, 0, "a LUN out of its group can go")
    }

    /// Failover to a second vsa whose LUN file is R2 (served by nbdkit's file plugin from the other machine): the LUN
    /// here refuses writes, the second array's is written; failback copies back only the tracks that differ, and the
    /// group replicates as before.
    func testFailoverToASecondVSAAndFailbackCopiesOnlyWhatChanged() throws {
        let second = ArrayFixture(name: "R2", base: "/dev/shm")
        defer { second.cleanUp() }
        try second.create("--drives 4 --drive-size 48M --raid 5 --stripe-unit 16K")
        XCTAssertEqual(second.vsa("lun create '\(second.dir)' r2 --size 16M --thick").status, 0)
        try second.mount()
        try fixture.create("--drives 4 --drive-size 48M --raid 5 --stripe-unit 16K")
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' a --size 16M --thick").status, 0)
        try fixture.mount()
        let m = fixture.mnt
        let r2 = "\(second.mnt)/r2"
        XCTAssertEqual(Harness.sh("dd if=/dev/urandom of=\(m)/a bs=1M count=16 oflag=direct conv=notrunc,fsync status=none").status, 0)
        let uri = try lab.serve(port: 10809, "file '\(r2)'")
        defer { lab.stop(port: 10809) }
        func equal() -> Bool {
            Harness.sh("cmp <(dd if=\(m)/a bs=1M iflag=direct status=none) <(dd if=\(r2) bs=1M iflag=direct status=none)").status == 0
        }
        XCTAssertEqual(fixture.vsa("replica create '\(m)' g --luns a --to '\(uri)'").status, 0)
        try waitFor("synchronized")
        XCTAssertEqual(Harness.sh("dd if=/dev/urandom of=\(m)/a bs=64k count=4 seek=40 oflag=direct conv=notrunc status=none").status, 0)
        XCTAssertTrue(equal(), "the second vsa's LUN is not R1's copy")

        let back = fixture.vsa("replica failback '\(m)' g")
        XCTAssertTrue(back.status == 1 && back.stderr.contains("not failed over"), back.stderr)
        XCTAssertEqual(fixture.vsa("replica failover '\(m)' g").status, 0)
        XCTAssertEqual(try group()?["state"] as? String, "failed-over")
        XCTAssertNotEqual(
            Harness.sh("dd if=/dev/zero of=\(m)/a bs=4k count=1 oflag=direct conv=notrunc status=none").status, 0, "R1 took a write after failover")
        let twice = fixture.vsa("replica failover '\(m)' g")
        XCTAssertTrue(twice.status == 1 && twice.stderr.contains("already failed over"), twice.stderr)
        // The second vsa's host writes its LUN: two tracks change there.
        XCTAssertEqual(Harness.sh("dd if=/dev/urandom of=\(r2) bs=64k count=1 seek=10 oflag=direct conv=notrunc status=none").status, 0)
        XCTAssertEqual(Harness.sh("dd if=/dev/urandom of=\(r2) bs=64k count=1 seek=200 oflag=direct conv=notrunc status=none").status, 0)
        XCTAssertFalse(equal())

        XCTAssertEqual(fixture.vsa("replica failback '\(m)' g").status, 0)
        let done = try waitFor("synchronized")
        XCTAssertEqual(done["failbackComparedTracks"] as? Int, 256)
        XCTAssertEqual(done["failbackCopiedBytes"] as? Int, 2 * 65536, "only the tracks written on R2 came back")
        XCTAssertTrue(equal(), "R1 is not R2 after failback")
        // Writable again, and replicated as before.
        XCTAssertEqual(Harness.sh("dd if=/dev/urandom of=\(m)/a bs=64k count=2 seek=90 oflag=direct conv=notrunc status=none").status, 0)
        XCTAssertTrue(equal(), "a write after failback did not reach R2")
        XCTAssertEqual(fixture.vsa("replica delete '\(m)' g").status, 0)
    }

    /// replicas.json is input: a damaged or hostile one starts no group it describes wrongly, and the mount goes on.
    func testAHostileReplicasFileStartsNothingItDescribesWrongly() throws {
        try fixture.create("--drives 4 --drive-size 48M --raid 5 --stripe-unit 16K")
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' a --size 8M --thick").status, 0)
        let path = "\(fixture.dir)/replicas.json"
        func group(_ name: String, mode: String = "sync", luns: [String] = ["a"], uri: String = "nbd://127.0.0.1:1/") -> String {
            let members = luns.map { #"{"lun":"\#($0)","uri":"\#(uri)"}"# }.joined(separator: ",")
            return #"{"name":"\#(name)","mode":"\#(mode)","cycleSeconds":30,"suspended":false,"members":[\#(members)]}"#
        }
        let files = [
            "{not json",
            #"{"version":7,"groups":[]}"#,
            #"{"version":1,"groups":["# + group("x", mode: "async") + "]}",
            #"{"version":1,"groups":["# + group("../../etc") + "]}",
            #"{"version":1,"groups":["# + group("x", uri: "file:///etc/passwd") + "]}",
            #"{"version":1,"groups":["# + group("x", luns: ["a", "a"]) + "]}",
            #"{"version":1,"groups":["# + group("x", luns: ["nope"]) + "]}",
            // An asynchronous group whose sets someone unknown applies, and a synchronous one that names an applier.
            #"{"version":1,"groups":["# + group("x", mode: "async").dropLast() + #","journal":"nbd://h/j","cacheBytes":1048576,"apply":"r9"}]}"#,
            #"{"version":1,"groups":["# + group("x").dropLast() + #","apply":"r2"}]}"#,
        ]
        for text in files {
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            try fixture.mount()
            XCTAssertNil(try self.group("x"), text)
            let notes = fixture.vsa("status '\(fixture.mnt)'").stdout
            XCTAssertTrue(notes.contains("replicas.json") || notes.contains("dropped") || notes.contains("gone"), "\(text): \(notes)")
            fixture.unmount()
        }
    }

    /// The source daemon killed while a writer fsyncs: every acknowledged block is on R2.
    func testNoAcknowledgedWriteIsMissingOnR2AfterTheSourceIsKilled() throws {
        try fixture.create("--drives 4 --drive-size 48M --raid 5 --stripe-unit 16K")
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' l --size 8M --thick").status, 0)
        try fixture.mount()
        let m = fixture.mnt
        let r = fixture.root
        let uri = try lab.serve(port: 10809, "memory 8M")
        XCTAssertEqual(fixture.vsa("replica create '\(m)' g --luns l --to '\(uri)'").status, 0)
        try waitFor("synchronized")
        try CrashTests.script.write(toFile: "\(r)/crash.py", atomically: true, encoding: .utf8)
        let writer = Process()
        writer.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        writer.arguments = ["python3", "\(r)/crash.py", "write", "\(m)/l", "\(r)/acked", "2048", "0", "7"]
        writer.standardOutput = FileHandle.nullDevice
        writer.standardError = FileHandle.nullDevice
        try writer.run()
        usleep(1_500_000)
        XCTAssertTrue(fixture.killDaemon())
        writer.waitUntilExit()
        XCTAssertEqual(Harness.sh("nbdcopy '\(uri)' \(r)/r2.img").status, 0)
        let check = Harness.sh("python3 \(r)/crash.py check \(r)/r2.img \(r)/acked 2048", timeoutSeconds: 120)
        XCTAssertEqual(check.status, 0, check.stdout + check.stderr)
        let acked = Int(Harness.sh("wc -l < \(r)/acked").stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        XCTAssertGreaterThan(acked, 50, "too few acknowledged writes to mean anything")
        // The next mount sends every track again (in-flight writes may have reached one side only), then is equal.
        try fixture.mount()
        try waitFor("synchronized")
        XCTAssertTrue(same("l", uri))
    }
}
