// `vsa scenario run|check`: a timeline of faults and actions (Control/Scenario.swift; docs/FAULTS.md, "Scenarios")
// played against a mounted array, and a report of what happened when and what the array did in response: drive and
// director state changes, rebuilds (start, end, how long), failovers (how long after the step that caused them), the
// daemon's notes, and per phase (from one step to the next) the host's operations, errors and latency percentiles,
// from the LUNs' own histograms.
import ArgumentParser
import ArrayModel
import Control
import Daemon
import Foundation
import Metadata
import SysPosix

#if canImport(Glibc)
    import Glibc
#endif

struct ScenarioCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scenario", abstract: "Play a timeline of faults and actions (a JSON file) against a mounted array, and report what it did.",
        subcommands: [ScenarioRun.self, ScenarioCheck.self])
}

/// Reads and checks a scenario file, its inject steps' faults included; returns them with the faults.
func loadScenario(_ file: String, target: String) throws(VSAError) -> (Scenario, [Int: (FaultSpec, UInt64?)]) {
    guard let data = FileManager.default.contents(atPath: file) else { throw VSAError("cannot read \(file)") }
    guard data.count <= 4 << 20 else { throw VSAError("\(file) is \(data.count) bytes; a scenario is at most 4 MiB") }
    let scenario = try Scenario.parse(data)
    var faults: [Int: (FaultSpec, UInt64?)] = [:]
    for (i, step) in scenario.steps.enumerated() where step.action == "inject" {
        let words = (step.fault ?? "").split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        do {
            let command = try InjectAdd.parse([target] + words)
            faults[i] = (try command.faultSpec(), command.seed)
        } catch let error as VSAError {
            throw VSAError("step \(i) (inject): \(error.message)")
        } catch {
            let message = InjectAdd.message(for: error).split(separator: "\n").first.map(String.init) ?? "bad fault"
            throw VSAError("step \(i) (inject): \(message.trimmingWhitespace())")
        }
    }
    return (scenario, faults)
}

struct ScenarioCheck: VSACommand {
    static let configuration = CommandConfiguration(commandName: "check", abstract: "Check a scenario file without running it.")
    @Argument(help: "The scenario file (JSON).") var file: String

    func execute() throws(VSAError) {
        let (scenario, _) = try loadScenario(file, target: "/")
        print("scenario \"\(scenario.name)\": \(scenario.steps.count) steps over \(seconds(scenario.steps.last!.at)): ok")
    }
}

struct ScenarioRun: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "run", abstract: "Run a scenario against a mounted array; print its progress, then the report (exit 1 if a step was refused).")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Argument(help: "The scenario file (JSON; see docs/FAULTS.md, Scenarios).") var file: String
    @Flag(help: "Print the report as one JSON object (progress still goes to stderr).") var json = false

    func execute() throws(VSAError) {
        let (scenario, faults) = try loadScenario(file, target: target)
        let dir = try mountedArray(target, "run a scenario")
        var runner = ScenarioRunner(scenario: scenario, faults: faults, directory: dir, quiet: json)
        let report = try runner.run()
        if json {
            print(encodeJSON(report))
        } else {
            print(report.text)
        }
        if report.refusedSteps > 0 { throw VSAError("\(report.refusedSteps) step(s) of the scenario were refused; see the report") }
    }
}

func seconds(_ s: Double) -> String { String(format: "%.1f s", s) }

/// What a scenario run found.
struct ScenarioReport: Encodable {
    struct Event: Encodable {
        var at: Double
        var step: Int?
        var what: String
    }
    struct Phase: Encodable {
        var from: Double
        var to: Double
        /// The step that began it.
        var step: Int
        var read: LatencySummary
        var write: LatencySummary
        var flush: LatencySummary
        var hostErrors: UInt64
    }
    var name: String
    var seconds: Double
    var events: [Event] = []
    var phases: [Phase] = []
    var rebuilds: [String] = []
    var failovers: [String] = []
    var refusedSteps = 0
    var hostErrors: UInt64 = 0

