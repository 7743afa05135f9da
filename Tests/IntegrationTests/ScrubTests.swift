import Foundation
import XCTest

/// `vsa scrub` on a real mount: damage done to a drive file while unmounted is found by a check, repaired by
/// --repair (RAID-6 rewrites the bad data strips), and a second check is clean.
final class ScrubMountTests: FixtureTestCase {
    override class var rootReason: String? { "real-mount tests run as root (CI does)" }

    func testScrubFindsAndRepairsDamageOnADrive() throws {
        try fixture.createMounted("--drives 5 --drive-size 40M --raid 6 --stripe-unit 16K", lunSize: "96M")
        let r = fixture.root
        let m = fixture.mnt
        XCTAssertEqual(Harness.sh("head -c 96M /dev/urandom > \(r)/data && dd if=\(r)/data of=\(m)/l bs=1M conv=notrunc,fsync status=none").status, 0)
        fixture.unmount()
        // Damage 4 KiB at five places in drive 2's data area (which starts at 4 MiB on 40 MiB drives: metadata, two
        // 1 MiB journal slices, the checksum area; docs/FORMAT.md).
        for mib in [5, 7, 13, 21, 33] {
            XCTAssertEqual(Harness.sh("dd if=/dev/urandom of='\(fixture.dir)/drive-2' bs=4k count=1 seek=\(mib * 256 + 3) conv=notrunc status=none").status, 0)
        }
        try fixture.mount()
        let check = fixture.vsa("scrub '\(m)'")
        XCTAssertEqual(check.status, 1, check.stdout + check.stderr)
        XCTAssertTrue(check.stdout.contains("5 mismatches"), check.stdout)
        XCTAssertTrue(check.stderr.contains("run `vsa scrub --repair`"), check.stderr)
        XCTAssertEqual(check.stderr.split(separator: "\n").count, 1, check.stderr)
        let repair = fixture.vsa("scrub '\(m)' --repair")
        XCTAssertEqual(repair.status, 0, repair.stdout + repair.stderr)
        XCTAssertTrue(repair.stdout.contains("5 mismatches, 5 repaired, 0 unrecoverable"), repair.stdout)
        XCTAssertTrue(repair.stdout.contains("100.0%"), repair.stdout)
        let json = fixture.vsa("status '\(m)' --json").stdout
        XCTAssertTrue(json.contains("\"scrub\":{"), json)
        let again = fixture.vsa("scrub '\(m)'")
        XCTAssertEqual(again.status, 0, again.stdout + again.stderr)
        XCTAssertTrue(again.stdout.contains(" 0 mismatches"), again.stdout)
        fixture.unmount()
        try fixture.mount()
        XCTAssertEqual(Harness.sh("cmp <(dd if=\(m)/l bs=1M iflag=direct status=none) \(r)/data").status, 0, "data differs after the repair")
        XCTAssertEqual(fixture.vsa("scrub '\(fixture.root)/nowhere'").status, 1)
        // With a member out nothing can be compared: said, and not called clean.
        XCTAssertEqual(fixture.vsa("drive fail '\(m)' 0").status, 0)
        let degraded = fixture.vsa("scrub '\(m)'")
        XCTAssertEqual(degraded.status, 1)
        XCTAssertTrue(degraded.stderr.contains("not checked because a member is out"), degraded.stderr)
    }

