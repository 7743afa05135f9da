// Asynchronous replication (issue 15, SRDF/A): delta sets, one per cycle, across the group's LUNs, each landed whole
// in a journal on R2's side before it is applied. The oracle: one writer writes both LUNs in one order, each block
// stamped with a global generation; R2, frozen at any moment (the link cut) and recovered on its own side (`vsa
// replica recover` on copies of its exports), must be the source after some prefix of those writes: every block
// holds the last generation written to it up to the newest generation R2 holds, never a newer one beside an older.
import Foundation
import XCTest

final class AsyncReplicationTests: ReplicaTestCase {
    static let oracle = #"""
        import hashlib, os, mmap, random, struct, sys

        BLOCK = 4096
        MAGIC = b"VSAORDER"

        def content(f, i, g):
            body = b""
            n = 0
            while len(body) < BLOCK - 32:
                body += hashlib.sha256(struct.pack("<QQQQ", f, i, g, n)).digest()
                n += 1
            return MAGIC + struct.pack("<QQQ", f, i, g) + body[: BLOCK - 32]

        def write(paths, log, blocks, seed):
            # One writer, one write at a time (O_DIRECT, each returned before the next starts): a total order.
            rng = random.Random(seed)
            fds = [os.open(p, os.O_RDWR | os.O_DIRECT) for p in paths]
            buf = mmap.mmap(-1, BLOCK)
            out = open(log, "a")
            g = 1
            pair = mmap.mmap(-1, 2 * BLOCK)
            while True:
                f = rng.randrange(len(paths))
                if rng.randrange(4) == 0:
                    # One write in four: two blocks across a 64 KiB track boundary (a write that spans tracks).
                    i = rng.randrange(blocks // 16 - 1) * 16 + 15
                    pair.seek(0)
                    pair.write(content(f, i, g) + content(f, i + 1, g))
                    written, data = [i, i + 1], pair
                else:
                    i = rng.randrange(blocks)
                    buf.seek(0)
                    buf.write(content(f, i, g))
                    written, data = [i], buf
                try:
                    os.pwrite(fds[f], data, i * BLOCK)
                except OSError:
                    return
                for b in written:
                    out.write("%d %d %d\n" % (g, f, b))
                out.flush()
                g += 1

        def check(paths, log, blocks):
            history = {}
            for line in open(log):
                parts = line.split()
                if len(parts) == 3:
                    g, f, i = map(int, parts)
                    history.setdefault((f, i), []).append(g)
            seen = {}
            for f, p in enumerate(paths):
                data = open(p, "rb").read(blocks * BLOCK)
                for i in range(blocks):
                    block = data[i * BLOCK : (i + 1) * BLOCK]
                    if block == bytes(BLOCK):
                        seen[(f, i)] = 0
                        continue
                    magic, bf, bi, g = block[:8], *struct.unpack("<QQQ", block[8:32])
                    if magic != MAGIC or bf != f or bi != i or block != content(f, i, g):
                        print("LUN %d block %d: torn or foreign content" % (f, i))
                        return 1
                    seen[(f, i)] = g
            newest = max(seen.values())
            bad = 0
            for key, g in seen.items():
                expected = max([x for x in history.get(key, []) if x <= newest], default=0)
                if g != expected:
                    bad += 1
                    if bad <= 5:
                        print("LUN %d block %d: generation %d, but after write %d it was %d" % (key[0], key[1], g, newest, expected))
            print("R2 is the source after write %d of %d; %d blocks out of order" % (newest, sum(map(len, history.values())), bad))
            return 1 if bad else 0

        if __name__ == "__main__":
            if sys.argv[1] == "write":
                write(sys.argv[2].split(","), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
            else:
                sys.exit(check(sys.argv[2].split(","), sys.argv[3], int(sys.argv[4])))
        """#

    /// Starts the oracle's writer on LUNs a and b of the mount (its log in the fixture's root).
    func startWriter(seed: Int) throws -> Process {
        let r = fixture.root
        try Self.oracle.write(toFile: "\(r)/oracle.py", atomically: true, encoding: .utf8)
        let writer = Process()
        writer.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        writer.arguments = ["python3", "\(r)/oracle.py", "write", "\(fixture.mnt)/a,\(fixture.mnt)/b", "\(r)/log", "2048", String(seed)]
        writer.standardOutput = FileHandle.nullDevice
        writer.standardError = FileHandle.nullDevice
        try writer.run()
        return writer
    }

    /// R2 as copied to snap/ (journal, a, b), recovered on its own side (a pending set applied) and checked against
    /// the writer's order; whether a pending set was applied.
    @discardableResult
    func recoverSnapAndCheck(_ what: String, mixAllowed: Bool = false) -> Bool {
        let r = fixture.root
        let socket = "/tmp/vsa-snap-\(getpid()).sock"
        serveHere(socket: socket, pidfile: "\(r)/snap.pid", "file dir=\(r)/snap")
        let recover = fixture.vsa(
            "replica recover --journal 'nbd+unix:///journal?socket=\(socket)' --to 'nbd+unix:///a?socket=\(socket),nbd+unix:///b?socket=\(socket)'")
        Harness.sh("kill $(cat \(r)/snap.pid); rm -f \(socket)")
        // A copy taken mid-resync is a mix, and `recover` must say so (when the test allows that moment).
        if mixAllowed && recover.status != 0 && recover.stderr.contains("being resynced") { return false }
        XCTAssertEqual(recover.status, 0, "\(what): \(recover.stderr)")
        let check = Harness.sh("python3 \(r)/oracle.py check \(r)/snap/a,\(r)/snap/b \(r)/log 2048", timeoutSeconds: 120)
        XCTAssertEqual(check.status, 0, "\(what): \(check.stdout)\(check.stderr)")
        return recover.stdout.contains("applied the pending delta set")
    }

    /// The link cut (R1 sends nothing more), R2's journal and images (the first test's r2j/ and r2/) copied to snap/
    /// as they are, the link healed; then R2's copy recovered on its own side and checked against the writer's order.
    /// Whether a pending set was applied.
    @discardableResult
    func cutCopyAndCheck(_ what: String, mixAllowed: Bool = false) -> Bool {
        let r = fixture.root
        lab.cut()
        usleep(300_000)
        XCTAssertEqual(Harness.sh("cp \(r)/r2j/journal \(r)/r2/a \(r)/r2/b \(r)/snap/").status, 0)
        lab.heal()
        return recoverSnapAndCheck(what, mixAllowed: mixAllowed)
    }

    /// With the writer stopped: the last sets go and R2 equals R1 byte for byte; then a planned failover (after one
    /// more write to `lun`) leaves R2 equal, failback brings the group back to consistent, and it is deleted.
    /// Returns the group as it was once nothing was left to send.
    @discardableResult
    func endByteForByteThenFailOverAndBack(_ uriA: String, _ uriB: String, writeTo lun: String) throws -> [String: Any] {
        let m = fixture.mnt
        var last: [String: Any] = [:]
        for _ in 0..<300 {
            last = try group() ?? [:]
            if last["state"] as? String == "consistent" && last["lagBytes"] as? Int == 0 { break }
            usleep(100_000)
        }
        XCTAssertEqual(last["lagBytes"] as? Int, 0, "\(last)")
        XCTAssertTrue(same("a", uriA) && same("b", uriB), "R2 differs after the last delta set")
        XCTAssertEqual(Harness.sh("dd if=/dev/urandom of=\(m)/\(lun) bs=64k count=4 seek=20 oflag=direct conv=notrunc status=none").status, 0)
        let over = fixture.vsa("replica failover '\(m)' g")
        XCTAssertEqual(over.status, 0, over.stderr)
        XCTAssertTrue(over.stdout.contains("every delta set is on R2"), over.stdout)
        XCTAssertTrue(same("a", uriA) && same("b", uriB), "R2 is not R1 after a planned failover")
        XCTAssertEqual(fixture.vsa("replica failback '\(m)' g").status, 0)
        try waitFor("consistent")
        XCTAssertEqual(fixture.vsa("replica delete '\(m)' g").status, 0)
        return last
    }

    func testAnAsynchronousGroupKeepsR2AtACycleBoundaryThroughPartitionsAndEndsByteForByte() throws {
        try fixture.create("--drives 4 --drive-size 64M --raid 5 --stripe-unit 16K")
        for l in ["a", "b"] { XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' \(l) --size 8M --thick").status, 0) }
        try fixture.mount("-o drive_timeout=3")
        let m = fixture.mnt
        let r = fixture.root
        // R2: two images and a journal, files served by nbdkit in the lab (the test reads them while the link is cut).
        // Each write to the images takes 10 ms more (a slow array on R2's side), so applying a set takes a while and
        // a cut can land in the middle of it.
        XCTAssertEqual(
            Harness.sh(
                "mkdir -p \(r)/r2 \(r)/r2j \(r)/snap && truncate -s 8M \(r)/r2/a \(r)/r2/b && truncate -s 33M \(r)/r2j/journal && truncate -s 4M \(r)/r2j/small"
            )
            .status, 0)
        let server = try lab.serve(port: 10809, "--filter=delay file dir=\(r)/r2 delay-write=10ms")
        let journalServer = try lab.serve(port: 10810, "file dir=\(r)/r2j")
        let (uriA, uriB, journal) = ("\(server)a", "\(server)b", "\(journalServer)journal")

        // Bad input: one line each, no group made.
        let refusals: [(String, String)] = [
            ("g --luns a,b --to '\(uriA),\(uriB)' --mode async", "needs --journal"),
            ("g --luns a,b --to '\(uriA),\(uriB)' --mode async --journal '\(journalServer)small' --cache 32M", "needs at least"),
            ("g --luns a,b --to '\(uriA),\(uriB)' --journal '\(journal)'", "are for --mode async"),
            ("g --luns a,b --to '\(uriA),\(uriB)' --mode async --journal '\(journal)' --cache 100", "--cache must be 1 MiB to 4 GiB"),
            ("g --luns a,b --to '\(uriA),\(uriB)' --mode async --cache 4T", "--cache must be 1 MiB to 4 GiB"),
            ("g --luns a,b --to '\(uriA),\(uriB)' --mode async --journal '\(uriA)'", "named twice"),
            ("g --luns a,b --to '\(uriA),\(uriB)' --mode async --journal 'nbd://\(lab.address):1/j'", "cannot connect"),
        ]
        try refuseCreates(refusals)

        // 32 MiB of delta sets: more than both LUNs' blocks twice over, so the sets never fill here.
        let made = fixture.vsa("replica create '\(m)' g --luns a,b --to '\(uriA),\(uriB)' --mode async --cycle 1s --journal '\(journal)' --cache 32M")
        XCTAssertEqual(made.status, 0, made.stderr)
        try waitFor("consistent")
        XCTAssertTrue(fixture.vsa("status '\(m)'").stdout.contains("R2 at the boundary of cycle"))

        let writer = try startWriter(seed: 11)
        defer { if writer.isRunning { writer.terminate() } }

        // Rounds: the link cut at a moment of no one's choosing (mid-journal, mid-apply, between cycles), R2 copied
        // as it is, recovered on its own side, and checked against the writer's order.
        var rng = SystemRandomNumberGenerator()
        var checked = 0
        var applied = 0
        for round in 0..<5 {
            usleep(UInt32.random(in: 300_000...1_500_000, using: &rng))
            // Mostly while a set is on its way (journal or images), sometimes between sets.
            for _ in 0..<(round == 4 ? 0 : 250) {
                if try group()?["transmitBytes"] as? Int ?? 0 > 0 { break }
                usleep(20_000)
            }
            guard try group()?["state"] as? String == "consistent" else {
                try waitFor("consistent")
                continue
            }
            if cutCopyAndCheck("round \(round)") { applied += 1 }
            checked += 1
            try waitFor("consistent")
        }
        // A partition longer than the deadline: the set on its way fails, the group drops to changed tracks, and R2
        // stays at a boundary (its journal may hold the set pending) until the link heals and the resync starts.
        lab.cut()
        try waitFor("partitioned")
        XCTAssertEqual(Harness.sh("cp \(r)/r2/a \(r)/r2/b \(r)/r2j/journal \(r)/snap/").status, 0)
        let partitioned = try XCTUnwrap(try group())
        XCTAssertEqual(partitioned["deltaSetBytes"] as? Int, 0, "a partitioned group keeps no delta sets")
        XCTAssertGreaterThan(partitioned["lagBytes"] as? Int ?? 0, 0, "the sets' blocks are changed tracks now")
        lab.heal()
        recoverSnapAndCheck("the partition")
        XCTAssertGreaterThanOrEqual(checked, 3, "too few rounds found the group consistent")
        XCTAssertGreaterThanOrEqual(applied, 1, "no cut landed while a set was being applied")
        print("async oracle: \(checked) rounds checked, \(applied) with a pending set applied on R2's side")

        // The resync ends while the writer goes on, though it writes every track of the LUNs many times a second
        // over this slow R2: its writes to tracks the resync has sent are captured into a catch-up set, applied once
        // nothing is left to send, which brings R2 to a boundary (writes that only marked tracks kept the group
        // syncing for as long as the writer ran). Then a round more, the writer still going.
        let caughtUp = try waitFor("consistent", seconds: 60)
        XCTAssertTrue(writer.isRunning, "the resync ended only once the writer stopped")
        XCTAssertGreaterThan(caughtUp["r2Cycle"] as? Int ?? 0, partitioned["r2Cycle"] as? Int ?? 0, "\(caughtUp)")
        usleep(500_000)
        cutCopyAndCheck("after a resync under writes")
        // Partitions again, and the link cut once more while the catch-up set is on its way (the resync has nothing
        // left, the set is switched): R2, recovered on its own side, is at a boundary by the writer's order.
        var catchUps = 0
        for attempt in 0..<3 {
            lab.cut()
            try waitFor("partitioned")
            usleep(300_000)
            lab.heal()
            var seen = false
            for _ in 0..<400 {
                let g = try group() ?? [:]
                if g["state"] as? String == "syncing" && g["transmitBytes"] as? Int ?? 0 > 0 {
                    seen = true
                    break
                }
                if g["state"] as? String == "consistent" { break }
                usleep(5_000)
            }
            guard seen else {
                try waitFor("consistent")
                continue
            }
            if cutCopyAndCheck("a catch-up set on its way (attempt \(attempt))", mixAllowed: true) { catchUps += 1 }
            try waitFor("consistent", seconds: 60)
        }
        print("async oracle: \(catchUps) cuts with a catch-up set on its way applied on R2's side")

        // The writer stops; the last sets go; R2 equals R1 byte for byte.
        writer.terminate()
        writer.waitUntilExit()
        try waitFor("consistent")
        // A planned failover sends what is left first; failback brings the group back to consistent.
        let last = try endByteForByteThenFailOverAndBack(uriA, uriB, writeTo: "a")
        XCTAssertGreaterThan(last["r2Cycle"] as? Int ?? 0, 2, "\(last)")

        // A cache too small for a cycle's writes: the group drops to changed tracks, resyncs, and is consistent again.
        let small = fixture.vsa("replica create '\(m)' h --luns a --to '\(uriA)' --mode async --cycle 5s --journal '\(journal)' --cache 1M")
        XCTAssertEqual(small.status, 0, small.stderr)
        try waitFor("consistent", "h")
        XCTAssertEqual(Harness.sh("dd if=/dev/urandom of=\(m)/a bs=1M count=4 oflag=direct conv=notrunc status=none").status, 0)
        let overflowed = try XCTUnwrap(try group("h"))
        XCTAssertGreaterThanOrEqual(overflowed["overflows"] as? Int ?? 0, 1, "\(overflowed)")
        try waitFor("consistent", "h")
        for _ in 0..<100 where try group("h")?["lagBytes"] as? Int != 0 { usleep(100_000) }
        XCTAssertTrue(same("a", uriA), "R2 differs after an overflow and its resync")

        // A mount while R2's machine does not answer waits a few seconds for it, not the drive deadline per target:
        // the group starts partitioned, and is consistent again once the link is back.
        fixture.unmount()
        lab.cut()
        let began = Date()
        try fixture.mount("-o drive_timeout=30")
        XCTAssertLessThan(Date().timeIntervalSince(began), 15, "the mount waited on an unreachable replica target")
        XCTAssertEqual(try group("h")?["state"] as? String, "partitioned")
        lab.heal()
        try waitFor("consistent", "h")
        XCTAssertTrue(same("a", uriA), "R2 differs after a mount with the link down")
    }

    /// `--apply r2`: a receiver on R2's side (`vsa replica receive`, reaching R2's files over a unix socket there)
    /// applies each set, so a set crosses the link once. R2 is checked against the writer's order at cuts of the link
    /// and at SIGKILLs of the receiver at moments of no one's choosing (R2's files copied journal first, as they
    /// are, and recovered on their own side); R1 never writes R2's images while the receiver might (a resync waits
    /// for the receiver to say it saw "resyncing"); a receiver that is gone holds the group back, never R2 in a mix.
    func testAReceiverOnR2SideAppliesTheSetsAndStandsAsideForAResync() throws {
        try fixture.create("--drives 4 --drive-size 64M --raid 5 --stripe-unit 16K")
        for l in ["a", "b"] { XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' \(l) --size 8M --thick").status, 0) }
        try fixture.mount("-o drive_timeout=3")
        let m = fixture.mnt
        let r = fixture.root
        XCTAssertEqual(Harness.sh("mkdir -p \(r)/r2 \(r)/snap && truncate -s 8M \(r)/r2/a \(r)/r2/b && truncate -s 33M \(r)/r2/journal").status, 0)
        // R1 reaches R2's files across the link; the receiver reaches the same files on R2's side.
        let server = try lab.serve(port: 10809, "file dir=\(r)/r2")
        let (uriA, uriB, journal) = ("\(server)a", "\(server)b", "\(server)journal")
        let socket = "/tmp/vsa-r2-\(getpid()).sock"
        serveHere(socket: socket, pidfile: "\(r)/r2.pid", "file dir=\(r)/r2")
        defer { Harness.sh("kill $(cat \(r)/r2.pid); rm -f \(socket)") }
        let here = { (name: String) in "nbd+unix:///\(name)?socket=\(socket)" }
        let receive = "replica receive --journal '\(here("journal"))' --to '\(here("a")),\(here("b"))'"
        var receivers = 0
        /// Starts a receiver in the background (its output in receiver-N.log); its pid.
        func startReceiver() -> Int32 {
            receivers += 1
            let started = Harness.sh(
                "for fd in /proc/$$/fd/*; do fd=${fd##*/}; [ $fd -gt 2 ] && eval \"exec $fd>&-\"; done; \"$VSA\" \(receive) </dev/null >\(r)/receiver-\(receivers).log 2>&1 & echo $!"
            )
            return Int32(started.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        }

        try refuseCreates([
            ("g --luns a,b --to '\(uriA),\(uriB)' --mode async --journal '\(journal)' --apply r3", "--apply must be r1 or r2"),
            ("g --luns a,b --to '\(uriA),\(uriB)' --apply r2", "are for --mode async"),
        ])
        // A receiver refuses, in one line, a journal that is not one yet.
        let early = fixture.vsa(receive)
        XCTAssertEqual(early.status, 1)
        XCTAssertEqual(early.stderrLines.count, 1, early.stderr)
        XCTAssertTrue(early.stderr.contains("holds no vsa journal"), early.stderr)

        let made = fixture.vsa(
            "replica create '\(m)' g --luns a,b --to '\(uriA),\(uriB)' --mode async --cycle 1s --journal '\(journal)' --cache 32M --apply r2")
        XCTAssertEqual(made.status, 0, made.stderr)
        // No receiver yet: R1 does not write R2's images (the first sync waits for the receiver to say it saw
        // "resyncing"), and status says what it waits for.
        sleep(2)
        let waiting = try XCTUnwrap(try group())
        XCTAssertEqual(waiting["resyncedBytes"] as? Int, 0, "\(waiting)")
        XCTAssertGreaterThanOrEqual(waiting["receiverSilentSeconds"] as? Double ?? 0, 1, "\(waiting)")
        XCTAssertTrue(fixture.vsa("replica list '\(m)'").stdout.contains("waiting for R2's receiver"))
        // Targets in the wrong order: one line, nothing written.
        let swapped = fixture.vsa("replica receive --journal '\(here("journal"))' --to '\(here("b"))'")
        XCTAssertEqual(swapped.status, 1)
        XCTAssertTrue(swapped.stderr.contains("group of 2 LUNs"), swapped.stderr)
        var receiver = startReceiver()
        try waitFor("consistent")
        XCTAssertEqual(try group()?["apply"] as? String, "r2")

        let writer = try startWriter(seed: 12)
        defer { if writer.isRunning { writer.terminate() } }

        /// R2's files copied as they are (the journal first: a stamp that says a set is applied was written after
        /// its blocks), recovered on their own side and checked against the writer's order.
        func copyRecoverAndCheck(_ what: String) {
            XCTAssertEqual(Harness.sh("cp \(r)/r2/journal \(r)/snap/ && cp \(r)/r2/a \(r)/r2/b \(r)/snap/").status, 0)
            recoverSnapAndCheck(what)
        }
        var rng = SystemRandomNumberGenerator()
        for round in 0..<4 {
            usleep(UInt32.random(in: 300_000...1_200_000, using: &rng))
            for _ in 0..<250 where try group()?["transmitBytes"] as? Int ?? 0 == 0 { usleep(10_000) }
            if round % 2 == 0 {
                // The link cut: the receiver goes on applying what it has.
                lab.cut()
                usleep(200_000)
                copyRecoverAndCheck("cut \(round)")
                lab.heal()
            } else {
                // The receiver killed mid-set; a new one applies the set again.
                kill(receiver, SIGKILL)
                copyRecoverAndCheck("receiver killed \(round)")
                receiver = startReceiver()
            }
            try waitFor("consistent")
        }
        // A receiver gone past the deadline: the group leaves consistent, and resyncs only once a receiver says it
        // stands aside; R2 meanwhile stays at a boundary.
        kill(receiver, SIGKILL)
        for _ in 0..<100 where try group()?["state"] as? String == "consistent" { usleep(100_000) }
        XCTAssertNotEqual(try group()?["state"] as? String, "consistent", "the group waited forever for a receiver that is gone")
        usleep(1_000_000)
        XCTAssertNotEqual(try group()?["state"] as? String, "consistent")
        copyRecoverAndCheck("receiver gone")
        // The resync ends under the writer; its catch-up set goes to the receiver, which brings R2 to a boundary.
        receiver = startReceiver()
        try waitFor("consistent")
        XCTAssertTrue(writer.isRunning, "the resync ended only once the writer stopped")
        lab.cut()
        usleep(200_000)
        copyRecoverAndCheck("after a resync under writes")
        lab.heal()
        try waitFor("consistent")

        // The writer stops; the last sets go; R2 equals R1 byte for byte.
        writer.terminate()
        writer.waitUntilExit()
        // A planned failover leaves R2 equal (the receiver applies what is left); failback; delete.
        try endByteForByteThenFailOverAndBack(uriA, uriB, writeTo: "b")
        kill(receiver, SIGTERM)
        usleep(300_000)
        let logs = Harness.sh("cat \(r)/receiver-*.log").stdout
        XCTAssertTrue(logs.contains("applied the delta set of cycle"), logs)
        XCTAssertTrue(logs.contains("receiver stopped"), logs)
    }

    /// The journal is input on R2's side: `vsa replica recover` refuses one that is damaged, foreign or for another
    /// group shape, in one line, and writes nothing.
    func testRecoverRefusesAHostileJournalAndWritesNothing() throws {
        let r = fixture.root
        XCTAssertEqual(Harness.sh("mkdir -p \(r)/j && truncate -s 1M \(r)/j/a && truncate -s 5M \(r)/j/journal").status, 0)
        XCTAssertEqual(Harness.sh("head -c 1M /dev/urandom > \(r)/j/a && cp \(r)/j/a \(r)/a.before").status, 0)
        let socket = "/tmp/vsa-journal-\(getpid()).sock"
        serveHere(socket: socket, pidfile: "\(r)/j.pid", "file dir=\(r)/j")
        defer { Harness.sh("kill $(cat \(r)/j.pid); rm -f \(socket)") }
        let recover = "replica recover --journal 'nbd+unix:///journal?socket=\(socket)' --to 'nbd+unix:///a?socket=\(socket)'"
        // A header with a pending set, written by Python: every field a hostile image could set.
        let header = #"""
            import struct, sys, zlib
            def crc32c(data):
                crc = 0xFFFFFFFF
                for b in data:
                    crc ^= b
                    for _ in range(8):
                        crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
                return crc ^ 0xFFFFFFFF
            state, members, cycle, start, count, slots, good = map(int, sys.argv[2:9])
            size = int(sys.argv[9]) if len(sys.argv) > 9 else 1 << 20
            applier = int(sys.argv[10]) if len(sys.argv) > 10 else 0
            h = bytearray(4096)
            struct.pack_into("<QIIIIQQQQ", h, 0, 0x31494E524A415356, 2, state, members, 0, cycle, start, count, slots)
            struct.pack_into("<I", h, 56, 1); h[60] = ord("g")
            struct.pack_into("<QI", h, 128, 12345, applier)
            struct.pack_into("<QQ", h, 192, size, size)
            struct.pack_into("<I", h, 4092, crc32c(bytes(h[:4092])) ^ (0 if good else 1))
            with open(sys.argv[1], "r+b") as f:
                f.write(h)
                # One record: member 0, block 10**12 (past the end).
                f.seek(8192); f.write(struct.pack("<IIQ", 0, 0, 10**12))
            """#
        try header.write(toFile: "\(r)/header.py", atomically: true, encoding: .utf8)
        let cases: [(String, String)] = [
            ("", "holds no vsa journal"),
            ("1 1 7 0 1 256 0", "fails its checksum"),
            ("9 1 7 0 1 256 1", "no known state"),
            ("1 1 7 0 1 4000000000 1", "do not fit"),
            ("1 1 7 300 1 256 1", "out of bounds"),
            ("1 2 7 0 1 256 1", "2 LUNs"),
            ("1 1 7 0 1 256 1 2097152", "in the order create had them"),
            ("1 1 7 0 1 256 1 1048576 7", "no known applier"),
            ("1 1 7 0 1 256 1", "past its LUN's end"),
            ("2 1 7 0 0 256 1", "a mix of two points in time"),
        ]
        for (fields, expected) in cases {
            if !fields.isEmpty { XCTAssertEqual(Harness.sh("python3 \(r)/header.py \(r)/j/journal \(fields)").status, 0) }
            let c = fixture.vsa(recover)
            XCTAssertEqual(c.status, 1, fields)
            XCTAssertEqual(c.stderrLines.count, 1, "\(fields): \(c.stderr)")
            XCTAssertTrue(c.stderr.contains(expected), "\(fields): \(c.stderr)")
            XCTAssertEqual(Harness.sh("cmp \(r)/j/a \(r)/a.before").status, 0, "\(fields): the image changed")
        }
        XCTAssertEqual(Harness.sh("python3 \(r)/header.py \(r)/j/journal 0 1 7 0 0 256 1").status, 0)
        let fine = fixture.vsa(recover)
        XCTAssertEqual(fine.status, 0, fine.stderr)
        XCTAssertTrue(fine.stdout.contains("nothing pending; R2 is the source as of the boundary of cycle 7"), fine.stdout)
    }
}