    var text: String {
        var lines = ["scenario \"\(name)\": \(phases.count) phases over \(CLI.seconds(seconds))", "timeline:"]
        for e in events { lines.append("  " + CLI.seconds(e.at).leftPadded(9) + "  " + (e.step.map { "step \($0): " } ?? "") + e.what) }
        lines.append("phases (host I/O on every LUN; latency from the LUNs' histograms):")
        var rows = [["step", "from", "to", "reads", "writes", "fsyncs", "errors", "read p99", "write p99", "fsync p99"]]
        for p in phases {
            func p99(_ s: LatencySummary) -> String { s.count == 0 ? "-" : LatencySummary.format(s.p99Micros) }
            rows.append([
                String(p.step), CLI.seconds(p.from), CLI.seconds(p.to), String(p.read.count), String(p.write.count), String(p.flush.count),
                String(p.hostErrors), p99(p.read), p99(p.write), p99(p.flush),
            ])
        }
        lines.append(table(rows).split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
        lines.append("rebuilds: " + (rebuilds.isEmpty ? "none" : rebuilds.joined(separator: "; ")))
        lines.append("failovers: " + (failovers.isEmpty ? "none" : failovers.joined(separator: "; ")))
        lines.append("host errors: \(hostErrors); refused steps: \(refusedSteps)")
        return lines.joined(separator: "\n")
    }
}

extension String {
    func leftPadded(_ width: Int) -> String { count >= width ? self : String(repeating: " ", count: width - count) + self }
}

struct ScenarioRunner {
    let scenario: Scenario
    let faults: [Int: (FaultSpec, UInt64?)]
    let directory: String
    let quiet: Bool
    var report: ScenarioReport
    private var began = 0.0
    private var faultIDs: [Int: Int] = [:]
    // What the last look at the status saw.
    private var driveStates: [Int: String] = [:]
    private var directorStates: [String: String] = [:]
    private var rebuildSeen: (member: Int, state: String, since: Double)? = nil
    private var messagesSeen = 0
    /// Director failures a step asked for (fail-director, or a hang injected): when they were asked.
    private var failoverAsked: [String: (at: Double, step: Int)] = [:]

    init(scenario: Scenario, faults: [Int: (FaultSpec, UInt64?)], directory: String, quiet: Bool) {
        self.scenario = scenario
        self.faults = faults
        self.directory = directory
        self.quiet = quiet
        report = ScenarioReport(name: scenario.name, seconds: 0)
    }

    private var now: Double { Posix.monotonicSeconds() - began }

    private mutating func event(_ what: String, step: Int? = nil) {
        let e = ScenarioReport.Event(at: now, step: step, what: what)
        report.events.append(e)
        let line = CLI.seconds(e.at).leftPadded(9) + "  " + (step.map { "step \($0): " } ?? "") + what
        if quiet { FileHandle.standardError.write(Data((line + "\n").utf8)) } else { print(line) }
        fflush(nil)
    }

    private func counts() throws(VSAError) -> LatencyCounts {
        let payload = try control(directory, .latencyCounts)
        guard let counts = try? JSONDecoder().decode(LatencyCounts.self, from: Data(payload.utf8)) else {
            throw VSAError("the daemon's latency counts could not be read; see \(ArrayStore.logPath(directory: directory))")
        }
        return counts
    }

    mutating func run() throws(VSAError) -> ScenarioReport {
        let first = try statusReport(directory)
        for d in first.drives { driveStates[d.index] = d.state }
        for d in first.directors { directorStates[d.id] = d.state }
        messagesSeen = first.messages.count
        if let r = first.rebuild { rebuildSeen = (r.member, r.state, 0) }
        began = Posix.monotonicSeconds()
        var phaseStart = (at: 0.0, step: 0, counts: try counts())
        for (i, step) in scenario.steps.enumerated() {
            try watch(until: step.at)
            if i > 0 {
                let c = try counts()
                closePhase(phaseStart, c)
                phaseStart = (now, i, c)
            }
            if now > step.at + 1 { event("late by \(CLI.seconds(now - step.at)) (the step before it took longer)", step: i) }
            if step.action == "end" {
                report.seconds = now
                return report
            }
            try perform(i, step)
        }
        // No end step: the last step's phase lasts until what it started has been looked at once more.
        try watch(until: now + 0.25)
        closePhase(phaseStart, try counts())
        report.seconds = now
        return report
    }

    private mutating func closePhase(_ start: (at: Double, step: Int, counts: LatencyCounts), _ end: LatencyCounts) {
        var read = [UInt64](repeating: 0, count: LatencyHistogram.bucketCount)
        var write = read
        var flush = read
        var errors: UInt64 = 0
        for (name, lun) in end.luns {
            let before = start.counts.luns[name]
            func add(_ into: inout [UInt64], _ now: [[UInt64]], _ then: [[UInt64]]?) {
                let d = LatencyCounts.delta(now, since: then)
                for k in into.indices { into[k] &+= d[k] }
            }
            add(&read, lun.read, before?.read)
            add(&write, lun.write, before?.write)
            add(&flush, lun.flush, before?.flush)
            errors &+= lun.errors &- min(lun.errors, before?.errors ?? 0)
        }
        report.hostErrors &+= errors
        report.phases.append(
            .init(
                from: start.at, to: now, step: start.step, read: LatencySummary(counts: read), write: LatencySummary(counts: write),
                flush: LatencySummary(counts: flush), hostErrors: errors))
    }

    /// Looks at the array's status every 250 ms until `time`, and notes what changed.
    private mutating func watch(until time: Double) throws(VSAError) {
        repeat {
            try look()
            let left = time - now
            if left > 0 { usleep(UInt32(min(left, 0.25) * 1_000_000)) }
        } while now < time
    }