    /// Recovery never launders rot, on a real mount: a block written in an earlier mount (its checksum entry written
    /// back at that clean stop) rots on the first copy of a RAID-1 while a later fsync'd write holds a write intent
    /// on its region, and the daemon is killed. The next mount resyncs the region: the copy that passes its checksum
    /// wins (the resync used to copy the first copy over the others and checksum the rot), status says so, and the
    /// host reads exactly what it wrote.
    func testRotInAnIntentRegionSurvivesAKilledDaemon() throws {
        try fixture.createMounted("--drives 2 --drive-size 40M --raid 1 --stripe-unit 16K", lunSize: "8M")
        let r = fixture.root
        let m = fixture.mnt
        XCTAssertEqual(Harness.sh("head -c 8M /dev/urandom > \(r)/data && dd if=\(r)/data of=\(m)/l bs=1M conv=notrunc,fsync status=none").status, 0)
        fixture.unmount()
        try fixture.mount()
        // One strip again (the same bytes), fsync'd: a write intent on region 0 (stripes 0..<256) is on the drives.
        XCTAssertEqual(Harness.sh("dd if=\(r)/data of=\(m)/l bs=16K count=1 oflag=direct conv=notrunc,fsync status=none").status, 0)
        guard fixture.killDaemon() else { return XCTFail("no daemon pid") }
        // Rot: 4 KiB of stripe 5 on drive 0 (the first copy), inside region 0. The data area of 40 MiB drives starts
        // at 4 MiB (docs/FORMAT.md); a RAID-1 stripe is one 16 KiB strip on each drive.
        XCTAssertEqual(
            Harness.sh("dd if=/dev/urandom of='\(fixture.dir)/drive-0' bs=4k count=1 seek=\(4 * 256 + 5 * 4 + 1) conv=notrunc status=none").status, 0)
        try fixture.mount()
        let status = fixture.vsa("status '\(m)'").stdout
        XCTAssertTrue(status.contains("not stopped cleanly"), status)
        XCTAssertTrue(status.contains("1 strips in them failed their checksums and were rebuilt from the others"), status)
        XCTAssertEqual(Harness.sh("cmp <(dd if=\(m)/l bs=1M iflag=direct status=none) \(r)/data").status, 0, "recovery laundered the rot into the data")
        let check = fixture.vsa("scrub '\(m)'")
        XCTAssertEqual(check.status, 0, check.stdout + check.stderr)
        XCTAssertTrue(check.stdout.contains(" 0 mismatches"), check.stdout)
    }

    /// Offline corruption of random 4 KiB blocks of one drive file (a RAID-5, so parity alone could not say which strip
    /// is wrong): the block checksums catch every one on read, the host reads exactly what it wrote, and the blocks
    /// are rewritten on the drive; then fresh damage is found by `vsa scrub` and repaired by `--repair`.
    func testOfflineCorruptionReadsBackRightAndScrubRepairs() throws {
        try fixture.createMounted("--drives 4 --drive-size 48M --raid 5 --stripe-unit 64K", lunSize: "60M")
        let r = fixture.root
        let m = fixture.mnt
        XCTAssertEqual(Harness.sh("head -c 60M /dev/urandom > \(r)/data && dd if=\(r)/data of=\(m)/l bs=1M conv=notrunc,fsync status=none").status, 0)
        fixture.unmount()
        // The data area of 48 MiB drives starts at 4 MiB; the LUN's 60 MiB over three data strips a stripe fill about
        // 20 MiB of each drive from there. Eight random blocks of drive 1 get garbage.
        var rng = SplitMixTest(seed: 5)
        func damage() {
            for _ in 0..<8 {
                let block = 5 * 256 + rng.next() % (18 * 256)
                XCTAssertEqual(
                    Harness.sh("dd if=/dev/urandom of='\(fixture.dir)/drive-1' bs=4k count=1 seek=\(block) conv=notrunc status=none").status, 0)
            }
        }
        damage()
        try fixture.mount()
        XCTAssertEqual(Harness.sh("cmp <(dd if=\(m)/l bs=1M iflag=direct status=none) \(r)/data").status, 0, "the host read damaged data")
        // Blocks that fell in data strips were repaired by the reads; those in parity strips (no host read touches
        // them) are left for scrub. Together: all eight.
        let json = fixture.vsa("status '\(m)' --json").stdout
        let readRepairs = Int(json.firstMatch(of: /"checksumRepairs":(\d+)/)?.1 ?? "") ?? -1
        XCTAssertGreaterThan(readRepairs, 0, json)
        XCTAssertTrue(json.contains("\"checksumUnrecoverable\":0"), json)
        let repair = fixture.vsa("scrub '\(m)' --repair")
        XCTAssertEqual(repair.status, 0, repair.stdout + repair.stderr)
        let scrubRepairs = Int(repair.stdout.firstMatch(of: /(\d+) repaired, 0 unrecoverable/)?.1 ?? "") ?? -1
        XCTAssertEqual(readRepairs + scrubRepairs, 8, repair.stdout)
        fixture.unmount()
        // The repairs reached the drive: nothing to find now. Then new damage, found by a check and repaired.
        try fixture.mount()
        let clean = fixture.vsa("scrub '\(m)'")
        XCTAssertEqual(clean.status, 0, clean.stdout + clean.stderr)
        fixture.unmount()
        damage()
        try fixture.mount()
        let check = fixture.vsa("scrub '\(m)'")
        XCTAssertEqual(check.status, 1, check.stdout + check.stderr)
        XCTAssertTrue(check.stdout.contains("8 mismatches"), check.stdout)
        let again = fixture.vsa("scrub '\(m)' --repair")
        XCTAssertEqual(again.status, 0, again.stdout + again.stderr)
        XCTAssertTrue(again.stdout.contains("8 mismatches, 8 repaired, 0 unrecoverable"), again.stdout)
        XCTAssertEqual(fixture.vsa("scrub '\(m)'").status, 0)
        fixture.unmount()
        try fixture.mount()
        XCTAssertEqual(Harness.sh("cmp <(dd if=\(m)/l bs=1M iflag=direct status=none) \(r)/data").status, 0, "data differs after the repair")
    }

