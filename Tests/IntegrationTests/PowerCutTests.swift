// `vsa powercut` on a real mount (issue 14): a crash oracle (scripts/powercut-oracle) over thousands of O_DIRECT
// writes from two threads with fsyncs between them proves both halves. What an fsync made durable survives; what no
// fsync covered is gone (torn: block by block, only its newest version may survive), and nothing else is found. The
// rolled-back state is the array's: it reads the same after a remount. The cut must be asked for by name (a mount
// with -o powercut), status says each one happened, and bad input gets one line and changes nothing.
import Foundation
import XCTest

final class PowerCutTests: FixtureTestCase {
    override class var rootReason: String? { "mounts FUSE file systems" }
    override class var fixtureBase: String { "/dev/shm" }

    private static let oracle = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("scripts/powercut-oracle").path

    /// Runs the oracle on `lun`; returns the md5 of its first `blocks` blocks after the cut.
    private func oracle(_ lun: String, seed: Int, torn: Bool) throws -> String {
        let r = Harness.sh(
            "python3 '\(Self.oracle)' \"$VSA\" '\(fixture.mnt)' \(lun) --seed \(seed) --writes 3000 --threads 2 --blocks 4096\(torn ? " --torn" : "")",
            timeoutSeconds: 300)
        XCTAssertEqual(r.status, 0, "powercut-oracle \(lun)\(torn ? " --torn" : ""): \(r.stderr)")
        print("\(lun)\(torn ? " torn" : ""): \(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines))")
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
        return try XCTUnwrap(json["md5"] as? String)
    }

    private func md5(_ lun: String) -> String {
        Harness.sh("dd if='\(fixture.mnt)/\(lun)' bs=4096 count=4096 iflag=direct status=none | md5sum | cut -d' ' -f1").stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func testFsyncedWritesSurviveAndUnsyncedOnesAreGone() throws {
        let f = fixture!
        try f.create("--drives 4 --drive-size 96M --raid 5")
        XCTAssertEqual(f.vsa("lun create '\(f.dir)' thin --size 32M").status, 0)
        XCTAssertEqual(f.vsa("lun create '\(f.dir)' thick --size 32M --thick").status, 0)
        try f.mount("-o powercut=32M")
        let thin = try oracle("thin", seed: 11, torn: false)
        let thick = try oracle("thick", seed: 12, torn: true)
        let status = f.vsa("status '\(f.mnt)'").stdout
        XCTAssertTrue(status.contains("power-cut tracking (-o powercut): 0 B unsynced of 32 MiB, 2 power cuts"), status)
        XCTAssertTrue(status.contains("power cut (torn, seed 12):"), status)
        let cuts = try f.json("status '\(f.mnt)' --json", as: [String: Any].self)["powerCut"] as? [String: Any]
        XCTAssertEqual((cuts?["cuts"] as? [[String: Any]])?.count, 2)
        // The rolled-back state is what the drives hold: the same after a remount.
        f.unmount()
        try f.mount()
        defer { f.unmount() }
        XCTAssertEqual(md5("thin"), thin)
        XCTAssertEqual(md5("thick"), thick)
        // Without -o powercut, nothing is tracked and nothing can be cut.
        let refused = f.vsa("powercut '\(f.mnt)'")
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertEqual(refused.stderrLines.count, 1, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("mount it with -o powercut"), refused.stderr)
        XCTAssertEqual(md5("thin"), thin, "a refused power cut changed the LUN")
    }

    func testBadPowerCutInputGetsOneLine() throws {
        let f = fixture!
        try f.create("--drives 3 --drive-size 64M --raid 5")
        XCTAssertEqual(f.vsa("lun create '\(f.dir)' l --size 8M").status, 0)
        for (options, expected) in [
            ("powercut=0", "-o powercut takes the size of the host's volatile write cache, from 1M to 64G"),
            ("powercut=65G", "-o powercut takes the size"),
            ("powercut=lots", "-o powercut"),
        ] {
            f.expectMountRefused(options, expected)
        }
        try f.mount("-o powercut")
        defer { f.unmount() }
        let seedless = f.vsa("powercut '\(f.mnt)' --seed 5")
        XCTAssertNotEqual(seedless.status, 0)
        XCTAssertTrue(seedless.stderr.contains("give --torn too"), seedless.stderr)
        XCTAssertTrue(f.vsa("status '\(f.mnt)'").stdout.contains("0 power cuts"))
        // A power cut with nothing unsynced drops nothing, and says so.
        let none = f.vsa("powercut '\(f.mnt)'")
        XCTAssertEqual(none.status, 0, none.stderr)
        XCTAssertTrue(none.stdout.contains("power cut: 0 blocks"), none.stdout)
        // A scenario may cut the power; a malformed power cut step is refused before anything runs.
        let good = #"{"name":"cut","steps":[{"at":0,"action":"powercut","torn":true},{"at":1,"action":"end"}]}"#
        let bad = #"{"name":"cut","steps":[{"at":0,"action":"powercut","torn":"yes"}]}"#
        Harness.sh("printf '%s' '\(good)' > '\(f.root)/good.json'; printf '%s' '\(bad)' > '\(f.root)/bad.json'")
        XCTAssertEqual(f.vsa("scenario check '\(f.root)/good.json'").status, 0)
        let badCheck = f.vsa("scenario check '\(f.root)/bad.json'")
        XCTAssertNotEqual(badCheck.status, 0)
        XCTAssertEqual(badCheck.stderrLines.count, 1, badCheck.stderr)
        let ran = f.vsa("scenario run '\(f.mnt)' '\(f.root)/good.json'")
        XCTAssertEqual(ran.status, 0, ran.stderr)
        XCTAssertTrue(ran.stdout.contains("power cut: 0 unsynced blocks"), ran.stdout)
    }
}
