import Foundation
import XCTest

/// The durability contract under SIGKILL at random moments: a writer overwrites random 4 KiB blocks of a LUN, each
/// followed by fsync, and logs a block as acknowledged only after its fsync returned; the daemon is killed at a
/// random point, the array remounted, and every acknowledged block must hold its acknowledged version or a later
/// one, whole (no torn or foreign content anywhere). Several rounds on the same array, so recovery after recovery;
/// the last two run degraded (a member failed), where a torn stripe write would garble the missing member's blocks
/// unless the journal replays it (the write hole).
final class CrashTests: FixtureTestCase {
    override class var rootReason: String? { "real-mount tests run as root (CI does)" }

    /// Writer and checker. Block i, version v: a 32-byte header (magic, i, v) and 4064 bytes from SHA-256 of (i, v).
    static let script = #"""
        import hashlib, os, random, struct, sys

        BLOCK = 4096
        MAGIC = b"VSACRASH"

        def content(i, v):
            body = b""
            n = 0
            while len(body) < BLOCK - 32:
                body += hashlib.sha256(struct.pack("<QQQ", i, v, n)).digest()
                n += 1
            return MAGIC + struct.pack("<QQQ", i, v, 0) + body[: BLOCK - 32]

        def write(path, log, blocks, first_version, seed):
            rng = random.Random(seed)
            fd = os.open(path, os.O_RDWR)
            out = open(log, "a")
            v = first_version
            while True:
                i = rng.randrange(blocks)
                try:
                    os.pwrite(fd, content(i, v), i * BLOCK)
                    os.fsync(fd)
                except OSError:
                    return  # the daemon is gone
                out.write("%d %d\n" % (i, v))  # acknowledged: fsync returned
                out.flush()
                os.fsync(out.fileno())
                v += 1

        def check(path, log, blocks):
            acked = {}
            for line in open(log):
                parts = line.split()
                if len(parts) == 2:
                    acked[int(parts[0])] = max(acked.get(int(parts[0]), -1), int(parts[1]))
            data = open(path, "rb").read(blocks * BLOCK)
            bad = 0
            for i in range(blocks):
                block = data[i * BLOCK : (i + 1) * BLOCK]
                if block == bytes(BLOCK):
                    if i in acked:
                        print("block %d: zeroes, but version %d was acknowledged" % (i, acked[i])); bad += 1
                    continue
                magic, bi, v, _ = block[:8], *struct.unpack("<QQQ", block[8:32])
                if magic != MAGIC or bi != i or block != content(i, v):
                    print("block %d: torn or foreign content" % i); bad += 1
                elif i in acked and v < acked[i]:
                    print("block %d: version %d, but %d was acknowledged" % (i, v, acked[i])); bad += 1
            print("checked %d blocks, %d acknowledged, %d bad" % (blocks, len(acked), bad))
            return bad

