// BlockMap: one home's maps, every version's copy-on-write radix tree (docs/POOL.md, "The map"), paged through a
// bounded node cache. Used by one thread at a time (the executor of the director acting for the home): no locks.
//
// Frames hold nodes. A clean frame holds a node as it is on the drives and is found by its PBA, so a node two
// versions share is cached once; CLOCK evicts clean frames. A dirty frame holds a node changed since the home's last
// checkpoint, not yet written anywhere: it is found by its position (version, level, index), and stays until the
// checkpoint writes it to a new block. Invariant (dirty closure): a dirty node's parent is dirty, up to the root, so
// a lookup goes down by position while the nodes are dirty and by PBA from the first clean node on. A clean frame that
// a version changes becomes that version's dirty frame in place; another version still mapping the old node reads it
// again from its PBA (blocks are never overwritten in place: the pool writes each one once).
import ArrayModel
import Buffers
import MemoryServices

/// Where the map reads nodes from (the home's pool blocks).
public protocol MapBlockReader: AnyObject {
    /// Reads the 4 KiB pool block `pba` into `target`. False on an I/O error.
    func readMapBlock(_ pba: UInt64, into target: UnsafeMutableRawPointer) -> Bool
}

public final class BlockMap {
    public let home: UInt8
    public let frameCount: Int
    /// Blocks of the pool: an entry pointing at or past it is damage.
    public let blockLimit: UInt64
    private let reader: MapBlockReader
    private let arena: Arena

    // Frames (structure of arrays, allocated once).
    private var frameInUse: [Bool]
    private var frameDirty: [Bool]
    private var frameReferenced: [Bool]
    private var framePBA: [UInt64]
    private var frameVersion: [UInt32]
    private var frameLevel: [UInt8]
    private var frameIndex: [UInt64]
    /// For a dirty frame: the entry of the node it replaces (0 for a new node), freed by the checkpoint that writes it.
    private var frameReplaces: [UInt64]
    private var pbaNext: [Int32]
    private var pbaBuckets: [Int32]
    private var positionNext: [Int32]
    private var positionBuckets: [Int32]
    private let bucketMask: Int
    private var freeFrames: [Int32]
    private var freeCount: Int
    private var clockHand = 0
    public private(set) var dirtyFrames = 0

    // Versions: id -> slot; per slot its depth, local block count and root entry (the root node's PBA and birth as
    // of the last checkpoint; a dirty root is found by position).
    private var slotOf: [UInt32: Int] = [:]
    /// The frame of the leaf the last `update` changed (-1: none): valid while it is dirty and still that leaf.
    private var lastUpdatedLeaf = -1
    private var versionID: [UInt32] = []
    private var versionDepth: [Int] = []
    private var versionBlocks: [UInt64] = []
    private var versionRoot: [UInt64] = []
    private var freeVersionSlots: [Int] = []

    /// Nodes read from the drives, lookups served from frames, nodes refused as damaged.
    public private(set) var nodeReads: UInt64 = 0
    public private(set) var damagedNodes: UInt64 = 0
    /// Why the last node was refused (for the log), nil if none was.
    public private(set) var lastDamage: String?

    public init(home: UInt8, frameCount: Int, blockLimit: UInt64, reader: MapBlockReader) {
        precondition(frameCount >= 2 * MapNode.maxDepth + 2, "a map needs room for a few paths")
        self.home = home
        self.frameCount = frameCount
        self.blockLimit = min(blockLimit, MapEntry.pbaLimit)
        self.reader = reader
        arena = Arena(sliceBytes: MapNode.bytes, sliceCount: frameCount)
        frameInUse = Array(repeating: false, count: frameCount)
        frameDirty = Array(repeating: false, count: frameCount)
        frameReferenced = Array(repeating: false, count: frameCount)
        framePBA = Array(repeating: 0, count: frameCount)
        frameVersion = Array(repeating: 0, count: frameCount)
        frameLevel = Array(repeating: 0, count: frameCount)
        frameIndex = Array(repeating: 0, count: frameCount)
        frameReplaces = Array(repeating: 0, count: frameCount)
        pbaNext = Array(repeating: -1, count: frameCount)
        positionNext = Array(repeating: -1, count: frameCount)
        var buckets = 1
        while buckets < 2 * frameCount { buckets <<= 1 }
        pbaBuckets = Array(repeating: -1, count: buckets)
        positionBuckets = Array(repeating: -1, count: buckets)
        bucketMask = buckets - 1
        freeFrames = (0..<frameCount).reversed().map { Int32($0) }
        freeCount = frameCount
    }

