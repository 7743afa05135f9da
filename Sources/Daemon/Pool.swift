// The daemon's half of the pool (docs/POOL.md): opening it at mount (every home recovered from its checkpoint and
// log, versions no thin LUN names dropped), making it with the first thin LUN, thin LUN create and delete, the
// checkpoints of a clean stop, and the counters status shows. The homes' work runs on the directors acting for them
// (Engines.poolEach); only the mount, before any director runs, touches a home from this thread.
import ArrayModel
import BackEnd
import Directors
import Metadata
import Pool
import Synchronization

/// The open pool: its layout, its segments and its homes.
final class PoolRuntime: @unchecked Sendable {
    let layout: PoolLayout
    let space: PoolSpace
    let homes: [PoolHome]
    init(layout: PoolLayout, space: PoolSpace, homes: [PoolHome]) {
        self.layout = layout
        self.space = space
        self.homes = homes
    }
}

extension ArrayDaemon {
    /// The pool tag: from the array's UUID, so another array's pool on the same drives is never read as this one's.
    static func poolTag(_ store: ArrayStore) -> UInt64 { store.superblock.arrayUUID.bytes.1 ^ 0x706F_6F6C }

    /// Map frames per home: a sixteenth of the cache, split between the homes, at least 256; and no more than a
    /// 64th of the array's blocks per home (every frame may have to be written at a checkpoint, so the pool holds
    /// space back for them: a big cache must not take most of a small array's pool).
    static func mapFrames(cacheBytes: UInt64, homes: Int, geometry: ArrayGeometry) -> Int {
        let byCache = Int(cacheBytes / 16 / UInt64(PoolLayout.blockBytes)) / homes
        let byArray = Int(min(UInt64(Int.max), geometry.capacityBytes / UInt64(PoolLayout.blockBytes) / 64)) / homes
        return max(256, min(byCache, byArray))
    }

    /// At mount, before the directors run: every home recovered on its own director's back end; versions of thin
    /// LUNs the LUN table no longer names (a delete or create cut short) are dropped.
    static func openPool(store: ArrayStore, engines: Engines, cacheBytes: UInt64, log: (String) -> Void) throws(VSAError) -> PoolRuntime? {
        guard let area = store.lunTable.pool else { return nil }
        // No pool is made on such an array now (an older build made one): the array mounts without it, its thick
        // LUNs served, its thin ones answering EIO, rather than not at all.
        if let problem = PoolLayout.unfit(store.geometry) {
            log("the pool is not opened: \(problem); this array's thin LUNs answer EIO, its thick LUNs are served")
            return nil
        }
        let homes = engines.directors.count
        var layout = PoolLayout(geometry: store.geometry, homes: homes, areaStart: area.startStripe, versionsMax: Int(area.versionsMax))
        if layout.areaStripes != area.stripeCount {
            // A pool made before segments scaled with small arrays: 4 MiB segments, whatever the array's size.
            let legacy = PoolLayout(
                geometry: store.geometry, homes: homes, areaStart: area.startStripe, versionsMax: Int(area.versionsMax),
                segmentBytes: PoolLayout.segmentTargetBytes)
            if legacy.areaStripes == area.stripeCount { layout = legacy }
        }
        guard layout.areaStripes == area.stripeCount else {
            throw VSAError(
                "the pool area of \(area.stripeCount) stripes does not fit this array's layout (\(layout.areaStripes) expected); the LUN table is damaged")
        }
        let space = PoolSpace(layout: layout, reservedStripes: store.lunTable.reservedRuns)
        var opened: [PoolHome] = []
        for h in 0..<homes {
            let frames = mapFrames(cacheBytes: cacheBytes, homes: homes, geometry: store.geometry)
            let (backEnd, memory) = (engines.directors[h].backEnd, engines.directors[h].memory)
            if area.fresh {
                // Made offline: no home has written anything yet. Made now (again, if a mount stopped before the
                // table said so: nothing else was written meanwhile).
                let home = PoolHome(home: h, layout: layout, space: space, poolTag: poolTag(store), store: backEnd, memory: memory, mapFrames: frames)
                guard home.checkpoint() else { throw VSAError("pool home \(h) could not be made (drives failing)") }
                opened.append(home)
                continue
            }
            let home = try PoolHome.load(
                home: h, layout: layout, space: space, poolTag: poolTag(store), store: backEnd, memory: memory, mapFrames: frames)
            if home.rolledForward > 0 { log("pool home \(h): \(home.rolledForward) commits replayed after the last checkpoint") }
            opened.append(home)
        }
        // Every home's segments are assigned now: a checkpoint's claim takes only what no home names.
        if !area.fresh { for home in opened { try home.finishRecovery() } }
        if area.fresh {
            var table = store.lunTable
            table.pool?.fresh = false
            try store.writeLUNTable(table)
            log("pool made: area at stripe \(area.startStripe) (\(area.stripeCount) stripes)")
        }
        // Thin LUNs made offline get their versions now.
        for original in store.lunTable.entries where original.thin && original.versionsPending {
            for home in opened where home.versions[original.lunID] == nil {
                guard home.hasVersionRoom else { throw VSAError("LUN \(original.name): the pool's version table is full") }
                home.createVersion(original.lunID, blocks: layout.localBlocks(sizeBytes: original.sizeBytes, homeOffset: original.lunID, home: home.home))
                guard home.checkpoint() else { throw VSAError("pool home \(home.home): LUN \(original.name)'s map could not be made (drives failing)") }
            }
            var entry = original
            entry.versionsPending = false
            try store.updateLUN(entry)
        }
        let thin = Set(store.lunTable.entries.filter(\.thin).map(\.lunID))
        for home in opened {
            // Dropping a version may drop another with it (a zombie origin whose dependents come down to one):
            // that one is gone when its turn comes.
            for id in home.versions.keys.sorted() where home.versions[id]?.kind == .live && !thin.contains(id) {
                log("pool home \(home.home): version \(id) belongs to no thin LUN (a create or delete was cut short); dropped")
                guard home.deleteVersion(id) else { throw VSAError("pool home \(home.home): an orphaned version could not be dropped") }
            }
            for id in thin where home.versions[id] == nil {
                throw VSAError("thin LUN id \(id) has no map in pool home \(home.home): the pool and the LUN table disagree")
            }
        }
        try checkSnapshots(store: store, homes: opened, log: log)
        // Whether versions share blocks, known now (the pool thread looks again once a second): until it is known,
        // no overwrite counts as owned, and a full pool would refuse the overwrites it has room for.
        space.sharing.store(opened.contains { h in h.versions.values.contains { $0.kind != .live || $0.origin != 0 } }, ordering: .relaxed)
        let runtime = PoolRuntime(layout: layout, space: space, homes: opened)
        guard engines.attachPool(layout: layout, homes: opened) == 0 else { throw VSAError("the pool could not be attached to the directors") }
        return runtime
    }

