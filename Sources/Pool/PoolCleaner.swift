// The cleaner (docs/POOL.md, "The cleaner"): gives back the dead blocks of partly used segments. Redirect-on-write
// leaves an overwritten block dead where it was; a segment comes back to the free set only when every block in it is
// dead, so without cleaning a pool whose segments are all partly live refuses writes with most of its space unused.
//
// A home cleans its own segments, on its own executor (the director acting for it), in small steps the daemon's
// cleaner thread asks for at a bounded rate, so host I/O queued on the director goes between steps. A step reads one
// stripe of the victim segment whole, walks the commits in it (each summary names what every block after it is), and
// moves every block the live maps still point at: a data block is written again, through the home's commit like a
// destaged page (same version, same local block, born now); a map node is made dirty, so the next checkpoint writes
// it elsewhere. What a move needs is nothing the summaries say alone: a block moves only if a live version's map
// points at exactly that block and the block is the version's own (born after its origin), so a stale or hostile
// summary (a segment written before, another pool's leftovers) can at worst cost a read. Blocks a snapshot or a clone
// shares stay where they are: the victim keeps them (it is "pinned") and is not chosen again until one of them dies.
// Once the victim's blocks are all dead, the checkpoint that follows releases it.
//
// Moves are ordinary commits, replayed after a crash like any write; a node moved is written only by a checkpoint.
// A crash before that checkpoint leaves the victim owned and its blocks where the last checkpoint and log put them.
import ArrayModel
import BackEnd
import Buffers
import MemoryServices

/// What a home's cleaner has done, and is doing (status, tests).
public struct PoolCleanerCounters: Equatable, Sendable {
    public var segmentsCleaned: UInt64 = 0
    public var blocksMoved: UInt64 = 0
    public var nodesMoved: UInt64 = 0
    public var stripesRead: UInt64 = 0
    /// Blocks now left in cleaned victims because a snapshot or clone shares them.
    public var blocksPinned: UInt64 = 0
    /// The victim being cleaned (-1: none) and how many of its stripes are done.
    public var victim = -1
    public var victimStripesDone: UInt64 = 0
    /// Victim stripes that could not be read, and map lookups that failed (their blocks stayed).
    public var stripesUnreadable: UInt64 = 0
    public var unreadableNodes: UInt64 = 0
    public init() {}
}

/// The cleaner's state in a home (memory only: after a restart it starts again from the segments' live counts).
struct PoolCleanerState {
    var counters = PoolCleanerCounters()
    var victim = -1
    var nextStripe: UInt64 = 0
    /// Victims left with blocks a snapshot pins, and their live count then: not chosen again while it is the same.
    var pinned: [Int: UInt32] = [:]
    /// Nodes made dirty in the current victim (their blocks die only with the next checkpoint).
    var nodesInVictim = 0
    /// Who took over a deleted version's blocks: its one dependent, or its origin (memory only): summaries name the
    /// version that wrote a block, which may be gone while its heir maps the block.
    var heirs: [UInt32: UInt32] = [:]
    let buffer: Arena
    let targets: UnsafeMutablePointer<UnsafeMutableRawPointer?>

    init(layout: PoolLayout) {
        buffer = Arena(sliceBytes: layout.geometry.stripUnitBytes, sliceCount: layout.blocksPerRow)
        targets = .allocate(capacity: layout.blocksPerRow)
        for i in 0..<layout.blocksPerRow { targets[i] = buffer.slice(i) }
    }
}

extension PoolHome {
    /// Free segments a cleaner's moves leave alone: the checkpoints' room, so that a victim emptied can be given back.
    var cleanerReserve: Int { checkpointReserve }

    /// Free segments per home host data leaves to the cleaner's moves, above the checkpoints' room: four (fewer on a
    /// pool of few segments). A checkpoint gives emptied victims back, and writes every dirty map node of the home,
    /// which under random overwrites is about every leaf; room for a few victims per home lets one checkpoint give
    /// back several (`releasePays`). With room for one, a full pool's cleaner paid a checkpoint per victim and, with
    /// victims a quarter dead, gained nothing: free segments ran down to the checkpoints' room and writes stopped.
    static func cleanerRoomPerHome(_ layout: PoolLayout) -> Int { max(1, min(4, layout.segmentCount / (16 * layout.homes))) }

