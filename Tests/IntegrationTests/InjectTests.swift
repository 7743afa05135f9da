// `vsa inject` on a real mount (issue 14): each drive fault verb does what it says and the array survives it. Latency
// shows in fio's p99 and in the fault's hit count; bit rot is found and repaired by a scrub; read errors on a member
// are survived with redundancy (the member is failed and the hot spare rebuilt) and counted; a drive that stops
// answering is failed within the drive deadline while host reads go on. Every bad input gets one line and changes
// nothing. The LUN reads back byte for byte at the end.
import Foundation
import XCTest

final class InjectTests: FixtureTestCase {
    override class var rootReason: String? { "mounts FUSE file systems" }
    override class var fixtureBase: String { "/dev/shm" }

    private func status() throws -> [String: Any] { try fixture.json("status '\(fixture.mnt)' --json", as: [String: Any].self) }
    private func faults() throws -> [[String: Any]] { try status()["faults"] as? [[String: Any]] ?? [] }
    private func drive(_ index: Int) throws -> [String: Any] {
        ((try status()["drives"] as? [[String: Any]]) ?? []).first { $0["index"] as? Int == index } ?? [:]
    }

    /// Creates the array (`create`), a thin LUN `l` of `mib` MiB, mounts it with `options`, and fills the LUN with
    /// random data, kept in ROOT/data. The caller unmounts.
    private func mountFilled(_ create: String, mib: Int, options: String) throws {
        let f = fixture!
        try f.create(create)
        XCTAssertEqual(f.vsa("lun create '\(f.dir)' l --size \(mib)M").status, 0)
        try f.mount(options)
        XCTAssertEqual(
            Harness.sh("head -c \(mib)M /dev/urandom > \(f.root)/data && dd if=\(f.root)/data of=\(f.mnt)/l bs=1M conv=notrunc,fsync status=none").status, 0)
    }

