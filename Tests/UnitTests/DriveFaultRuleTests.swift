// Faults injected into a live drive (`vsa inject`; DriveFaultRules.swift), as DriveIO sees them: on a drive in memory
// (tmpfs: copied synchronously) and on a direct-I/O drive (through the ring). Errors fail only the operations their
// range and kind match, and fail the drive as a real I/O error does; latency holds the batch; a hung drive holds its
// operations until the rule is cleared (then they complete), or until the drive deadline fails it. A rule's random
// choices repeat with its seed.
import Buffers
import Foundation
import XCTest

@testable import Drives

final class DriveFaultRuleTests: XCTestCase {
    var directories: [String] = []
    override func tearDown() {
        for d in directories { try? FileManager.default.removeItem(atPath: d) }
        DriveIO.deadlineSeconds = 30
    }

    /// A 4 MiB drive file in `base` (/dev/shm: memory, copied synchronously; the temporary directory: direct I/O).
    private func makeDrive(in base: String, directIO: Bool) throws -> Drive {
        let directory = base + "/vsa-faults-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        directories.append(directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try Drive.createFile(path: directory + "/drive-0", sizeBytes: 4 << 20)
        return try Drive(path: directory + "/drive-0", directIO: directIO)
    }

    private var drives: [(String, Drive)] {
        get throws { [("memory", try makeDrive(in: "/dev/shm", directIO: false)), ("direct", try makeDrive(in: NSTemporaryDirectory(), directIO: true))] }
    }

    func testErrorsFailOnlyWhatTheyMatchAndFailTheDrive() throws {
        for (kind, drive) in try drives {
            let io = try DriveIO(drives: [drive])
            let page = alignedBuffer(bytes: 4096)
            drive.faults.add(
                DriveFaultRule(id: 1, effect: .errors(reads: true, writes: false, range: (1 << 20)..<(1 << 20) + 8192, perMillion: 1_000_000), seed: 1))
            // Outside the range, and a write inside it: untouched.
            io.queueRead(drive: 0, into: page.base, count: 4096, offsetBytes: 2 << 20)
            io.queueWrite(drive: 0, from: page.base, count: 4096, offsetBytes: 1 << 20)
            XCTAssertEqual(io.submit(), 0, kind)
            XCTAssertEqual(drive.state, .online, kind)
            XCTAssertEqual(drive.faults.snapshot.first?.hits, 0, kind)
            // A read touching its last page: an I/O error, and the drive is failed as by a real one.
            io.queueRead(drive: 0, into: page.base, count: 8192 - 4096, offsetBytes: (1 << 20) + 4096)
            XCTAssertEqual(io.submit(), 1, kind)
            XCTAssertEqual(drive.state, .failed, kind)
            XCTAssertEqual(drive.faults.snapshot.first?.hits, 1, kind)
        }
    }

    func testARepairingReadKeepsItsDriveWithinTheReadErrorBudget() throws {
        for (kind, drive) in try drives {
            let io = try DriveIO(drives: [drive])
            let page = alignedBuffer(bytes: 4096)
            drive.faults.add(DriveFaultRule(id: 1, effect: .errors(reads: true, writes: false, range: nil, perMillion: 1_000_000), seed: 1))
            // A fast path that only gives up: reported, the drive kept, nothing counted.
            io.readErrors = .report
            io.queueRead(drive: 0, into: page.base, count: 4096, offsetBytes: 0)
            XCTAssertEqual(io.submit(), 1, kind)
            XCTAssertEqual(io.lastReadErrors, 1, kind)
            XCTAssertEqual(drive.state, .online, kind)
            XCTAssertEqual(drive.readErrors.load(ordering: .relaxed), 0, kind)
            // A repairing read: counted, the drive kept up to the budget, and failed past it.
            for n in 1...DriveIO.readErrorBudget {
                io.readErrors = .count
                io.queueRead(drive: 0, into: page.base, count: 4096, offsetBytes: 0)
                XCTAssertEqual(io.submit(), 1, kind)
                XCTAssertEqual(drive.state, .online, "\(kind): error \(n)")
                XCTAssertEqual(drive.readErrors.load(ordering: .relaxed), n, kind)
            }
            // The count that fails the drive halves every hour (the daemon's health thread), as md's does: then the next
            // error is within the budget again.
            drive.decayReadErrors()
            XCTAssertEqual(drive.recentReadErrors.load(ordering: .relaxed), DriveIO.readErrorBudget / 2, kind)
            io.readErrors = .count
            io.queueRead(drive: 0, into: page.base, count: 4096, offsetBytes: 0)
            XCTAssertEqual(io.submit(), 1, kind)
            XCTAssertEqual(drive.state, .online, kind)
            XCTAssertEqual(drive.readErrors.load(ordering: .relaxed), DriveIO.readErrorBudget + 1, kind)
            // The mode lasts one batch: outside a repairing batch, a read error fails the drive at once.
            io.queueRead(drive: 0, into: page.base, count: 4096, offsetBytes: 0)
            XCTAssertEqual(io.submit(), 1, kind)
            XCTAssertEqual(drive.state, .failed, "\(kind): a read error outside a repairing batch fails the drive")
            XCTAssertEqual(io.lastReadErrors, 0, kind)
        }
    }

