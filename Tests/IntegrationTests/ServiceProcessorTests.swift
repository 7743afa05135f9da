// The service processor on a real mount (issue 14): the Prometheus endpoint scraped while fio runs parses with
// prometheus_client's parser and its values move (scripts/check-metrics); the dashboard in headless Chromium driven
// by Playwright (scripts/check-dashboard) loads with no console error, needs its token, shows live rates, and its
// "fail" button fails a member whose rebuild both the page and `vsa status` show; a screenshot is kept in
// .build/test-artifacts. Bad service options and a port in use get one line and leave the array as it was.
import Foundation
import XCTest

final class ServiceProcessorTests: FixtureTestCase {
    override class var rootReason: String? { "mounts FUSE file systems" }
    override class var fixtureBase: String { "/dev/shm" }

    private static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    private static func script(_ name: String) -> String { repository.appendingPathComponent("scripts/\(name)").path }

    /// The URL a mount printed after `prefix` ("metrics: ", "dashboard: ").
    private func url(_ mountOutput: String, _ prefix: String) throws -> String {
        let line = mountOutput.split(separator: "\n").first { $0.hasPrefix(prefix) }
        return String(try XCTUnwrap(line, "mount printed no \(prefix)line: \(mountOutput)").dropFirst(prefix.count))
    }

    func testMetricsAndDashboardWhileFioRuns() throws {
        let f = fixture!
        try f.create("--drives 4 --spares 1 --drive-size 128M --raid 5")
        XCTAssertEqual(f.vsa("lun create '\(f.dir)' l --size 96M").status, 0)
        let mount = f.vsa("mount '\(f.dir)' '\(f.mnt)' -o metrics=127.0.0.1:0,dashboard=127.0.0.1:0")
        XCTAssertEqual(mount.status, 0, mount.stderr)
        defer { f.unmount() }
        let metrics = try url(mount.stdout, "metrics: ")
        let dashboard = try url(mount.stdout, "dashboard: ")
        XCTAssertTrue(metrics.hasPrefix("http://127.0.0.1:") && metrics.hasSuffix("/metrics"), metrics)
        XCTAssertTrue(dashboard.contains("/?token="), dashboard)
        // `vsa dashboard` prints the same URL; status shows where the metrics are and that a dashboard is served.
        XCTAssertEqual(f.vsa("dashboard '\(f.mnt)'").stdout.split(separator: "\n").first.map(String.init), dashboard)
        let status = f.vsa("status '\(f.mnt)'").stdout
        XCTAssertTrue(status.contains("metrics: \(metrics)") && status.contains("dashboard: served"), status)

        let fio = Process()
        fio.executableURL = URL(fileURLWithPath: "/usr/bin/fio")
        fio.arguments = [
            "--name=load", "--filename=\(f.mnt)/l", "--rw=randrw", "--bs=4k", "--ioengine=psync", "--runtime=60", "--time_based", "--size=96M",
            "--output=/dev/null",
        ]
        try fio.run()
        defer {
            fio.terminate()
            fio.waitUntilExit()
        }
        sleep(1)

        // The endpoint, twice, through prometheus_client's parser: every promised family, and the LUN's counters move.
        let scraped = Harness.sh("python3 '\(Self.script("check-metrics"))' '\(metrics)' 2 l", timeoutSeconds: 120)
        XCTAssertEqual(scraped.status, 0, "check-metrics: \(scraped.stderr)")
        print("metrics: \(scraped.stdout.trimmingCharacters(in: .whitespacesAndNewlines))")

        // Requests without the token, with a wrong one, or for a verb the dashboard does not do change nothing.
        let base = String(dashboard[..<dashboard.range(of: "/?token=")!.lowerBound])
        let token = String(dashboard[dashboard.range(of: "/?token=")!.upperBound...])
        let api = "-H 'X-VSA-Token: \(token)' '\(base)/api/request'"
        func code(_ curl: String) -> String { Harness.sh("curl -s -o /dev/null -w '%{http_code}' \(curl)").stdout }
        XCTAssertEqual(code("-X POST --data-binary $'drive-fail\\t0\\t0' '\(base)/api/request'"), "401")
        XCTAssertEqual(code("-X POST -H 'X-VSA-Token: 00' --data-binary $'drive-fail\\t0\\t0' '\(base)/api/request'"), "403")
        XCTAssertEqual(code("'\(base)/api/frame?token=nottheone'"), "403")
        // A request that changes the array takes its token from the header only: no other site's form can send it.
        XCTAssertEqual(code("-X POST --data-binary $'drive-fail\\t0\\t0' '\(base)/api/request?token=\(token)'"), "401")
        XCTAssertEqual(code("-X POST --data-binary $'lun-delete\\tl' \(api)"), "403")
        XCTAssertEqual(code("-X POST --data-binary $'drive-fail\\t0' \(api)"), "400")
        XCTAssertEqual(code("-X POST --data-binary $'drive-fail\\t7\\t0' \(api)"), "409")
        let drives = try f.json("status '\(f.mnt)' --json", as: [String: Any].self)["drives"] as? [[String: Any]] ?? []
        XCTAssertEqual(drives.filter { $0["state"] as? String == "online" }.count, 4, "a refused request changed a drive")

        // The page in Chromium: token required, no console error, live rates, and "fail" on member 1.
        let artifacts = URL(fileURLWithPath: Harness.vsa).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("test-artifacts")
        try FileManager.default.createDirectory(at: artifacts, withIntermediateDirectories: true)
        let screenshot = artifacts.appendingPathComponent("dashboard.png").path
        let browsed = Harness.sh("python3 '\(Self.script("check-dashboard"))' '\(dashboard)' l 1 '\(screenshot)'", timeoutSeconds: 180)
        XCTAssertEqual(browsed.status, 0, "check-dashboard: \(browsed.stderr)")
        print("dashboard: \(browsed.stdout.trimmingCharacters(in: .whitespacesAndNewlines)); screenshot \(screenshot)")
        XCTAssertTrue(FileManager.default.fileExists(atPath: screenshot))

        // `vsa status` shows the same rebuild the page showed.
        let after = try f.json("status '\(f.mnt)' --json", as: [String: Any].self)
        let rebuild = try XCTUnwrap(after["rebuild"] as? [String: Any], "status shows no rebuild")
        XCTAssertEqual(rebuild["member"] as? Int, 1)
        XCTAssertTrue(["running", "complete"].contains(rebuild["state"] as? String ?? ""), "\(rebuild)")
        XCTAssertTrue(f.vsa("status '\(f.mnt)'").stdout.contains("member 1 failed"))
    }

