// `vsa powercut`: the host's view loses what no flush made durable, as a machine losing power loses its drives'
// volatile caches (FrontEnd/VolatileWriteCache.swift). A fault asked for by name: the mount must have armed it
// (`-o powercut`), and status and the notes say every time one happened.
import ArrayModel
import Control
import Foundation
import FrontEnd
import SysPosix

#if canImport(Glibc)
    import Glibc
#endif

extension ArrayDaemon {
    func powerCut(torn: Bool, seed: UInt64?) throws(VSAError) -> PowerCutDone {
        guard let cache = volatileCache else {
            throw VSAError("this mount does not track unsynced writes; mount it with -o powercut to be able to cut its power")
        }
        guard !shuttingDown.load(ordering: .relaxed) else { throw VSAError("the array is being unmounted") }
        // What the kernel still holds dirty for the LUN files is unsynced too: written to the array first, so that it is
        // dropped with the rest, as a power cut drops the host's page cache. (This thread is no FUSE worker: the
        // writes it waits for are served by them.)
        let synced = Posix.syncFileSystem(path: options.mountpoint)
        if synced != 0 {
            throw VSAError("cannot write back the kernel's dirty pages of \(options.mountpoint) (syncfs: \(Posix.errnoDescription(synced))); nothing was cut")
        }
        // At most 19 digits, as every seed the control protocol takes back.
        let seedUsed = seed ?? UInt64.random(in: 0...UInt64(Int64.max))
        let cut = cache.cut(torn: torn, seed: seedUsed)
        let names = frontEnd.files.filter { cut.luns[$0.ref.lunID] != nil }.map(\.name).sorted()
        // As after a restart: the host's page cache of every LUN goes, so it reads what the drives hold.
        for file in frontEnd.files { session?.invalidateData(inode: file.inode) }
        let info = StatusReport.PowerCutInfo.Cut(
            atSeconds: UInt64(max(0, time(nil))), torn: torn, seed: seedUsed, droppedBlocks: cut.droppedBlocks, keptBlocks: cut.keptBlocks,
            luns: names)
        powerCuts.withLock { $0.append(info) }
        var line = info.line
        if cut.rc != 0 { line += "; rolling back failed: \(Posix.errnoDescription(cut.rc)) (the rolled-back state may be partly written)" }
        controlLock.withLock { _ in messages.append(line) }
        daemonLog(line)
        if cut.rc != 0 { throw VSAError(line) }
        return PowerCutDone(droppedBlocks: cut.droppedBlocks, keptBlocks: cut.keptBlocks, seed: seedUsed, luns: names)
    }

    func powerCutInfo() -> StatusReport.PowerCutInfo? {
        guard let cache = volatileCache else { return nil }
        let block = UInt64(VolatileWriteCache.blockBytes)
        return .init(
            capacityBytes: UInt64(cache.capacityBlocks) * block, unsyncedBytes: UInt64(cache.unsyncedBlocks) * block,
            writtenBackBytes: cache.writtenBackBlocks * block, cuts: powerCuts.withLock { $0 })
    }

    /// A LUN's contents changed under the cache (a snapshot restored, a clone relinked): what it kept is stale.
    func forgetUnsynced(lun name: String) {
        guard let cache = volatileCache, let file = frontEnd.files.first(where: { $0.name == name }) else { return }
        cache.drop(lunID: file.ref.lunID)
    }
}
