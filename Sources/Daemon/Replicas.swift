// `vsa replica`: the daemon's side of the replica layer (Replication/). Groups start at mount from the folder's
// replicas.json; LUNs are named here and resolved to their place in the array; a LUN in a group cannot be deleted,
// restored or relinked behind the group's back (its remote would silently stop matching).
import ArrayModel
import Control
import Drives
import Foundation
import Replication

extension ArrayDaemon {
    /// The groups replicas.json holds, started (their notes go to status and the log).
    func startReplicas() {
        let luns = controlLock.withLock { _ in
            Dictionary(store.lunTable.entries.filter { $0.pendingReset == 0 }.map { ($0.name, $0.ref) }, uniquingKeysWith: { a, _ in a })
        }
        for note in replicator.load(luns: luns, arrayWasClean: store.wasClean) {
            controlLock.withLock { _ in messages.append(note) }
            daemonLog(note)
        }
    }

    func replicaCommand(_ request: ControlRequest) throws(VSAError) -> String {
        switch request {
        case .replicaCreate(let name, let lunNames, let uris, let mode, let cycle, let journal, let cache, let apply):
            guard cycle >= 1, cycle <= 86_400 else { throw VSAError("--cycle must be 1 s to 24 h (got \(cycle) s)") }
            let (luns, inUse) = try controlLock.withLock { _ throws(VSAError) in
                let luns = try lunNames.map { n throws(VSAError) -> (name: String, ref: LUNRef) in
                    guard let e = store.lunTable.entries.first(where: { $0.name == n }), e.pendingReset == 0 else {
                        throw VSAError("no LUN named \(n.prefix(64)); `vsa lun list` shows the LUNs")
                    }
                    return (n, e.ref)
                }
                return (luns, Set(store.drives.compactMap(\.remoteURI)))
            }
            try replicator.create(
                name: name, luns: luns, uris: uris, mode: mode, cycleSeconds: Double(cycle), urisInUse: inUse, journal: journal.isEmpty ? nil : journal,
                cacheBytes: cache == 0 ? Replicator.cacheBytesDefault : cache, apply: apply)
            let line = "replica group \(name) created (\(mode)): \(zip(lunNames, uris).map { "\($0) -> \($1)" }.joined(separator: ", ")); syncing"
            controlLock.withLock { _ in messages.append(line) }
            daemonLog(line)
        case .replicaSuspend(let name):
            try replicator.suspend(name: name)
            daemonLog("replica group \(name) suspended")
        case .replicaResume(let name):
            try replicator.resume(name: name)
            daemonLog("replica group \(name) resumed")
        case .replicaDelete(let name):
            try replicator.delete(name: name)
            daemonLog("replica group \(name) deleted")
        case .replicaFailover(let name):
            let whereR2Is = try replicator.failover(name: name)
            let line =
                "replica group \(name) failed over: its LUNs here take no writes until `vsa replica failback`" + (whereR2Is.isEmpty ? "" : "; \(whereR2Is)")
            controlLock.withLock { _ in messages.append(line) }
            daemonLog(line)
            return line
        case .replicaFailback(let name):
            try replicator.failback(name: name)
            daemonLog("replica group \(name) failing back: R2's changed tracks come back")
        default:
            break
        }
        return ""
    }

    /// A LUN in a replica group must leave it before its contents change other than by host writes.
    func refuseIfReplicated(lun name: String, _ what: String) throws(VSAError) {
        guard let id = controlLock.withLock({ _ in store.lunTable.entries.first { $0.name == name }?.lunID }),
            let group = replicator.group(replicating: id)
        else { return }
        throw VSAError("LUN \(name) is replicated by group \(group); it cannot be \(what) until `vsa replica delete TARGET \(group)`")
    }
}
