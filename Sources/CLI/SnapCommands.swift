// `vsa snap create|list|delete|restore|link|unlink|relink`: snapshots and linked clones of thin LUNs (mounted arrays).
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

struct Snap: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snap", abstract: "Snapshots of thin LUNs (instant, nothing copied), linked clones and restores. Needs the array mounted.",
        subcommands: [SnapCreate.self, SnapList.self, SnapDelete.self, SnapRestore.self, SnapLink.self, SnapUnlink.self, SnapRelink.self])
}

struct SnapCreate: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "create", abstract: "Take a snapshot of a thin LUN: its contents now, kept while the LUN changes.")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Argument(help: "The thin LUN.") var lun: String
    @Argument(help: "The snapshot's name (unique among the LUN's snapshots).") var name: String
    @Option(help: "Secure: the snapshot cannot be deleted for this many days (a decimal, e.g. 0.5), and is deleted after.") var secure: String?

    func execute() throws(VSAError) {
        var seconds: UInt64 = 0
        if let secure {
            guard let days = Double(secure), days.isFinite, days > 0, days <= 36600 else {
                throw VSAError("--secure takes a number of days from more than 0 to 36600 (got '\(secure)')")
            }
            seconds = max(1, UInt64((days * 86400).rounded()))
        }
        let dir = try mountedArray(target, "take a snapshot")
        let taken = SnapshotTaken(payload: try control(dir, .snapCreate(lun: lun, name: name, secureSeconds: seconds)))
        print(
            "snapshot \(lun)@\(name) taken" + (taken.map { " in \($0.payload.trimmingWhitespace()) ms" } ?? "")
                + (secure.map { ", secure for \($0) days" } ?? ""))
    }
}

struct SnapList: VSACommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the snapshots (of one LUN, or all).")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Argument(help: "Only this LUN's snapshots.") var lun: String?
    @Flag(help: "Print one JSON object.") var json = false

    func execute() throws(VSAError) {
        _ = try mountedArray(target, "list its snapshots")
        let report = try statusReport(target)
        if let lun, !report.luns.contains(where: { $0.name == lun }) { throw VSAError("no LUN named \(lun); `vsa lun list` shows the LUNs") }
        let snapshots = (report.snapshots ?? []).filter { s in lun.map { s.lun == $0 } ?? true }
        if json {
            struct Listing: Encodable { var snapshots: [StatusReport.SnapshotInfo] }
            print(encodeJSON(Listing(snapshots: snapshots)))
            return
        }
        if snapshots.isEmpty { print("no snapshots; take one with `vsa snap create \(target) LUN NAME`") }
        for s in snapshots { print(s.line) }
    }
}

/// The arguments the commands on one snapshot share.
struct SnapshotArguments: ParsableArguments {
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Argument(help: "The thin LUN.") var lun: String
    @Argument(help: "The snapshot.") var name: String
}

/// Sends a snapshot request to the daemon of a mounted array.
func snapshotRequest(_ target: String, _ verb: String, _ request: ControlRequest) throws(VSAError) {
    _ = try control(try mountedArray(target, verb), request)
}

struct SnapDelete: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "delete", abstract: "Delete a snapshot (not while a clone is linked to it or it is secure); its unique blocks are freed.")
    @OptionGroup var snapshot: SnapshotArguments

    func execute() throws(VSAError) {
        try snapshotRequest(snapshot.target, "delete a snapshot", .snapDelete(lun: snapshot.lun, name: snapshot.name))
        print("deleted snapshot \(snapshot.lun)@\(snapshot.name)")
    }
}

struct SnapRestore: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "restore", abstract: "Make the LUN's contents the snapshot's (the LUN must be closed); the snapshot stays.")
    @OptionGroup var snapshot: SnapshotArguments

    func execute() throws(VSAError) {
        try snapshotRequest(snapshot.target, "restore a snapshot", .snapRestore(lun: snapshot.lun, name: snapshot.name))
        print("restored LUN \(snapshot.lun) from snapshot \(snapshot.name)")
    }
}

struct SnapLink: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "link", abstract: "Make a writable clone of a snapshot: a new thin LUN sharing the snapshot's blocks.")
    @OptionGroup var snapshot: SnapshotArguments
    @Argument(help: "The new LUN's name.") var newLUN: String

    func execute() throws(VSAError) {
        if let problem = validateLUNName(newLUN) { throw VSAError("\(problem): '\(newLUN)'") }
        try snapshotRequest(snapshot.target, "link a snapshot", .snapLink(lun: snapshot.lun, name: snapshot.name, clone: newLUN))
        print("linked clone \(newLUN) to snapshot \(snapshot.lun)@\(snapshot.name)")
    }
}

struct SnapUnlink: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "unlink", abstract: "Unlink a clone: it keeps its contents as a LUN of its own, and its snapshot can be deleted.")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Argument(help: "The clone.") var clone: String

    func execute() throws(VSAError) {
        try snapshotRequest(target, "unlink a clone", .snapUnlink(clone: clone))
        print("unlinked clone \(clone)")
    }
}

struct SnapRelink: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "relink", abstract: "Make a linked clone's contents another snapshot's of the same LUN (the clone must be closed).")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Argument(help: "The clone.") var clone: String
    @Argument(help: "The snapshot to link it to.") var name: String

    func execute() throws(VSAError) {
        try snapshotRequest(target, "relink a clone", .snapRelink(clone: clone, name: name))
        print("relinked clone \(clone) to snapshot \(name)")
    }
}
