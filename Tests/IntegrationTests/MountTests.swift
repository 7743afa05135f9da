// The array end to end through a real FUSE mount: dd, fio with verification, a loop device with ext4, remounts,
// every RAID level, crash durability, and the mount's answers to what it must refuse.
import Foundation
import XCTest

/// fio's verification options: check every block, stop at the first mismatch, leave no state files behind.
let fioVerify = "--verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0"

final class MountTests: FixtureTestCase {
    override class var rootReason: String? { "real-mount tests run as root (CI does)" }

    /// Writes and reads at odd offsets and sizes through the file, against an in-memory oracle, then remounts.
    func testOddOffsetsAndSizesRoundTripAndSurviveRemount() throws {
        try fixture.create("--drives 4 --drive-size 64M --raid 5 --stripe-unit 16K")
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' lun0 --size 24M").status, 0)
        try fixture.mount()
        let path = fixture.mnt + "/lun0"
        let size = 24 << 20
        var oracle = [UInt8](repeating: 0, count: size)
        var rng = SystemRandomNumberGenerator()
        let fd = open(path, O_RDWR)
        XCTAssertGreaterThanOrEqual(fd, 0)
        for _ in 0..<300 {
            let count = Int.random(in: 1...300_000, using: &rng)
            let offset = Int.random(in: 0...(size - count), using: &rng)
            var data = [UInt8](repeating: 0, count: count)
            for i in stride(from: 0, to: count, by: 8) {
                withUnsafeBytes(of: rng.next() as UInt64) { raw in for j in 0..<min(8, count - i) { data[i + j] = raw[j] } }
            }
            XCTAssertEqual(pwrite(fd, data, count, off_t(offset)), count)
            oracle.replaceSubrange(offset..<(offset + count), with: data)
            if Bool.random(using: &rng) {
                let o = Int.random(in: 0..<(size - 5000), using: &rng)
                var back = [UInt8](repeating: 0, count: 4999)
                XCTAssertEqual(pread(fd, &back, 4999, off_t(o)), 4999)
                XCTAssertTrue(back[...] == oracle[o..<(o + 4999)], "read at \(o) differs")
            }
        }
        XCTAssertEqual(fsync(fd), 0)
        close(fd)
        // dd at an odd offset, too.
        let dd = Harness.sh(
            "head -c 12345 /dev/urandom > \(fixture.root)/piece && dd if=\(fixture.root)/piece of=\(path) bs=1 seek=777777 conv=notrunc status=none && cmp <(dd if=\(path) bs=1 skip=777777 count=12345 status=none) \(fixture.root)/piece"
        )
        XCTAssertEqual(dd.status, 0, dd.stderr)
        let piece = try [UInt8](Data(contentsOf: URL(fileURLWithPath: fixture.root + "/piece")))
        oracle.replaceSubrange(777_777..<(777_777 + 12345), with: piece)
        fixture.unmount()
        try fixture.mount()
        let back = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        XCTAssertEqual(back.count, size)
        XCTAssertTrue(back == oracle, "data after remount differs")
        let status = fixture.vsa("status '\(fixture.mnt)' --json")
        XCTAssertEqual(status.status, 0)
        let json = try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as! [String: Any]
        for key in ["array", "daemon", "drives", "luns", "cache", "directors"] { XCTAssertNotNil(json[key], "status --json lacks \(key)") }
        XCTAssertEqual((json["array"] as! [String: Any])["raidLevel"] as? String, "raid5")
        XCTAssertEqual(((json["directors"] as! [[String: Any]]).map { $0["id"] as! String }), ["1a", "1b"])
    }

    /// fio with crc32c verification on two LUNs at once: psync and io_uring, buffered and O_DIRECT.
    func testFioVerifyOnTwoLUNsAtOnce() throws {
        try fixture.create("--drives 4 --drive-size 128M --raid 5")
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' lun0 --size 64M").status, 0)
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' lun1 --size 64M").status, 0)
        try fixture.mount("-o cache=32M")
        for (direct, engines) in [(0, ("psync", "io_uring")), (1, ("io_uring", "psync"))] {
            let common = "--size=48M --rw=randwrite --bs=4k \(fioVerify) --direct=\(direct) --output-format=terse"
            let r = Harness.sh(
                """
                fio --name=a --filename=\(fixture.mnt)/lun0 --ioengine=\(engines.0) --iodepth=16 \(common) > \(fixture.root)/a.out 2>&1 & A=$!
                fio --name=b --filename=\(fixture.mnt)/lun1 --ioengine=\(engines.1) --iodepth=16 \(common) > \(fixture.root)/b.out 2>&1 & B=$!
                wait $A; ra=$?; wait $B; rb=$?; cat \(fixture.root)/a.out \(fixture.root)/b.out; exit $((ra + rb))
                """)
            XCTAssertEqual(r.status, 0, "fio direct=\(direct): \(r.stdout) \(r.stderr)")
        }
    }

