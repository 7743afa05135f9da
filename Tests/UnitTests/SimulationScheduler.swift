// The simulation's seeded scheduler: interleavings explored and replayed, not left to luck.
//
// The simulation's tasks run on real threads, but one at a time: a task runs only while it holds the turn, and hands
// it on at pause points. Task 0 is the host (the simulation's own thread: its writes, reads, flushes, failovers);
// tasks 1... are the directors' threads (each, on its turn, runs what waits in its director's queue, or an idle
// destage pass: Director.runQueued / destageWhileIdle, the code Director.run runs). Pause points, where the seed
// decides whether another task runs first:
//   - inside a destage pass: after each stripe it wrote (TrackCache.afterEachStripe), and between its last stripe
//     and its journal commit (TrackCache.beforeCommit: the fsync race's window);
//   - between the pieces of a host request (Engines.afterEachPiece);
//   - inside a failover, with every role held (Engines.duringFailover);
//   - wherever a thread would wait for another (a completion group, an executor role, a full ring:
//     ScheduleHooks.block): the turn goes to other tasks until it can go on.
// Only the turn holder touches the scheduler's state and the generator, so a seed gives one interleaving, every time.
// A crash abandons the directors' tasks as they are, in the middle of a pass or not. The process it models is dead,
// but the threads are real: an idle task just ends; a task parked inside a step is first cut off from its drives
// (the old assembly's Drive objects are failed, so DriveIO issues nothing more to them) and then runs out its step
// alone, without pauses, and ends. Nothing it does reaches the files the next assembly opened.
import Directors
import Drives
import Foundation
import GlobalMemory

final class SimulationScheduler: @unchecked Sendable {
    private enum Where { case running, parkedIdle, parkedInStep, dead }
    /// One task: its thread waits on `turn` until the turn is its own. A thread touches only its own Task after it
    /// handed the turn on (the next holder may be changing the task list meanwhile).
    private final class Task: @unchecked Sendable {
        let turn = DispatchSemaphore(value: 0)
        var place: Where
        var director: Director?
        /// Abandoned inside a step: it runs the step out (its drives failed) and ends.
        var dying = false
        init(place: Where, director: Director?) {
            self.place = place
            self.director = director
        }
    }
    private var rng: SplitMix
    private var tasks: [Task] = [Task(place: .running, director: nil)]
    private(set) var current = 0
    /// Chance, in percent, that a pause point hands the turn on.
    let pausePercent: UInt64
    /// Turns handed on at pause points and while blocked.
    private(set) var switches = 0
    /// Where the last switches happened, for the failure log.
    private(set) var events: [String] = []

    init(seed: UInt64, pausePercent: UInt64 = 30) {
        rng = SplitMix(seed: seed)
        self.pausePercent = pausePercent
    }

    /// Installs the hooks on `engines` and starts a task per director (those of earlier engines must be abandoned).
    func adopt(_ engines: Engines) {
        precondition(tasks.dropFirst().allSatisfy { $0.place == .dead }, "the tasks of the last engines were not abandoned")
        for director in engines.directors {
            // The name, not the director: a cache's hook holding its director would keep the whole engine alive.
            let id = director.id
            director.cache.beforeCommit = { [unowned self] in self.pause("\(id) before its journal commit") }
            director.cache.afterEachStripe = { [unowned self] in self.pause("\(id) between stripes") }
            let task = Task(place: .parkedIdle, director: director)
            let index = tasks.count
            tasks.append(task)
            let thread = Thread { [unowned self] in self.directorTask(task, index) }
            thread.stackSize = 1 << 20
            thread.start()
        }
        engines.duringFailover = { [unowned self] in self.pause("failover") }
        ScheduleHooks.block = { [unowned self] ready in self.block(until: ready) }
    }