    // MARK: Versions

    /// Adds a version with `blocks` local blocks whose root is `root` (MapEntry.unmapped: empty).
    public func addVersion(_ id: UInt32, blocks: UInt64, root: MapEntry) {
        precondition(slotOf[id] == nil, "version \(id) is already in the map")
        let slot: Int
        if let s = freeVersionSlots.popLast() {
            slot = s
        } else {
            slot = versionID.count
            versionID.append(0)
            versionDepth.append(0)
            versionBlocks.append(0)
            versionRoot.append(0)
        }
        versionID[slot] = id
        versionDepth[slot] = MapNode.depth(forBlocks: blocks)
        versionBlocks[slot] = blocks
        versionRoot[slot] = root.raw
        slotOf[id] = slot
    }

    /// Forgets a version: its dirty frames are dropped (nothing of it will be written). Its blocks are the caller's.
    public func removeVersion(_ id: UInt32) {
        guard let slot = slotOf[id] else { return }
        for f in 0..<frameCount where frameInUse[f] && frameDirty[f] && frameVersion[f] == id {
            unlinkPosition(f)
            frameDirty[f] = false
            dirtyFrames -= 1
            releaseFrame(f)
        }
        slotOf[id] = nil
        freeVersionSlots.append(slot)
    }

    public func hasVersion(_ id: UInt32) -> Bool { slotOf[id] != nil }

    /// The root as of the last checkpoint (nil: no such version). A version with dirty nodes has a newer root in
    /// memory; `checkpoint` writes it.
    public func root(of id: UInt32) -> MapEntry? { slotOf[id].map { MapEntry(raw: versionRoot[$0]) } }

    public func depth(of id: UInt32) -> Int? { slotOf[id].map { versionDepth[$0] } }

    /// Whether the version has changes no checkpoint has written yet.
    public func isDirty(_ id: UInt32) -> Bool {
        guard let slot = slotOf[id] else { return false }
        return findPosition(id, versionDepth[slot] - 1, 0) != nil
    }

    // MARK: Lookup and update

    /// The frame of version `id`'s root node: a dirty one by position, else the clean node read. No frame when the root
    /// maps nothing; not readable when the node could not be read or failed its checks.
    private func rootFrame(_ id: UInt32, slot: Int) -> (frame: Int?, readable: Bool) {
        let level = versionDepth[slot] - 1
        if let f = findPosition(id, level, 0) { return (f, true) }
        let root = MapEntry(raw: versionRoot[slot])
        guard root.isMapped else { return (nil, true) }
        guard let f = loadClean(root, level: level, index: 0) else { return (nil, false) }
        return (f, true)
    }

    /// The entry of local block `block` of version `id`: MapEntry.unmapped when not mapped, nil when a node could not be
    /// read or failed its checks (the host gets EIO).
    public func lookup(_ id: UInt32, block: UInt64) -> MapEntry? {
        guard let slot = slotOf[id] else { return nil }
        precondition(block < versionBlocks[slot], "block \(block) beyond version \(id)'s \(versionBlocks[slot])")
        var level = versionDepth[slot] - 1
        let root = rootFrame(id, slot: slot)
        guard root.readable else { return nil }
        guard var frame = root.frame else { return MapEntry.unmapped }
        while true {
            let span = MapNode.entrySpan(level: level)
            let entry = MapEntry(raw: MapNode.entries(arena.slice(frame))[Int((block / span) % UInt64(MapNode.fanout))])
            frameReferenced[frame] = true
            if level == 0 { return entry }
            let childIndex = block / span
            if frameDirty[frame], let f = findPosition(id, level - 1, childIndex) {
                frame = f
            } else {
                guard entry.isMapped else { return MapEntry.unmapped }
                guard let f = loadClean(entry, level: level - 1, index: childIndex) else { return nil }
                frame = f
            }
            level -= 1
        }
    }

