// Snapshots and linked clones of thin LUNs (docs/POOL.md, "Snapshots, clones, restore"): the control plane's half.
// The pool keeps them as versions in every home, each labelled with its name, its LUN and its times; a snapshot
// exists when every home holds it (create and delete go home by home, and the mount finishes or undoes one cut
// short). A clone is a thin LUN whose versions started at a snapshot's roots; its LUN table entry names the
// snapshot while it is linked. A restore or relink is recorded in the LUN table before the homes change and
// cleared after, so a crash between is finished by the next mount.
import ArrayModel
import Directors
import Foundation
import FrontEnd
import Metadata
import Pool
import SysPosix

#if canImport(Glibc)
    import Glibc
#endif

extension LUNEntry {
    var ref: LUNRef { LUNRef(lunID: lunID, startStripe: startStripe, sizeBytes: sizeBytes, thin: thin) }
}

extension ArrayDaemon {
    static let snapshotsPerLUNMax = 1024
    /// Snapshots' version ids lie above the LUN ids (a LUN's live version is its LUN id).
    static let firstSnapshotID = UInt32(Layout.lunCountMax) + 1
    /// The longest a secure snapshot can be kept: 100 years.
    static let secureSecondsMax: UInt64 = 100 * 366 * 86400

    static func now() -> UInt64 { UInt64(max(0, time(nil))) }

    /// The snapshots: versions every home holds as one (zombies, deleted but still shared, are not; nor is one a
    /// failed create or delete left in some homes only), in LUN and time order.
    func snapshotRecords() throws(VSAError) -> [VersionRecord] {
        guard let stats = poolStats() else { throw VSAError("the pool's homes did not answer (drives or directors failing); try again") }
        return ArrayDaemon.snapshots(in: stats.map(\.records))
    }

    static func snapshots(in homes: [[UInt32: VersionRecord]]) -> [VersionRecord] {
        guard let first = homes.first else { return [] }
        return first.values.filter { v in v.id >= firstSnapshotID && homes.allSatisfy { $0[v.id]?.kind == .snapshot } }.sorted {
            ($0.label.lunID, $0.label.createdSeconds, $0.id) < ($1.label.lunID, $1.label.createdSeconds, $1.id)
        }
    }

    private func thinLUN(_ name: String, for action: String) throws(VSAError) -> LUNEntry {
        guard let entry = controlLock.withLock({ _ in store.lunTable.entries.first(where: { $0.name == name }) }) else {
            throw VSAError("no LUN named \(name); `vsa lun list` shows the LUNs")
        }
        guard entry.thin, poolRuntime() != nil else {
            throw VSAError("LUN \(name) is thick: \(action) needs a thin LUN (vsa lun create TARGET NAME --size SIZE --thin)")
        }
        guard entry.pendingReset == 0 else {
            throw VSAError("LUN \(name) has a restore or relink that could not finish; unmount and mount the array to finish it")
        }
        return entry
    }

    private func snapshot(_ name: String, of lun: LUNEntry) throws(VSAError) -> VersionRecord {
        guard let s = try snapshotRecords().first(where: { $0.label.lunID == lun.lunID && $0.label.name == name }) else {
            throw VSAError("LUN \(lun.name) has no snapshot named \(name); `vsa snap list` shows them")
        }
        return s
    }