    /// The fewest free segments a new pool starts with: each home's log and the next segment it names, and as many
    /// again for checkpoints and the cleaner.
    static func poolSegmentsMin(homes: Int) -> Int { 4 * homes }

    /// Where a new pool's area goes: the first free run of stripes its checkpoint slots need (one pair per director).
    static func choosePoolArea(store: ArrayStore) throws(VSAError) -> PoolArea {
        let geometry = store.geometry
        let versionsMax = PoolLayout.versionsMax(capacityBytes: geometry.capacityBytes)
        let stripes = PoolLayout.areaStripes(geometry: geometry, homes: store.superblock.directorCount, versionsMax: versionsMax)
        if let problem = PoolLayout.unfit(geometry) { throw VSAError(problem) }
        guard geometry.stripeCount * UInt64(geometry.stripeDataBytes / 4096) < MapEntry.pbaLimit else {
            throw VSAError("thin LUNs need an array under 4 PiB")
        }
        guard let start = store.freeRun(stripes: stripes) else {
            throw VSAError("no room for the pool's area (\(stripes) stripes): delete a thick LUN first")
        }
        // Segments outside the area and the thick LUNs, for every home's log and its reserve: else the first mount
        // could not make the homes, and the array would not mount until a thick LUN (and its data) went.
        let homes = store.superblock.directorCount
        let layout = PoolLayout(geometry: geometry, homes: homes, areaStart: start, versionsMax: versionsMax)
        let free = PoolSpace(layout: layout, reservedStripes: store.lunTable.reservedRuns + [start..<(start + stripes)]).freeSegments
        guard free >= ArrayDaemon.poolSegmentsMin(homes: homes) else {
            throw VSAError(
                "no room for a pool: thick LUNs leave \(free) of the \(ArrayDaemon.poolSegmentsMin(homes: homes)) segments it needs at least; delete a thick LUN first, or make this LUN --thick"
            )
        }
        return PoolArea(startStripe: start, stripeCount: stripes, versionsMax: UInt32(versionsMax))
    }

