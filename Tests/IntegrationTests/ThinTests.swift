import Foundation
import XCTest

/// Thin LUNs on real mounts (docs/POOL.md): provisioned far beyond the array, blocks allocated as written, fio
/// verify through the pool, discard giving space back, status and --json, remounts, and bad input refused with one line.
final class ThinTests: FixtureTestCase {
    override class var rootReason: String? { "real-mount tests run as root (CI does)" }

    /// A thin LUN's entry of `status --json`: thin, allocatedBytes, uniqueBytes.
    func thin(_ name: String = "t") throws -> [String: Any] {
        let s = try fixture.json("status '\(fixture.mnt)' --json", as: [String: Any].self)
        let luns = try XCTUnwrap(s["luns"] as? [[String: Any]])
        return try XCTUnwrap(luns.first { $0["name"] as? String == name })
    }

    func allocated(_ name: String = "t") throws -> Int { try XCTUnwrap(try thin(name)["allocatedBytes"] as? Int) }

    func pool() throws -> [String: Any] {
        try XCTUnwrap(try fixture.json("status '\(fixture.mnt)' --json", as: [String: Any].self)["pool"] as? [String: Any])
    }

    func testAThinLUNLargerThanTheArrayTakesBlocksAsWrittenAndGivesThemBack() throws {
        try fixture.create("--drives 4 --drive-size 128M --raid 5")
        try fixture.mount()
        let m = fixture.mnt
        // Offline, and beyond 256 TiB: refused with one line, nothing made.
        let big = fixture.vsa("lun create '\(m)' t --size 300T --thin")
        XCTAssertNotEqual(big.status, 0)
        XCTAssertEqual(big.stderrLines.count, 1, big.stderr)
        XCTAssertEqual(fixture.vsa("lun create '\(m)' t --size 10T --thin").status, 0)
        XCTAssertEqual(fixture.vsa("lun create '\(m)' t --size 1G --thin").stderrLines.count, 1, "a duplicate name")
        XCTAssertEqual(Harness.sh("stat -c %s '\(m)/t'").stdout.trimmingCharacters(in: .whitespacesAndNewlines), "\(10 << 40)")
        XCTAssertEqual(try thin()["thin"] as? Bool, true)
        XCTAssertEqual(try allocated(), 0)
        XCTAssertLessThan(try XCTUnwrap(try pool()["sizeBytes"] as? Int), 400 << 20)
        // fio verify in two regions terabytes apart: random 4 KiB and sequential 1 MiB, direct.
        for (offset, rw, bs) in [("1T", "randwrite", "4k"), ("7T", "write", "1M")] {
            let fio = Harness.sh(
                "fio --name=v --filename='\(m)/t' --offset=\(offset) --size=48M --rw=\(rw) --bs=\(bs) --iodepth=8 --ioengine=libaio --direct=1 --verify=crc32c --verify_fatal=1 2>&1",
                timeoutSeconds: 240)
            XCTAssertEqual(fio.status, 0, fio.stdout)
        }
        XCTAssertEqual(Harness.sh("sync '\(m)/t'").status, 0)
        XCTAssertEqual(try allocated(), 96 << 20, "allocated: what was written, no more")
        // A punched hole reads zeroes and gives its blocks back.
        XCTAssertEqual(Harness.sh("fallocate --punch-hole --offset 7T --length 48M '\(m)/t' && sync '\(m)/t'").status, 0)
        XCTAssertEqual(
            Harness.sh("dd if='\(m)/t' bs=1M skip=$((7 << 20)) count=48 status=none | tr -d '\\0' | wc -c").stdout.trimmingCharacters(
                in: .whitespacesAndNewlines), "0")
        XCTAssertEqual(try allocated(), 48 << 20)
        // Zeroes written are not stored either.
        XCTAssertEqual(Harness.sh("dd if=/dev/zero of='\(m)/t' bs=1M seek=$((3 << 20)) count=16 conv=fsync,notrunc status=none").status, 0)
        XCTAssertEqual(try allocated(), 48 << 20)
        // The data and the counts across a clean remount (the pool's checkpoint, nothing to replay).
        fixture.unmount()
        try fixture.mount()
        let again = Harness.sh(
            "fio --name=v --filename='\(m)/t' --offset=1T --size=48M --rw=randwrite --bs=4k --ioengine=psync --verify=crc32c --verify_only 2>&1")
        XCTAssertEqual(again.status, 0, again.stdout)
        XCTAssertEqual(try allocated(), 48 << 20)
        // The file's st_blocks are what it takes (counted about once a second; attributes cached for one): du shows it.
        var blocks = ""
        for _ in 0..<20 where blocks != "\((48 << 20) / 512)" {
            usleep(250_000)
            blocks = Harness.sh("stat -c %b '\(m)/t'").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        XCTAssertEqual(blocks, "\((48 << 20) / 512)", "st_blocks of a 10 TiB thin LUN holding 48 MiB")
        let status = fixture.vsa("status '\(m)'").stdout
        XCTAssertTrue(status.contains("t  10 TiB  thin, allocated 48 MiB"), status)
        XCTAssertTrue(status.contains("pool: "), status)
        // Offline: a thin LUN can be made (the next mount gives it its maps), but not deleted, and no thick LUN can be
        // placed (the pool's segments are the mounted array's), one line each.
        fixture.unmount()
        for command in ["lun delete '\(fixture.dir)' t", "lun create '\(fixture.dir)' u --size 1M --thick"] {
            let r = fixture.vsa(command)
            XCTAssertNotEqual(r.status, 0, command)
            XCTAssertEqual(r.stderrLines.count, 1, "\(command): \(r.stderr)")
        }
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' u --size 1G --thin").status, 0)
        try fixture.mount()
        XCTAssertEqual(Harness.sh("dd if=/dev/urandom of='\(m)/u' bs=1M count=4 conv=notrunc,fsync status=none").status, 0)
        XCTAssertEqual(try allocated("u"), 4 << 20)
        XCTAssertEqual(fixture.vsa("lun delete '\(m)' u").status, 0)
        // Deleting it frees its blocks; a thick LUN fits beside the pool.
        XCTAssertEqual(fixture.vsa("lun delete '\(m)' t").status, 0)
        let thick = fixture.vsa("lun create '\(m)' k --size 64M --thick")
        XCTAssertEqual(thick.status, 0, thick.stderr + fixture.vsa("status '\(m)'").stdout)
        XCTAssertEqual(Harness.sh("dd if=/dev/urandom of='\(m)/k' bs=1M count=64 conv=fsync,notrunc status=none").status, 0)
        XCTAssertLessThan(try XCTUnwrap(try pool()["allocatedBytes"] as? Int), 2 << 20, "only the map is left")
    }

    /// A full pool: writes that need new blocks get ENOSPC before they are acknowledged; what was written reads
    /// back, a thick LUN and a snapshot still work, status says 95%; discard and snapshot delete give space back and
    /// writes resume.
    func testAFullPoolRefusesNewBlocksWithENOSPCAndFreeingSpaceResumesWrites() throws {
        try fixture.create("--drives 4 --drive-size 64M --raid 5")
        try fixture.mount("-o cache=32M")
        let m = fixture.mnt
        XCTAssertEqual(fixture.vsa("lun create '\(m)' k --size 8M --thick").status, 0)
        XCTAssertEqual(fixture.vsa("lun create '\(m)' t --size 1G --thin").status, 0)
        XCTAssertEqual(Harness.sh("head -c 8M /dev/urandom > '\(fixture.root)/first'").status, 0)
        XCTAssertEqual(Harness.sh("dd if='\(fixture.root)/first' of='\(m)/t' bs=1M conv=notrunc,fsync status=none").status, 0)
        // Fill it: dd stops at the first write the pool refuses.
        let fill = Harness.sh("dd if=/dev/urandom of='\(m)/t' bs=1M seek=8 count=1000 oflag=direct conv=notrunc status=none 2>&1")
        XCTAssertNotEqual(fill.status, 0)
        XCTAssertTrue(fill.stdout.contains("No space left on device"), fill.stdout)
        XCTAssertEqual(Harness.sh("sync '\(m)/t'").status, 0, "everything acknowledged goes down")
        let pool = try pool()
        XCTAssertEqual(pool["promisedBytes"] as? Int, 0, "every promise kept and given back")
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(pool["usedPercent"] as? Double), 95, "\(pool)")
        XCTAssertNotNil(pool["warning"] as? String)
        XCTAssertTrue(fixture.vsa("status '\(m)'").stdout.contains("pool: warning: the pool is 95% used"))
        XCTAssertEqual(Harness.sh("dd if='\(m)/t' bs=1M count=8 status=none | cmp - '\(fixture.root)/first'").status, 0)
        XCTAssertEqual(Harness.sh("dd if=/dev/urandom of='\(m)/k' bs=1M count=8 oflag=direct conv=notrunc status=none").status, 0, "a thick LUN is unaffected")
        // Overwrites of what the LUN holds need no new space (each kills the block it replaces; the cleaner gives it
        // back): they go on at a full pool, whole stripes and 4 KiB pages alike.
        XCTAssertEqual(Harness.sh("head -c 4M /dev/urandom > '\(fixture.root)/second'").status, 0)
        let over = Harness.sh("dd if='\(fixture.root)/second' of='\(m)/t' bs=1M seek=8 count=4 oflag=direct conv=notrunc,fsync status=none 2>&1")
        XCTAssertEqual(over.status, 0, over.stdout)
        let small = Harness.sh(
            "fio --name=o --filename='\(m)/t' --offset=16M --size=8M --rw=randwrite --bs=4k --iodepth=8 --ioengine=libaio --direct=1 --number_ios=2000 --fallocate=none 2>&1"
        )
        XCTAssertEqual(small.status, 0, small.stdout)
        XCTAssertEqual(Harness.sh("sync '\(m)/t' && dd if='\(m)/t' bs=1M skip=8 count=4 status=none | cmp - '\(fixture.root)/second'").status, 0)
        XCTAssertEqual(fixture.vsa("snap create '\(m)' t full").status, 0, "a full pool still takes a snapshot")
        let again = Harness.sh("dd if=/dev/urandom of='\(m)/t' bs=1M seek=900 count=4 oflag=direct conv=notrunc status=none 2>&1")
        XCTAssertTrue(again.stdout.contains("No space left on device"), again.stdout)
        // Space back: the snapshot goes, a discard unmaps most of what was written; writes resume.
        XCTAssertEqual(fixture.vsa("snap delete '\(m)' t full").status, 0)
        XCTAssertEqual(Harness.sh("fallocate --punch-hole --offset 8M --length 900M '\(m)/t' && sync '\(m)/t'").status, 0)
        let resumed = Harness.sh("dd if=/dev/urandom of='\(m)/t' bs=1M seek=900 count=32 oflag=direct conv=notrunc,fsync status=none 2>&1")
        XCTAssertEqual(resumed.status, 0, resumed.stdout + fixture.vsa("status '\(m)'").stdout)
        XCTAssertEqual(Harness.sh("dd if='\(m)/t' bs=1M count=8 status=none | cmp - '\(fixture.root)/first'").status, 0)
        XCTAssertEqual(try self.pool()["promisedBytes"] as? Int, 0)
        fixture.unmount()
        try fixture.mount()
        XCTAssertEqual(Harness.sh("dd if='\(m)/t' bs=1M count=8 status=none | cmp - '\(fixture.root)/first'").status, 0)
    }

