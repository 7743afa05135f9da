// `vsa inject`: faults injected into a mounted array on purpose, named, listed and cleared (docs/FAULTS.md).
//   vsa inject TARGET drive DRIVE latency MS [--jitter MS] [--spike MS --spike-rate PERCENT] [--seed S]
//   vsa inject TARGET drive DRIVE errors [--reads | --writes] [--offset BYTES --length BYTES] [--rate PERCENT] [--seed S]
//   vsa inject TARGET drive DRIVE hang
//   vsa inject TARGET drive DRIVE rot BLOCKS [--seed S]
//   vsa inject TARGET director ID slow MS
//   vsa inject TARGET director ID hang
//   vsa inject list TARGET [--json]
//   vsa inject clear TARGET [ID]
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

struct Inject: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inject",
        abstract:
            "Inject faults into a mounted array on purpose (drive latency, I/O errors, a hung drive, bit rot; a slow or hung director); list and clear them.",
        subcommands: [InjectAdd.self, InjectList.self, InjectClear.self], defaultSubcommand: InjectAdd.self)
}

struct InjectAdd: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "add",
        abstract:
            "Inject a fault: `vsa inject TARGET drive DRIVE latency MS | errors | hang | rot BLOCKS` or `director ID slow MS | hang` (the word add is optional)."
    )
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Argument(help: "What to break: drive or director.") var what: String
    @Argument(help: "The member drive (its index, path or name in the array folder) or the director (1a, 1b, ...).") var drive: String
    @Argument(help: "The fault: latency, errors, hang or rot (a drive); slow or hang (a director).") var kind: String
    @Argument(help: "latency, slow: milliseconds added to each operation or request; rot: how many written blocks get a bit flipped.") var amount: String?
    @Option(help: "latency: up to this many milliseconds more, at random.") var jitter: String?
    @Option(help: "latency: spikes of this many milliseconds...") var spike: String?
    @Option(help: "latency: ...on this percent of operations (e.g. 1 or 0.1).") var spikeRate: String?
    @Flag(help: "errors: fail reads only.") var reads = false
    @Flag(help: "errors: fail writes only.") var writes = false
    @Option(help: "errors: only operations touching the drive's bytes from this offset (K, M, G, T)...") var offset: String?
    @Option(help: "errors: ...for this many bytes.") var length: String?
    @Option(help: "errors: fail this percent of the operations it matches (default 100).") var rate: String?
    @Option(help: "The seed of the fault's random choices (default: the daemon picks one and prints it).") var seed: UInt64?

    func execute() throws(VSAError) {
        let spec = try faultSpec()
        let dir = try mountedArray(target, "inject a fault")
        guard let added = FaultAdded(payload: try control(dir, .inject(spec, seed: seed))) else {
            throw VSAError("the daemon's answer could not be read; vsa inject list shows the faults")
        }
        print(
            "fault \(added.id): \(what == "drive" ? "member" : "director") \(drive): \(added.detail) (seed \(added.seed); vsa inject clear \(target) \(added.id) ends it)"
        )
    }

    /// The fault these words describe, checked (the daemon checks it again).
    func faultSpec() throws(VSAError) -> FaultSpec {
        guard what == "drive" || what == "director" else {
            throw VSAError("vsa inject breaks a drive or a director: `vsa inject TARGET drive DRIVE KIND` or `director ID KIND` (got '\(what)')")
        }
        func unused(_ options: [(String, Bool)]) throws(VSAError) {
            if let (name, _) = options.first(where: { $0.1 }) { throw VSAError("\(name) does not apply to a \(kind) fault") }
        }
        let latencyOptions = [("--jitter", jitter != nil), ("--spike", spike != nil), ("--spike-rate", spikeRate != nil)]
        let errorOptions = [
            ("--reads", reads), ("--writes", writes), ("--offset", offset != nil), ("--length", length != nil), ("--rate", rate != nil),
        ]
        if what == "director" {
            try unused(latencyOptions + errorOptions + [("--seed", seed != nil)])
            switch kind {
            case "slow":
                guard let amount else { throw VSAError("a slow fault needs its milliseconds: vsa inject TARGET director ID slow MS") }
                let micros = try micros(amount, "slow")
                guard micros > 0 else { throw VSAError("a slow fault of 0 ms slows nothing") }
                return .directorSlow(director: drive, micros: micros)
            case "hang":
                try unused([("an amount", amount != nil)])
                return .directorHang(director: drive)
            default:
                throw VSAError("unknown director fault '\(kind)': slow or hang")
            }
        }
        switch kind {
        case "latency":
            try unused(errorOptions)
            guard let amount else { throw VSAError("a latency fault needs its milliseconds: vsa inject TARGET drive DRIVE latency MS") }
            let fixed = try micros(amount, "latency")
            let jitterMicros = try jitter.map { s throws(VSAError) in try micros(s, "--jitter") } ?? 0
            guard (spike == nil) == (spikeRate == nil) else { throw VSAError("--spike and --spike-rate go together") }
            let spikeMicros = try spike.map { s throws(VSAError) in try micros(s, "--spike") } ?? 0
            let spikePerMillion = try spikeRate.map { s throws(VSAError) in try perMillion(s, "--spike-rate") } ?? 0
            guard fixed > 0 || jitterMicros > 0 || spikeMicros > 0 else { throw VSAError("a latency fault of 0 ms adds nothing") }
            return .driveLatency(drive: drive, fixedMicros: fixed, jitterMicros: jitterMicros, spikeMicros: spikeMicros, spikePerMillion: spikePerMillion)
        case "errors":
            try unused(latencyOptions + [("an amount", amount != nil)])
            if reads && writes { throw VSAError("--reads and --writes exclude each other; give neither to fail both") }
            guard (offset == nil) == (length == nil) else { throw VSAError("--offset and --length go together") }
            let from = try offset.map { s throws(VSAError) in try size(s, "--offset") }
            let bytes = try length.map { s throws(VSAError) in try size(s, "--length") }
            if let bytes, bytes == 0 { throw VSAError("--length 0 is an empty range") }
            let errorRate = try rate.map { s throws(VSAError) in try perMillion(s, "--rate") } ?? 1_000_000
            return .driveErrors(drive: drive, reads: !writes, writes: !reads, fromByte: from, lengthBytes: bytes, perMillion: errorRate)
        case "hang":
            try unused(latencyOptions + errorOptions + [("an amount", amount != nil), ("--seed", seed != nil)])
            return .driveHang(drive: drive)
        case "rot":
            try unused(latencyOptions + errorOptions)
            guard let amount, let blocks = UInt32(amount), blocks >= 1, blocks <= FaultSpec.maxRotBlocks else {
                throw VSAError("a rot fault needs a number of blocks from 1 to \(FaultSpec.maxRotBlocks): vsa inject TARGET drive DRIVE rot BLOCKS")
            }
            return .driveRot(drive: drive, blocks: blocks)
        default:
            throw VSAError("unknown drive fault '\(kind)': latency, errors, hang or rot")
        }
    }

    /// Milliseconds (a decimal, e.g. 0.5) as microseconds, up to 60 s.
    private func micros(_ text: String, _ what: String) throws(VSAError) -> UInt64 {
        guard let ms = Double(text), ms.isFinite, ms >= 0, ms <= 60_000 else {
            throw VSAError("\(what) takes milliseconds from 0 to 60000 (got '\(text)')")
        }
        return UInt64((ms * 1000).rounded())
    }

    /// A percent (a decimal, an optional % sign) as parts per million, more than 0 and at most 100.
    private func perMillion(_ text: String, _ what: String) throws(VSAError) -> UInt32 {
        let number = text.hasSuffix("%") ? String(text.dropLast()) : text
        guard let p = Double(number), p.isFinite, p > 0, p <= 100 else { throw VSAError("\(what) takes a percent above 0 and up to 100 (got '\(text)')") }
        return max(1, UInt32((p * 10_000).rounded()))
    }
}