        if __name__ == "__main__":
            if sys.argv[1] == "write":
                write(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
            else:
                sys.exit(1 if check(sys.argv[2], sys.argv[3], int(sys.argv[4])) else 0)
        """#

    func testAcknowledgedWritesSurviveSIGKILL() throws {
        try fixture.create("--drives 4 --drive-size 48M --raid 5 --stripe-unit 16K")
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' l --size 32M --thick").status, 0)
        try killRounds()
    }

    /// Every drive remote (issue 15): four NBD exports on two servers (nbdkit's file plugin) in another network
    /// namespace, over TCP. What an fsync acknowledged is on the servers' files, round after round.
    func testAcknowledgedWritesSurviveSIGKILLWithEveryDriveRemote() throws {
        let lab = try NBDLab()
        let r = fixture.root
        XCTAssertEqual(Harness.sh("mkdir -p \(r)/s1 \(r)/s2 && truncate -s 48M \(r)/s1/a \(r)/s1/b \(r)/s2/a \(r)/s2/b").status, 0)
        let one = try lab.serve(port: 10809, "file dir=\(r)/s1")
        let two = try lab.serve(port: 10810, "file dir=\(r)/s2")
        try fixture.create("--raid 5 --stripe-unit 16K --drive '\(one)a' --drive '\(two)a' --drive '\(one)b' --drive '\(two)b'")
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' l --size 32M --thick").status, 0)
        try killRounds()
        withExtendedLifetime(lab) {}
    }

    /// The same on a thin LUN: its blocks go to new places in the pool, and what was fsync'd comes back from the
    /// pool's checkpoint and the log of commits after it (docs/POOL.md).
    func testAcknowledgedWritesSurviveSIGKILLOnAThinLUN() throws {
        try fixture.create("--drives 4 --drive-size 48M --raid 5 --stripe-unit 16K")
        try fixture.mount()
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.mnt)' l --size 1T --thin").status, 0)
        fixture.unmount()
        try killRounds()
        XCTAssertTrue(Harness.sh("grep -c 'commits replayed' '\(fixture.dir)/vsa.log'").stdout.trimmingCharacters(in: .whitespacesAndNewlines) != "0")
    }

    /// The same while the pool's cleaner moves blocks: a second thin LUN fills most of a small pool and is partly
    /// overwritten, so the cleaner works through every round (the writer's overwrites add dead blocks); after every
    /// kill, the writer's acknowledged blocks and the other LUN's contents (not written during the rounds: only the
    /// cleaner moved them) are checked.
    func testAcknowledgedWritesSurviveSIGKILLWhileTheCleanerMovesBlocks() throws {
        try fixture.create("--drives 4 --drive-size 96M --raid 5 --stripe-unit 16K")
        try fixture.mount("-o cache=32M")
        let m = fixture.mnt
        XCTAssertEqual(fixture.vsa("lun create '\(m)' l --size 1T --thin").status, 0)
        XCTAssertEqual(fixture.vsa("lun create '\(m)' f --size 1G --thin").status, 0)
        let status = try fixture.json("status '\(m)' --json", as: [String: Any].self)
        let size = try XCTUnwrap((status["pool"] as? [String: Any])?["sizeBytes"] as? Int)
        let mib = (size * 7 / 10) >> 20
        for (rw, bs, io) in [("write", "1M", mib), ("randwrite", "16k", mib / 2)] {
            let fio = Harness.sh(
                "fio --name=f --filename='\(m)/f' --size=\(mib)M --io_size=\(io)M --rw=\(rw) --bs=\(bs) --iodepth=8 --ioengine=libaio --direct=1 2>&1",
                timeoutSeconds: 300)
            XCTAssertEqual(fio.status, 0, fio.stdout)
        }
        let sum = "dd if='\(m)/f' bs=1M count=\(mib) status=none | sha256sum"
        let expected = Harness.sh(sum).stdout
        fixture.unmount()
        var moved = 0
        try killRounds(mountOptions: "-o cache=32M") { round in
            let s = try fixture.json("status '\(m)' --json", as: [String: Any].self)
            let cleaner = (s["pool"] as? [String: Any])?["cleaner"] as? [String: Any]
            moved += cleaner?["movedBytes"] as? Int ?? 0
        } afterRestart: { round in
            XCTAssertEqual(Harness.sh(sum).stdout, expected, "round \(round): the LUN only the cleaner touched")
        }
        XCTAssertGreaterThan(moved, 0, "the cleaner moved blocks during the rounds")
    }

    func killRounds(
        mountOptions: String = "", beforeKill: (Int) throws -> Void = { _ in }, afterRestart: (Int) throws -> Void = { _ in }
    ) throws {
        let r = fixture.root
        let m = fixture.mnt
        try Self.script.write(toFile: "\(r)/crash.py", atomically: true, encoding: .utf8)
        let blocks = 2048  // 8 MiB: small enough that blocks are rewritten, stripes shared
        var rng = SplitMixTest(seed: 20261126)
        for round in 0..<4 {
            try fixture.mount(mountOptions)
            if round == 2 { XCTAssertEqual(fixture.vsa("drive fail '\(m)' 1").status, 0) }
            let seed = rng.next() % 1000
            // The writer runs straight from here (not through a shell pipe, which it would hold open).
            let writer = Process()
            writer.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            writer.arguments = ["python3", "\(r)/crash.py", "write", "\(m)/l", "\(r)/acked", "\(blocks)", "\(round * 1_000_000)", "\(seed)"]
            writer.standardInput = FileHandle.nullDevice
            writer.standardOutput = FileHandle.nullDevice
            writer.standardError = FileHandle.nullDevice
            try writer.run()
            usleep(UInt32(300_000 + rng.next() % 1_200_000))  // somewhere in 0.3 ... 1.5 s of fsyncs
            try beforeKill(round)
            guard fixture.killDaemon() else { return XCTFail("round \(round): no daemon pid") }
            var waited = 0
            while writer.isRunning && waited < 500 { usleep(10_000); waited += 1 }
            if writer.isRunning { writer.terminate() }
            writer.waitUntilExit()
            try fixture.mount(mountOptions)
            let check = Harness.sh("python3 \(r)/crash.py check \(m)/l \(r)/acked \(blocks)", timeoutSeconds: 120)
            XCTAssertEqual(check.status, 0, "round \(round): \(check.stdout) \(check.stderr)")
            try afterRestart(round)
            XCTAssertTrue(fixture.vsa("status '\(m)'").stdout.contains("not stopped cleanly"), "round \(round): unclean stop not reported")
            fixture.unmount()
        }
        let acked = Harness.sh("wc -l < \(r)/acked").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertGreaterThan(Int(acked) ?? 0, 100, "too few acknowledged writes to mean anything")
    }
}

/// SplitMix64 for the test's own choices (kill points, writer seeds).
struct SplitMixTest {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
