// Scrub: an online pass over every stripe that checks the redundancy on the drives (mirror copies agree, P and Q
// match the data) and with --repair fixes what it can (BackEnd `scrub(stripe:repair:)`). Like a rebuild it walks the
// stripes in order, each on its owning director, rate-limited, and reports progress and counts in `vsa status`.
import ArrayModel
import BackEnd
import Directors
import Foundation
import Synchronization

/// Counts of the current or last scrub.
final class ScrubTracker: @unchecked Sendable {
    struct Run {
        var repair: Bool
        var state: String  // running, complete, stopped
        var totalStripes: UInt64
        var startedAt: Double
        var finishedAt: Double?
        var rateLimit: UInt64
    }
    private let lock = Locked<Run?>(nil)
    let doneStripes = Atomic<UInt64>(0)
    let checked = Atomic<UInt64>(0)
    let mismatches = Atomic<UInt64>(0)
    let repaired = Atomic<UInt64>(0)
    let unrecoverable = Atomic<UInt64>(0)
    let skipped = Atomic<UInt64>(0)
    let unreadable = Atomic<UInt64>(0)
    let stopRequested = Atomic<Bool>(false)

    var run: Run? { lock.withLock { $0 } }
    var isRunning: Bool { lock.withLock { $0?.state == "running" } }
    func update(_ body: (inout Run?) -> Void) { lock.withLock { body(&$0) } }

    func reset() {
        doneStripes.store(0, ordering: .relaxed)
        checked.store(0, ordering: .relaxed)
        mismatches.store(0, ordering: .relaxed)
        repaired.store(0, ordering: .relaxed)
        unrecoverable.store(0, ordering: .relaxed)
        skipped.store(0, ordering: .relaxed)
        unreadable.store(0, ordering: .relaxed)
        stopRequested.store(false, ordering: .relaxed)
    }

    func count(_ outcome: ScrubOutcome) {
        switch outcome {
        case .consistent:
            checked.add(1, ordering: .relaxed)
        case .mismatch:
            checked.add(1, ordering: .relaxed)
            mismatches.add(1, ordering: .relaxed)
        case .repaired, .repairedData:
            checked.add(1, ordering: .relaxed)
            mismatches.add(1, ordering: .relaxed)
            repaired.add(1, ordering: .relaxed)
        case .unrecoverable:
            checked.add(1, ordering: .relaxed)
            mismatches.add(1, ordering: .relaxed)
            unrecoverable.add(1, ordering: .relaxed)
        case .skipped:
            skipped.add(1, ordering: .relaxed)
        case .unreadable:
            unreadable.add(1, ordering: .relaxed)
        }
    }
}

extension ArrayDaemon {
    /// `vsa scrub`: starts a pass over every stripe (one at a time, and not during a rebuild).
    func startScrub(repair: Bool, rate: UInt64) throws(VSAError) {
        try controlLock.withLock { _ throws(VSAError) in
            guard !shuttingDown.load(ordering: .relaxed) else { throw VSAError("the array is being unmounted") }
            if scrubTracker.isRunning { throw VSAError("a scrub is running already; vsa status shows its progress") }
            if rebuildTracker.isRunning {
                throw VSAError("a rebuild is running; scrub when it has finished (vsa status shows its progress)")
            }
            if store.superblock.rebuildMember != nil {
                throw VSAError("a rebuild stopped before the end (see vsa status); unmount and mount again to resume it, then scrub")
            }
            scrubTracker.reset()
            scrubTracker.update {
                $0 = .init(
                    repair: repair, state: "running", totalStripes: store.geometry.stripeCount, startedAt: Date().timeIntervalSince1970,
                    finishedAt: nil, rateLimit: rate)
            }
        }
        daemonLog("scrub started (\(repair ? "repair" : "check only"))")
        let thread = Thread { [self] in runScrub(repair: repair, rate: rate) }
        thread.name = "scrub"
        thread.start()
    }

    private func runScrub(repair: Bool, rate: UInt64) {
        let began = Date().timeIntervalSince1970
        var stopped = false
        var logged = 0
        _ = walkStripes(from: 0, rate: rate) { range, luns in
            if scrubTracker.stopRequested.load(ordering: .relaxed) {
                stopped = true
                return false
            }
            engines.scrub(stripes: range, repair: repair) {
                placement(of: $0, luns: luns)
            } tally: { stripe, outcome in
                scrubTracker.count(outcome)
                // The log names the first stripes that were not right, for whoever reads it after a failed repair.
                if outcome != .consistent && logged < 32 {
                    logged += 1
                    daemonLog("scrub: stripe \(stripe): \(outcome)")
                }
            }
            return true
        } after: { next, _ in
            scrubTracker.doneStripes.store(next, ordering: .relaxed)
        }
        let finished = Date().timeIntervalSince1970
        scrubTracker.update {
            $0?.state = stopped ? "stopped" : "complete"
            $0?.finishedAt = finished
        }
        let t = scrubTracker
        daemonLog(
            "scrub \(stopped ? "stopped" : "complete") in \(Int(finished - began)) s: \(t.checked.load(ordering: .relaxed)) stripes checked, \(t.mismatches.load(ordering: .relaxed)) mismatches, \(t.repaired.load(ordering: .relaxed)) repaired, \(t.unrecoverable.load(ordering: .relaxed)) unrecoverable, \(t.skipped.load(ordering: .relaxed)) skipped"
        )
    }

    /// Asks a running scrub to stop (unmount); waits up to a few seconds.
    func stopScrub() {
        stopAndWait(request: { scrubTracker.stopRequested.store(true, ordering: .relaxed) }, running: { scrubTracker.isRunning })
    }

    /// The scrub part of `vsa status`.
    func scrubInfo() -> StatusReport.ScrubInfo? {
        guard let run = scrubTracker.run else { return nil }
        let t = scrubTracker
        let done = t.doneStripes.load(ordering: .relaxed)
        let progress = walkProgress(
            done: done, from: 0, total: run.totalStripes, startedAt: run.startedAt, finishedAt: run.finishedAt, running: run.state == "running")
        return StatusReport.ScrubInfo(
            repair: run.repair, state: run.state, doneStripes: done, totalStripes: run.totalStripes, percent: progress.percent,
            checkedStripes: t.checked.load(ordering: .relaxed), mismatches: t.mismatches.load(ordering: .relaxed),
            repaired: t.repaired.load(ordering: .relaxed), unrecoverable: t.unrecoverable.load(ordering: .relaxed),
            skippedStripes: t.skipped.load(ordering: .relaxed), unreadableStripes: t.unreadable.load(ordering: .relaxed),
            bytesPerSecond: progress.bytesPerSecond, etaSeconds: progress.etaSeconds)
    }
}