struct InjectList: VSACommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the injected faults: id, member, kind, state, hits, seed.")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Flag(help: "Print one JSON object.") var json = false

    func execute() throws(VSAError) {
        _ = try mountedArray(target, "list its faults")
        let faults = try statusReport(target).faults ?? []
        if json {
            struct Listing: Encodable { var faults: [StatusReport.FaultInfo] }
            print(encodeJSON(Listing(faults: faults)))
            return
        }
        if faults.isEmpty { print("no faults injected; see `vsa inject --help`") }
        for f in faults { print(f.line) }
    }
}

struct InjectClear: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "clear", abstract: "Clear one injected fault (by id), or all of them; rotted blocks stay for reads and scrub to repair.")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Argument(help: "The fault's id (vsa inject list); none: every fault.") var id: Int?

    func execute() throws(VSAError) {
        if let id, id < 1 { throw VSAError("fault ids start at 1; `vsa inject list` shows them") }
        let dir = try mountedArray(target, "clear its faults")
        let cleared = try control(dir, .injectClear(id: id)).trimmingWhitespace()
        print(id.map { "fault \($0) cleared" } ?? "\(cleared) fault\(cleared == "1" ? "" : "s") cleared")
    }
}

/// `vsa powercut`: the host's view loses what no flush made durable (FrontEnd/VolatileWriteCache.swift).
struct PowerCutCommand: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "powercut",
        abstract:
            "Cut the power of the host's view of a mounted array (mounted with -o powercut): every write no fsync, O_SYNC/O_DSYNC write or flush made durable is dropped."
    )
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Flag(help: "Tear the unsynced writes at 4 KiB: each block, at random, keeps its newest contents or rolls back.") var torn = false
    @Option(help: "The seed of a torn cut's choices (default: the daemon picks one and prints it).") var seed: UInt64?

    func execute() throws(VSAError) {
        if seed != nil && !torn { throw VSAError("--seed chooses which blocks a torn cut keeps; give --torn too") }
        let dir = try mountedArray(target, "cut its power")
        let done = try cutPower(dir, torn: torn, seed: seed)
        let luns = done.luns.isEmpty ? "" : " on \(done.luns.joined(separator: ", "))"
        print(
            "power cut: \(done.droppedBlocks) blocks of 4 KiB written since their LUN's last flush rolled back\(luns)"
                + (torn ? "; torn: \(done.keptBlocks) kept their newest contents (seed \(done.seed))" : ""))
    }
}

/// Cuts the power of a mounted array's host view (the daemon writes the kernel's dirty pages of the LUN files to the
/// array first, then drops everything unsynced).
func cutPower(_ dir: String, torn: Bool, seed: UInt64?) throws(VSAError) -> PowerCutDone {
    guard let done = PowerCutDone(payload: try control(dir, .powerCut(torn: torn, seed: seed))) else {
        throw VSAError("the daemon's answer could not be read; vsa status shows the power cuts")
    }
    return done
}