    /// `vsa snap create`: the LUN's writes are held while its cached data is destaged and every home takes its
    /// part, so the snapshot is one point in time; nothing is copied.
    func createSnapshot(lun lunName: String, name: String, secureSeconds: UInt64) throws(VSAError) {
        if let problem = validateLUNName(name) { throw VSAError("\(problem.replacingOccurrences(of: "LUN name", with: "snapshot name")): '\(name)'") }
        guard secureSeconds <= ArrayDaemon.secureSecondsMax else { throw VSAError("--secure is at most 36600 days") }
        let lun = try thinLUN(lunName, for: "a snapshot")
        // Versions will share blocks: promises keep within free segments from now on (PoolSpace.sharing).
        poolRuntime()?.space.sharing.store(true, ordering: .relaxed)
        guard let stats = poolStats() else { throw VSAError("the pool's homes did not answer (drives or directors failing); no snapshot taken") }
        let existing = ArrayDaemon.snapshots(in: stats.map(\.records)).filter { $0.label.lunID == lun.lunID }
        guard !existing.contains(where: { $0.label.name == name }) else {
            throw VSAError("LUN \(lunName) already has a snapshot named \(name); pick another name or delete it first")
        }
        guard existing.count < ArrayDaemon.snapshotsPerLUNMax else {
            throw VSAError("LUN \(lunName) has \(ArrayDaemon.snapshotsPerLUNMax) snapshots, the most a LUN can have; delete one first")
        }
        let layout = poolRuntime()!.layout
        guard stats.allSatisfy({ $0.records.count < layout.versionsMax }) else {
            throw VSAError("the pool's version table is full (\(layout.versionsMax) LUNs, snapshots and clones); delete snapshots first")
        }
        // A new id above every one in use or named by the LUN table, so no record left over names the new snapshot.
        let named = controlLock.withLock { _ in store.lunTable.entries.flatMap { [$0.linkedSnapshot, $0.pendingReset] } }
        let used = Set(stats.flatMap { $0.records.keys } + named)
        var id = max(ArrayDaemon.firstSnapshotID, (used.max() ?? 0) &+ 1)
        if id == 0 || id == UInt32.max {
            id = ArrayDaemon.firstSnapshotID
            while used.contains(id) { id += 1 }
        }
        let created = ArrayDaemon.now()
        let label = VersionLabel(lunID: lun.lunID, name: name, createdSeconds: created, secureUntilSeconds: secureSeconds == 0 ? 0 : created + secureSeconds)
        let file = frontEnd.file(lunID: lun.lunID)
        file?.holdWrites()
        defer { file?.releaseWrites() }
        let flushed = engines.flush(lun: lun.ref)
        guard flushed == 0 else { throw VSAError("the LUN's cached writes could not be destaged (\(Posix.errnoDescription(flushed))); no snapshot taken") }
        guard engines.poolEach({ h in .change(home: h) { $0.snapshot(lun.lunID, as: id, label: label) } }) == 0 else {
            // Homes that took their part drop it again (or the next mount does).
            _ = dropVersion(id)
            throw VSAError("the snapshot could not be recorded (drives failing); no snapshot taken")
        }
        if label.secureUntilSeconds != 0 { noteSecureExpiry(label.secureUntilSeconds) }
        daemonLog("snapshot \(lunName)@\(name) taken (version \(id))\(secureSeconds > 0 ? ", secure until \(utcTime(label.secureUntilSeconds))" : "")")
    }

    /// `vsa snap delete`: refused while a clone is linked to it or while it is secure; its blocks no other version
    /// maps go back to the pool.
    func deleteSnapshot(lun lunName: String, name: String, expiring: Bool = false) throws(VSAError) {
        let lun = try thinLUN(lunName, for: "a snapshot")
        let s = try snapshot(name, of: lun)
        if s.label.secureUntilSeconds != 0 && ArrayDaemon.now() < s.label.secureUntilSeconds {
            throw VSAError("snapshot \(lunName)@\(name) is secure until \(utcTime(s.label.secureUntilSeconds)); it cannot be deleted before then")
        }
        let clones = controlLock.withLock { _ in store.lunTable.entries.filter { $0.linkedSnapshot == s.id || $0.pendingReset == s.id }.map(\.name) }
        guard clones.isEmpty else {
            throw VSAError("snapshot \(lunName)@\(name) is linked to \(clones.joined(separator: ", ")); unlink first (vsa snap unlink TARGET CLONE)")
        }
        guard dropVersion(s.id) else {
            throw VSAError("snapshot \(lunName)@\(name) could not be deleted everywhere (drives failing); the next mount completes it")
        }
        daemonLog("snapshot \(lunName)@\(name) \(expiring ? "expired and was deleted" : "deleted")")
    }