    /// The first local block in [from, end) that version `id` maps, or `end` when there is none. A subtree that maps
    /// nothing (a pointer not mapped, and no dirty node at its position) is skipped whole, so a scan of a sparse
    /// range costs what it maps, not its length. Nil when a node could not be read.
    public func nextMapped(_ id: UInt32, from: UInt64, end: UInt64) -> UInt64? {
        guard let slot = slotOf[id] else { return nil }
        let limit = min(end, versionBlocks[slot])
        var block = from
        descent: while block < limit {
            var level = versionDepth[slot] - 1
            let root = rootFrame(id, slot: slot)
            guard root.readable else { return nil }
            guard var frame = root.frame else { return end }
            while true {
                let entries = MapNode.entries(arena.slice(frame))
                if level == 0 {
                    // The rest of this leaf, then the next leaf from the top.
                    let leafEnd = min(limit, (block / UInt64(MapNode.fanout) + 1) * UInt64(MapNode.fanout))
                    while block < leafEnd {
                        if MapEntry(raw: entries[Int(block % UInt64(MapNode.fanout))]).isMapped { return block }
                        block += 1
                    }
                    continue descent
                }
                let span = MapNode.entrySpan(level: level)
                let childIndex = block / span
                let entry = MapEntry(raw: entries[Int(childIndex % UInt64(MapNode.fanout))])
                if frameDirty[frame], let f = findPosition(id, level - 1, childIndex) {
                    frame = f
                } else if !entry.isMapped {
                    block = (childIndex + 1) * span
                    continue descent
                } else {
                    guard let f = loadClean(entry, level: level - 1, index: childIndex) else { return nil }
                    frame = f
                }
                level -= 1
            }
        }
        return end
    }

    /// Sets local block `block` of version `id` to `entry` (MapEntry.unmapped unmaps it); returns the entry it replaced,
    /// or nil when a node on the way could not be read or no frame could be had (nothing changed then).
    public func update(_ id: UInt32, block: UInt64, to entry: MapEntry) -> MapEntry? {
        precondition(!entry.isMapped || entry.pba < blockLimit, "mapping a block beyond the pool")
        let frame: Int
        let leafIndex = block / UInt64(MapNode.fanout)
        let last = lastUpdatedLeaf
        if last >= 0 && frameDirty[last] && frameInUse[last] && frameLevel[last] == 0 && frameIndex[last] == leafIndex && frameVersion[last] == id {
            // The leaf the last update changed, still dirty (so is its path): a write's pages mostly share a leaf
            // (504 blocks), and this skips the version lookup and the walk down by position.
            frame = last
        } else {
            guard let slot = slotOf[id] else { return nil }
            precondition(block < versionBlocks[slot], "block \(block) beyond version \(id)'s \(versionBlocks[slot])")
            guard let f = dirtyPath(id, slot: slot, block: block, down: 0) else { return nil }
            frame = f
            lastUpdatedLeaf = f
        }
        let entries = MapNode.entries(arena.slice(frame))
        let i = Int(block % UInt64(MapNode.fanout))
        let old = MapEntry(raw: entries[i])
        entries[i] = entry.raw
        return old
    }

    /// The dirty frame of version `id` at (level, index): found by position, or made from the clean node `current`
    /// points at (read if not cached), or a new empty node when `current` is not mapped.
    private func dirtyNode(_ id: UInt32, level: Int, index: UInt64, current: MapEntry) -> Int? {
        if let f = findPosition(id, level, index) { return f }
        let frame: Int
        if current.isMapped {
            guard let f = loadClean(current, level: level, index: index) else { return nil }
            unlinkPBA(f)
            frame = f
        } else {
            guard let f = claimFrame() else { return nil }
            memset0(arena.slice(f), MapNode.bytes)
            frameInUse[f] = true
            frame = f
        }
        frameDirty[frame] = true
        dirtyFrames += 1
        frameReplaces[frame] = current.raw
        frameVersion[frame] = id
        frameLevel[frame] = UInt8(level)
        frameIndex[frame] = index
        linkPosition(frame)
        return frame
    }

