// The control protocol: every request the daemon takes on its control socket (DIR/control.sock), and its replies,
// as one typed definition that the daemon, the `vsa` command and anything else that drives the array share. Nobody
// builds or splits request strings by hand.
//
// On the wire a request is one line: its verb and its arguments, separated by tabs (names may hold spaces, never a
// tab or a newline: `validateLUNName` refuses both). A reply is "ok\n" and a payload, or "error " and one line. What
// arrives on the socket is input: `ControlRequest(line:)` checks the argument count and bounds every number before
// anything acts on it, and refuses the rest with one line.
import ArrayModel
import Foundation

public enum ControlRequest: Sendable, Equatable {
    /// The array's state as JSON (`StatusReport`). Answered at once, beside commands that change the array.
    case status
    case lunCreate(name: String, sizeBytes: UInt64, thin: Bool)
    case lunDelete(name: String)
    /// `secureSeconds` 0: an ordinary snapshot.
    case snapCreate(lun: String, name: String, secureSeconds: UInt64)
    case snapDelete(lun: String, name: String)
    case snapRestore(lun: String, name: String)
    case snapLink(lun: String, name: String, clone: String)
    case snapUnlink(clone: String)
    case snapRelink(clone: String, name: String)
    /// `drive`: a member's index, path or name in the array folder.
    case driveFail(drive: String, force: Bool)
    /// `newDrive` nil: onto a hot spare. `rateBytes` per second per drive, 0 for no limit.
    case driveReplace(drive: String, newDrive: String?, force: Bool, rateBytes: UInt64)
    case scrub(repair: Bool, rateBytes: UInt64)
    case directorFail(director: String)
    case directorRestore(director: String)
    /// Every LUN's write-pending data destaged and the drives flushed.
    case flush
    /// A fault injected into the running array (`vsa inject`); `seed` nil: the daemon picks one and reports it.
    case inject(FaultSpec, seed: UInt64?)
    /// Clears injected fault `id`, or all of them (nil).
    case injectClear(id: Int?)
    /// Every LUN's latency histogram bucket counts now (JSON `LatencyCounts`): two of them give the percentiles of
    /// what happened in between (a scenario's phases).
    case latencyCounts
    /// The host's view loses every write no flush made durable (`vsa powercut`; a mount with `-o powercut`); `torn`:
    /// each 4 KiB block of them, at random from `seed` (nil: the daemon picks one), may keep its newest contents.
    case powerCut(torn: Bool, seed: UInt64?)
    /// `vsa replica create`: LUNs copied to NBD exports elsewhere, one URI per LUN, in order.
    case replicaCreate(
        name: String, luns: [String], uris: [String], mode: String, cycleSeconds: UInt64, journal: String = "", cacheBytes: UInt64 = 0,
        apply: String = "r1")
    case replicaSuspend(name: String)
    case replicaResume(name: String)
    case replicaDelete(name: String)
    case replicaFailover(name: String)
    case replicaFailback(name: String)

    /// The request's verb on the wire.
    public var verb: String {
        switch self {
        case .status: "status"
        case .lunCreate: "lun-create"
        case .lunDelete: "lun-delete"
        case .snapCreate: "snap-create"
        case .snapDelete: "snap-delete"
        case .snapRestore: "snap-restore"
        case .snapLink: "snap-link"
        case .snapUnlink: "snap-unlink"
        case .snapRelink: "snap-relink"
        case .driveFail: "drive-fail"
        case .driveReplace: "drive-replace"
        case .scrub: "scrub"
        case .directorFail: "director-fail"
        case .directorRestore: "director-restore"
        case .flush: "flush"
        case .inject: "inject"
        case .injectClear: "inject-clear"
        case .latencyCounts: "latency-counts"
        case .powerCut: "powercut"
        case .replicaCreate: "replica-create"
        case .replicaSuspend: "replica-suspend"
        case .replicaResume: "replica-resume"
        case .replicaDelete: "replica-delete"
        case .replicaFailover: "replica-failover"
        case .replicaFailback: "replica-failback"
        }
    }