    /// `vsa snap restore`: the LUN's contents become the snapshot's. The LUN must be closed; it leaves the mount
    /// while its homes reset, so nothing opens it meanwhile.
    func restoreSnapshot(lun lunName: String, name: String) throws(VSAError) {
        let lun = try thinLUN(lunName, for: "a restore")
        let s = try snapshot(name, of: lun)
        try reset(lun, to: s, relink: false, busy: "LUN \(lunName) is open; close it (and detach any loop device on it) before restoring it")
        daemonLog("LUN \(lunName) restored from snapshot \(name)")
    }

    /// `vsa snap link`: a new thin LUN, the snapshot's contents, sharing every block with it until written. Its id
    /// is one that gives it the origin's homes (the blocks they share belong to one home).
    func linkSnapshot(lun lunName: String, name: String, clone: String) throws(VSAError) -> LUNEntry {
        let lun = try thinLUN(lunName, for: "a link")
        let s = try snapshot(name, of: lun)
        poolRuntime()?.space.sharing.store(true, ordering: .relaxed)
        let homes = UInt32(engines.directors.count)
        let id = try controlLock.withLock { _ throws(VSAError) in
            try store.checkNewLUN(name: clone, sizeBytes: lun.sizeBytes, thin: true, idGroup: (lun.lunID % homes, homes))
        }
        guard engines.poolEach({ h in .change(home: h) { $0.link(id, to: s.id) } }) == 0 else {
            _ = dropVersion(id)
            throw VSAError("the clone could not be made (drives failing or the pool's version table full); nothing was kept")
        }
        let entry = LUNEntry(lunID: id, name: clone, sizeBytes: lun.sizeBytes, startStripe: 0, stripeCount: 0, thin: true, linkedSnapshot: s.id)
        let area = controlLock.withLock { _ in store.lunTable.pool }!
        try controlLock.withLock { _ throws(VSAError) in try store.recordThinLUN(entry, pool: area) }
        frontEnd.add(LUNFile(name: clone, ref: entry.ref))
        session?.invalidateEntry(name: clone, inode: 0)
        daemonLog("clone \(clone) linked to snapshot \(lunName)@\(name)")
        return entry
    }

    /// `vsa snap unlink`: the clone keeps its contents as a LUN of its own, and the snapshot can be deleted.
    func unlinkClone(_ clone: String) throws(VSAError) {
        var entry = try thinLUN(clone, for: "an unlink")
        guard entry.linkedSnapshot != 0 else { throw VSAError("LUN \(clone) is not linked to a snapshot") }
        entry.linkedSnapshot = 0
        try controlLock.withLock { _ throws(VSAError) in try store.updateLUN(entry) }
        daemonLog("clone \(clone) unlinked")
    }

    /// `vsa snap relink`: a linked clone's contents become another snapshot's of the same LUN (what was written to
    /// the clone is dropped). The clone must be closed.
    func relinkClone(_ clone: String, to name: String) throws(VSAError) {
        let entry = try thinLUN(clone, for: "a relink")
        guard entry.linkedSnapshot != 0, let current = try snapshotRecords().first(where: { $0.id == entry.linkedSnapshot }) else {
            throw VSAError("LUN \(clone) is not linked to a snapshot; `vsa snap link` makes a clone")
        }
        guard let origin = controlLock.withLock({ _ in store.lunTable.entries.first(where: { $0.lunID == current.label.lunID }) }) else {
            throw VSAError("the LUN clone \(clone) was linked from no longer exists")
        }
        let s = try snapshot(name, of: origin)
        try reset(entry, to: s, relink: true, busy: "LUN \(clone) is open; close it (and detach any loop device on it) before relinking it")
        daemonLog("clone \(clone) relinked to snapshot \(origin.name)@\(name)")
    }