    /// Whether the cleaner is short of room: no free segment above its reserve for another victim. Then what it
    /// emptied is given back at once, whatever the checkpoint costs, and a victim pinned by moved map nodes is
    /// finished by one.
    var cleanerIsShort: Bool { !space.hasVictimRoom(floor: cleanerReserve) }

    public var cleanerCounters: PoolCleanerCounters {
        var c = cleaner.counters
        c.blocksPinned = cleaner.pinned.values.reduce(0) { $0 + UInt64($1) }
        return c
    }

    /// Blocks of this home's segments that are dead (written, then overwritten or freed) and not in the segments its
    /// log is in: what cleaning could give back.
    public var reclaimableBlocks: UInt64 {
        var dead: UInt64 = 0
        for s in space.owned(by: home) where s != openSegment && s != nextSegment {
            dead += UInt64(layout.blocksPerSegment) - UInt64(min(space.liveBlocks(s), UInt32(layout.blocksPerSegment)))
        }
        return dead
    }

    /// The segment cleaning gives most for its cost: cost-benefit as in LFS, (1 - u) x age / (1 + u) for a segment
    /// with a fraction u of its blocks live (reading the segment costs 1, writing its live blocks u), age counted in
    /// segments the pool handed out since this one. Only segments with at least `minimumDead` dead blocks, never the
    /// ones the log is in, nor a pinned one whose live count has not changed.
    public func chooseVictim(minimumDead: Int) -> Int? {
        let capacity = Double(layout.blocksPerSegment)
        let now = space.segmentClock
        var best: (segment: Int, score: Double)? = nil
        for s in space.owned(by: home) where s != openSegment && s != nextSegment {
            let live = Int(space.liveBlocks(s))
            // A wholly dead segment waits for a checkpoint, not for the cleaner.
            guard live > 0, layout.blocksPerSegment - live >= minimumDead else { continue }
            if let seen = cleaner.pinned[s], seen == space.liveBlocks(s) { continue }
            let u = Double(live) / capacity
            let age = Double(now &- space.stamp(s)) + 1
            let score = (1 - u) * age / (1 + u)
            if best == nil || score > best!.score { best = (s, score) }
        }
        return best?.segment
    }

    /// Whether there is a victim to clean: the one in progress, or one chosen now with at least `minimumDead` dead
    /// blocks (`worthCleaning` when not given). What a caller asks before a step, so the choice is made once.
    public func startVictim(minimumDead: Int? = nil) -> Bool {
        if cleaner.victim >= 0 { return true }
        guard space.takeVictimRoom(floor: cleanerReserve) else { return false }
        guard let victim = chooseVictim(minimumDead: max(8, minimumDead ?? worthCleaning, victimOverhead)) else {
            space.giveVictimRoom()
            return false
        }
        cleaner.victim = victim
        cleaner.nextStripe = 0
        cleaner.nodesInVictim = 0
        cleaner.counters.victim = victim
        cleaner.counters.victimStripesDone = 0
        return true
    }

    /// Dead blocks a victim needs at least so its live ones, with the summaries of the commits that move them (one
    /// per stripe they fill) and a row of padding, fit in one segment (`PoolSpace.takeVictimRoom` counts one per
    /// victim).
    var victimOverhead: Int { Int(layout.stripesPerSegment) + layout.blocksPerRow }

    /// Dead blocks a segment needs before cleaning it pays: a quarter of it. Every segment has some (summaries, and
    /// the padding of commits that did not fill their last row), and moving a nearly live segment makes about as much
    /// of both as it gives back: a cleaner with a lower bar would move the same blocks around for ever.
    public var worthCleaning: Int { layout.blocksPerSegment / 4 }