    // MARK: Node moves (the cleaner)

    /// The pointer to version `id`'s node at (level, index) as the drives have it: the parent's entry, or the root
    /// entry for the root. `.unmapped` when no such node is on the drives for this version, or its position is dirty
    /// (the next checkpoint writes it anyway). Nil when a node on the way could not be read.
    public func nodeEntry(_ id: UInt32, level: Int, index: UInt64) -> MapEntry? {
        guard let slot = slotOf[id] else { return .unmapped }
        let depth = versionDepth[slot]
        guard level >= 0 && level < depth else { return .unmapped }
        // The node's first block, bounded before any arithmetic that could overflow.
        let span = MapNode.entrySpan(level: level + 1)
        guard index <= versionBlocks[slot] / span, index * span < versionBlocks[slot] else { return .unmapped }
        if findPosition(id, level, index) != nil { return .unmapped }
        if level == depth - 1 { return index == 0 ? MapEntry(raw: versionRoot[slot]) : .unmapped }
        let block = index * span
        var at = depth - 1
        let root = rootFrame(id, slot: slot)
        guard root.readable else { return nil }
        guard var frame = root.frame else { return .unmapped }
        while true {
            let entrySpan = MapNode.entrySpan(level: at)
            let childIndex = block / entrySpan
            let entry = MapEntry(raw: MapNode.entries(arena.slice(frame))[Int(childIndex % UInt64(MapNode.fanout))])
            if at == level + 1 { return entry }
            if frameDirty[frame], let f = findPosition(id, at - 1, childIndex) {
                frame = f
            } else {
                guard entry.isMapped else { return .unmapped }
                guard let f = loadClean(entry, level: at - 1, index: childIndex) else { return nil }
                frame = f
            }
            at -= 1
        }
    }

    /// Makes version `id`'s node at (level, index) dirty, and the path above it, so the next checkpoint writes it to
    /// a new block and frees the old one (`replaced`): how the cleaner moves a node. False when a node could not be
    /// read or no frame could be had (nothing changed then).
    public func touchNode(_ id: UInt32, level target: Int, index: UInt64) -> Bool {
        guard let slot = slotOf[id], target >= 0, target < versionDepth[slot] else { return false }
        let block = index * MapNode.entrySpan(level: target + 1)
        precondition(block < versionBlocks[slot], "node \(index) at level \(target) beyond version \(id)")
        return dirtyPath(id, slot: slot, block: block, down: target) != nil
    }

    /// Makes the path of version `id` from its root down to level `target` over local block `block` dirty (the
    /// dirty closure: every ancestor of a dirty node is dirty) and returns the frame at `target`. Nil when a node
    /// could not be read or no frame could be had.
    private func dirtyPath(_ id: UInt32, slot: Int, block: UInt64, down target: Int) -> Int? {
        // Room first: a path needs at most one new frame per level, and dirty frames cannot be evicted.
        guard freeOrEvictableFrames(atLeast: versionDepth[slot] - target) else { return nil }
        var level = versionDepth[slot] - 1
        guard var frame = dirtyNode(id, level: level, index: 0, current: MapEntry(raw: versionRoot[slot])) else { return nil }
        while level > target {
            let span = MapNode.entrySpan(level: level)
            let childIndex = block / span
            let child = MapEntry(raw: MapNode.entries(arena.slice(frame))[Int(childIndex % UInt64(MapNode.fanout))])
            guard let f = dirtyNode(id, level: level - 1, index: childIndex, current: child) else { return nil }
            frame = f
            level -= 1
        }
        return frame
    }

    // MARK: Checkpoint

