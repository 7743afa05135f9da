// `vsa replica create|list|suspend|resume|delete`: LUNs copied to NBD exports on other machines, SRDF-style
// (Replication/; mounted arrays).
import ArgumentParser
import ArrayModel
import Control
import Daemon
import Foundation
import Replication
import SysPosix

struct ReplicaCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replica", abstract: "Replicate LUNs to NBD exports on other machines (another vsa's LUN files). Needs the array mounted.",
        subcommands: [
            ReplicaCreate.self, ReplicaList.self, ReplicaSuspend.self, ReplicaResume.self, ReplicaFailover.self, ReplicaFailback.self,
            ReplicaDelete.self, ReplicaRecover.self, ReplicaReceive.self,
        ])
}

struct ReplicaCreate: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Start replicating LUNs, each to an NBD export of its exact size; the first sync sends every track.")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Argument(help: "The group's name (letters, digits, '-', '_', '.').") var name: String
    @Option(help: "The LUNs, comma-separated.") var luns: String
    @Option(help: "Their targets, comma-separated, one per LUN in order: nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH.")
    var to: String
    @Option(
        help:
            "sync: a write is acknowledged once the remote has it. async: writes go in consistent delta sets, one per cycle; R2 is always the source at a cycle boundary."
    ) var mode: String = "sync"
    @Option(help: "async only: the delta set cycle (e.g. 30s, 2m).") var cycle: String = "30s"
    @Option(
        help:
            "async only: an NBD export on R2's side where each delta set lands whole before it is applied (at least the cache's size plus 0.4% and 8 KiB; the error says how much)."
    ) var journal: String?
    @Option(help: "async only: memory for the delta sets here, preallocated (1M to 4G; default 64M).") var cache: String?
    @Option(
        help:
            "async only: who writes each delta set to R2's images. r1: this array (each byte crosses the link twice: journal, then image). r2: a `vsa replica receive` running on R2's side (each byte crosses once)."
    ) var apply: String = "r1"

    func execute() throws(VSAError) {
        let lunNames = luns.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        let uris = to.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard !lunNames.contains(where: \.isEmpty), !uris.contains(where: \.isEmpty) else {
            throw VSAError("--luns and --to take comma-separated lists with nothing empty")
        }
        guard lunNames.count == uris.count else {
            throw VSAError("give one --to URI per LUN (\(lunNames.count) LUN\(lunNames.count == 1 ? "" : "s"), \(uris.count) URI\(uris.count == 1 ? "" : "s"))")
        }
        guard mode == "sync" || mode == "async" else { throw VSAError("--mode must be sync or async (got '\(mode.prefix(40))')") }
        let seconds = try cycleSeconds(cycle)
        let cacheBytes = try cache.map { s throws(VSAError) in try size(s, "--cache") } ?? Replicator.cacheBytesDefault
        if mode == "sync" && (journal != nil || cache != nil || apply != "r1") {
            throw VSAError("--journal, --cache and --apply are for --mode async (a synchronous group writes R2 as the host writes)")
        }
        guard apply == "r1" || apply == "r2" else { throw VSAError("--apply must be r1 or r2 (got '\(apply.prefix(40))')") }
        if let journal, journal.isEmpty || journal.contains("\t") || journal.contains("\n") { throw VSAError("--journal takes one NBD URI") }
        let dir = try mountedArray(target, "replicate its LUNs")
        _ = try control(
            dir,
            .replicaCreate(
                name: name, luns: lunNames, uris: uris, mode: mode, cycleSeconds: seconds, journal: journal ?? "", cacheBytes: cacheBytes,
                apply: apply))
        print("replica group \(name) created (\(mode)): syncing; `vsa replica list \(target)` shows its progress")
    }

    /// "30s", "2m", "1h" or plain seconds; 1 s to 24 h.
    func cycleSeconds(_ text: String) throws(VSAError) -> UInt64 {
        var digits = Substring(text)
        var unit: UInt64 = 1
        if let last = digits.last, "smh".contains(last) {
            unit = last == "s" ? 1 : last == "m" ? 60 : 3600
            digits = digits.dropLast()
        }
        guard digits.count <= 6, let n = UInt64(digits), n * unit >= 1, n * unit <= 86_400 else {
            throw VSAError("--cycle takes 1s to 24h, as 30s, 2m or 1h (got '\(text.prefix(40))')")
        }
        return n * unit
    }
}

struct ReplicaList: VSACommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "The replica groups: state, lag, what went across.")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Argument(help: "Only this group.") var name: String?
    @Flag(help: "Print one JSON object.") var json = false

    func execute() throws(VSAError) {
        _ = try mountedArray(target, "list its replica groups")
        let groups = (try statusReport(target).replicas ?? []).filter { g in name.map { g.name == $0 } ?? true }
        if let name, groups.isEmpty { throw VSAError("no replica group named \(name); `vsa replica list \(target)` shows them") }
        if json {
            struct Listing: Encodable { var replicas: [ReplicaReport] }
            print(encodeJSON(Listing(replicas: groups)))
            return
        }
        if groups.isEmpty { print("no replica groups; make one with `vsa replica create \(target) NAME --luns L --to URI`") }
        for g in groups { print(g.lines.map { String($0.dropFirst(2)) }.joined(separator: "\n")) }
    }
}