    /// Parallel O_DIRECT writers with verification: where qemu-storage-daemon's FUSE export returned corrupt data.
    func testParallelDirectWritersVerify() throws {
        try fixture.create("--drives 4 --drive-size 128M --raid 5")
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' lun0 --size 256M").status, 0)
        try fixture.mount("-o cache=64M")
        for bs in ["4k", "64k"] {
            let r = Harness.sh(
                "fio --name=p --filename=\(fixture.mnt)/lun0 --numjobs=4 --offset_increment=64M --size=32M --rw=randwrite --bs=\(bs) --ioengine=io_uring --iodepth=16 --direct=1 \(fioVerify) --group_reporting --output-format=terse"
            )
            XCTAssertEqual(r.status, 0, "fio bs=\(bs): \(r.stdout) \(r.stderr)")
        }
        // The same through a loop device with direct I/O, the other path where a peer returned corrupt data.
        let loop = Harness.sh(
            """
            set -e
            LOOP=$(losetup --find --show --direct-io=on \(fixture.mnt)/lun0)
            trap 'losetup -d $LOOP' EXIT
            for bs in 4k 64k; do
                fio --name=l --filename=$LOOP --numjobs=4 --offset_increment=64M --size=32M --rw=randwrite --bs=$bs --ioengine=io_uring --iodepth=16 --direct=1 \(fioVerify) --group_reporting --output-format=terse
            done
            """)
        XCTAssertEqual(loop.status, 0, "fio through the loop device: \(loop.stdout) \(loop.stderr)")
    }

    /// A loop device with ext4 on a LUN: mkfs, a file tree, fsck clean, and the tree intact after a remount.
    func testLoopDeviceWithExt4() throws {
        try fixture.create("--drives 4 --drive-size 128M --raid 5")
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' lun0 --size 200M").status, 0)
        try fixture.mount()
        let src = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path + "/Sources"
        let r = Harness.sh(
            """
            set -e
            LOOP=$(losetup --find --show --direct-io=on \(fixture.mnt)/lun0)
            mkfs.ext4 -q -F $LOOP
            mkdir -p \(fixture.root)/ext4
            mount $LOOP \(fixture.root)/ext4
            cp -r '\(src)' \(fixture.root)/ext4/tree
            head -c 20M /dev/urandom > \(fixture.root)/ext4/big
            sha256sum \(fixture.root)/ext4/big | awk '{print $1}' > \(fixture.root)/big.sum
            umount \(fixture.root)/ext4
            fsck.ext4 -fn $LOOP
            losetup -d $LOOP
            """)
        XCTAssertEqual(r.status, 0, "\(r.stdout)\n\(r.stderr)")
        fixture.unmount()
        try fixture.mount()
        let again = Harness.sh(
            """
            set -e
            LOOP=$(losetup --find --show --direct-io=on \(fixture.mnt)/lun0)
            fsck.ext4 -fn $LOOP
            mount -o ro $LOOP \(fixture.root)/ext4
            diff -r '\(src)' \(fixture.root)/ext4/tree
            test "$(sha256sum \(fixture.root)/ext4/big | awk '{print $1}')" = "$(cat \(fixture.root)/big.sum)"
            umount \(fixture.root)/ext4
            losetup -d $LOOP
            """)
        XCTAssertEqual(again.status, 0, "\(again.stdout)\n\(again.stderr)")
    }

    /// Each RAID level keeps data across unmount and mount.
    func testEveryRAIDLevelKeepsDataAcrossRemount() throws {
        for (level, drives) in [("0", 2), ("1", 2), ("10", 4), ("6", 5)] {
            Harness.sh("rm -rf '\(fixture.dir)'")
            try fixture.create("--drives \(drives) --drive-size 48M --raid \(level) --stripe-unit 32K")
            XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' l --size 40M --thick").status, 0)
            try fixture.mount()
            let w = Harness.sh(
                "head -c 40M /dev/urandom > \(fixture.root)/data && dd if=\(fixture.root)/data of=\(fixture.mnt)/l bs=256k conv=notrunc,fsync status=none")
            XCTAssertEqual(w.status, 0, "raid\(level) write: \(w.stderr)")
            fixture.unmount()
            try fixture.mount()
            let c = Harness.sh("cmp \(fixture.mnt)/l \(fixture.root)/data")
            XCTAssertEqual(c.status, 0, "raid\(level): data differs after remount: \(c.stdout)")
            fixture.unmount()
        }
    }