    /// One step of cleaning: up to `stripes` stripes of the victim (one is chosen when there is none: a segment with
    /// at least `minimumDead` dead blocks, `worthCleaning` when not given), their live blocks moved and committed.
    /// Returns the blocks moved (0 when there was nothing to clean), or nil on a failure (I/O, or no space to move
    /// into; nothing is lost: what moved is committed, what did not stays where it was).
    public func clean(stripes: Int, minimumDead: Int? = nil) -> Int? {
        guard startVictim(minimumDead: minimumDead) else {
            // No room to start one: what earlier victims emptied comes back with a checkpoint.
            if releasePays { return checkpoint() ? 0 : nil }
            return 0
        }
        let victim = cleaner.victim
        var moved = 0
        var failed = false
        for _ in 0..<max(1, stripes) {
            // The victim could have been released by a checkpoint meanwhile (its blocks all died): then it may be
            // another home's already, and is not read. Only this executor releases this home's segments.
            guard space.owner(victim) == UInt8(home), victim != openSegment, victim != nextSegment, cleaner.nextStripe < layout.stripesPerSegment
            else { break }
            // A stripe that cannot be read is passed over (its blocks stay; the victim is pinned at the end).
            guard let n = cleanStripe(layout.firstStripe(segment: victim) + cleaner.nextStripe) else {
                failed = true
                break
            }
            moved += n
            cleaner.nextStripe += 1
            cleaner.counters.victimStripesDone = cleaner.nextStripe
        }
        guard commit() else { return nil }
        if failed { return nil }
        if cleaner.nextStripe >= layout.stripesPerSegment || space.owner(victim) != UInt8(home) || victim == openSegment || victim == nextSegment {
            finishVictim(victim)
        }
        return moved
    }

    /// The victim is done: wholly dead (a checkpoint now gives it back), or pinned by snapshots' blocks.
    private func finishVictim(_ victim: Int) {
        space.giveVictimRoom()
        cleaner.victim = -1
        cleaner.counters.victim = -1
        cleaner.counters.victimStripesDone = 0
        guard space.owner(victim) == UInt8(home), victim != openSegment, victim != nextSegment else {
            // A checkpoint released it on the way (its last live blocks had moved): cleaned.
            cleaner.pinned[victim] = nil
            cleaner.counters.segmentsCleaned += 1
            return
        }
        var live = space.liveBlocks(victim)
        if live > 0 && cleaner.nodesInVictim > 0 && (releasePays || cleanerIsShort) {
            // Nodes moved die with the checkpoint that writes them elsewhere: take it when it pays, then look again.
            _ = checkpoint()
            guard space.owner(victim) == UInt8(home) else {
                cleaner.counters.segmentsCleaned += 1
                return
            }
            live = space.liveBlocks(victim)
        }
        if live == 0 {
            cleaner.pinned[victim] = nil
            cleaner.counters.segmentsCleaned += 1
            // Released by the next checkpoint: now, if giving back what the cleaner emptied pays for the map nodes it
            // writes (`releasePays`), else with a later one.
            if releasePays { _ = checkpoint() }
        } else {
            // Pinned by snapshots' blocks, or by map nodes the next checkpoint moves (the count changes then).
            cleaner.pinned[victim] = live
        }
    }

    /// Moves the live blocks of one stripe of the victim; nil when a move could not be written (no space, or the
    /// drives failing). A stripe that cannot be read, or a map node that cannot, leaves its blocks where they are.
    private func cleanStripe(_ stripe: UInt64) -> Int? {
        let d = layout.blocksPerRow
        guard
            store.readStrips(
                stripe: stripe, stripMask: (1 << UInt64(d)) - 1, offsetBytes: 0, count: layout.rowsPerStripe * PoolLayout.blockBytes,
                targets: cleaner.targets)
        else {
            cleaner.counters.stripesUnreadable += 1
            return 0
        }
        cleaner.counters.stripesRead += 1
        var moved = 0
        var row = 0
        while row < layout.rowsPerStripe {
            let summary = cleanerBlock(row * d)
            guard let (rows, entries) = victimSummary(summary, stripe: stripe, row: row) else { break }
            var k = 0
            for e in 0..<entries {
                let at = PoolHome.summaryHeaderBytes + e * 16
                let word = UInt64(littleEndian: summary.load(fromByteOffset: at, as: UInt64.self))
                let version = UInt32(littleEndian: summary.load(fromByteOffset: at + 8, as: UInt32.self))
                let kind = word >> 60
                let position = word & ((1 << 60) - 1)
                guard kind == 1 || kind == 3 else { continue }
                k += 1
                guard row * d + k < layout.blocksPerStripe else { break }
                let pba = layout.pba(stripe: stripe, block: row * d + k)
                let outcome = kind == 1 ? moveData(version, block: position, at: pba, from: cleanerBlock(row * d + k)) : moveNode(version, position, at: pba)
                guard let outcome else { return nil }
                moved += outcome
            }
            row += rows
        }
        return moved
    }

    /// Block j of the stripe the cleaner read.
    private func cleanerBlock(_ j: Int) -> UnsafeMutableRawPointer {
        cleaner.buffer.slice(j % layout.blocksPerRow) + (j / layout.blocksPerRow) * PoolLayout.blockBytes
    }

