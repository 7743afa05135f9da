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
}