    /// The arguments after the verb, in wire order.
    public var arguments: [String] {
        switch self {
        case .status, .flush, .latencyCounts: []
        case .lunCreate(let name, let size, let thin): [name, String(size)] + (thin ? ["thin"] : [])
        case .lunDelete(let name): [name]
        case .snapCreate(let lun, let name, let seconds): [lun, name, String(seconds)]
        case .snapDelete(let lun, let name), .snapRestore(let lun, let name): [lun, name]
        case .snapLink(let lun, let name, let clone): [lun, name, clone]
        case .snapUnlink(let clone): [clone]
        case .snapRelink(let clone, let name): [clone, name]
        case .driveFail(let drive, let force): [drive, wireFlag(force)]
        case .driveReplace(let drive, let newDrive, let force, let rate): [drive, newDrive ?? "", wireFlag(force), String(rate)]
        case .scrub(let repair, let rate): [wireFlag(repair), String(rate)]
        case .directorFail(let director), .directorRestore(let director): [director]
        case .inject(let spec, let seed): spec.words + [seed.map(String.init) ?? ""]
        case .injectClear(let id): [id.map(String.init) ?? ""]
        case .powerCut(let torn, let seed): [wireFlag(torn), seed.map(String.init) ?? ""]
        case .replicaCreate(let name, let luns, let uris, let mode, let cycle, let journal, let cache, let apply):
            [name, mode, String(cycle), journal, String(cache), apply, String(luns.count)] + luns + uris
        case .replicaSuspend(let name), .replicaResume(let name), .replicaDelete(let name), .replicaFailover(let name), .replicaFailback(let name):
            [name]
        }
    }

    /// The request as it goes on the wire, newline included.
    public var line: String { ([verb] + arguments).joined(separator: "\t") + "\n" }

    /// Whether the daemon runs the request alone (one at a time, under its command lock). `status` and
    /// `latency-counts` only look. A power cut changes the host's view, yet waits for the kernel's write-back and for
    /// writes in flight: outside the lock, what could keep those waiting (an injected hang) can still be cleared.
    public var runsAlone: Bool {
        switch self {
        case .status, .latencyCounts, .powerCut: false
        default: true
        }
    }

    /// Whether the request can change which versions of the pool share blocks (snapshots, clones, deleted LUNs).
    public var changesSharing: Bool {
        switch self {
        case .lunDelete, .snapCreate, .snapDelete, .snapRestore, .snapLink, .snapUnlink, .snapRelink: true
        default: false
        }
    }