    /// A restore or relink: the LUN leaves the mount (refused if open), its cached tracks go, the LUN table records
    /// the reset, every home resets the LUN's version to the snapshot's roots, and the record is cleared.
    private func reset(_ lun: LUNEntry, to s: VersionRecord, relink: Bool, busy: String) throws(VSAError) {
        guard let file = frontEnd.file(lunID: lun.lunID), frontEnd.remove(lunID: lun.lunID) else { throw VSAError(busy) }
        var entry = lun
        entry.pendingReset = s.id
        do {
            try controlLock.withLock { _ throws(VSAError) in try store.updateLUN(entry) }
        } catch {
            frontEnd.add(file)
            throw error
        }
        engines.discard(lun: lun.ref)
        guard engines.poolEach({ h in .change(home: h) { $0.reset(lun.lunID, to: s.id) } }) == 0 else {
            // Half the homes reset: the LUN stays off the mount; the next mount finishes the reset.
            throw VSAError("LUN \(lun.name) could not be reset everywhere (drives failing); it stays hidden until the next mount finishes it")
        }
        if relink { entry.linkedSnapshot = s.id }
        entry.pendingReset = 0
        try controlLock.withLock { _ throws(VSAError) in try store.updateLUN(entry) }
        frontEnd.add(file)
    }

    // MARK: Secure snapshots' expiry

    /// Remembers the earliest expiry, so the expiry thread looks at the snapshots only when one is due.
    func noteSecureExpiry(_ seconds: UInt64) {
        var current = nextSecureExpiry.load(ordering: .relaxed)
        while current == 0 || seconds < current {
            let (done, seen) = nextSecureExpiry.compareExchange(expected: current, desired: seconds, ordering: .relaxed)
            if done { break }
            current = seen
        }
    }

    /// A thread of its own (a delete can take a while: it must not hold up the health loop's recording of failed
    /// drives) that deletes secure snapshots whose time has come, once a second.
    func startSecureExpiry() {
        let thread = Thread { [self] in
            while !shuttingDown.load(ordering: .relaxed) {
                sleep(1)
                expireSecureSnapshots()
            }
        }
        thread.name = "snapshot-expiry"
        thread.start()
    }

    /// Deletes secure snapshots whose time has come (a linked one waits for its clone's unlink).
    func expireSecureSnapshots() {
        let due = nextSecureExpiry.load(ordering: .relaxed)
        guard due != 0, ArrayDaemon.now() >= due, poolRuntime() != nil, !shuttingDown.load(ordering: .relaxed) else { return }
        commandLock.withLock { _ in
            guard !shuttingDown.load(ordering: .relaxed) else { return }
            nextSecureExpiry.store(0, ordering: .relaxed)
            let now = ArrayDaemon.now()
            guard let records = try? snapshotRecords() else {
                noteSecureExpiry(now + 60)
                return
            }
            for s in records where s.label.secureUntilSeconds != 0 {
                guard now >= s.label.secureUntilSeconds else {
                    noteSecureExpiry(s.label.secureUntilSeconds)
                    continue
                }
                guard let lun = controlLock.withLock({ _ in store.lunTable.entries.first(where: { $0.lunID == s.label.lunID }) }) else {
                    noteSecureExpiry(now + 60)
                    continue
                }
                do throws(VSAError) { try deleteSnapshot(lun: lun.name, name: s.label.name, expiring: true) } catch {
                    // Linked, or drives failing: tried again in a minute.
                    noteSecureExpiry(now + 60)
                }
            }
        }
    }

    // MARK: Status