    /// Writes every dirty node, children first, as born in `birth`: `write` puts a sealed node on a new block and
    /// answers its PBA (nil: the write failed; the checkpoint stops, nothing is lost from memory). `replaced` gets
    /// the entry of every node a written node replaces (the caller frees it if it was the version's own). Afterwards
    /// `root(of:)` is each version's new root. Returns false if a write failed.
    public func checkpoint(birth: UInt32, write: (UnsafeMutableRawPointer) -> UInt64?, replaced: (_ version: UInt32, _ old: MapEntry) -> Void) -> Bool {
        precondition(birth < MapEntry.birthLimit)
        for level in 0..<MapNode.maxDepth where dirtyFrames > 0 {
            for f in 0..<frameCount where frameInUse[f] && frameDirty[f] && Int(frameLevel[f]) == level {
                let id = frameVersion[f]
                guard let slot = slotOf[id] else { preconditionFailure("a dirty frame of a version not in the map") }
                let node = arena.slice(f)
                MapNode.seal(node, level: level, home: home, version: id, index: frameIndex[f], birth: birth)
                guard let pba = write(node) else { return false }
                precondition(pba < blockLimit, "a node written beyond the pool")
                let entry = MapEntry(pba: pba, birth: birth)
                if level == versionDepth[slot] - 1 {
                    versionRoot[slot] = entry.raw
                } else {
                    let parentIndex = frameIndex[f] / UInt64(MapNode.fanout)
                    guard let parent = findPosition(id, level + 1, parentIndex) else { preconditionFailure("a dirty node with a clean parent") }
                    MapNode.entries(arena.slice(parent))[Int(frameIndex[f] % UInt64(MapNode.fanout))] = entry.raw
                }
                let old = MapEntry(raw: frameReplaces[f])
                unlinkPosition(f)
                frameDirty[f] = false
                dirtyFrames -= 1
                // A clean frame still cached for a node that once lived at this PBA (its segment was freed and
                // written again) must never answer for the new node.
                if let stale = findPBA(pba) {
                    unlinkPBA(stale)
                    releaseFrame(stale)
                }
                framePBA[f] = pba
                linkPBA(f)
                if old.isMapped { replaced(id, old) }
            }
        }
        return true
    }

    // MARK: Walks

    /// Calls `body` with every mapped leaf entry of version `id` in block order (block, entry), reading nodes as
    /// needed; subtrees whose pointer `skip` answers true for are not entered (a walk that frees a version's own
    /// blocks skips what it shares). `node` gets every node entry entered (not the root). False if a node could not
    /// be read. The version must have no dirty nodes (run after a checkpoint).
    public func walk(
        _ id: UInt32, skip: (_ level: Int, _ index: UInt64, _ entry: MapEntry) -> Bool = { _, _, _ in false },
        node: (_ level: Int, _ entry: MapEntry) -> Void = { _, _ in }, leaf: (_ block: UInt64, _ entry: MapEntry) -> Void
    ) -> Bool {
        guard let slot = slotOf[id] else { return false }
        precondition(!isDirty(id), "walking a version with unwritten changes")
        let root = MapEntry(raw: versionRoot[slot])
        guard root.isMapped else { return true }
        return walkNode(root, level: versionDepth[slot] - 1, index: 0, skip: skip, node: node, leaf: leaf)
    }

    private func walkNode(
        _ entry: MapEntry, level: Int, index: UInt64, skip: (Int, UInt64, MapEntry) -> Bool, node: (Int, MapEntry) -> Void,
        leaf: (UInt64, MapEntry) -> Void
    ) -> Bool {
        guard let entries = entriesOf(entry, level: level, index: index) else { return false }
        for i in 0..<MapNode.fanout where entries[i] != 0 {
            let child = MapEntry(raw: entries[i])
            let childIndex = index * UInt64(MapNode.fanout) + UInt64(i)
            if level == 0 {
                leaf(childIndex, child)
                continue
            }
            if skip(level - 1, childIndex, child) { continue }
            node(level - 1, child)
            guard walkNode(child, level: level - 1, index: childIndex, skip: skip, node: node, leaf: leaf) else { return false }
        }
        return true
    }