    /// Parses a request line (its trailing newline optional). Throws one line for anything that is not a request:
    /// an unknown verb, the wrong number of arguments, a number that is not one or out of range, a flag not 0 or 1.
    public init(line: String) throws(VSAError) {
        var text = Substring(line)
        if text.hasSuffix("\n") { text = text.dropLast() }
        let words = text.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
        let verb = words[0]
        let args = Array(words.dropFirst())
        func expect(_ counts: Int...) throws(VSAError) {
            guard counts.contains(args.count) else {
                throw VSAError("\(verb) takes \(counts.map(String.init).joined(separator: " or ")) arguments, not \(args.count)")
            }
        }
        switch verb {
        case "status":
            try expect(0)
            self = .status
        case "flush":
            try expect(0)
            self = .flush
        case "latency-counts":
            try expect(0)
            self = .latencyCounts
        case "lun-create":
            try expect(2, 3)
            guard args.count == 2 || args[2] == "thin" else { throw VSAError("lun-create's third argument is thin or nothing, not '\(args[2])'") }
            self = .lunCreate(name: args[0], sizeBytes: try Self.number(args[1], "size"), thin: args.count == 3)
        case "lun-delete":
            try expect(1)
            self = .lunDelete(name: args[0])
        case "snap-create":
            try expect(3)
            self = .snapCreate(lun: args[0], name: args[1], secureSeconds: try Self.number(args[2], "secure time"))
        case "snap-delete":
            try expect(2)
            self = .snapDelete(lun: args[0], name: args[1])
        case "snap-restore":
            try expect(2)
            self = .snapRestore(lun: args[0], name: args[1])
        case "snap-link":
            try expect(3)
            self = .snapLink(lun: args[0], name: args[1], clone: args[2])
        case "snap-unlink":
            try expect(1)
            self = .snapUnlink(clone: args[0])
        case "snap-relink":
            try expect(2)
            self = .snapRelink(clone: args[0], name: args[1])
        case "drive-fail":
            try expect(2)
            self = .driveFail(drive: args[0], force: try Self.parseFlag(args[1], "force"))
        case "drive-replace":
            try expect(4)
            self = .driveReplace(
                drive: args[0], newDrive: args[1].isEmpty ? nil : args[1], force: try Self.parseFlag(args[2], "force"),
                rateBytes: try Self.number(args[3], "rate"))
        case "scrub":
            try expect(2)
            self = .scrub(repair: try Self.parseFlag(args[0], "repair"), rateBytes: try Self.number(args[1], "rate"))
        case "director-fail":
            try expect(1)
            self = .directorFail(director: args[0])
        case "director-restore":
            try expect(1)
            self = .directorRestore(director: args[0])
        case "inject":
            guard args.count >= 2 else { throw VSAError("inject takes a fault and a seed") }
            let seed = args[args.count - 1]
            self = .inject(try FaultSpec(words: Array(args.dropLast())), seed: seed.isEmpty ? nil : try Self.number(seed, "seed"))
        case "inject-clear":
            try expect(1)
            if args[0].isEmpty {
                self = .injectClear(id: nil)
            } else {
                let id = try Self.number(args[0], "fault id")
                guard id <= UInt64(Int32.max) else { throw VSAError("no fault has id \(id)") }
                self = .injectClear(id: Int(id))
            }
        case "powercut":
            try expect(2)
            self = .powerCut(torn: try Self.parseFlag(args[0], "torn"), seed: args[1].isEmpty ? nil : try Self.number(args[1], "seed"))
        case "replica-create":
            guard args.count >= 7 else {
                throw VSAError("replica-create takes a name, a mode, a cycle, a journal, a cache size, an applier, a count and its LUNs and URIs")
            }
            let count = try Self.number(args[6], "LUN count")
            guard count >= 1, count <= 256, args.count == 7 + 2 * Int(count) else {
                throw VSAError("replica-create: \(args.count - 7) LUNs and URIs do not make \(count) pairs (1 to 256)")
            }
            let n = Int(count)
            self = .replicaCreate(
                name: args[0], luns: Array(args[7..<(7 + n)]), uris: Array(args[(7 + n)...]), mode: args[1],
                cycleSeconds: try Self.number(args[2], "cycle"), journal: args[3], cacheBytes: try Self.number(args[4], "cache size"), apply: args[5])
        case "replica-suspend":
            try expect(1)
            self = .replicaSuspend(name: args[0])
        case "replica-resume":
            try expect(1)
            self = .replicaResume(name: args[0])
        case "replica-delete":
            try expect(1)
            self = .replicaDelete(name: args[0])
        case "replica-failover":
            try expect(1)
            self = .replicaFailover(name: args[0])
        case "replica-failback":
            try expect(1)
            self = .replicaFailback(name: args[0])
        default:
            throw VSAError("unknown control request")
        }
    }

    /// A decimal number of at most 19 digits (below 10^19: no overflow anywhere it is added to an offset's worth).
    static func number(_ text: String, _ what: String) throws(VSAError) -> UInt64 {
        guard !text.isEmpty, text.utf8.count <= 19, text.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }), let value = UInt64(text) else {
            throw VSAError("bad \(what) '\(text.prefix(40))': a decimal number of at most 19 digits")
        }
        return value
    }

    static func parseFlag(_ text: String, _ what: String) throws(VSAError) -> Bool {
        guard text == "0" || text == "1" else { throw VSAError("bad \(what) flag '\(text.prefix(40))': 0 or 1") }
        return text == "1"
    }
}

private func wireFlag(_ value: Bool) -> String { value ? "1" : "0" }

/// A reply: done, with a payload (JSON for `status`, one of the payload types below for the requests that have one,
/// empty for the rest), or refused with one line saying what is wrong and what to do.
public enum ControlReply: Sendable, Equatable {
    case done(String)
    case refused(String)

    public var wire: String {
        switch self {
        case .done(let payload): "ok\n" + payload
        case .refused(let line): "error " + line.split(separator: "\n").joined(separator: "; ")
        }
    }

    /// Reads a reply off the wire; nil when it is neither form (a daemon that died while answering).
    public init?(wire: String) {
        if wire.hasPrefix("ok\n") {
            self = .done(String(wire.dropFirst(3)))
        } else if wire.hasPrefix("error ") {
            self = .refused(String(wire.dropFirst(6)).trimmingWhitespace())
        } else {
            return nil
        }
    }
}