    /// Per snapshot: its LUN, name, times, bytes and linked clones; per clone, what it is linked to.
    func addSnapshotStatus(_ report: inout StatusReport, stats: [PoolHomeStats]) {
        let entries = controlLock.withLock { _ in store.lunTable.entries }
        let names = Dictionary(uniqueKeysWithValues: entries.map { ($0.lunID, $0.name) })
        let block = UInt64(PoolLayout.blockBytes)
        let snapshots = ArrayDaemon.snapshots(in: stats.map(\.records))
        report.snapshots = snapshots.map { s in
            StatusReport.SnapshotInfo(
                lun: names[s.label.lunID] ?? "(deleted LUN \(s.label.lunID))", name: s.label.name, id: s.id, createdSeconds: s.label.createdSeconds,
                secureUntilSeconds: s.label.secureUntilSeconds == 0 ? nil : s.label.secureUntilSeconds,
                allocatedBytes: ArrayDaemon.allocatedBytes(of: s.id, in: stats),
                uniqueBytes: stats.reduce(0) { $0 + ($1.records[s.id]?.unique ?? 0) } * block,
                linked: entries.filter { $0.linkedSnapshot == s.id }.map(\.name).sorted())
        }
        for i in report.luns.indices {
            guard let e = entries.first(where: { $0.lunID == report.luns[i].id }) else { continue }
            if e.pendingReset != 0 { report.luns[i].linkedTo = "(hidden: a restore could not finish)" }
            guard e.linkedSnapshot != 0, let s = snapshots.first(where: { $0.id == e.linkedSnapshot }) else { continue }
            report.luns[i].linkedTo = "\(names[s.label.lunID] ?? "?")@\(s.label.name)"
        }
    }
}

extension ArrayDaemon {
    /// At mount, after the homes recovered: a snapshot not held as one by every home was being taken or deleted when
    /// the array stopped (dropped); a zombie nothing needs any more goes; a restore or relink the LUN table records
    /// is finished; a clone linked to a snapshot that is gone is unlinked. A LUN whose restore cannot be finished
    /// (its snapshot gone: only a damaged or hostile image does that) keeps its record and stays off the mount, so
    /// nobody reads it half restored; it can be deleted.
    static func checkSnapshots(store: ArrayStore, homes: [PoolHome], log: (String) -> Void) throws(VSAError) {
        let ids = Set(homes.flatMap { $0.versions.values.filter { $0.kind != .live }.map(\.id) })
        for id in ids.sorted() {
            let whole = homes.allSatisfy { $0.versions[id]?.kind == .snapshot }
            let zombie = homes.allSatisfy { $0.versions[id]?.kind == .zombie }
            guard !whole && !zombie else { continue }
            let label = homes.compactMap { $0.versions[id]?.label }.first ?? VersionLabel()
            log("snapshot \(label.name) (version \(id)) was being taken or deleted when the array stopped; dropped")
            for home in homes where home.versions[id]?.kind == .snapshot {
                guard home.deleteVersion(id) else { throw VSAError("pool home \(home.home): a snapshot cut short could not be dropped") }
            }
        }
        for home in homes {
            for id in home.versions.keys.sorted() where home.versions[id]?.kind == .zombie {
                guard home.collapseZombie(id) else { throw VSAError("pool home \(home.home): a deleted snapshot's blocks could not be freed") }
            }
        }
        let entries = store.lunTable.entries
        for original in entries where original.thin && (original.pendingReset != 0 || original.linkedSnapshot != 0) {
            var entry = original
            if entry.pendingReset != 0 {
                let s = entry.pendingReset
                // The snapshot a restore (one of the LUN's own) or relink (one of the LUN it is a clone of) named.
                let label = homes.first?.versions[s]?.label
                let source = entries.first { $0.lunID == label?.lunID }
                let fits =
                    s >= firstSnapshotID && homes.allSatisfy { $0.versions[s]?.kind == .snapshot && $0.versions[s]?.blocks == $0.versions[entry.lunID]?.blocks }
                    && source?.sizeBytes == entry.sizeBytes
                if fits && homes.allSatisfy({ $0.reset(entry.lunID, to: s) }) {
                    if label?.lunID != entry.lunID { entry.linkedSnapshot = s }
                    entry.pendingReset = 0
                    log("LUN \(entry.name): the restore or relink cut short by the stop was finished")
                } else {
                    log("LUN \(entry.name): a restore or relink could not be finished (its snapshot is gone or damaged); the LUN is hidden: delete it")
                }
            }
            if entry.linkedSnapshot != 0 && !homes.allSatisfy({ $0.versions[entry.linkedSnapshot]?.kind == .snapshot }) {
                log("LUN \(entry.name) was linked to a snapshot that is gone; unlinked")
                entry.linkedSnapshot = 0
            }
            if entry != original { try store.updateLUN(entry) }
        }
    }
}