/// What suspend, resume, delete, failover and failback take: a mounted array and one of its groups.
struct ReplicaGroupArguments: ParsableArguments {
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Argument(help: "The group.") var name: String
}

/// suspend, resume, delete, failover and failback: one group, one request, one line.
protocol ReplicaGroupVerb: VSACommand {
    var group: ReplicaGroupArguments { get }
    static var doing: String { get }
    static var done: String { get }
    static func request(_ name: String) -> ControlRequest
}

extension ReplicaGroupVerb {
    func execute() throws(VSAError) {
        let reply = try control(try mountedArray(group.target, Self.doing), Self.request(group.name))
        print(reply.isEmpty ? "replica group \(group.name) \(Self.done)" : reply)
    }
}

struct ReplicaSuspend: ReplicaGroupVerb {
    static let configuration = CommandConfiguration(
        commandName: "suspend", abstract: "Stop sending to the remote; changed tracks are remembered for the resume.")
    @OptionGroup var group: ReplicaGroupArguments
    static let doing = "suspend a replica group"
    static let done = "suspended"
    static func request(_ name: String) -> ControlRequest { .replicaSuspend(name: name) }
}

struct ReplicaResume: ReplicaGroupVerb {
    static let configuration = CommandConfiguration(
        commandName: "resume", abstract: "Send the tracks changed while suspended, then replicate as before.")
    @OptionGroup var group: ReplicaGroupArguments
    static let doing = "resume a replica group"
    static let done = "resumed: syncing"
    static func request(_ name: String) -> ControlRequest { .replicaResume(name: name) }
}

struct ReplicaDelete: ReplicaGroupVerb {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Stop replicating; the remote keeps what it has.")
    @OptionGroup var group: ReplicaGroupArguments
    static let doing = "delete a replica group"
    static let done = "deleted"
    static func request(_ name: String) -> ControlRequest { .replicaDelete(name: name) }
}

struct ReplicaFailover: ReplicaGroupVerb {
    static let configuration = CommandConfiguration(
        commandName: "failover", abstract: "Make R2 the one written to (a second vsa mounts it); the LUNs here take no writes until failback.")
    @OptionGroup var group: ReplicaGroupArguments
    static let doing = "fail a replica group over"
    static let done = "failed over: R2 is the one written to; its LUNs here refuse writes"
    static func request(_ name: String) -> ControlRequest { .replicaFailover(name: name) }
}

struct ReplicaFailback: ReplicaGroupVerb {
    static let configuration = CommandConfiguration(
        commandName: "failback", abstract: "Bring R2's changes back (only the tracks that differ are copied), then replicate as before.")
    @OptionGroup var group: ReplicaGroupArguments
    static let doing = "fail a replica group back"
    static let done = "failing back: `vsa replica list` shows the progress"
    static func request(_ name: String) -> ControlRequest { .replicaFailback(name: name) }
}

struct ReplicaRecover: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "recover",
        abstract:
            "On R2's side, without R1: bring an asynchronous group's images to their last whole cycle (a delta set pending in the journal is applied), or say why they are not consistent.",
        discussion: "Run it before a second vsa mounts R2 after R1 was lost. Nothing on R1 is needed or touched.")
    @Option(help: "The group's journal export (as given to `vsa replica create --journal`).") var journal: String
    @Option(help: "The group's targets, comma-separated, in the order of `--to` at create.") var to: String

    func execute() throws(VSAError) {
        let uris = to.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard !uris.isEmpty, !uris.contains(where: \.isEmpty), uris.count <= 256 else { throw VSAError("--to takes 1 to 256 comma-separated URIs") }
        print(try Replicator.recover(journal: journal, images: uris))
    }
}

struct ReplicaReceive: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "receive",
        abstract:
            "On R2's side: apply the delta sets of an asynchronous group made with --apply r2 as they arrive in its journal (runs until SIGINT or SIGTERM).",
        discussion:
            "Run it next to R2's images (their exports on this machine, for example nbdkit on a unix socket), so a set crosses the link once. One receiver per group. Stop it before running `vsa replica recover` or mounting R2 elsewhere."
    )
    @Option(help: "The group's journal export, as reachable from here.") var journal: String
    @Option(help: "The group's targets as reachable from here, comma-separated, in the order of `--to` at create.") var to: String

    func execute() throws(VSAError) {
        let uris = to.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard !uris.isEmpty, !uris.contains(where: \.isEmpty), uris.count <= 256 else { throw VSAError("--to takes 1 to 256 comma-separated URIs") }
        Posix.blockStopSignals()
        try Receiver.run(
            journal: journal, images: uris, wait: { !Posix.awaitStopSignal(seconds: $0) },
            say: { line in
                print(line)
                fflush(nil)
            })
        print("receiver stopped")
    }
}