    /// Looks at the array's status once, notes what changed, and returns it.
    @discardableResult
    private mutating func look() throws(VSAError) -> StatusReport {
        let s = try statusReport(directory)
        for d in s.drives where driveStates[d.index] != d.state {
            if driveStates[d.index] != nil { event("drive \(d.index) (\(d.role), \(d.path)) \(driveStates[d.index]!) -> \(d.state)") }
            driveStates[d.index] = d.state
        }
        for d in s.directors where directorStates[d.id] != d.state {
            event("director \(d.id) \(directorStates[d.id] ?? "?") -> \(d.state)")
            if d.state == "failed", let asked = failoverAsked.removeValue(forKey: d.id) {
                report.failovers.append("\(d.id) failed over \(CLI.seconds(now - asked.at)) after step \(asked.step)")
            }
            directorStates[d.id] = d.state
        }
        if let r = s.rebuild, rebuildSeen?.member != r.member || rebuildSeen?.state != r.state {
            if r.state == "running" {
                event("rebuild of member \(r.member) onto \(r.drive) started")
                rebuildSeen = (r.member, r.state, now)
            } else {
                let took = rebuildSeen.map { $0.state == "running" && $0.member == r.member ? " after \(CLI.seconds(now - $0.since))" : "" } ?? ""
                event("rebuild of member \(r.member) \(r.state)\(took)")
                report.rebuilds.append("member \(r.member) onto \(r.drive): \(r.state)\(took)")
                rebuildSeen = (r.member, r.state, now)
            }
        }
        if s.messages.count > messagesSeen {
            for m in s.messages[messagesSeen...] { event("note: \(m)") }
        }
        messagesSeen = s.messages.count
        return s
    }

    private mutating func perform(_ i: Int, _ step: Scenario.Step) throws(VSAError) {
        do throws(VSAError) {
            switch step.action {
            case "inject":
                let (spec, seed) = faults[i]!
                guard let added = FaultAdded(payload: try control(directory, .inject(spec, seed: seed))) else { throw VSAError("unreadable answer") }
                faultIDs[i] = added.id
                if spec == .directorHang(director: spec.name) { failoverAsked[spec.name] = (now, i) }
                event("inject \(step.fault!): fault \(added.id), \(added.detail) (seed \(added.seed))", step: i)
            case "clear":
                if let s = step.step {
                    guard let id = faultIDs[s] else { throw VSAError("step \(s)'s fault was never injected") }
                    _ = try control(directory, .injectClear(id: id))
                    event("fault \(id) (step \(s)) cleared", step: i)
                } else {
                    let n = try control(directory, .injectClear(id: nil)).trimmingWhitespace()
                    event("\(n) fault(s) cleared", step: i)
                }
            case "fail-drive":
                _ = try control(directory, .driveFail(drive: step.drive!, force: false))
                event("drive \(step.drive!) failed", step: i)
            case "replace-drive":
                let payload = try control(
                    directory, .driveReplace(drive: step.drive!, newDrive: step.with.map(absolutePath), force: false, rateBytes: 200 << 20))
                event(
                    "replace drive \(step.drive!): " + (ReplaceStarted(payload: payload).map { "member \($0.member) onto \($0.newDrive)" } ?? "started"),
                    step: i)
            case "fail-director":
                failoverAsked[step.director!] = (now, i)
                let changed = DirectorChanged(payload: try control(directory, .directorFail(director: step.director!)))
                event("director \(step.director!) failed: " + changed.notes.joined(separator: "; "), step: i)
            case "restore-director":
                let changed = DirectorChanged(payload: try control(directory, .directorRestore(director: step.director!)))
                event("director \(step.director!) restored: " + changed.notes.joined(separator: "; "), step: i)
            case "scrub":
                _ = try control(directory, .scrub(repair: step.repair ?? false, rateBytes: 0))
                event("scrub\(step.repair == true ? " --repair" : "") started", step: i)
            case "powercut":
                let done = try cutPower(directory, torn: step.torn ?? false, seed: nil)
                event(
                    "power cut: \(done.droppedBlocks) unsynced blocks of 4 KiB rolled back"
                        + (step.torn == true ? ", \(done.keptBlocks) kept (torn, seed \(done.seed))" : ""), step: i)
            case "wait-rebuild":
                let deadline = now + (step.timeout ?? 600)
                event("waiting for the rebuild", step: i)
                while now < deadline {
                    let r = try look().rebuild
                    if r?.state != "running" && r?.queued == nil { break }
                    usleep(250_000)
                }
                if now >= deadline { event("the rebuild still runs after \(CLI.seconds(step.timeout ?? 600)); going on", step: i) }
            default:
                break
            }
        } catch {
            report.refusedSteps += 1
            event("refused: \(error.message)", step: i)
        }
    }
}
