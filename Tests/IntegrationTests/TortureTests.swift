// The short form of `make torture` (scripts/torture): real director threads, four writer threads with fsync, random
// director fail/restore, drive fail/replace and scrubs, kill -9 at random points; after each restart every block
// holds its fsync-acknowledged version or a later one, whole. Once on a thick LUN, once on a thin one (the pool's
// redirect-on-write destage, commits, checkpoints and roll-forward under the same faults).
import Foundation
import XCTest

final class TortureTests: XCTestCase {
    func torture(_ extra: String = "") throws {
        guard Harness.isRoot else { throw XCTSkip("mounts FUSE file systems") }
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("scripts/torture").path
        let r = Harness.sh("python3 '\(script)' --vsa \"$VSA\" --rounds 4 --seconds 6 --seed 12 \(extra)", timeoutSeconds: 600)
        XCTAssertEqual(r.status, 0, "\(r.stdout)\n\(r.stderr)")
        print(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    func testShortTorture() throws { try torture() }

    func testShortTortureOnAThinLUN() throws { try torture("--thin") }
}