    /// The process dies (a crash, or the end of the simulation): every director task ends. `drives` are the drives
    /// of the assembly the tasks' directors use; they are failed first, so a task inside a step writes nothing more.
    func abandon(drives: [Drive]) {
        precondition(current == 0, "the host abandons the directors")
        var dying = false
        for task in tasks.dropFirst() {
            switch task.place {
            case .parkedIdle:
                task.place = .dead
                task.director = nil
                task.turn.signal()
            case .parkedInStep:
                task.dying = true
                dying = true
            case .running, .dead: break
            }
        }
        guard dying else { return }
        for drive in drives { _ = drive.transition(to: .failed) }
        while let t = tasks.indices.first(where: { tasks[$0].dying && tasks[$0].place != .dead }) { handOver(to: t) }
    }

    /// The end of the simulation: the tasks end and the hooks go.
    func stop(drives: [Drive]) {
        abandon(drives: drives)
        ScheduleHooks.block = nil
    }

    /// A pause point of the task holding the turn: the seed decides whether another task runs first.
    func pause(_ point: String) {
        guard !tasks[current].dying, rng.next() % 100 < pausePercent, let next = pickOther(includingHost: true) else { return }
        note("\(name(current)) pauses (\(point)); \(name(next)) runs")
        handOver(to: next)
    }

    /// The host gives the directors' threads a turn (what the daemon's idle directors do between requests).
    func letDirectorsRun() {
        guard let next = pickOther(includingHost: false) else { return }
        note("host lets \(name(next)) run")
        handOver(to: next)
    }

    /// Lets every task parked inside a step finish it (before the host looks at the drives behind the directors).
    func settle() {
        while let stuck = tasks.indices.first(where: { $0 != 0 && $0 != current && tasks[$0].place == .parkedInStep }) {
            note("\(name(current)) waits for \(name(stuck)) to finish its step")
            handOver(to: stuck)
        }
    }

    private func block(until ready: () -> Bool) {
        var rounds = 0
        while !ready() {
            rounds += 1
            guard rounds < 100_000, let next = pickOther(includingHost: true) else {
                fatalError("simulation scheduler: \(name(current)) waits and no task can run (a deadlock); events: \(events.suffix(12))")
            }
            if rounds == 1 { note("\(name(current)) waits; \(name(next)) runs") }
            handOver(to: next)
        }
    }

    private func directorTask(_ task: Task, _ index: Int) {
        while true {
            task.turn.wait()
            guard task.place != .dead, let director = task.director else { return }
            // One turn of the director's thread, as Director.run would take it.
            if !director.runQueued() { _ = director.destageWhileIdle() }
            if task.dying {
                // Abandoned while inside the step: done now; the host, waiting in `abandon`, goes on.
                task.place = .dead
                task.director = nil
                current = 0
                tasks[0].place = .running
                tasks[0].turn.signal()
                return
            }
            // The turn goes back: to the host, or to another director first.
            let next = pickOther(includingHost: true) ?? 0
            task.place = .parkedIdle
            current = next
            tasks[next].place = .running
            tasks[next].turn.signal()
        }
    }

    /// Hands the turn to `next` and waits until it comes back to the current task.
    private func handOver(to next: Int) {
        let me = current
        let mine = tasks[me]
        switches += 1
        mine.place = .parkedInStep
        current = next
        tasks[next].place = .running
        tasks[next].turn.signal()
        mine.turn.wait()
        precondition(current == me, "the turn came back to the wrong task")
    }

    /// A task other than the current one that may be given the turn (nil: none).
    private func pickOther(includingHost host: Bool) -> Int? {
        var count = 0
        for t in tasks.indices where t != current && tasks[t].place != .dead && (t != 0 || host) { count += 1 }
        guard count > 0 else { return nil }
        var k = Int(rng.next() % UInt64(count))
        for t in tasks.indices where t != current && tasks[t].place != .dead && (t != 0 || host) {
            if k == 0 { return t }
            k -= 1
        }
        return nil
    }

    func clearEvents() { events.removeAll() }

    private func name(_ task: Int) -> String { task == 0 ? "host" : tasks[task].director.map { "director \($0.id)" } ?? "task \(task)" }

    private func note(_ event: String) {
        events.append(event)
        if events.count > 256 { events.removeFirst(128) }
    }
}