    /// What an fsync acknowledged survives a killed daemon; the next mount reports the unclean stop.
    func testFsyncedDataSurvivesKilledDaemon() throws {
        try fixture.create("--drives 4 --drive-size 64M --raid 5")
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' lun0 --size 32M").status, 0)
        try fixture.mount()
        let w = Harness.sh(
            "head -c 8M /dev/urandom > \(fixture.root)/data && dd if=\(fixture.root)/data of=\(fixture.mnt)/lun0 bs=64k seek=3 conv=notrunc,fdatasync status=none && dd if=/dev/urandom of=\(fixture.mnt)/lun0 bs=4k seek=7000 count=100 conv=notrunc oflag=dsync status=none"
        )
        XCTAssertEqual(w.status, 0, w.stderr)
        let tail = Harness.sh("dd if=\(fixture.mnt)/lun0 bs=4k skip=7000 count=100 status=none | sha256sum")
        guard let pid = fixture.daemonPID else { return XCTFail("no daemon pid") }
        kill(pid, SIGKILL)
        var waited = 0
        while kill(pid, 0) == 0 && waited < 500 { usleep(10_000); waited += 1 }
        Harness.sh("umount -l '\(fixture.mnt)' 2>/dev/null || fusermount3 -uz '\(fixture.mnt)'")
        try fixture.mount()
        let c = Harness.sh("cmp <(dd if=\(fixture.mnt)/lun0 bs=64k skip=3 count=128 status=none) \(fixture.root)/data")
        XCTAssertEqual(c.status, 0, "fsynced data lost: \(c.stdout)")
        XCTAssertEqual(Harness.sh("dd if=\(fixture.mnt)/lun0 bs=4k skip=7000 count=100 status=none | sha256sum").stdout, tail.stdout, "O_DSYNC data lost")
        XCTAssertTrue(fixture.vsa("status '\(fixture.mnt)'").stdout.contains("not stopped cleanly"))
    }

    /// The mount refuses namespace and size changes with EPERM / EFBIG, changes nothing, and keeps serving.
    func testMountRefusesWhatItMustAndKeepsServing() throws {
        try fixture.create("--drives 3 --drive-size 32M --raid 5")
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' lun0 --size 8M").status, 0)
        try fixture.mount()
        let m = fixture.mnt
        let r = Harness.sh(
            """
            check() { local want="$1"; shift; out=$("$@" 2>&1) && { echo "UNEXPECTED SUCCESS: $*"; return 1; }; echo "$out" | grep -q "$want" || { echo "WRONG ERROR for $*: $out"; return 1; }; }
            head -c 8M /dev/urandom > \(fixture.root)/before && cp \(fixture.root)/before \(m)/lun0 2>/dev/null; dd if=\(fixture.root)/before of=\(m)/lun0 bs=1M conv=notrunc status=none
            check "not permitted" truncate -s 0 \(m)/lun0
            check "not permitted" truncate -s 16M \(m)/lun0
            check "not permitted" touch \(m)/newfile
            check "not permitted" rm \(m)/lun0
            check "not permitted" mv \(m)/lun0 \(m)/lun9
            check "not permitted" mkdir \(m)/dir
            check "not permitted" chmod +x \(m)/lun0
            check "not permitted" ln -s lun0 \(m)/link
            check "too large" dd if=/dev/zero of=\(m)/lun0 bs=4096 seek=2048 count=1 conv=notrunc status=none
            check "too large" dd if=/dev/zero of=\(m)/lun0 bs=8192 seek=8384512 count=1 conv=notrunc oflag=direct,seek_bytes status=none
            check "too large" fallocate -l 16M \(m)/lun0
            cmp \(m)/lun0 \(fixture.root)/before || { echo "DATA CHANGED"; exit 1; }
            test "$(stat -c %s \(m)/lun0)" = 8388608 || { echo "SIZE CHANGED"; exit 1; }
            fallocate -p -o 4096 -l 8192 \(m)/lun0
            test "$(dd if=\(m)/lun0 bs=4096 skip=1 count=2 status=none | tr -d '\\0' | wc -c)" = 0 || { echo "PUNCH DID NOT ZERO"; exit 1; }
            ls \(m) | grep -qx lun0
            """)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
    }

    /// LUNs come and go while mounted; a deleted LUN's space comes back as zeroes; an open LUN is not deleted.
    func testOnlineLUNCreateAndDelete() throws {
        try fixture.create("--drives 4 --drive-size 32M --raid 5")
        try fixture.mount()
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.mnt)' a --size 16M").status, 0)
        XCTAssertTrue(Harness.sh("ls \(fixture.mnt)").stdout.contains("a"))
        XCTAssertEqual(Harness.sh("dd if=/dev/urandom of=\(fixture.mnt)/a bs=1M count=16 conv=notrunc,fsync status=none").status, 0)
        let busy = Harness.sh("exec 3<\(fixture.mnt)/a; \"$VSA\" lun delete '\(fixture.mnt)' a")
        XCTAssertNotEqual(busy.status, 0)
        XCTAssertEqual(busy.stderrLines.count, 1, busy.stderr)
        XCTAssertTrue(busy.stderr.contains("open"), busy.stderr)
        XCTAssertEqual(fixture.vsa("lun delete '\(fixture.mnt)' a").status, 0)
        XCTAssertFalse(Harness.sh("ls \(fixture.mnt)").stdout.contains("a"))
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.mnt)' b --size 16M").status, 0)
        let zeros = Harness.sh("cmp -n 16777216 \(fixture.mnt)/b /dev/zero")
        XCTAssertEqual(zeros.status, 0, "a new LUN on reused space must read zeroes: \(zeros.stdout)")
        let list = fixture.vsa("lun list '\(fixture.mnt)' --json")
        XCTAssertTrue(list.stdout.contains("\"name\":\"b\""), list.stdout)
    }
}