    func testLatencyHoldsTheBatchAndAHungDriveHoldsItsOperationsUntilCleared() throws {
        for (kind, drive) in try drives {
            let io = try DriveIO(drives: [drive])
            let page = alignedBuffer(bytes: 4096)
            memset(page.base, 0x5A, 4096)
            drive.faults.add(DriveFaultRule(id: 1, effect: .latency(fixedMicros: 50_000, jitterMicros: 0, spikeMicros: 0, spikePerMillion: 0), seed: 1))
            var began = Date()
            io.queueWrite(drive: 0, from: page.base, count: 4096, offsetBytes: 0)
            XCTAssertEqual(io.submit(), 0, kind)
            XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(began), 0.045, kind)
            XCTAssertTrue(drive.faults.remove(id: 1))
            XCTAssertFalse(drive.faults.isArmed)

            // Hung: the read waits for the clear (from another thread), then completes with the data.
            drive.faults.add(DriveFaultRule(id: 2, effect: .hang, seed: 2))
            let faults = drive.faults
            DispatchQueue.global().asyncAfter(deadline: .now() + 0.2) { faults.remove(id: 2) }
            let back = alignedBuffer(bytes: 4096)
            began = Date()
            io.queueRead(drive: 0, into: back.base, count: 4096, offsetBytes: 0)
            XCTAssertEqual(io.submit(), 0, kind)
            XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(began), 0.15, kind)
            XCTAssertEqual(memcmp(back.base, page.base, 4096), 0, kind)
            XCTAssertEqual(drive.state, .online, kind)

            // Hung past the deadline: the drive is failed, its timeout counted.
            DriveIO.deadlineSeconds = 0.3
            drive.faults.add(DriveFaultRule(id: 3, effect: .hang, seed: 3))
            began = Date()
            io.queueRead(drive: 0, into: back.base, count: 4096, offsetBytes: 0)
            io.queueFlush(drive: 0)
            XCTAssertEqual(io.submit(), 1, kind)
            XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(began), 0.25, kind)
            XCTAssertEqual(drive.state, .failed, kind)
            XCTAssertEqual(drive.timeouts.load(ordering: .relaxed), 2, kind)
            DriveIO.deadlineSeconds = 30
        }
    }

    func testARulesRandomChoicesRepeatWithItsSeed() {
        func run(seed: UInt64) -> [DriveFaultDecision] {
            let faults = DriveFaults()
            faults.add(DriveFaultRule(id: 1, effect: .errors(reads: true, writes: true, range: nil, perMillion: 300_000), seed: seed))
            faults.add(DriveFaultRule(id: 2, effect: .latency(fixedMicros: 10, jitterMicros: 1000, spikeMicros: 5000, spikePerMillion: 100_000), seed: seed))
            return (0..<200).map { faults.decide(write: $0 % 3 == 0, offset: UInt64($0) * 4096, count: 4096) }
        }
        let a = run(seed: 42)
        XCTAssertEqual(a, run(seed: 42))
        XCTAssertNotEqual(a, run(seed: 43))
        let failures = a.filter { $0 == .fail }.count
        XCTAssertTrue((30...90).contains(failures), "about 30% of 200 fail, got \(failures)")
        XCTAssertTrue(a.contains { if case .proceed(let d) = $0 { return d >= 5010 } else { return false } }, "some spikes")
        // A flush (count 0) is never failed by an errors rule.
        let faults = DriveFaults()
        faults.add(DriveFaultRule(id: 1, effect: .errors(reads: true, writes: true, range: nil, perMillion: 1_000_000), seed: 1))
        XCTAssertEqual(faults.decide(write: true, offset: 0, count: 0), .proceed(delayMicros: 0))
        XCTAssertFalse(DriveFaultRule(id: 1, effect: .errors(reads: false, writes: false, range: nil, perMillion: 1), seed: 1).isValid)
        XCTAssertFalse(DriveFaultRule(id: 1, effect: .latency(fixedMicros: 61_000_000, jitterMicros: 0, spikeMicros: 0, spikePerMillion: 0), seed: 1).isValid)
    }
}