    /// The issue-12 reproduction on a real mount: a RAID-5 of 4 x 128 MiB drives with lun0 (128 MiB, thick) and lun1 (96 MiB, thin)
    /// full of random data; unmounted, drive 1's first checksum page and a data block it covers are overwritten, and
    /// 64 more random 4 KiB regions of drive 1 past its superblocks and LUN tables (journal, checksum area, data). Both
    /// LUNs read back exactly, status counts nothing unrecoverable, scrub --repair leaves 0 unrecoverable and a second
    /// scrub is clean. (Before: 27 of lun0's first 2,048 blocks read EIO and scrub could not repair them.)
    func testDamageAnywhereOnOneDriveCostsNoData() throws {
        try fixture.create("--drives 4 --drive-size 128M --raid 5")
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' lun0 --size 128M --thick").status, 0)
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' lun1 --size 96M").status, 0)
        try fixture.mount()
        let r = fixture.root
        let m = fixture.mnt
        for (lun, size) in [("lun0", 128), ("lun1", 96)] {
            XCTAssertEqual(
                Harness.sh("head -c \(size)M /dev/urandom > \(r)/\(lun) && dd if=\(r)/\(lun) of=\(m)/\(lun) bs=1M conv=notrunc,fsync status=none").status, 0)
        }
        fixture.unmount()
        // Where drive 1's checksum area and data area start: 1 MiB + directors x slice, and the superblock's data offset
        // (docs/FORMAT.md), read from the drive itself.
        let offsets = Harness.sh(
            "python3 -c \"import struct,sys; b=open('\(fixture.dir)/drive-1','rb').read(512); q=lambda o: struct.unpack_from('<Q',b,o)[0]; print(1048576 + 2*q(144), q(88), q(88) + q(96))\""
        ).stdout.split(separator: " ").compactMap { UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        XCTAssertEqual(offsets.count, 3, "drive-1's layout")
        guard offsets.count == 3 else { return }
        let (checksumOffset, dataOffset, end) = (offsets[0], offsets[1], offsets[2])
        var rng = SplitMixTest(seed: 12)
        var blocks = [checksumOffset / 4096, dataOffset / 4096 + 5]
        for _ in 0..<64 { blocks.append(256 + rng.next() % (end / 4096 - 256)) }
        for block in blocks {
            XCTAssertEqual(Harness.sh("dd if=/dev/urandom of='\(fixture.dir)/drive-1' bs=4k count=1 seek=\(block) conv=notrunc status=none").status, 0)
        }
        try fixture.mount()
        for lun in ["lun0", "lun1"] {
            XCTAssertEqual(Harness.sh("cmp <(dd if=\(m)/\(lun) bs=1M iflag=direct status=none) \(r)/\(lun)").status, 0, "\(lun) read back wrong")
        }
        let json = fixture.vsa("status '\(m)' --json").stdout
        XCTAssertTrue(json.contains("\"checksumUnrecoverable\":0"), json)
        let repair = fixture.vsa("scrub '\(m)' --repair")
        XCTAssertEqual(repair.status, 0, repair.stdout + repair.stderr)
        XCTAssertTrue(repair.stdout.contains(" 0 unrecoverable"), repair.stdout)
        let clean = fixture.vsa("scrub '\(m)'")
        XCTAssertEqual(clean.status, 0, clean.stdout + clean.stderr)
        XCTAssertTrue(clean.stdout.contains(" 0 mismatches"), clean.stdout)
        fixture.unmount()
        try fixture.mount()
        for lun in ["lun0", "lun1"] {
            XCTAssertEqual(Harness.sh("cmp <(dd if=\(m)/\(lun) bs=1M iflag=direct status=none) \(r)/\(lun)").status, 0, "\(lun) differs after repair")
        }
    }
}
