// The pool's cleaner in the daemon (docs/POOL.md, "The cleaner"): a thread of its own decides when cleaning pays
// and asks every home for small steps (a few stripes of its victim), each run on the director acting for the home
// between the host I/O queued there, so host I/O never waits for more than one step. The policy:
//
//   free (of the segments host data may use)  >= 25%: idle; cleaning now would only move blocks that may die anyway
//   10% .. 25%: clean, reading at most the rate (-o cleaner_rate, 64 MiB/s by default) of victims' stripes
//   < 10%: urgent, as fast as the steps go, until free is back above 12%
//
// A write the pool cannot promise a block to cleans in the foreground on its own director first (PoolPort.promise),
// so overwrites of a nearly full pool slow down rather than fail; ENOSPC means the pool is full of live data.
import ArrayModel
import Directors
import Foundation
import Pool
import Synchronization
import SysPosix

/// The cleaner's setting and what it is doing (status).
final class CleanerControl: @unchecked Sendable {
    static let defaultRate: UInt64 = 64 << 20
    enum State: Int {
        case idle = 0, cleaning, urgent, off
        var name: String { ["idle", "cleaning", "urgent", "off"][rawValue] }
    }
    /// Bytes of victims' stripes read per second at most when not urgent (0: no background cleaning).
    let rate: UInt64
    let state = Atomic<Int>(State.idle.rawValue)
    /// Held by the thread for each round of steps; the stop takes it once the thread is told to stop, so no step
    /// is left running on directors being stopped.
    let gate = Locked<Void>(())
    init(rate: UInt64) { self.rate = rate }
}

extension ArrayDaemon {
    func startCleaner() {
        let thread = Thread { [self] in
            var credit = 0.0
            var last = Posix.monotonicSeconds()
            var urgent = false
            var tick = 0
            while !shuttingDown.load(ordering: .relaxed) {
                usleep(50_000)
                // The pool thread also counts thin LUN files' allocated bytes, once a second (not the health loop:
                // a request a director is slow to answer must not hold up the recording of drive failures).
                tick += 1
                if tick % 20 == 1 {
                    countAllocated()
                    // Under the command lock, or not this time: a look that began before a snapshot was made must not
                    // store "not sharing" after it (a command that changes sharing looks again itself).
                    _ = commandLock.withLockIfAvailable { _ in noteSharing() }
                }
                let now = Posix.monotonicSeconds()
                let elapsed = now - last
                last = now
                guard let runtime = poolRuntime() else { continue }
                let fraction = runtime.space.freeFraction
                urgent = fraction < (urgent ? 0.12 : 0.10)
                if !urgent && cleaner.rate == 0 {
                    cleaner.state.store(CleanerControl.State.off.rawValue, ordering: .relaxed)
                    continue
                }
                guard urgent || fraction < 0.25 else {
                    cleaner.state.store(CleanerControl.State.idle.rawValue, ordering: .relaxed)
                    credit = 0
                    continue
                }
                // Credit in bytes of stripes read; at most half a second's worth saved up.
                let stripeBytes = Double(runtime.layout.geometry.stripeDataBytes)
                credit = min(credit + Double(cleaner.rate) * elapsed, max(Double(cleaner.rate) / 2, stripeBytes))
                let minimumDead = urgent ? runtime.layout.blocksPerSegment / 8 : runtime.layout.blocksPerSegment / 4
                var stripes = urgent ? Int.max : Int(credit / stripeBytes)
                guard stripes > 0 else { continue }
                cleaner.state.store((urgent ? CleanerControl.State.urgent : .cleaning).rawValue, ordering: .relaxed)
                // Rounds of a few stripes per home until the budget is spent, every home is idle, or a twentieth
                // of a second went (then the free space is looked at again).
                let began = Posix.monotonicSeconds()
                while stripes > 0 && Posix.monotonicSeconds() - began < 0.05 {
                    let perHome = min(4, max(1, stripes / max(1, runtime.layout.homes)))
                    let steps = (0..<runtime.layout.homes).map { _ in CleanStep() }
                    let rc: Int32 = cleaner.gate.withLock { _ in
                        guard !shuttingDown.load(ordering: .relaxed) else { return -1 }
                        return engines.poolEach { .clean(home: $0, stripes: perHome, minimumDead: minimumDead, step: steps[$0]) }
                    }
                    if rc != 0 { break }
                    let busy = steps.filter { !$0.idle }.count
                    if busy == 0 {
                        credit = 0
                        break
                    }
                    let read = busy * perHome
                    if !urgent { credit -= Double(read) * stripeBytes }
                    stripes = stripes == Int.max ? stripes : stripes - read
                }
            }
        }
        thread.name = "pool-cleaner"
        thread.start()
    }

    /// Waits for a cleaner step in flight (the stop, after `shuttingDown` is set).
    func stopCleaner() { cleaner.gate.withLock { _ in } }
}