/// The payload of `snapCreate`: how long the daemon took (its own clock: the command line's process start and socket
/// are not the array's).
public struct SnapshotTaken: Sendable, Equatable {
    public var milliseconds: Double
    public init(milliseconds: Double) { self.milliseconds = milliseconds }
    public var payload: String {
        let tenths = Int((milliseconds * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)\n"
    }
    public init?(payload: String) {
        guard let ms = Double(payload.trimmingWhitespace()), ms.isFinite, ms >= 0 else { return nil }
        milliseconds = ms
    }
}

/// The payload of `snapLink`: the clone's LUN id.
public struct CloneLinked: Sendable, Equatable {
    public var lunID: UInt32
    public init(lunID: UInt32) { self.lunID = lunID }
    public var payload: String { "\(lunID)" }
    public init?(payload: String) {
        guard let id = UInt32(payload.trimmingWhitespace()) else { return nil }
        lunID = id
    }
}

/// The payload of `driveReplace`: which member, onto what, and whether it waits for a rebuild already running.
public struct ReplaceStarted: Sendable, Equatable {
    public var member: Int
    public var newDrive: String
    public var queued: Bool
    public init(member: Int, newDrive: String, queued: Bool) {
        self.member = member
        self.newDrive = newDrive
        self.queued = queued
    }
    public var payload: String { "\(member)\t\(newDrive)" + (queued ? "\tqueued" : "") }
    public init?(payload: String) {
        let parts = payload.trimmingWhitespace().split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2 || (parts.count == 3 && parts[2] == "queued"), let member = Int(parts[0]), member >= 0 else { return nil }
        self.member = member
        newDrive = parts[1]
        queued = parts.count == 3
    }
}

/// The payload of `directorFail` and `directorRestore`: what the array did, a note a line.
public struct DirectorChanged: Sendable, Equatable {
    public var notes: [String]
    public init(notes: [String]) { self.notes = notes }
    public var payload: String { notes.joined(separator: "\n") }
    public init(payload: String) { notes = payload.split(separator: "\n").map(String.init).filter { !$0.isEmpty } }
}

/// The payload of `powercut`: what was rolled back, and the seed a torn cut drew from.
public struct PowerCutDone: Sendable, Equatable {
    public var droppedBlocks: Int
    public var keptBlocks: Int
    public var seed: UInt64
    public var luns: [String]
    public init(droppedBlocks: Int, keptBlocks: Int, seed: UInt64, luns: [String]) {
        self.droppedBlocks = droppedBlocks
        self.keptBlocks = keptBlocks
        self.seed = seed
        self.luns = luns
    }
    public var payload: String { (["\(droppedBlocks)", "\(keptBlocks)", "\(seed)"] + luns).joined(separator: "\t") }
    public init?(payload: String) {
        let parts = payload.trimmingWhitespace().split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
        guard parts.count >= 3, let dropped = Int(parts[0]), dropped >= 0, let kept = Int(parts[1]), kept >= 0, let seed = UInt64(parts[2]) else {
            return nil
        }
        self.init(droppedBlocks: dropped, keptBlocks: kept, seed: seed, luns: Array(parts.dropFirst(3)))
    }
}

/// A fault to inject (docs/FAULTS.md). Drives are named as `vsa drive` names them: index, path or entry name.
public enum FaultSpec: Sendable, Equatable {
    /// Each operation on the drive completes later: `fixedMicros`, plus up to `jitterMicros`, plus `spikeMicros` for
    /// `spikePerMillion` of them.
    case driveLatency(drive: String, fixedMicros: UInt64, jitterMicros: UInt64, spikeMicros: UInt64, spikePerMillion: UInt32)
    /// Reads and/or writes of the drive fail with an I/O error: those touching [fromByte, fromByte + lengthBytes) (nil:
    /// anywhere), `perMillion` of them.
    case driveErrors(drive: String, reads: Bool, writes: Bool, fromByte: UInt64?, lengthBytes: UInt64?, perMillion: UInt32)
    /// The drive stops answering: its operations wait until the fault is cleared or the drive deadline fails it.
    case driveHang(drive: String)
    /// One bit flipped in each of `blocks` random written 4 KiB blocks of the drive's data area, once.
    case driveRot(drive: String, blocks: UInt32)
    /// The director (1a, 1b, ...) takes `micros` longer over every request it executes.
    case directorSlow(director: String, micros: UInt64)
    /// The director stops taking requests: the array finds it (the director deadline) and fails it over.
    case directorHang(director: String)

    /// The largest latency, the most rotted blocks: numbers are bounded before they reach a drive.
    public static let maxMicros: UInt64 = 60_000_000
    public static let maxRotBlocks: UInt32 = 1_000_000