    /// Random overwrites of a pool 80% full of live data, twice its size: without a cleaner the pool runs out of
    /// whole free segments after a fifth of that (every overwrite leaves a dead block in a partly live segment);
    /// with it, fio verify goes through without an error and status shows what the cleaner did.
    func testOverwritesOfANearlyFullPoolGoOnWithTheCleaner() throws {
        try fixture.create("--drives 4 --drive-size 96M --raid 5")
        try fixture.mount("-o cache=32M")
        let m = fixture.mnt
        XCTAssertEqual(fixture.vsa("lun create '\(m)' t --size 10G --thin").status, 0)
        let size = try XCTUnwrap(try pool()["sizeBytes"] as? Int)
        let mib = (size * 8 / 10) >> 20
        let fill = Harness.sh("fio --name=f --filename='\(m)/t' --size=\(mib)M --rw=write --bs=1M --iodepth=4 --ioengine=libaio --direct=1 2>&1")
        XCTAssertEqual(fill.status, 0, fill.stdout)
        let fio = Harness.sh(
            "fio --name=v --filename='\(m)/t' --size=\(mib)M --rw=randwrite --bs=16k --loops=2 --iodepth=8 --ioengine=libaio --direct=1 --verify=crc32c --verify_fatal=1 2>&1",
            timeoutSeconds: 600)
        XCTAssertEqual(fio.status, 0, fio.stdout + fixture.vsa("status '\(m)'").stdout)
        XCTAssertEqual(Harness.sh("sync '\(m)/t'").status, 0)
        let after = try pool()
        let cleaner = try XCTUnwrap(after["cleaner"] as? [String: Any])
        XCTAssertGreaterThan(try XCTUnwrap(cleaner["segmentsCleaned"] as? Int), 0, "\(after)")
        XCTAssertGreaterThan(try XCTUnwrap(cleaner["movedBytes"] as? Int), 0)
        XCTAssertEqual(after["promisedBytes"] as? Int, 0)
        XCTAssertEqual(after["damagedMapNodes"] as? Int, 0)
        let status = fixture.vsa("status '\(m)'").stdout
        XCTAssertTrue(status.contains("cleaner: "), status)
        // What the cleaner moved reads back after a clean remount too.
        fixture.unmount()
        try fixture.mount()
        let verify = Harness.sh(
            "fio --name=v --filename='\(m)/t' --size=\(mib)M --rw=randwrite --bs=16k --ioengine=psync --verify=crc32c --verify_only 2>&1", timeoutSeconds: 300)
        XCTAssertEqual(verify.status, 0, verify.stdout)
        // Bad settings: one line, no mount.
        fixture.unmount()
        let bad = fixture.vsa("mount '\(fixture.dir)' '\(m)' -o cleaner_rate=12")
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertEqual(bad.stderrLines.count, 1, bad.stderr)
    }

