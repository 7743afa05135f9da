// `vsa drive fail|replace`: member drives of a mounted array.
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

struct DriveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drive", abstract: "Fail and replace member drives of a mounted array.",
        subcommands: [DriveFail.self, DriveReplace.self])
}

struct DriveFail: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "fail", abstract: "Take a member out as if it was pulled; the array runs degraded (a hot spare takes over).")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Argument(help: "The member: its index, its path or its name in the array folder (see vsa status).") var drive: String
    @Flag(help: "Fail it even if the array cannot survive that.") var force = false

    func execute() throws(VSAError) {
        let dir = try mountedArray(target, "fail a drive")
        _ = try control(dir, .driveFail(drive: drive, force: force))
        print("drive \(drive) failed")
    }
}

struct DriveReplace: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "replace", abstract: "Rebuild a member onto a hot spare or onto a new file or device, online.")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Argument(help: "The member: its index, its path or its name in the array folder (see vsa status).") var drive: String
    @Option(name: .customLong("with"), help: "The new drive: a file (created if absent), a block device, or an NBD URI. Default: a hot spare.")
    var with: String?
    @Option(help: "Rebuild rate limit per drive (K, M, G per second; 0 = none).") var rate: String = "200M"
    @Flag(help: "Overwrite a drive that holds foreign data.") var force = false
    @Flag(help: "Show a progress bar and return when the rebuild ends.") var wait = false

    func execute() throws(VSAError) {
        let bytes = try size(rate, "--rate")
        let dir = try mountedArray(target, "replace a drive")
        let payload = try control(dir, .driveReplace(drive: drive, newDrive: with.map(driveArgument), force: force, rateBytes: bytes))
        guard let started = ReplaceStarted(payload: payload) else {
            throw VSAError("the daemon's answer to the replace could not be read; vsa status shows what it did")
        }
        if started.queued {
            print("member \(started.member) onto \(started.newDrive): queued; its rebuild starts when the running one ends")
        } else {
            print("rebuilding member \(started.member) onto \(started.newDrive)")
        }
        guard wait else { return }
        try waitForRebuild(dir, member: started.member)
    }
}