    func testBadServiceOptionsAndABusyPortChangeNothing() throws {
        let f = fixture!
        try f.create("--drives 3 --drive-size 64M --raid 5")
        let first = f.vsa("mount '\(f.dir)' '\(f.mnt)' -o metrics=127.0.0.1:0")
        XCTAssertEqual(first.status, 0, first.stderr)
        defer { f.unmount() }
        let metrics = try url(first.stdout, "metrics: ")
        let port = metrics.split(separator: ":").last!.split(separator: "/").first!
        // Mounted without a dashboard: `vsa dashboard` says how to get one.
        let none = f.vsa("dashboard '\(f.mnt)'")
        XCTAssertNotEqual(none.status, 0)
        XCTAssertEqual(none.stderrLines.count, 1, none.stderr)
        XCTAssertTrue(none.stderr.contains("-o dashboard"), none.stderr)

        // A second array asks for the port the first one serves on: refused in one line, the array untouched.
        let second = f.root + "/second"
        XCTAssertEqual(f.vsa("create '\(second)' --drives 3 --drive-size 64M --raid 5").status, 0)
        Harness.sh("mkdir -p '\(f.root)/mnt2'")
        let before = Harness.sh("md5sum '\(second)'/drive-*").stdout
        for (options, expected) in [
            ("metrics=127.0.0.1:\(port)", "is in use"),
            ("dashboard=127.0.0.1:\(port)", "is in use"),
            ("metrics=nonsense", "-o metrics takes HOST:PORT"),
            ("metrics=127.0.0.1:70000", "the port is a number from 0 to 65535"),
            ("dashboard=1.2.3:80", "is not an IPv4 address"),
            ("dashboard=example.org:80", "is not an IPv4 address"),
            ("dashboard=[::g]:80", "is not an IPv6 address"),
        ] {
            f.expectMountRefused(options, expected, array: second, mountpoint: f.root + "/mnt2")
        }
        XCTAssertEqual(Harness.sh("md5sum '\(second)'/drive-*").stdout, before, "a refused mount changed the drives")
        // The first array still serves.
        XCTAssertTrue(Harness.sh("curl -s '\(metrics)'").stdout.contains("vsa_array_state"))
    }
}
