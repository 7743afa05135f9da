import Foundation
import XCTest

/// `vsa scrub` on a real mount: damage done to a drive file while unmounted is found by a check, repaired by
/// --repair (RAID-6 rewrites the bad data strips), and a second check is clean.
final class ScrubMountTests: FixtureTestCase {
    override class var rootReason: String? { "real-mount tests run as root (CI does)" }

    func testScrubFindsAndRepairsDamageOnADrive() throws {
        try fixture.create("--drives 5 --drive-size 40M --raid 6 --stripe-unit 16K")
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' l --size 96M").status, 0)
        try fixture.mount()
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

    /// Offline corruption of random 4 KiB blocks of one drive file (a RAID-5, so parity alone could not say which strip
    /// is wrong): the block checksums catch every one on read, the host reads exactly what it wrote, and the blocks
    /// are rewritten on the drive; then fresh damage is found by `vsa scrub` and repaired by `--repair`.
    func testOfflineCorruptionReadsBackRightAndScrubRepairs() throws {
        try fixture.create("--drives 4 --drive-size 48M --raid 5 --stripe-unit 64K")
        XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' l --size 60M").status, 0)
        try fixture.mount()
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
}