    /// Walks version `x` beside version `d` (nil: beside nothing), position by position, entering only where they
    /// differ: an entry of `x` equal to `d`'s at the same position (the same block or subtree, shared) is skipped,
    /// as is one `prune` answers true for (born before a cut-off: shared with an older version). `leaf` gets each
    /// remaining mapped leaf entry of `x` with `d`'s there; `node` each remaining node entry of `x` (level, x's entry),
    /// before its subtree. Both versions must have no dirty nodes. False if a node could not be read.
    public func walkPair(
        _ x: UInt32, against d: UInt32?, prune: (MapEntry) -> Bool, node: (_ level: Int, _ entry: MapEntry) -> Void,
        leaf: (_ block: UInt64, _ entry: MapEntry, _ other: MapEntry) -> Void
    ) -> Bool {
        guard let xs = slotOf[x] else { return false }
        precondition(!isDirty(x) && (d == nil || !isDirty(d!)), "walking versions with unwritten changes")
        let xr = MapEntry(raw: versionRoot[xs])
        let dr = d.flatMap { slotOf[$0] }.map { MapEntry(raw: versionRoot[$0]) } ?? .unmapped
        guard xr.isMapped, xr != dr, !prune(xr) else { return true }
        let level = versionDepth[xs] - 1
        node(level, xr)
        return walkPairNode(xr, dr, level: level, index: 0, prune: prune, node: node, leaf: leaf)
    }

    private func walkPairNode(
        _ xe: MapEntry, _ de: MapEntry, level: Int, index: UInt64, prune: (MapEntry) -> Bool, node: (Int, MapEntry) -> Void,
        leaf: (UInt64, MapEntry, MapEntry) -> Void
    ) -> Bool {
        guard let xs = entriesOf(xe, level: level, index: index) else { return false }
        var ds = [UInt64](repeating: 0, count: MapNode.fanout)
        if de.isMapped {
            guard let loaded = entriesOf(de, level: level, index: index) else { return false }
            ds = loaded
        }
        for i in 0..<MapNode.fanout where xs[i] != 0 && xs[i] != ds[i] {
            let child = MapEntry(raw: xs[i])
            if prune(child) { continue }
            let childIndex = index * UInt64(MapNode.fanout) + UInt64(i)
            if level == 0 {
                leaf(childIndex, child, MapEntry(raw: ds[i]))
                continue
            }
            node(level - 1, child)
            guard walkPairNode(child, MapEntry(raw: ds[i]), level: level - 1, index: childIndex, prune: prune, node: node, leaf: leaf) else {
                return false
            }
        }
        return true
    }

    /// A copy of the entries of the node `entry` points at (a deeper load may evict its frame).
    private func entriesOf(_ entry: MapEntry, level: Int, index: UInt64) -> [UInt64]? {
        guard let f = loadClean(entry, level: level, index: index) else { return nil }
        let source = MapNode.entries(arena.slice(f))
        return (0..<MapNode.fanout).map { source[$0] }
    }

    /// Replaces a version's root (a restore or relink: it starts again from a snapshot's root). No dirty nodes.
    public func setRoot(_ id: UInt32, _ root: MapEntry) {
        guard let slot = slotOf[id] else { return }
        precondition(!isDirty(id), "re-rooting a version with unwritten changes")
        versionRoot[slot] = root.raw
    }

    // MARK: Frames

    /// The clean frame holding the node `entry` points at, read and checked if not cached.
    private func loadClean(_ entry: MapEntry, level: Int, index: UInt64) -> Int? {
        let pba = entry.pba
        if let f = findPBA(pba) {
            guard Int(frameLevel[f]) == level && frameIndex[f] == index else {
                damaged("a cached map node is not the one its parent names")
                return nil
            }
            return f
        }
        guard pba < blockLimit else {
            damaged("map entry beyond the pool")
            return nil
        }
        guard let f = claimFrame() else { return nil }
        let node = arena.slice(f)
        nodeReads += 1
        let reason: String?
        if reader.readMapBlock(pba, into: node) {
            reason = MapNode.check(node, level: level, home: home, index: index, blockLimit: blockLimit)
            if let reason { damaged(reason) }
        } else {
            reason = "read failed"
        }
        if reason != nil {
            freeFrames[freeCount] = Int32(f)
            freeCount += 1
            return nil
        }
        frameInUse[f] = true
        frameDirty[f] = false
        frameReferenced[f] = true
        framePBA[f] = pba
        frameVersion[f] = UInt32(littleEndian: node.load(fromByteOffset: 12, as: UInt32.self))
        frameLevel[f] = UInt8(level)
        frameIndex[f] = index
        linkPBA(f)
        return f
    }