    /// `vsa lun create --thin` with no daemon: the LUN table records the LUN with its versions pending (and, the first
    /// time, the pool area, fresh); the next mount makes what the pool's homes lack.
    public static func createThinLUNOffline(store: ArrayStore, name: String, sizeBytes: UInt64) throws(VSAError) -> LUNEntry {
        let lunID = try store.checkNewLUN(name: name, sizeBytes: sizeBytes, thin: true)
        var area = store.lunTable.pool
        if area == nil {
            area = try choosePoolArea(store: store)
            area!.fresh = true
        }
        let entry = LUNEntry(lunID: lunID, name: name, sizeBytes: sizeBytes, startStripe: 0, stripeCount: 0, thin: true, versionsPending: true)
        try store.recordThinLUN(entry, pool: area!)
        return entry
    }

    /// A new thin LUN: its versions in every home (made with the pool, the first time), then its LUN table entry.
    func createThinLUN(name: String, sizeBytes: UInt64) throws(VSAError) -> LUNEntry {
        let lunID = try controlLock.withLock { _ throws(VSAError) in try store.checkNewLUN(name: name, sizeBytes: sizeBytes, thin: true) }
        let runtime: PoolRuntime
        if let open = poolRuntime() { runtime = open } else { runtime = try createPool() }
        let area = controlLock.withLock { _ in store.lunTable.pool }
        let rc = engines.poolEach { h in
            .createVersion(home: h, lunID: lunID, blocks: runtime.layout.localBlocks(sizeBytes: sizeBytes, homeOffset: lunID, home: h))
        }
        guard rc == 0 else { throw VSAError("the pool could not record the new LUN (drives failing)") }
        let entry = LUNEntry(lunID: lunID, name: name, sizeBytes: sizeBytes, startStripe: 0, stripeCount: 0, thin: true)
        try controlLock.withLock { _ throws(VSAError) in
            try store.recordThinLUN(
                entry,
                pool: area
                    ?? PoolArea(startStripe: runtime.layout.areaStart, stripeCount: runtime.layout.areaStripes, versionsMax: UInt32(runtime.layout.versionsMax))
            )
        }
        return entry
    }

    /// The pool, made: a free run of stripes for its area, a home per director, each checkpointed on its director.
    /// The LUN table records the area with the first thin LUN (a crash before that leaves free stripes behind).
    private func createPool() throws(VSAError) -> PoolRuntime {
        let homes = engines.directors.count
        let geometry = store.geometry
        let area = try controlLock.withLock { _ throws(VSAError) in try ArrayDaemon.choosePoolArea(store: store) }
        let (start, stripes, versionsMax) = (area.startStripe, area.stripeCount, Int(area.versionsMax))
        let layout = PoolLayout(geometry: geometry, homes: homes, areaStart: start, versionsMax: versionsMax)
        var reserved = controlLock.withLock { _ in store.lunTable.reservedRuns }
        reserved.append(start..<(start + stripes))
        let space = PoolSpace(layout: layout, reservedStripes: reserved)
        let made = (0..<homes).map { h in
            PoolHome(
                home: h, layout: layout, space: space, poolTag: ArrayDaemon.poolTag(store), store: engines.directors[h].backEnd,
                memory: engines.directors[h].memory, mapFrames: ArrayDaemon.mapFrames(cacheBytes: cacheBytes, homes: homes, geometry: geometry))
        }
        guard engines.attachPool(layout: layout, homes: made) == 0, engines.poolEach({ .checkpoint(home: $0) }) == 0 else {
            throw VSAError("the pool could not be made (drives failing)")
        }
        let runtime = PoolRuntime(layout: layout, space: space, homes: made)
        space.readReallocation.store(options.readReallocation, ordering: .relaxed)
        // A new pool shares nothing (its one version is the LUN being made): overwrites count as owned from the
        // first, not from the pool thread's first look, which a loaded machine can put after the pool is full.
        space.sharing.store(false, ordering: .relaxed)
        pool.withLock { $0 = runtime }
        daemonLog(
            "pool made: area at stripe \(start) (\(stripes) stripes), \(space.poolSegments) segments of \(formatSize(UInt64(layout.blocksPerSegment) * 4096))")
        return runtime
    }

    func poolRuntime() -> PoolRuntime? { pool.withLock { $0 } }