    /// Read reallocation (docs/POOL.md): pages random writes scattered, read in order, are written again in order;
    /// never pages a snapshot shares, never with `-o read_realloc=off`; the data stays what fio wrote, across remounts.
    func testSequentialReadsOfScatteredPagesWriteThemAgainInOrder() throws {
        try fixture.create("--drives 4 --drive-size 128M --raid 5")
        try fixture.mount("-o cache=16M")
        let m = fixture.mnt
        XCTAssertEqual(fixture.vsa("lun create '\(m)' t --size 1G --thin").status, 0)
        func scatter(_ seed: Int) {
            let fio = Harness.sh(
                "fio --name=s --filename='\(m)/t' --size=48M --rw=randwrite --bs=4k --iodepth=8 --ioengine=libaio --direct=1 --randseed=\(seed) --verify=crc32c --do_verify=0 2>&1",
                timeoutSeconds: 300)
            XCTAssertEqual(fio.status, 0, fio.stdout)
        }
        func verify(_ seed: Int) {
            let fio = Harness.sh(
                "fio --name=s --filename='\(m)/t' --size=48M --rw=randwrite --bs=4k --ioengine=psync --randseed=\(seed) --verify=crc32c --verify_only 2>&1",
                timeoutSeconds: 300)
            XCTAssertEqual(fio.status, 0, fio.stdout)
        }
        func readInOrder() {
            let dd = Harness.sh("dd if='\(m)/t' of=/dev/null bs=1M count=48 iflag=direct 2>&1")
            XCTAssertEqual(dd.status, 0, dd.stdout)
        }
        func reallocated() throws -> Int { try XCTUnwrap(try pool()["reallocatedBytes"] as? Int) }
        scatter(1)
        // A snapshot shares every page: reading in order moves none of them (that would unshare them).
        XCTAssertEqual(fixture.vsa("snap create '\(m)' t s1").status, 0)
        fixture.unmount()
        try fixture.mount("-o cache=16M")  // a cold cache: the reads go to the pool
        readInOrder()
        XCTAssertEqual(try reallocated(), 0, "pages a snapshot shares stay where they are")
        let unique = try XCTUnwrap(try thin()["uniqueBytes"] as? Int)
        XCTAssertEqual(fixture.vsa("snap delete '\(m)' t s1").status, 0)
        fixture.unmount()
        try fixture.mount("-o cache=16M")
        readInOrder()
        let moved = try reallocated()
        XCTAssertGreaterThan(moved, 16 << 20, "scattered pages read in order were written again: \(fixture.vsa("status '\(m)'").stdout)")
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(try thin()["uniqueBytes"] as? Int), unique)
        verify(1)
        // In order now: the next pass over them finds few to move.
        fixture.unmount()
        try fixture.mount("-o cache=16M")
        readInOrder()
        XCTAssertLessThan(try reallocated(), moved / 4, "a second pass finds the pages in order")
        XCTAssertTrue(fixture.vsa("status '\(m)'").stdout.contains("read reallocation: on"))
        verify(1)
        // Off: scattered again, read in order, nothing moves.
        scatter(2)
        fixture.unmount()
        try fixture.mount("-o cache=16M,read_realloc=off")
        readInOrder()
        XCTAssertEqual(try reallocated(), 0)
        XCTAssertEqual(try pool()["readReallocation"] as? Bool, false)
        verify(2)
        fixture.unmount()
        let bad = fixture.vsa("mount '\(fixture.dir)' '\(m)' -o read_realloc=maybe")
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertEqual(bad.stderrLines.count, 1, bad.stderr)
        XCTAssertTrue(bad.stderr.contains("read_realloc"), bad.stderr)
    }

    /// ext4 on a loop device over a 1 TiB thin LUN of a 1 GiB array: blkdiscard and mkfs discard the whole LUN
    /// (unmapped per home at once, not page by page), a file's blocks come back with rm and fstrim (one discard per
    /// free extent), fsck is clean after a remount.
    func testExt4OnALoopDeviceGivesBlocksBackWithFstrim() throws {
        try fixture.create("--drives 4 --drive-size 384M --raid 5")
        try fixture.mount()
        let m = fixture.mnt
        XCTAssertEqual(fixture.vsa("lun create '\(m)' t --size 1T --thin").status, 0)
        let ext4 = "\(fixture.root)/ext4"
        let made = Harness.sh(
            """
            set -e
            LOOP=$(losetup --find --show --direct-io=on '\(m)/t')
            echo $LOOP > '\(fixture.root)/loop'
            test "$(cat /sys/block/$(basename $LOOP)/queue/discard_max_bytes)" -gt 0
            blkdiscard $LOOP
            mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 $LOOP
            mkdir -p '\(ext4)'
            mount $LOOP '\(ext4)'
            head -c 96M /dev/urandom > '\(ext4)/big'
            sync
            """, timeoutSeconds: 240)
        XCTAssertEqual(made.status, 0, made.stdout + made.stderr)
        let loop = (try? String(contentsOfFile: "\(fixture.root)/loop", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        let full = try allocated()
        XCTAssertGreaterThan(full, 96 << 20, "the file's blocks")
        let trimmed = Harness.sh("rm '\(ext4)/big' && sync && fstrim -v '\(ext4)' && sync", timeoutSeconds: 240)
        XCTAssertEqual(trimmed.status, 0, trimmed.stdout + trimmed.stderr)
        XCTAssertLessThan(try allocated(), full - (90 << 20), "fstrim gave the file's blocks back")
        XCTAssertEqual(Harness.sh("umount '\(ext4)' && fsck.ext4 -fn \(loop) && losetup -d \(loop)").status, 0)
        fixture.unmount()
        try fixture.mount()
        let again = Harness.sh("LOOP=$(losetup --find --show '\(m)/t') && fsck.ext4 -fn $LOOP; rc=$?; losetup -d $LOOP; exit $rc")
        XCTAssertEqual(again.status, 0, again.stdout + again.stderr)
    }

    /// `vsa lun create DIR NAME --size 10T --thin` on an unmounted 4 GiB array: the LUN table records the LUN and a
    /// fresh pool area; the first mount makes the pool's homes and the LUN's maps; a thick LUN made offline beside it
    /// (the fresh pool owns no segment yet) keeps its stripes.
    func testThinLUNsMadeOfflineGetTheirPoolAtTheNextMount() throws {
        try fixture.create("--drives 5 --drive-size 1G --raid 5")
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' big --size 10T --thin").status, 0)
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' k --size 64M --thick").status, 0)
        let listed = fixture.vsa("lun list '\(fixture.dir)'").stdout
        XCTAssertTrue(listed.contains("big") && listed.contains("10 TiB"), listed)
        try fixture.mount()
        let m = fixture.mnt
        XCTAssertEqual(try allocated("big"), 0)
        XCTAssertEqual(Harness.sh("head -c 16M /dev/urandom > '\(fixture.root)/data'").status, 0)
        for lun in ["big", "k"] {
            XCTAssertEqual(Harness.sh("dd if='\(fixture.root)/data' of='\(m)/\(lun)' bs=1M conv=notrunc,fsync status=none").status, 0)
        }
        XCTAssertEqual(try allocated("big"), 16 << 20)
        XCTAssertEqual(fixture.vsa("snap create '\(m)' big s").status, 0)
        XCTAssertTrue(fixture.killDaemon())
        try fixture.mount()
        for lun in ["big", "k"] {
            XCTAssertEqual(Harness.sh("dd if='\(m)/\(lun)' bs=1M count=16 status=none | cmp - '\(fixture.root)/data'").status, 0, lun)
        }
        XCTAssertEqual(fixture.vsa("snap link '\(m)' big s c").status, 0)
        XCTAssertEqual(Harness.sh("dd if='\(m)/c' bs=1M count=16 status=none | cmp - '\(fixture.root)/data'").status, 0)
    }
}