    /// fio 4 KiB random reads at QD1 for `seconds`: the 99th percentile completion latency in microseconds.
    private func p99Micros(seconds: Int) -> Double {
        let r = Harness.sh(
            "fio --name=p --filename='\(fixture.mnt)/l' --rw=randread --bs=4k --direct=1 --ioengine=psync --runtime=\(seconds) --time_based --output-format=json",
            timeoutSeconds: 120)
        guard let json = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any],
            let job = (json["jobs"] as? [[String: Any]])?.first, let read = job["read"] as? [String: Any],
            let clat = read["clat_ns"] as? [String: Any], let percentiles = clat["percentile"] as? [String: Any],
            let p99 = percentiles["99.000000"] as? Double
        else {
            XCTFail("fio: \(r.stderr) \(r.stdout.prefix(300))")
            return 0
        }
        return p99 / 1000
    }

    func testDriveFaultsAreInjectedListedClearedAndSurvived() throws {
        let f = fixture!
        let (m, r) = (f.mnt, f.root)
        // A small cache, so reads reach the drives.
        try mountFilled("--drives 5 --spares 1 --drive-size 96M --raid 5 --stripe-unit 16K", mib: 160, options: "-o drive_timeout=2,cache=16M")
        defer { f.unmount() }

        // Bad input: one line each, and nothing injected.
        for bad in [
            "drive 9 hang", "drive 1 latency abc", "drive 1 latency 70000", "drive 1 latency 0", "drive 1 latency 5 --reads",
            "drive 1 latency 5 --spike 100", "drive 1 errors --rate 0", "drive 1 errors --rate 101", "drive 1 errors --offset 1M",
            "drive 1 errors --reads --writes", "drive 1 errors --offset 1M --length 0", "drive 1 rot 0", "drive 1 rot", "drive 1 melt",
            "engine 1 hang", "drive '' hang",
        ] {
            let out = f.vsa("inject '\(m)' \(bad)")
            XCTAssertNotEqual(out.status, 0, bad)
            XCTAssertEqual(out.stderrLines.count, 1, "\(bad): \(out.stderr)")
        }
        for bad in ["inject clear '\(m)' 99", "inject clear '\(m)' 0", "inject list '\(r)'", "inject '\(r)' drive 1 hang"] {
            let out = f.vsa(bad)
            XCTAssertNotEqual(out.status, 0, bad)
            XCTAssertEqual(out.stderrLines.count, 1, "\(bad): \(out.stderr)")
        }
        XCTAssertEqual(try faults().count, 0)

        // Latency: 20 ms on member 1 shows in fio's p99, and in the fault's hits; clearing it takes it away.
        let before = p99Micros(seconds: 2)
        let add = f.vsa("inject '\(m)' drive 1 latency 20 --seed 5")
        XCTAssertEqual(add.status, 0, add.stderr)
        XCTAssertTrue(add.stdout.contains("fault 1") && add.stdout.contains("seed 5"), add.stdout)
        let slow = p99Micros(seconds: 2)
        print("4k randread QD1 p99: \(Int(before)) us, with 20 ms on member 1: \(Int(slow)) us")
        XCTAssertGreaterThan(slow, 15_000, "p99 with a 20 ms member")
        let latency = try XCTUnwrap(try faults().first)
        XCTAssertEqual(latency["kind"] as? String, "latency")
        XCTAssertEqual(latency["member"] as? Int, 1)
        XCTAssertGreaterThan(latency["hits"] as? Int ?? 0, 0)
        // The latency histograms (cumulative since the mount, so their tail) see it: member 1's reads and the LUN's.
        let latencies = try status()
        let member1 = ((latencies["drives"] as? [[String: Any]]) ?? []).first { $0["index"] as? Int == 1 }
        let driveRead = (member1?["latency"] as? [String: Any])?["read"] as? [String: Any]
        XCTAssertGreaterThanOrEqual(driveRead?["maxMicros"] as? Double ?? 0, 20_000, "\(member1 ?? [:])")
        let lun = ((latencies["luns"] as? [[String: Any]]) ?? []).first
        let lunRead = (lun?["latency"] as? [String: Any])?["read"] as? [String: Any]
        XCTAssertGreaterThanOrEqual(lunRead?["maxMicros"] as? Double ?? 0, 20_000, "\(lun ?? [:])")
        XCTAssertGreaterThan(lunRead?["count"] as? Int ?? 0, 10)
        XCTAssertTrue(f.vsa("inject list '\(m)'").stdout.contains("latency"))
        // vsa top: the LUN's row shows the last second's read p99, in milliseconds now.
        let top = Harness.sh(
            "fio --name=t --filename='\(m)/l' --rw=randread --bs=4k --direct=1 --runtime=3 --time_based >/dev/null 2>&1 & sleep 0.3; \"$VSA\" top '\(m)' --count 2; wait",
            timeoutSeconds: 60)
        let lunRows = top.stdout.split(separator: "\n").filter { $0.hasPrefix("l ") }.map { $0.split(separator: " ").map(String.init) }
        XCTAssertEqual(lunRows.count, 2, top.stdout)
        XCTAssertEqual(lunRows.last?.count, 12, "lun, 3 rates, read p50 and p99 (value and unit), 3 write and fsync '-', errors: \(lunRows.last ?? [])")
        XCTAssertEqual(lunRows.last?[7], "ms", "read p99 of the last second with 20 ms on member 1: \(lunRows.last ?? [])")
        XCTAssertEqual(f.vsa("inject clear '\(m)' 1").status, 0)
        XCTAssertEqual(try faults().count, 0)
        XCTAssertLessThan(p99Micros(seconds: 1), 15_000, "latency gone once cleared")

        // Bit rot: 12 blocks of member 3 flipped; a scrub finds and repairs every one of them.
        XCTAssertEqual(f.vsa("inject '\(m)' drive 3 rot 12 --seed 9").status, 0)
        let scrub = f.vsa("scrub '\(m)' --repair")
        XCTAssertEqual(scrub.status, 0, scrub.stderr)
        let scrubbed = try XCTUnwrap(try status()["scrub"] as? [String: Any])
        XCTAssertEqual(scrubbed["mismatches"] as? Int, 12, "\(scrubbed)")
        XCTAssertEqual(scrubbed["repaired"] as? Int, 12, "\(scrubbed)")
        XCTAssertEqual(try faults().first?["state"] as? String, "done")
        XCTAssertEqual(f.vsa("inject clear '\(m)'").status, 0)

        // A bad sector: read errors on one block of member 1 that holds LUN data. The block comes from redundancy, is
        // written back, and the member stays (md's read-error repair); the host sees nothing.
        let block = Harness.sh(
            """
            python3 -c '
            import sys
            data = open(sys.argv[1], "rb").read()
            blocks = {data[i:i + 4096] for i in range(0, len(data), 4096)}
            drive = open(sys.argv[2], "rb").read()
            print(next(o for o in range(0, len(drive), 4096) if drive[o:o + 4096] in blocks))
            ' \(r)/data \(f.dir)/drive-1
            """
        ).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertNotNil(UInt64(block), "no LUN block found on member 1: \(block)")
        XCTAssertEqual(f.vsa("inject '\(m)' drive 1 errors --reads --offset \(block) --length 4K").status, 0)
        XCTAssertEqual(Harness.sh("cmp <(dd if=\(m)/l bs=1M iflag=direct status=none) \(r)/data").status, 0, "read back with a bad block on member 1")
        let repaired = try drive(1)
        XCTAssertEqual(repaired["state"] as? String, "online", "\(repaired)")
        XCTAssertGreaterThanOrEqual(repaired["readErrors"] as? Int ?? 0, 1, "\(repaired)")
        XCTAssertLessThanOrEqual(repaired["readErrors"] as? Int ?? 0, 20, "\(repaired)")
        XCTAssertEqual(try status()["array"].flatMap { ($0 as? [String: Any])?["state"] as? String }, "optimal")
        XCTAssertGreaterThan(try faults().first?["hits"] as? Int ?? 0, 0)
        XCTAssertTrue(f.vsa("status '\(m)'").stdout.contains("(served from redundancy, drive kept)"))
        XCTAssertEqual(f.vsa("inject clear '\(m)'").status, 0)
        XCTAssertEqual(Harness.sh("cmp <(dd if=\(m)/l bs=1M iflag=direct status=none) \(r)/data").status, 0, "read back after the repair")

        // Read errors on all of member 2: each one is served from redundancy, and past 20 of them the member is
        // failed as md fails it; the spare takes its place and is rebuilt. Counted.
        XCTAssertEqual(f.vsa("inject '\(m)' drive 2 errors --reads").status, 0)
        XCTAssertEqual(Harness.sh("cmp <(dd if=\(m)/l bs=1M iflag=direct status=none) \(r)/data").status, 0, "read back with read errors on member 2")
        var rebuilt = false
        for _ in 0..<600 {
            if (try status()["rebuild"] as? [String: Any])?["state"] as? String == "complete" {
                rebuilt = true
                break
            }
            usleep(100_000)
        }
        let rebuild = try status()["rebuild"]
        XCTAssertTrue(rebuilt, "\(rebuild ?? "no rebuild")")
        let errors = try XCTUnwrap(try faults().first)
        XCTAssertGreaterThan(errors["hits"] as? Int ?? 0, 0)
        XCTAssertEqual(errors["state"] as? String, "gone (member replaced)")
        XCTAssertEqual(f.vsa("inject clear '\(m)'").status, 0)

        // A member that stops answering: failed within the 2 s deadline, host reads complete meanwhile.
        XCTAssertEqual(f.vsa("inject '\(m)' drive 0 hang").status, 0)
        let start = Date()
        XCTAssertEqual(
            Harness.sh("cmp <(dd if=\(m)/l bs=1M iflag=direct status=none) \(r)/data", timeoutSeconds: 120).status, 0, "read back with member 0 hung")
        let took = Date().timeIntervalSince(start)
        print("hung member: the LUN read back in \(String(format: "%.1f", took)) s")
        XCTAssertLessThan(took, 20)
        let member0 = try drive(0)
        XCTAssertEqual(member0["state"] as? String, "failed", "\(member0)")
        XCTAssertGreaterThan(member0["timeouts"] as? Int ?? 0, 0, "\(member0)")
        XCTAssertEqual(try faults().first?["state"] as? String, "active (drive failed)")
        XCTAssertEqual(f.vsa("inject clear '\(m)'").status, 0)
        XCTAssertTrue(f.vsa("status '\(m)'").stdout.contains("fault 5 injected into member 0"))
    }

    /// Director faults: a slow director shows in the latency of the stripes it serves; a hung one is found by the array
    /// itself within the director deadline and failed over (its partner replays its mirrored write-pending data), with
    /// no error to the host and nothing lost; once cleared it can be restored.
    func testASlowDirectorShowsAndAHungOneIsFailedOverByTheArray() throws {
        let f = fixture!
        let (m, r) = (f.mnt, f.root)
        try mountFilled("--drives 4 --drive-size 64M --raid 5 --stripe-unit 16K", mib: 96, options: "-o director_timeout=2,cache=16M")
        defer { f.unmount() }
        XCTAssertTrue(f.vsa("status '\(m)'").stdout.contains("deadlines: drive 30 s, director 2 s"))

        for bad in [
            "director 9z hang", "director 3a hang", "director 1a melt", "director 1a slow 0", "director 1a slow", "director 1a hang --seed 3",
            "director 1a slow 5 --reads", "director 1a hang 5",
        ] {
            let out = f.vsa("inject '\(m)' \(bad)")
            XCTAssertNotEqual(out.status, 0, bad)
            XCTAssertEqual(out.stderrLines.count, 1, "\(bad): \(out.stderr)")
        }
        XCTAssertEqual(try faults().count, 0)

        // Slow: 10 ms over every request of 1b.
        XCTAssertEqual(f.vsa("inject '\(m)' director 1b slow 10").status, 0)
        let again = f.vsa("inject '\(m)' director 1b slow 1")
        XCTAssertEqual(again.stderrLines.count, 1, again.stderr)
        XCTAssertTrue(again.stderr.contains("already has a slow fault"), again.stderr)
        let slow = p99Micros(seconds: 2)
        print("4k randread QD1 p99 with director 1b 10 ms slow: \(Int(slow)) us")
        XCTAssertGreaterThan(slow, 9_000)
        XCTAssertGreaterThan(try faults().first?["hits"] as? Int ?? 0, 0)
        XCTAssertEqual(f.vsa("inject clear '\(m)'").status, 0)

        // Hung: 1a stops taking requests; the host's writes and reads wait for the director deadline, then go on
        // through 1b, which took 1a's stripes and replayed its mirrored write-pending data.
        XCTAssertEqual(f.vsa("inject '\(m)' director 1a hang").status, 0)
        // Status does not wait for the hung director (its pool homes' counters come from the last gathering).
        let during = Harness.sh("s=$(date +%s%N); \"$VSA\" status '\(m)' --json > '\(r)/during.json' || exit 9; e=$(date +%s%N); echo $(( (e - s) / 1000000 ))")
        XCTAssertEqual(during.status, 0, during.stderr)
        let statusMillis = Int(during.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
        print("vsa status with director 1a hung: \(statusMillis) ms")
        XCTAssertTrue((0..<1500).contains(statusMillis), "vsa status waited \(statusMillis) ms for a hung director")
        let start = Date()
        let io = Harness.sh(
            "dd if=\(r)/data of=\(m)/l bs=64k count=512 conv=notrunc status=none && cmp <(dd if=\(m)/l bs=1M iflag=direct status=none) \(r)/data",
            timeoutSeconds: 120)
        let took = Date().timeIntervalSince(start)
        print("hung director: 32 MiB written and 96 MiB read back in \(String(format: "%.1f", took)) s")
        XCTAssertEqual(io.status, 0, io.stderr)
        XCTAssertLessThan(took, 30)
        let directors = try status()["directors"] as? [[String: Any]] ?? []
        XCTAssertEqual(directors.first { $0["id"] as? String == "1a" }?["state"] as? String, "failed", "\(directors)")
        let messages = try status()["messages"] as? [String] ?? []
        XCTAssertTrue(messages.contains { $0.contains("director 1a finished no request") && $0.contains("failed over by the array") }, "\(messages)")
        XCTAssertEqual(try faults().first?["state"] as? String, "active (director failed)")
        XCTAssertEqual(f.vsa("inject clear '\(m)'").status, 0)
        XCTAssertEqual(f.vsa("director restore '\(m)' 1a").status, 0)
        XCTAssertEqual(Harness.sh("cmp <(dd if=\(m)/l bs=1M iflag=direct status=none) \(r)/data").status, 0)
    }

    /// A scenario file runs end to end while fio runs (issue 14, item 3): its steps happen at their times, the report
    /// has a phase per step with the host's operations and latency, the rebuild it caused with its duration, and no
    /// host error. Bad scenario files are refused with one line before anything runs.
    func testAScenarioRunsEndToEndAndReportsWhatTheArrayDid() throws {
        let f = fixture!
        let (m, r) = (f.mnt, f.root)
        try mountFilled("--drives 5 --spares 1 --drive-size 64M --raid 5 --stripe-unit 16K", mib: 96, options: "-o cache=16M")
        defer { f.unmount() }

        let bad = [
            "not json", #"{"name": "x", "steps": []}"#, #"{"name": "x", "steps": [{"at": 0, "action": "melt"}]}"#,
            #"{"name": "x", "steps": [{"at": 2, "action": "clear"}, {"at": 1, "action": "clear"}]}"#,
            #"{"name": "x", "steps": [{"at": -1, "action": "clear"}]}"#, #"{"name": "x", "steps": [{"at": 0, "action": "inject"}]}"#,
            #"{"name": "x", "steps": [{"at": 0, "action": "inject", "fault": "drive 1 latency abc"}]}"#,
            #"{"name": "x", "steps": [{"at": 0, "action": "end"}, {"at": 1, "action": "clear"}]}"#,
            #"{"name": "x", "steps": [{"at": 0, "action": "clear", "step": 0}]}"#, #"{"steps": [{"at": 0, "action": "clear"}]}"#,
        ]
        for (i, text) in bad.enumerated() {
            try text.write(toFile: "\(r)/bad\(i).json", atomically: true, encoding: .utf8)
            let out = f.vsa("scenario run '\(m)' '\(r)/bad\(i).json'")
            XCTAssertNotEqual(out.status, 0, text)
            XCTAssertEqual(out.stderrLines.count, 1, "\(text): \(out.stderr)")
            XCTAssertEqual(out.stdout, "", text)
        }
        XCTAssertEqual(try faults().count, 0)

        let scenario = #"""
            {"name": "short", "steps": [
              {"at": 0, "action": "inject", "fault": "drive 1 latency 10 --seed 4"},
              {"at": 1.5, "action": "clear", "step": 0},
              {"at": 2, "action": "fail-drive", "drive": "2"},
              {"at": 2.5, "action": "wait-rebuild", "timeout": 120},
              {"at": 4, "action": "end"}]}
            """#
        try scenario.write(toFile: "\(r)/short.json", atomically: true, encoding: .utf8)
        XCTAssertEqual(f.vsa("scenario check '\(r)/short.json'").status, 0)
        let run = Harness.sh(
            """
            fio --name=load --filename='\(m)/l' --rw=randrw --bs=4k --direct=1 --ioengine=io_uring --iodepth=4 --runtime=20 --time_based --fsync=16 --output-format=terse >/dev/null 2>&1 &
            load=$!
            "$VSA" scenario run '\(m)' '\(r)/short.json' --json; rc=$?
            kill $load 2>/dev/null; wait $load 2>/dev/null
            exit $rc
            """, timeoutSeconds: 300)
        XCTAssertEqual(run.status, 0, run.stderr)
        let report = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any], run.stdout)
        let phases = report["phases"] as? [[String: Any]] ?? []
        XCTAssertEqual(phases.count, 4, "\(phases)")
        let first = phases.first?["read"] as? [String: Any]
        XCTAssertGreaterThan(first?["count"] as? Int ?? 0, 0, "host reads in the first phase")
        XCTAssertGreaterThanOrEqual(first?["p99Micros"] as? Double ?? 0, 9_000, "10 ms on member 1 in the first phase")
        let rebuilds = report["rebuilds"] as? [String] ?? []
        XCTAssertTrue(rebuilds.first?.contains("complete") == true, "\(rebuilds)")
        XCTAssertEqual(report["hostErrors"] as? Int, 0)
        XCTAssertEqual(report["refusedSteps"] as? Int, 0)
        let events = (report["events"] as? [[String: Any]] ?? []).compactMap { $0["what"] as? String }
        XCTAssertTrue(events.contains { $0.contains("rebuild of member 2") && $0.contains("started") }, "\(events)")
        XCTAssertTrue(run.stderr.contains("step 2: drive 2 failed"), "progress goes to stderr with --json: \(run.stderr)")
    }
}
