// `vsa lun create|list|delete`: on the running daemon when the array is mounted, on the drives when it is not.
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

struct LUN: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lun", abstract: "Create, list and delete LUNs.",
        subcommands: [LUNCreate.self, LUNList.self, LUNDelete.self])
}

struct LUNCreate: VSACommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Create a LUN.")
    @Argument(help: "The array folder or its mount point.") var target: String
    @Argument(help: "The LUN's name (its file name on the mount).") var name: String
    @Option(help: "The LUN's size (K, M, G, T); a multiple of 512 bytes.") var size: String
    @Flag(help: "Thick: a run of the array's stripes of its own, written in place (the size must fit the array; no snapshots).")
    var thick = false
    @Flag(help: "Thin (the default): blocks come from the array's pool as they are written; the size may exceed the array.")
    var thin = false

    func execute() throws(VSAError) {
        if thick && thin { throw VSAError("--thick and --thin exclude each other: a LUN is one or the other") }
        let thin = !thick
        let bytes = try CLI.size(size, "--size")
        if let problem = validateLUNName(name) { throw VSAError("\(problem): '\(name)'") }
        let (dir, _) = try resolveArray(target)
        if try runningDaemon(dir) != nil {
            _ = try control(dir, .lunCreate(name: name, sizeBytes: bytes, thin: thin))
        } else {
            _ = try withOfflineLock(dir) { () throws(VSAError) in
                let store = try ArrayStore.assemble(directory: dir)
                if thin { return try ArrayDaemon.createThinLUNOffline(store: store, name: name, sizeBytes: bytes) }
                // A pool no mount has opened yet owns no segment: a thick LUN can still be placed.
                guard store.lunTable.pool == nil || store.lunTable.pool!.fresh else {
                    throw VSAError("this array has a pool, whose segments only the mounted array knows: mount it to create LUNs")
                }
                return try store.createLUN(name: name, sizeBytes: bytes)
            }
        }
        print("created \(thin ? "thin" : "thick") LUN \(name) (\(formatSize(bytes)))")
    }
}

struct LUNDelete: VSACommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete a LUN and zero its space.")
    @Argument(help: "The array folder or its mount point.") var target: String
    @Argument(help: "The LUN's name.") var name: String

    func execute() throws(VSAError) {
        let (dir, _) = try resolveArray(target)
        if try runningDaemon(dir) != nil {
            _ = try control(dir, .lunDelete(name: name))
        } else {
            _ = try withOfflineLock(dir) { () throws(VSAError) in
                let store = try ArrayStore.assemble(directory: dir)
                if store.lunTable.entries.first(where: { $0.name == name })?.thin == true {
                    throw VSAError("LUN \(name) is thin: its blocks are freed through the pool, so mount the array to delete it")
                }
                return try ArrayDaemon.deleteLUNOffline(store: store, name: name)
            }
        }
        print("deleted LUN \(name)")
    }
}

struct LUNList: VSACommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the LUNs.")
    @Argument(help: "The array folder or its mount point.") var target: String
    @Flag(help: "Print one JSON object.") var json = false

    func execute() throws(VSAError) {
        let report = try statusReport(target)
        if json {
            struct Listing: Encodable { var luns: [StatusReport.LUNInfo] }
            print(encodeJSON(Listing(luns: report.luns)))
            return
        }
        if report.luns.isEmpty {
            print("no LUNs; create one with `vsa lun create \(target) NAME --size SIZE`")
            return
        }
        let width = max(4, report.luns.map(\.name.count).max() ?? 4)
        print("NAME".padding(toLength: width, withPad: " ", startingAt: 0) + "  SIZE        BYTES")
        for l in report.luns {
            print(
                l.name.padding(toLength: width, withPad: " ", startingAt: 0) + "  "
                    + formatSize(l.sizeBytes).padding(toLength: 10, withPad: " ", startingAt: 0) + "  \(l.sizeBytes)")
        }
    }
}