    /// A summary in the victim, checked as far as the cleaner relies on it (where the next one is, how many entries):
    /// its CRC, this home, this pool, where it says it is. Nil ends the walk of the stripe.
    private func victimSummary(_ s: UnsafeMutableRawPointer, stripe: UInt64, row: Int) -> (rows: Int, entries: Int)? {
        guard UInt32(littleEndian: s.load(fromByteOffset: 0, as: UInt32.self)) == PoolHome.summaryMagic else { return nil }
        let stored = UInt32(littleEndian: s.load(fromByteOffset: 4, as: UInt32.self))
        s.storeBytes(of: 0, toByteOffset: 4, as: UInt32.self)
        let crc = crc32c(s, count: PoolLayout.blockBytes)
        s.storeBytes(of: stored.littleEndian, toByteOffset: 4, as: UInt32.self)
        let rows = Int(UInt32(littleEndian: s.load(fromByteOffset: 44, as: UInt32.self)))
        let entries = Int(UInt32(littleEndian: s.load(fromByteOffset: 48, as: UInt32.self)))
        guard crc == stored, Int(s.load(fromByteOffset: 8, as: UInt8.self)) == home,
            UInt64(littleEndian: s.load(fromByteOffset: 64, as: UInt64.self)) == poolTag,
            UInt64(littleEndian: s.load(fromByteOffset: 32, as: UInt64.self)) == stripe,
            Int(UInt32(littleEndian: s.load(fromByteOffset: 40, as: UInt32.self))) == row,
            rows >= 1, rows <= layout.rowsPerStripe - row, entries <= PoolHome.entryCapacity
        else { return nil }
        return (rows, entries)
    }

    /// Moves data block `pba` if live version `id` maps local block `block` to it as its own: written again from
    /// `data` (the copy the cleaner read). 1 if moved, 0 if dead or shared, nil on a failure.
    private func moveData(_ named: UInt32, block: UInt64, at pba: UInt64, from data: UnsafeMutableRawPointer) -> Int? {
        let id = heir(of: named)
        guard let record = versions[id], record.kind == .live, block < record.blocks else { return 0 }
        guard let entry = map.lookup(id, block: block) else {
            cleaner.counters.unreadableNodes += 1
            return 0
        }
        guard entry.isMapped, entry.pba == pba else { return 0 }
        guard entry.birth > record.threshold else {
            return 0  // shared with a snapshot: pinned
        }
        guard writeBlock(id, block: block, from: data, reserve: cleanerReserve) == nil else { return nil }
        cleaner.counters.blocksMoved += 1
        blocksMovedSinceCheckpoint += 1
        return 1
    }

    /// Moves map node `pba` if live version `id`'s node at the position the summary names is there and its own: made
    /// dirty, so the next checkpoint writes it elsewhere. 1 if moved, 0 if dead or shared, nil on a failure.
    private func moveNode(_ id: UInt32, _ position: UInt64, at pba: UInt64) -> Int? {
        let level = Int(position >> 56)
        let index = position & ((1 << 56) - 1)
        guard let record = versions[id], record.kind == .live, level < MapNode.maxDepth else { return 0 }
        guard let entry = map.nodeEntry(id, level: level, index: index) else {
            cleaner.counters.unreadableNodes += 1
            return 0
        }
        guard entry.isMapped, entry.pba == pba, entry.birth > record.threshold else { return 0 }
        guard makeRoomInMap(), map.touchNode(id, level: level, index: index) else { return nil }
        cleaner.counters.nodesMoved += 1
        cleaner.nodesInVictim += 1
        return 1
    }

    /// The version that holds what `id` wrote now: `id` itself while it exists, else whoever took its blocks over
    /// (a chain of at most a few deletes; the map still decides whether the block moves).
    private func heir(of id: UInt32) -> UInt32 {
        var current = id
        for _ in 0..<16 {
            if versions[current] != nil { return current }
            guard let next = cleaner.heirs[current] else { return current }
            current = next
        }
        return current
    }

    /// Records who takes over a deleted version's blocks (PoolVersions.deleteVersion), and forgets heirs that are
    /// gone without one.
    func noteHeir(of id: UInt32, _ heir: UInt32) {
        if heir != 0 { cleaner.heirs[id] = heir }
        if cleaner.heirs.count > 4 * max(64, versions.count) { cleaner.heirs = cleaner.heirs.filter { versions[$0.value] != nil } }
    }
}