    /// What the fault is on: "drive" or "director".
    public var target: String {
        switch self {
        case .driveLatency, .driveErrors, .driveHang, .driveRot: "drive"
        case .directorSlow, .directorHang: "director"
        }
    }

    /// The drive or director, as the user named it.
    public var name: String {
        switch self {
        case .driveLatency(let d, _, _, _, _), .driveErrors(let d, _, _, _, _, _), .driveHang(let d), .driveRot(let d, _): d
        case .directorSlow(let d, _), .directorHang(let d): d
        }
    }

    public var kind: String {
        switch self {
        case .driveLatency: "latency"
        case .driveErrors: "errors"
        case .driveHang, .directorHang: "hang"
        case .driveRot: "rot"
        case .directorSlow: "slow"
        }
    }

    var words: [String] {
        switch self {
        case .driveLatency(let d, let fixed, let jitter, let spike, let rate): ["drive", d, kind, String(fixed), String(jitter), String(spike), String(rate)]
        case .driveErrors(let d, let reads, let writes, let from, let length, let rate):
            ["drive", d, kind, reads ? "1" : "0", writes ? "1" : "0", from.map(String.init) ?? "", length.map(String.init) ?? "", String(rate)]
        case .driveHang(let d): ["drive", d, kind]
        case .driveRot(let d, let blocks): ["drive", d, kind, String(blocks)]
        case .directorSlow(let d, let micros): ["director", d, kind, String(micros)]
        case .directorHang(let d): ["director", d, kind]
        }
    }

    init(words w: [String]) throws(VSAError) {
        guard w.count >= 3, w[0] == "drive" || w[0] == "director" else { throw VSAError("inject takes drive DRIVE KIND ... or director ID KIND ...") }
        let drive = w[1]
        guard !drive.isEmpty else { throw VSAError("inject needs a \(w[0]): \(w[0] == "drive" ? "its index, path or name" : "1a, 1b, ...")") }
        func expect(_ n: Int) throws(VSAError) {
            guard w.count == 3 + n else { throw VSAError("a \(w[2]) fault takes \(n) values, not \(w.count - 3)") }
        }
        func micros(_ text: String, _ what: String) throws(VSAError) -> UInt64 {
            let v = try ControlRequest.number(text, what)
            guard v <= Self.maxMicros else { throw VSAError("\(what) \(v) us is more than 60 s") }
            return v
        }
        func perMillion(_ text: String) throws(VSAError) -> UInt32 {
            let v = try ControlRequest.number(text, "rate")
            guard v <= 1_000_000 else { throw VSAError("rate \(v) is more than a million per million") }
            return UInt32(v)
        }
        if w[0] == "director" {
            switch w[2] {
            case "slow":
                try expect(1)
                let micros = try micros(w[3], "slowness")
                guard micros > 0 else { throw VSAError("a slow fault of 0 us slows nothing") }
                self = .directorSlow(director: drive, micros: micros)
            case "hang":
                try expect(0)
                self = .directorHang(director: drive)
            default:
                throw VSAError("unknown director fault '\(w[2].prefix(40))': slow or hang")
            }
            return
        }
        switch w[2] {
        case "latency":
            try expect(4)
            self = .driveLatency(
                drive: drive, fixedMicros: try micros(w[3], "latency"), jitterMicros: try micros(w[4], "jitter"), spikeMicros: try micros(w[5], "spike"),
                spikePerMillion: try perMillion(w[6]))
        case "errors":
            try expect(5)
            let reads = try ControlRequest.parseFlag(w[3], "reads")
            let writes = try ControlRequest.parseFlag(w[4], "writes")
            guard reads || writes else { throw VSAError("an errors fault fails reads, writes or both, not neither") }
            guard w[5].isEmpty == w[6].isEmpty else { throw VSAError("an errors fault's range needs both its start and its length") }
            let from = w[5].isEmpty ? nil : try ControlRequest.number(w[5], "range start")
            let length = w[6].isEmpty ? nil : try ControlRequest.number(w[6], "range length")
            if let length, length == 0 { throw VSAError("an errors fault's range is empty (length 0)") }
            if let from, let length, from > UInt64.max - length { throw VSAError("an errors fault's range runs past the largest offset") }
            let rate = try perMillion(w[7])
            guard rate > 0 else { throw VSAError("an errors fault's rate is 0: it would fail nothing") }
            self = .driveErrors(drive: drive, reads: reads, writes: writes, fromByte: from, lengthBytes: length, perMillion: rate)
        case "hang":
            try expect(0)
            self = .driveHang(drive: drive)
        case "rot":
            try expect(1)
            let blocks = try ControlRequest.number(w[3], "block count")
            guard blocks >= 1 && blocks <= UInt64(Self.maxRotBlocks) else { throw VSAError("rot takes 1 to \(Self.maxRotBlocks) blocks, not \(blocks)") }
            self = .driveRot(drive: drive, blocks: UInt32(blocks))
        default:
            throw VSAError("unknown drive fault '\(w[2].prefix(40))': latency, errors, hang or rot")
        }
    }
}

/// The payload of `inject`: the fault's id (for `inject-clear`), the seed its random choices come from (give it again
/// to replay them), and one line saying what it did.
public struct FaultAdded: Sendable, Equatable {
    public var id: Int
    public var seed: UInt64
    public var detail: String
    public init(id: Int, seed: UInt64, detail: String) {
        self.id = id
        self.seed = seed
        self.detail = detail
    }
    public var payload: String { "\(id)\t\(seed)\t\(detail)" }
    public init?(payload: String) {
        let parts = payload.trimmingWhitespace().split(separator: "\t", maxSplits: 2, omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 3, let id = Int(parts[0]), id >= 0, let seed = UInt64(parts[1]) else { return nil }
        self.id = id
        self.seed = seed
        detail = parts[2]
    }
}

/// The payload of `latencyCounts`: per LUN name, the non-empty buckets of its read, write and flush histograms as
/// [bucket, count] pairs.
public struct LatencyCounts: Codable, Sendable {
    public var luns: [String: LUN]
    /// Each member's histograms (the back end's batches), by member index; its errors are the drive's I/O errors.
    public var drives: [String: LUN]? = nil
    /// The histograms of one LUN or drive.
    public struct LUN: Codable, Sendable {
        public var read: [[UInt64]]
        public var write: [[UInt64]]
        public var flush: [[UInt64]]
        /// Requests answered with an error.
        public var errors: UInt64
        public init(read: [UInt64], write: [UInt64], flush: [UInt64], errors: UInt64) {
            self.read = LatencyCounts.sparse(read)
            self.write = LatencyCounts.sparse(write)
            self.flush = LatencyCounts.sparse(flush)
            self.errors = errors
        }

