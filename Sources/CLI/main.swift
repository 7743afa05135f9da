// The `vsa` command. Every failure prints exactly one line on stderr naming the problem and the fix, and exits
// non-zero; usage text is for --help only. Commands that take DIR|MOUNTPOINT talk to the running daemon over its
// control socket when the array is mounted, and to the drives directly when it is not.
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

func printError(_ line: String) {
    FileHandle.standardError.write(Data("vsa: \(line)\n".utf8))
}

func size(_ text: String, _ option: String) throws(VSAError) -> UInt64 {
    guard let v = parseSize(text) else {
        if let d = Double(text.dropLast()), d > 0, "KMGTkmgt".contains(text.last ?? " ") {
            throw VSAError("size '\(text)' for \(option) is not a whole number of bytes; use a smaller unit (e.g. M)")
        }
        throw VSAError("invalid size '\(text)' for \(option): use a number with an optional K, M, G or T suffix")
    }
    return v
}

protocol VSACommand: ParsableCommand {
    func execute() throws(VSAError)
}

extension VSACommand {
    func run() throws { try execute() }
}

struct VSA: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vsa",
        abstract: "A virtual enterprise storage array: LUNs as fixed-size files on a FUSE mount.",
        subcommands: [
            Create.self, LUN.self, Snap.self, ReplicaCommand.self, DriveCommand.self, DirectorCommand.self, Inject.self, PowerCutCommand.self,
            ScenarioCommand.self, Scrub.self,
            Mount.self, Unmount.self,
            Status.self, Top.self, DashboardCommand.self,
        ])
}

/// Columns padded to their widest cell, two spaces apart.
func table(_ rows: [[String]]) -> String {
    var widths = [Int](repeating: 0, count: rows.map(\.count).max() ?? 0)
    for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
    return rows.map { row in
        row.enumerated().map { i, cell in i == row.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
            .joined(separator: "  ")
    }.joined(separator: "\n")
}

/// "[#####.....] 42.0%"
func progressBar(percent: Double) -> String {
    let width = 40
    let filled = max(0, min(width, Int(percent / 100 * Double(width))))
    let tenths = Int((percent * 10).rounded(.down))
    return "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled) + "] \(tenths / 10).\(tenths % 10)%"
}

// Entry point: parse, run, and turn every failure into one line.
do {
    var command = try VSA.parseAsRoot()
    try command.run()
} catch let error as VSAError {
    printError(error.message)
    exit(1)
} catch {
    if VSA.exitCode(for: error) == .success { VSA.exit(withError: error) }
    let message = VSA.message(for: error).split(separator: "\n").first.map(String.init) ?? "invalid arguments"
    printError("\(message.trimmingWhitespace()); see `vsa --help`")
    exit(64)
}