    private func damaged(_ reason: String) {
        damagedNodes += 1
        lastDamage = reason
    }

    /// Whether `count` frames can be had without touching dirty ones.
    private func freeOrEvictableFrames(atLeast count: Int) -> Bool { frameCount - dirtyFrames >= count + 1 }

    /// A frame off the free list or evicted by CLOCK from the clean ones; nil when every frame is dirty.
    private func claimFrame() -> Int? {
        if freeCount > 0 {
            freeCount -= 1
            return Int(freeFrames[freeCount])
        }
        for _ in 0..<(2 * frameCount) {
            let f = clockHand
            clockHand = (clockHand + 1) % frameCount
            guard frameInUse[f] && !frameDirty[f] else { continue }
            if frameReferenced[f] {
                frameReferenced[f] = false
                continue
            }
            unlinkPBA(f)
            frameInUse[f] = false
            return f
        }
        return nil
    }

    private func releaseFrame(_ f: Int) {
        frameInUse[f] = false
        freeFrames[freeCount] = Int32(f)
        freeCount += 1
    }

    // MARK: The two indexes

    @inline(__always) private func pbaBucket(_ pba: UInt64) -> Int {
        var h = pba &* 0x9E37_79B9_7F4A_7C15
        h ^= h >> 29
        return Int(truncatingIfNeeded: h) & bucketMask
    }

    @inline(__always) private func positionBucket(_ id: UInt32, _ level: Int, _ index: UInt64) -> Int {
        var h = index &* 0x9E37_79B9_7F4A_7C15 ^ (UInt64(id) << 8 | UInt64(level)) &* 0xC2B2_AE3D_27D4_EB4F
        h ^= h >> 29
        return Int(truncatingIfNeeded: h) & bucketMask
    }

    private func findPBA(_ pba: UInt64) -> Int? {
        var f = pbaBuckets[pbaBucket(pba)]
        while f >= 0 {
            if framePBA[Int(f)] == pba { return Int(f) }
            f = pbaNext[Int(f)]
        }
        return nil
    }

    private func findPosition(_ id: UInt32, _ level: Int, _ index: UInt64) -> Int? {
        var f = positionBuckets[positionBucket(id, level, index)]
        while f >= 0 {
            let i = Int(f)
            if frameIndex[i] == index && frameVersion[i] == id && Int(frameLevel[i]) == level { return i }
            f = positionNext[i]
        }
        return nil
    }

    private func linkPBA(_ f: Int) {
        let b = pbaBucket(framePBA[f])
        pbaNext[f] = pbaBuckets[b]
        pbaBuckets[b] = Int32(f)
    }

    private func unlinkPBA(_ f: Int) {
        let unlinked = unlinkFromChain(f, bucket: pbaBucket(framePBA[f]), buckets: &pbaBuckets, next: &pbaNext)
        precondition(unlinked, "map frame \(f) missing from its index")
    }

    private func linkPosition(_ f: Int) {
        let b = positionBucket(frameVersion[f], Int(frameLevel[f]), frameIndex[f])
        positionNext[f] = positionBuckets[b]
        positionBuckets[b] = Int32(f)
    }

    private func unlinkPosition(_ f: Int) {
        let unlinked = unlinkFromChain(
            f, bucket: positionBucket(frameVersion[f], Int(frameLevel[f]), frameIndex[f]), buckets: &positionBuckets, next: &positionNext)
        precondition(unlinked, "map frame \(f) missing from its index")
    }
}