        /// A LUN's or drive's histograms as they are now.
        public init(_ latency: IOLatency, errors: UInt64) {
            self.init(read: latency.reads.counts, write: latency.writes.counts, flush: latency.flushes.counts, errors: errors)
        }

        /// What happened since `then` (nil: since the mount): the reads', writes' and flushes' percentiles.
        public func summaries(since then: LUN?) -> (read: LatencySummary, write: LatencySummary, flush: LatencySummary) {
            (
                LatencySummary(counts: LatencyCounts.delta(read, since: then?.read)),
                LatencySummary(counts: LatencyCounts.delta(write, since: then?.write)),
                LatencySummary(counts: LatencyCounts.delta(flush, since: then?.flush))
            )
        }
    }
    public init(luns: [String: LUN], drives: [String: LUN]? = nil) {
        self.luns = luns
        self.drives = drives
    }

    static func sparse(_ counts: [UInt64]) -> [[UInt64]] { counts.indices.filter { counts[$0] > 0 }.map { [UInt64($0), counts[$0]] } }

    /// The counts of what happened between two snapshots of one histogram (`then` nil: since the mount), dense.
    public static func delta(_ now: [[UInt64]], since then: [[UInt64]]?) -> [UInt64] {
        let a = dense(now)
        let b = then.map(dense)
        return a.indices.map { a[$0] &- min(a[$0], b?[$0] ?? 0) }
    }

    /// Dense counts back from pairs (pairs out of range are ignored: this is input).
    public static func dense(_ pairs: [[UInt64]]) -> [UInt64] {
        var counts = [UInt64](repeating: 0, count: LatencyHistogram.bucketCount)
        for p in pairs where p.count == 2 && p[0] < UInt64(counts.count) { counts[Int(p[0])] = p[1] }
        return counts
    }
}

/// JSON as vsa writes it everywhere (control payloads, `--json`, the dashboard's frames): keys sorted, so equal
/// values read the same.
public func encodeJSON(_ value: some Encodable) -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    return String(decoding: (try? encoder.encode(value)) ?? Data(), as: UTF8.self)
}
