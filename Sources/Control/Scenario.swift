// Scenario files (`vsa scenario run TARGET FILE`; docs/FAULTS.md, "Scenarios"): a timeline of faults and actions to
// play against a mounted array, in JSON. What the array did in response is the runner's report. The file is input:
// it is checked whole (known actions, their fields, times in order and bounded) before anything is done.
//
//   {"name": "a drive dies under load",
//    "steps": [{"at": 0, "action": "inject", "fault": "drive 1 latency 20 --jitter 5"},
//              {"at": 10, "action": "clear"},
//              {"at": 12, "action": "fail-drive", "drive": "2"},
//              {"at": 13, "action": "wait-rebuild"},
//              {"at": 30, "action": "end"}]}
import ArrayModel
import Foundation

public struct Scenario: Codable, Sendable, Equatable {
    public var name: String
    public var description: String?
    public var steps: [Step]

    public struct Step: Codable, Sendable, Equatable {
        /// Seconds from the start.
        public var at: Double
        public var action: String
        /// inject: the words of `vsa inject TARGET ...` after the target ("drive 1 latency 20 --jitter 5").
        public var fault: String?
        /// clear: the step (its index in `steps`, from 0) whose injected fault to clear; none: every fault.
        public var step: Int?
        /// fail-drive, replace-drive: the member; replace-drive: the new drive (none: a hot spare).
        public var drive: String?
        public var with: String?
        /// fail-director, restore-director.
        public var director: String?
        /// scrub: repair what it finds.
        public var repair: Bool?
        /// powercut: tear the unsynced writes at 4 KiB (`vsa powercut --torn`).
        public var torn: Bool?
        /// wait-rebuild: the longest wait, in seconds (default 600).
        public var timeout: Double?
    }

    public static let actions = [
        "inject", "clear", "fail-drive", "replace-drive", "fail-director", "restore-director", "scrub", "powercut", "wait-rebuild", "end",
    ]
    /// A day: a scenario is an experiment, not a service.
    public static let longestSeconds: Double = 86_400

    /// Reads and checks a scenario file's text: one line of error for the first thing wrong.
    public static func parse(_ data: Data) throws(VSAError) -> Scenario {
        let scenario: Scenario
        do { scenario = try JSONDecoder().decode(Scenario.self, from: data) } catch {
            throw VSAError("the scenario is not valid JSON of a scenario (\(Self.describe(error))); see docs/FAULTS.md, Scenarios")
        }
        try scenario.check()
        return scenario
    }

    public func check() throws(VSAError) {
        guard !steps.isEmpty else { throw VSAError("the scenario has no steps") }
        guard steps.count <= 10_000 else { throw VSAError("the scenario has \(steps.count) steps; 10000 at most") }
        var last = 0.0
        for (i, s) in steps.enumerated() {
            let here = "step \(i) (\(s.action.prefix(40)))"
            guard s.at.isFinite, s.at >= 0, s.at <= Self.longestSeconds else { throw VSAError("\(here): at must be seconds from 0 to 86400") }
            guard s.at >= last else { throw VSAError("\(here): at \(s.at) comes before the step above it (\(last)); steps go in time order") }
            last = s.at
            guard Self.actions.contains(s.action) else { throw VSAError("\(here): unknown action; the actions are \(Self.actions.joined(separator: ", "))") }
            func need(_ value: String?, _ field: String) throws(VSAError) {
                guard let value, !value.isEmpty else { throw VSAError("\(here): needs \"\(field)\"") }
            }
            switch s.action {
            case "inject": try need(s.fault, "fault")
            case "fail-drive", "replace-drive": try need(s.drive, "drive")
            case "fail-director", "restore-director": try need(s.director, "director")
            case "clear":
                if let step = s.step {
                    guard step >= 0, step < i, steps[step].action == "inject" else { throw VSAError("\(here): step \(step) is not an inject step above it") }
                }
            case "wait-rebuild":
                if let t = s.timeout {
                    guard t.isFinite, t > 0, t <= Self.longestSeconds else { throw VSAError("\(here): timeout must be seconds from 0 to 86400") }
                }
            case "end": guard i == steps.count - 1 else { throw VSAError("\(here): end must be the last step") }
            default: break
            }
        }
    }

    private static func describe(_ error: Error) -> String {
        if let e = error as? DecodingError {
            switch e {
            case .keyNotFound(let key, let c): return "missing \"\(key.stringValue)\"" + path(c)
            case .typeMismatch(_, let c), .valueNotFound(_, let c): return "wrong type" + path(c)
            case .dataCorrupted(let c): return c.codingPath.isEmpty ? "not JSON" : "bad value" + path(c)
            @unknown default: return "unreadable"
            }
        }
        return "unreadable"
    }

    private static func path(_ c: DecodingError.Context) -> String {
        let p = c.codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
        return p.isEmpty ? "" : " at \(p)"
    }
}