    /// Looks at whether some version shares blocks (a snapshot, a clone, a zombie) and tells the pool's promises
    /// (PoolSpace.sharing). The pool thread calls it once a second, and the control socket after every snapshot
    /// command, both under the command lock; a snapshot or clone being made sets it first. When the homes do not
    /// answer, it stays as it was.
    func noteSharing() {
        guard let runtime = poolRuntime(), let stats = poolStats() else { return }
        let sharing = stats.contains { $0.records.values.contains { $0.kind != .live || $0.origin != 0 } }
        runtime.space.sharing.store(sharing, ordering: .relaxed)
    }

    /// A thick LUN on an array with a pool: its run is chosen clear of the segments the homes own, and those it
    /// overlaps are taken out of the pool before the LUN table names the run, so no home claims one meanwhile (the
    /// directors claim segments without the control lock). A home that claimed one since the choice: choose again.
    func createThickLUN(name: String, sizeBytes: UInt64) throws(VSAError) -> LUNEntry {
        guard let r = poolRuntime() else {
            return try controlLock.withLock { _ throws(VSAError) in try store.createLUN(name: name, sizeBytes: sizeBytes) }
        }
        let needed = store.geometry.stripesFor(sizeBytes: sizeBytes)
        for _ in 0..<8 {
            let owned = (0..<r.layout.homes).flatMap { r.space.owned(by: $0) }.map { r.layout.firstStripe(segment: $0)..<r.layout.firstStripe(segment: $0 + 1) }
            let start = controlLock.withLock { _ in store.freeRun(stripes: needed, avoiding: owned) }
            let run = start.map { $0..<($0 + needed) }
            if let run, !r.space.reserve(run) { continue }
            do {
                let entry = try controlLock.withLock { _ throws(VSAError) in try store.createLUN(name: name, sizeBytes: sizeBytes, avoiding: owned) }
                assert(run == entry.startStripe..<(entry.startStripe + entry.stripeCount), "the LUN went where its segments were reserved")
                return entry
            } catch {
                if let run { r.space.unreserve(run, stillReserved: controlLock.withLock { _ in store.lunTable.reservedRuns }) }
                throw error
            }
        }
        throw VSAError("the pool kept taking the space chosen for \(name); try again")
    }

    /// Version `id` (a deleted thin LUN's, a snapshot's, or one a failed create left) goes from every home that has
    /// it; each home is tried even if one fails (a home left holding it: the next mount drops it).
    func dropVersion(_ id: UInt32) -> Bool { engines.poolEach { .deleteVersion(home: $0, lunID: id) } == 0 }

    /// Each thin LUN file's allocated bytes (its st_blocks), from the homes' counters: the pool thread's, once a
    /// second. Under the cleaner's gate, so it never sends a request after the directors stopped.
    func countAllocated() {
        guard poolRuntime() != nil else { return }
        let stats: [PoolHomeStats]? = cleaner.gate.withLock { _ in shuttingDown.load(ordering: .relaxed) ? nil : poolStats() }
        guard let stats else { return }
        lastPoolStats.withLock { $0 = stats }
        let thin = controlLock.withLock { _ in store.lunTable.entries.filter(\.thin).map(\.lunID) }
        for id in thin { frontEnd.file(lunID: id)?.allocatedBytes.store(ArrayDaemon.allocatedBytes(of: id, in: stats), ordering: .relaxed) }
    }

    /// The bytes version `id` (a thin LUN, clone or snapshot) maps, over every home.
    static func allocatedBytes(of id: UInt32, in stats: [PoolHomeStats]) -> UInt64 {
        stats.reduce(0) { $0 + ($1.records[id]?.mapped ?? 0) } * UInt64(PoolLayout.blockBytes)
    }

    /// Per home, its counters (copied on the director acting for it).
    /// Nil when a home did not answer.
    func poolStats() -> [PoolHomeStats]? {
        guard poolRuntime() != nil else { return [] }
        let stats = engines.directors.map { _ in PoolHomeStats() }
        guard engines.poolEach({ .stats(home: $0, into: stats[$0]) }) == 0 else { return nil }
        return stats
    }
}

