import Foundation
import XCTest

/// Real mounts whose drives are on tmpfs: there the drives take any buffer, so whole-stripe writes go straight from
/// FUSE's buffer to the drives (write-through) instead of through global memory.
final class TmpfsMountTests: FixtureTestCase {
    override class var rootReason: String? { "real-mount tests run as root (CI does)" }
    override class var fixtureBase: String { "/dev/shm" }

    /// Small writes leave write-pending slots; whole-stripe writes over them must supersede them, and nothing stale
    /// may be destaged over the new data later (at unmount).
    func testWholeStripeWritesSupersedeWritePendingSlots() throws {
        for (level, drives) in [("5", 4), ("6", 5), ("10", 4)] {
            Harness.sh("rm -rf '\(fixture.dir)'")
            try fixture.create("--drives \(drives) --drive-size 40M --raid \(level)")
            XCTAssertEqual(fixture.vsa("lun create '\(fixture.dir)' l --size 24M --thick").status, 0)
            try fixture.mount()
            let r = fixture.root
            let m = fixture.mnt
            let w = Harness.sh(
                """
                head -c 24M /dev/urandom > \(r)/a && head -c 24M /dev/urandom > \(r)/b &&
                dd if=\(r)/a of=\(m)/l bs=4k oflag=direct conv=notrunc status=none &&
                dd if=\(r)/b of=\(m)/l bs=1M oflag=direct conv=notrunc status=none &&
                dd if=\(m)/l bs=1M iflag=direct status=none | cmp - \(r)/b
                """, timeoutSeconds: 300)
            XCTAssertEqual(w.status, 0, "raid\(level): \(w.stdout) \(w.stderr)")
            let status = fixture.vsa("status '\(m)' --json").stdout
            let json = try JSONSerialization.jsonObject(with: Data(status.utf8)) as? [String: Any]
            let cache = json?["cache"] as? [String: Any]
            XCTAssertGreaterThan((cache?["writeThroughStripes"] as? Int) ?? 0, 0, "raid\(level): no write-through: \(status)")
            fixture.unmount()
            try fixture.mount()
            let c = Harness.sh("dd if=\(m)/l bs=1M iflag=direct status=none | cmp - \(r)/b")
            XCTAssertEqual(c.status, 0, "raid\(level): data differs after remount: \(c.stdout)")
            fixture.unmount()
        }
    }
}
