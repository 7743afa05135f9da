// Snapshots, restores and deletions of a home's versions (docs/POOL.md, "Snapshots, clones, restore"). Each runs
// on the home's executor after a checkpoint (so no node is dirty and walks read only the drives' nodes) and ends
// with one, so it is durable when it returns.
//
// Versions form a tree by origin: a snapshot is the origin of the versions made from it (its dependents: the next
// snapshot of the LUN, the live LUN, clones linked to it). A block born above a version's threshold is its own;
// below, it came from the origin and is shared. Counters: `mapped` and `own` are exact; a snapshot's `unique` (own
// blocks none of its dependents maps) is exact while it has one dependent, and a lower bound otherwise.
import ArrayModel

extension PoolHome {
    /// Whether the version table has room for one more version (its slots are sized for `layout.versionsMax`).
    public var hasVersionRoom: Bool { versions.count < layout.versionsMax }

    /// A new live version that maps what snapshot `snapshot` maps (a linked clone). False if a checkpoint failed.
    public func link(_ id: UInt32, to snapshot: UInt32) -> Bool {
        guard versions[id] == nil, let snap = versions[snapshot], snap.kind != .live, hasVersionRoom else { return false }
        createVersion(id, blocks: snap.blocks)
        return reset(id, to: snapshot)
    }

    /// The versions whose origin is `id`.
    public func dependents(of id: UInt32) -> [UInt32] { versions.values.filter { $0.origin == id }.map(\.id).sorted() }

    /// Takes a snapshot of live version `id` as version `snapshot`: the snapshot gets the live root; the live version
    /// goes on from there with the snapshot as its origin. No data moves. False if a checkpoint could not be written.
    public func snapshot(_ id: UInt32, as snapshot: UInt32, label: VersionLabel = VersionLabel()) -> Bool {
        guard let live = versions[id], live.kind == .live, versions[snapshot] == nil, snapshot != 0, hasVersionRoom,
            generation + 1 < MapEntry.birthLimit
        else {
            return false
        }
        guard checkpoint() else { return false }
        var snap = VersionRecord(id: snapshot, kind: .snapshot, blocks: live.blocks)
        snap.root = map.root(of: id)!
        snap.origin = live.origin
        snap.threshold = live.threshold
        snap.generation = generation
        snap.mapped = live.mapped
        snap.own = live.own
        // What the live version held it now shares with the snapshot: nothing is unique to the snapshot yet.
        snap.unique = 0
        snap.label = label
        map.addVersion(snapshot, blocks: live.blocks, root: snap.root)
        versions[snapshot] = snap
        versions[id]!.origin = snapshot
        versions[id]!.threshold = generation
        versions[id]!.own = 0
        generation += 1
        recountDependents()
        return checkpoint()
    }

    /// Makes live version `id` start again from snapshot `snapshot` (a restore, or a clone relinked): its own blocks
    /// are freed and it maps what the snapshot maps.
    public func reset(_ id: UInt32, to snapshot: UInt32) -> Bool {
        guard let live = versions[id], live.kind == .live, let snap = versions[snapshot], snap.kind != .live, snap.blocks == live.blocks else {
            return false
        }
        guard checkpoint(), freeOwn(of: id) else { return false }
        let oldOrigin = live.origin
        map.setRoot(id, snap.root)
        // Blocks a victim kept for a version that changed may have turned movable (or dead).
        cleaner.pinned = [:]
        var v = versions[id]!
        v.root = snap.root
        v.origin = snapshot
        v.threshold = snap.generation
        v.mapped = snap.mapped
        v.own = 0
        versions[id] = v
        recountDependents()
        settleOrigin(oldOrigin)
        settleOrigin(snapshot)
        guard checkpoint() else { return false }
        // The old origin lost a dependent: a zombie left with one or none goes now (as a delete would do).
        return collapseZombie(oldOrigin)
    }

    /// Deletes zombie `id` once one version or none depends on it (its last user went by a delete or a reset).
    public func collapseZombie(_ id: UInt32) -> Bool {
        guard let z = versions[id], z.kind == .zombie, dependents(of: id).count <= 1 else { return true }
        return deleteVersion(id)
    }

    /// Deletes a version. A snapshot that two or more versions depend on becomes a zombie (hidden, its blocks kept)
    /// until one of them goes. False if a walk or checkpoint failed (then nothing changed on the drives).
    public func deleteVersion(_ id: UInt32) -> Bool {
        guard let x = versions[id] else { return false }
        guard checkpoint() else { return false }
        let deps = dependents(of: id)
        if deps.count >= 2 {
            versions[id]!.kind = .zombie
            return checkpoint()
        }
        let origin = x.origin
        let originThreshold = versions[origin]?.threshold ?? 0
        var freed: UInt64 = 0
        if let d = deps.first {
            // One dependent: free x's own blocks it does not map; what it does map becomes its own.
            let ok = map.walkPair(
                id, against: d, prune: { $0.birth <= originThreshold },
                node: { _, entry in if entry.birth > x.threshold { self.space.removeLive(self.layout.segment(ofBlock: entry.pba)) } },
                leaf: { _, entry, _ in
                    if entry.birth > x.threshold {
                        self.space.removeLive(self.layout.segment(ofBlock: entry.pba))
                        freed += 1
                    }
                })
            guard ok else { return false }
            var dv = versions[d]!
            dv.origin = origin
            dv.threshold = x.threshold
            dv.own += x.own - freed
            versions[d] = dv
        } else {
            guard freeOwn(of: id) else { return false }
        }
        map.removeVersion(id)
        versions[id] = nil
        // What a victim kept because this version shared it may be another's own now: victims are looked at again.
        cleaner.pinned = [:]
        noteHeir(of: id, deps.first ?? origin)
        recountDependents()
        settleOrigin(origin)
        // The dependent took x's own blocks it maps: its own unique count changes with them.
        if let d = deps.first { settleOrigin(d) }
        guard checkpoint() else { return false }
        // A zombie whose dependents came down to one can go now.
        return collapseZombie(origin)
    }

    /// Frees every block and node of version `id` born above its threshold (its own), by a walk that does not enter
    /// what it shares.
    private func freeOwn(of id: UInt32) -> Bool {
        let threshold = versions[id]!.threshold
        return map.walkPair(
            id, against: nil, prune: { $0.birth <= threshold },
            node: { _, entry in self.space.removeLive(self.layout.segment(ofBlock: entry.pba)) },
            leaf: { _, entry, _ in self.space.removeLive(self.layout.segment(ofBlock: entry.pba)) })
    }

    /// Sets a snapshot's unique count again after its dependents changed: with none, all its own blocks are unique;
    /// with one, those that dependent does not map (a walk of what differs); with more, it stays a lower bound.
    private func settleOrigin(_ origin: UInt32) {
        guard let o = versions[origin], o.kind != .live else { return }
        switch o.dependentCount {
        case 0:
            versions[origin]!.unique = o.own
        case 1:
            var unique: UInt64 = 0
            let d = dependents(of: origin)[0]
            if map.walkPair(origin, against: d, prune: { $0.birth <= o.threshold }, node: { _, _ in }, leaf: { _, _, _ in unique += 1 }) {
                versions[origin]!.unique = unique
            }
        default:
            break
        }
    }
}
