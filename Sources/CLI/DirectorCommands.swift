// `vsa director list|fail|restore`: the directors of a mounted array.
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

struct DirectorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "director", abstract: "List the directors of a mounted array; fail one (its partner takes over) or restore it.",
        subcommands: [DirectorList.self, DirectorFail.self, DirectorRestore.self])
}

struct DirectorList: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "One line per director: state, what it owns, its queue, memory and messages.")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Flag(help: "Print the directors as JSON.") var json = false

    func execute() throws(VSAError) {
        let report = try statusReport(target)
        if json {
            print(encodeJSON(report.directors))
            return
        }
        let header = [
            "director", "state", "acting-for", "drives", "queue", "slots-used", "write-pending", "mirrored-here", "mirror-to", "sent", "received", "bounced",
            "requests",
        ]
        var rows = [header]
        for d in report.directors {
            rows.append([
                d.id, d.state, d.actingFor.isEmpty ? "-" : d.actingFor.joined(separator: ","), d.primaryDrives.map(String.init).joined(separator: ","),
                String(d.queueDepth), String(d.usedSlots), String(d.writePendingSlots), String(d.mirroredSlots), d.mirrorTo,
                String(d.messagesSent), String(d.messagesReceived), String(d.bounced), String(d.requests),
            ])
        }
        print(table(rows))
        if report.daemon == nil { print("(not mounted: the directors start when the array is mounted)") }
    }
}

struct DirectorFail: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "fail", abstract: "Fail a director: it is fenced, its partner replays its mirrored write-pending data and takes its work.")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Argument(help: "The director: 1a, 1b, 2a, ...") var director: String

    func execute() throws(VSAError) { try changeDirector(target, .directorFail(director: director), verb: "fail", done: "failed") }
}

struct DirectorRestore: VSACommand {
    static let configuration = CommandConfiguration(commandName: "restore", abstract: "Bring a failed director back; its work is handed back to it.")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Argument(help: "The director: 1a, 1b, 2a, ...") var director: String

    func execute() throws(VSAError) { try changeDirector(target, .directorRestore(director: director), verb: "restore", done: "restored") }
}

/// Sends a director fail or restore to the daemon and prints what it did, a note a line.
func changeDirector(_ target: String, _ request: ControlRequest, verb: String, done: String) throws(VSAError) {
    let dir = try mountedArray(target, "\(verb) a director")
    let changed = DirectorChanged(payload: try control(dir, request))
    print("director \(request.arguments[0]) \(done)")
    for note in changed.notes { print("  \(note)") }
}