extension ArrayDaemon {
    /// The pool's part of `vsa status`: per thin LUN its allocated and unique bytes, and the pool's size and use.
    func addPoolStatus(_ report: inout StatusReport) {
        guard let runtime = poolRuntime() else { return }
        // A director hung on purpose (`vsa inject ... director ID hang`) answers nothing until it is failed over: status
        // must not wait for it, so it shows the counters the pool thread gathered last (at most a second before the
        // hang).
        let hung = engines.directors.contains { $0.state == .online && $0.faults.isHung }
        let stats = (hung ? lastPoolStats.withLock { $0 } : poolStats()) ?? []
        let block = UInt64(PoolLayout.blockBytes)
        for i in report.luns.indices where report.luns[i].thin {
            let id = report.luns[i].id
            report.luns[i].allocatedBytes = ArrayDaemon.allocatedBytes(of: id, in: stats)
            report.luns[i].uniqueBytes = stats.reduce(0) { $0 + ($1.records[id]?.own ?? 0) } * block
        }
        addSnapshotStatus(&report, stats: stats)
        // The pool's size is what promises count on: the segments held back for checkpoints, unmaps and the homes'
        // open segments, and the cleaner's spare ones, are neither size nor free, so 100% used is where writes that
        // need new blocks get ENOSPC. Used: every live block (data of every version, the map) and every block
        // promised to pages still in the cache; dead blocks not yet cleaned are free (the cleaner gives them back).
        let space = runtime.space
        let heldBack = space.heldBackSegments.load(ordering: .relaxed)
        let segments = max(0, space.poolSegments - heldBack)
        let promisedBlocks = max(0, space.promisedBlocks.load(ordering: .relaxed))
        let capacity = space.capacityBlocks
        let taken = min(capacity, space.liveBlocksTotal + promisedBlocks)
        let used = capacity == 0 ? 100 : Double(taken) * 100 / Double(capacity)
        var warning: String? = nil
        for level in [95.0, 90.0, 80.0] where used >= level && warning == nil {
            warning = "the pool is \(Int(level))% used or more: delete snapshots or LUNs, or discard (fstrim) what is not needed"
        }
        report.pool = StatusReport.PoolInfo(
            sizeBytes: UInt64(capacity) * block, allocatedBytes: stats.reduce(0) { $0 + $1.liveBlocks } * block,
            freeBytes: UInt64(capacity - taken) * block, usedPercent: used, segments: segments,
            freeSegments: max(0, min(segments, space.freeSegments - heldBack)),
            segmentBytes: UInt64(runtime.layout.blocksPerSegment) * block,
            checkpoints: stats.reduce(0) { $0 + $1.checkpoint }, commits: stats.reduce(0) { $0 + $1.commits },
            paddingBytes: stats.reduce(0) { $0 + $1.paddingBlocks } * block, damagedMapNodes: stats.reduce(0) { $0 + $1.damagedNodes },
            promisedBytes: UInt64(promisedBlocks) * block, warning: warning)
        report.pool!.spareBytes = UInt64(space.spareSegments * runtime.layout.blocksPerSegment) * block
        report.pool!.reclaimableBytes = stats.reduce(0) { $0 + $1.reclaimableBlocks } * block
        report.pool!.reallocatedBytes = stats.reduce(0) { $0 + $1.reallocatedBlocks } * block
        report.pool!.readReallocation = space.readReallocation.load(ordering: .relaxed)
        let stripeBytes = UInt64(runtime.layout.geometry.stripeDataBytes)
        report.pool!.cleaner = StatusReport.CleanerInfo(
            state: CleanerControl.State(rawValue: cleaner.state.load(ordering: .relaxed))?.name ?? "idle", rateBytesPerSecond: cleaner.rate,
            segmentsCleaned: stats.reduce(0) { $0 + $1.cleaner.segmentsCleaned }, movedBytes: stats.reduce(0) { $0 + $1.cleaner.blocksMoved } * block,
            nodesMoved: stats.reduce(0) { $0 + $1.cleaner.nodesMoved }, readBytes: stats.reduce(0) { $0 + $1.cleaner.stripesRead } * stripeBytes,
            pinnedBytes: stats.reduce(0) { $0 + $1.cleaner.blocksPinned } * block,
            victims: stats.enumerated().compactMap { home, s in
                s.cleaner.victim < 0
                    ? nil
                    : StatusReport.CleanerInfo.Victim(
                        home: home, segment: s.cleaner.victim, percentDone: Int(s.cleaner.victimStripesDone * 100 / max(1, s.stripesPerSegment)))
            })
        // The array's free space: what no thick LUN, pool area or pool segment holds.
        let owned = UInt64(max(0, space.poolSegments - space.freeSegments)) * UInt64(runtime.layout.blocksPerSegment) * block
        report.array.freeBytes = report.array.freeBytes > owned ? report.array.freeBytes - owned : 0
    }
}
