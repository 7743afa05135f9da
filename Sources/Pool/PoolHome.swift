// PoolHome: one home's part of the pool (docs/POOL.md): its versions, its map, its log of commits and its
// checkpoints. Used only by the executor of the director acting for the home, so nothing here locks, except the
// segment claims of `PoolSpace`.
//
// The log. Blocks are written in commits, each within one stripe: rows [firstRow, firstRow + rows) of the open
// stripe. A commit's first block is its summary (the header below, then up to 251 entries of 16 bytes); the blocks
// after it are the data (and map nodes, at a checkpoint) the entries name, in order; the last row is padded with
// zeroes. A data entry maps (version, local block) to the block it names, born in the commit's generation, with the
// block's CRC32C; an unmap entry unmaps a run of a version's blocks; a node entry names a map node a checkpoint wrote
// (recovery skips it: a checkpoint that completed points at its nodes itself).
//
//   summary header (80 bytes): 0 magic "VSS1"  4 CRC32C of the block (this field 0)  8 home  9 reserved (3)
//     12 generation (the births)  16 checkpoint it follows  24 sequence after that checkpoint  32 stripe
//     40 first row  44 rows  48 entries  52 blocks after the summary  56 next segment (-1: none yet)  60 reserved
//     64 pool tag (from the array's UUID: a summary of another array's pool that was on these drives never passes)
//     72 reserved
//   entry (16 bytes): 0 kind (4 bits) | block or node position (60 bits)  8 version  12 CRC32C of the block, or the
//     run length of an unmap
//
// A checkpoint writes the dirty map nodes (as commits), then the tables (version records, then segment entries) into
// the other slot's table stripes, flush, then the slot's header, flush. Recovery loads the newer valid header and its
// tables, then rolls forward: commits from the header's log head, in sequence, through the segments their summaries
// chain, until one is missing, out of order or not matching its CRCs; then it takes a checkpoint at once, so a later
// crash never reads an old summary beyond that point as new (it names an older checkpoint).
import ArrayModel
import BackEnd
import Buffers
import MemoryServices

/// One version as a home keeps it: a LUN's live contents, a snapshot, or a clone (docs/POOL.md, "Births").
public struct VersionRecord: Equatable, Sendable {
    public enum Kind: UInt8, Sendable { case live = 1, snapshot = 2, zombie = 3 }
    public var id: UInt32
    public var kind: Kind
    /// Local blocks (this home's share of the LUN).
    public var blocks: UInt64
    /// The root as of the last checkpoint.
    public var root: MapEntry
    /// The snapshot this version came from (0: none) and its generation: births at or below it are shared.
    public var origin: UInt32
    public var threshold: UInt32
    /// A snapshot's own generation: what it holds was born at or below it.
    public var generation: UInt32
    public var mapped: UInt64
    /// Mapped blocks born above the threshold.
    public var own: UInt64
    /// A snapshot's own blocks that none of its dependents maps (PoolVersions.swift says when it is exact).
    public var unique: UInt64
    /// Versions whose origin this one is (kept in memory, counted again after every change of origins).
    public var dependentCount = 0
    /// What the control plane records with a snapshot (the pool keeps it and never reads it).
    public var label = VersionLabel()
    public init(id: UInt32, kind: Kind, blocks: UInt64) {
        self.id = id
        self.kind = kind
        self.blocks = blocks
        root = .unmapped
        origin = 0
        threshold = 0
        generation = 0
        mapped = 0
        own = 0
        unique = 0
    }
}

/// A snapshot's name, the LUN it was taken of, when, and until when it may not be deleted (0: not secure), kept in
/// its version record in every home: a snapshot exists when every home holds it (docs/POOL.md, "Snapshots").
public struct VersionLabel: Equatable, Sendable {
    public static let nameBytesMax = 64
    public var lunID: UInt32 = 0
    public var name = ""
    public var createdSeconds: UInt64 = 0
    public var secureUntilSeconds: UInt64 = 0
    public init(lunID: UInt32 = 0, name: String = "", createdSeconds: UInt64 = 0, secureUntilSeconds: UInt64 = 0) {
        precondition(name.utf8.count <= VersionLabel.nameBytesMax)
        self.lunID = lunID
        self.name = name
        self.createdSeconds = createdSeconds
        self.secureUntilSeconds = secureUntilSeconds
    }
}

/// What went wrong in a pool operation that the host sees: no space, or an I/O or map failure.
public enum PoolFailure: Error, Sendable, Equatable {
    case noSpace
    /// Space was promised, but no free segment could be had in time (the cleaners are behind): what the caller
    /// holds is not lost, it can wait in the cache and go down with a later destage.
    case noSegmentYet
    case io
}

public final class PoolHome: MapBlockReader {
    public let home: Int
    public let layout: PoolLayout
    public let space: PoolSpace
    /// Written in every summary and checkpoint header: what another pool left on these drives never passes for ours.
    public let poolTag: UInt64
    /// The acting director's back end; a failover hands the home to another director with its own.
    public var store: any StripeStore
    private let memory: MemoryServices
    public internal(set) var map: BlockMap!
    /// Free segments host data leaves to checkpoints, unmaps and the cleaner, so that a full pool can still write
    /// its map, free space and clean: every home's checkpoint (its nodes: at most half the map's frames), then
    /// `cleanerRoomPerHome` segments per home for the cleaner's moves (PoolCleaner.swift).
    public let dataReserve: Int
    /// Free segments the cleaner's moves leave to checkpoints.
    public let checkpointReserve: Int

    public internal(set) var generation: UInt32 = 1
    public internal(set) var versions: [UInt32: VersionRecord] = [:]

    // The log.
    /// The last durable checkpoint and the slot holding it (-1: none yet, a new home).
    public internal(set) var checkpointNumber: UInt64 = 0
    var activeSlot = -1
    var sequence: UInt64 = 0
    var openSegment = -1
    var nextSegment = -1
    var stripeInSegment: UInt64 = 0
    var row = 0

    // The commit being filled: rows from `commitRow` of the open stripe, `commitBlocks` blocks used (summary
    // included), `commitEntries` entries.
    private var commitOpen = false
    private var commitRow = 0
    private var commitBlocks = 0
    private var commitEntries = 0
    private var commitStripe: UInt64 = 0
    /// A commit that filled its stripe, sealed but not written yet (`held`): the log goes on in the next stripe of
    /// the segment, and the next commit goes down with it, one gather write per drive for both
    /// (`writePages(nextCount:)`): a LUN stripe written through (its blocks and a summary fill a stripe and a row
    /// more) costs as many writes as a thick LUN's. Written before anything reads its stripe, and by every `commit()`.
    private var held = false
    private var heldStripe: UInt64 = 0
    private var heldRow = 0
    private var heldRows = 0
    /// Whether a commit is held (for tests).
    public var holdsACommit: Bool { held }
    /// Two stripes' buffers (banks), the stripe's parity choosing: a held commit's rows and the next commit's.
    let stripeBuffer: Arena
    /// Where a run of blocks read together lands before each block is copied to its page (`readRun`), when the
    /// back end cannot put each block straight on its page (a drive out, a checksum in doubt).
    private let runBuffer: Arena
    private let runTargets: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    /// A run's blocks as the back end's `readPages` takes them: each data strip's rows in turn, the page each lands
    /// on (nil: a block of the run's first or last row outside the run).
    private let runPages: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    private let strips: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    /// Blocks of the commit being filled (and of a held one) that are not in the stripe buffer but on the writer's own
    /// page (a whole-stripe host write, `write(borrowing:)`): written from there by a gather write, no copy made. Only
    /// for as long as the writer's call: `keepBorrowedPages()` copies what is still here before it returns. Per bank.
    private let borrowed: UnsafeMutablePointer<UnsafeRawPointer?>
    private var borrowedCount = 0
    /// A commit's blocks as the back end's `writePages` takes them: each data strip's rows in turn, and their CRCs.
    private let commitPages: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    private let commitCRCs: UnsafeMutablePointer<UInt32>
    /// The CRC32C of each data block of the open stripe's commit (and a held one's), as its summary entry has it (0: not
    /// a data block): the back end's checksums are made from it, not from the block read once more. Per bank.
    private let blockCRCs: UnsafeMutablePointer<UInt32>
    let readTargets: UnsafeMutablePointer<UnsafeMutableRawPointer?>

    public static let entryCapacity = (PoolLayout.blockBytes - PoolHome.summaryHeaderBytes) / 16
    static let summaryHeaderBytes = 80
    static let summaryMagic: UInt32 = 0x3153_5356  // "VSS1"
    static let headerMagic: UInt32 = 0x3143_5056  // "VPC1"

    /// A checkpoint follows after this many commits (bounding what a mount replays), or sooner once emptied segments
    /// are worth giving back (`releasePays`: their space comes back only with a checkpoint).
    static let commitsPerCheckpoint = 1024
    var commitsSinceCheckpoint = 0
    var segmentsEmptied = 0
    /// Blocks the cleaner moved since the last checkpoint (what the segments it emptied cost to empty).
    var blocksMovedSinceCheckpoint = 0
    private var checkpointing = false

    /// Whether a checkpoint now to give back emptied segments pays: the cleaner is short of room, or what they give back
    /// net of the blocks moved to empty them is at least twice what the checkpoint writes (the dirty map nodes).
    /// Random overwrites keep most of a home's map leaves dirty: a checkpoint after every victim writes about as many
    /// node blocks as a victim a quarter dead gives back, and a cleaner doing that at a full pool gains nothing.
    public var releasePays: Bool {
        guard segmentsEmptied > 0 else { return false }
        if cleanerIsShort { return true }
        return segmentsEmptied * layout.blocksPerSegment - blocksMovedSinceCheckpoint >= 2 * max(map.dirtyFrames, layout.blocksPerRow)
    }

    /// Whether a checkpoint would give segments back (some emptied since the last one): what a director tries
    /// before a write gets ENOSPC.
    public var hasEmptiedSegments: Bool { segmentsEmptied > 0 }

    /// Counters for status and tests.
    public private(set) var commitsWritten: UInt64 = 0
    public private(set) var paddingBlocks: UInt64 = 0
    /// Unmap runs logged (a discard of what maps nothing logs none, and needs no commit).
    public private(set) var unmapRunsLogged: UInt64 = 0
    public internal(set) var rolledForward = 0
    /// A failover could not load this home from the drives (`reloadFromDrives`): it is empty, answers EIO, and
    /// writes no checkpoint until the next mount recovers it.
    public internal(set) var lost = false
    /// The cleaner's victim, progress and counters (PoolCleaner.swift).
    var cleaner: PoolCleanerState

    /// A new, empty home (the pool was just made, or this home never wrote). `checkpoint()` makes it durable.
    public init(home: Int, layout: PoolLayout, space: PoolSpace, poolTag: UInt64, store: any StripeStore, memory: MemoryServices, mapFrames: Int) {
        precondition(home >= 0 && home < layout.homes)
        self.home = home
        self.poolTag = poolTag
        self.layout = layout
        self.space = space
        self.store = store
        self.memory = memory
        // A checkpoint writes at most the dirty frames, and a home checkpoints once half its frames are dirty (an
        // update then dirties a path more), plus a summary per stripe of nodes.
        let nodes = mapFrames / 2 + MapNode.maxDepth
        let nodeBlocks = nodes + (nodes + layout.blocksPerStripe - 2) / max(1, layout.blocksPerStripe - 1)
        checkpointReserve = layout.homes * (1 + (nodeBlocks + layout.blocksPerSegment - 1) / layout.blocksPerSegment)
        // Above the checkpoints' room, the cleaner's (PoolCleaner.swift, `cleanerRoom`): host data stops above both.
        dataReserve = checkpointReserve + PoolHome.cleanerRoomPerHome(layout) * layout.homes
        // Promises to cached pages leave the reserve and two segments per home (open and next) alone.
        let held = dataReserve + 2 * layout.homes
        if space.heldBackSegments.load(ordering: .relaxed) < held { space.heldBackSegments.store(held, ordering: .relaxed) }
        stripeBuffer = Arena(sliceBytes: layout.geometry.stripUnitBytes, sliceCount: 2 * layout.blocksPerRow)
        runBuffer = Arena(sliceBytes: layout.geometry.stripUnitBytes, sliceCount: layout.blocksPerRow)
        runTargets = .allocate(capacity: layout.blocksPerRow)
        runTargets.initialize(repeating: nil, count: layout.blocksPerRow)
        runPages = .allocate(capacity: layout.blocksPerStripe)
        runPages.initialize(repeating: nil, count: layout.blocksPerStripe)
        strips = .allocate(capacity: layout.blocksPerRow)
        borrowed = .allocate(capacity: 2 * layout.blocksPerStripe)
        borrowed.initialize(repeating: nil, count: 2 * layout.blocksPerStripe)
        commitPages = .allocate(capacity: 2 * layout.blocksPerStripe)
        commitPages.initialize(repeating: nil, count: 2 * layout.blocksPerStripe)
        commitCRCs = .allocate(capacity: 2 * layout.blocksPerStripe)
        commitCRCs.initialize(repeating: 0, count: 2 * layout.blocksPerStripe)
        blockCRCs = .allocate(capacity: 2 * layout.blocksPerStripe)
        blockCRCs.initialize(repeating: 0, count: 2 * layout.blocksPerStripe)
        readTargets = .allocate(capacity: layout.blocksPerRow)
        strips.initialize(repeating: nil, count: layout.blocksPerRow)
        readTargets.initialize(repeating: nil, count: layout.blocksPerRow)
        cleaner = PoolCleanerState(layout: layout)
        map = BlockMap(home: UInt8(home), frameCount: mapFrames, blockLimit: layout.blockCount, reader: self)
    }

    deinit {
        cleaner.targets.deallocate()
        strips.deallocate()
        readTargets.deallocate()
        runTargets.deallocate()
        runPages.deallocate()
        borrowed.deallocate()
        commitPages.deallocate()
        commitCRCs.deallocate()
        blockCRCs.deallocate()
    }

    // MARK: Blocks

    /// Block `j` of the open commit's stripe in the stripe buffer.
    @inline(__always) func bufferAddress(_ j: Int) -> UnsafeMutableRawPointer { bufferAddress(j, bank: bank(commitStripe)) }

    @inline(__always) func bufferAddress(_ j: Int, bank: Int) -> UnsafeMutableRawPointer {
        stripeBuffer.slice(bank * layout.blocksPerRow + j % layout.blocksPerRow) + (j / layout.blocksPerRow) * PoolLayout.blockBytes
    }

    /// The stripe buffer's bank for a stripe, and where its blocks' entries start in `borrowed` and `blockCRCs`.
    @inline(__always) func bank(_ stripe: UInt64) -> Int { Int(stripe & 1) }
    @inline(__always) private func bankBase(_ stripe: UInt64) -> Int { bank(stripe) * layout.blocksPerStripe }

    /// Reads pool block `pba`: from the commit being filled if it is there (not on the drives yet), else the drives.
    public func readBlock(_ pba: UInt64, into target: UnsafeMutableRawPointer) -> Bool {
        let (stripe, strip, offset) = layout.location(pba)
        if held && stripe == heldStripe { guard writeHeld() else { return false } }
        if commitOpen && stripe == commitStripe {
            let j = Int(pba % UInt64(layout.blocksPerStripe))
            if j >= commitRow * layout.blocksPerRow && j < commitRow * layout.blocksPerRow + commitBlocks {
                target.copyMemory(from: borrowed[bankBase(stripe) + j] ?? UnsafeRawPointer(bufferAddress(j)), byteCount: PoolLayout.blockBytes)
                return true
            }
        }
        readTargets[strip] = target
        return store.readStrips(stripe: stripe, stripMask: 1 << UInt64(strip), offsetBytes: offset, count: PoolLayout.blockBytes, targets: readTargets)
    }

    public func readMapBlock(_ pba: UInt64, into target: UnsafeMutableRawPointer) -> Bool { readBlock(pba, into: target) }

    /// Reads `count` blocks from `pba` on, all in one stripe, block k into page `page(k)`: one read of the rows they
    /// fill on every strip they touch (blocks go row by row across the strips), each block straight to its page. A
    /// block of the commit being filled comes from memory (then block by block).
    public func readRun(_ pba: UInt64, count: Int, pages page: (Int) -> UnsafeMutableRawPointer) -> Bool {
        let d = layout.blocksPerRow
        let first = Int(pba % UInt64(layout.blocksPerStripe))
        precondition(count >= 1 && first + count <= layout.blocksPerStripe, "a run of blocks within one stripe")
        let stripe = pba / UInt64(layout.blocksPerStripe)
        if held && stripe == heldStripe { guard writeHeld() else { return false } }
        let open = commitOpen && stripe == commitStripe
        if count == 1 || (open && first + count > commitRow * d) {
            for k in 0..<count {
                guard readBlock(pba + UInt64(k), into: page(k)) else { return false }
            }
            return true
        }
        let firstRow = first / d
        let rows = (first + count - 1) / d - firstRow + 1
        var mask: UInt64 = 0
        for j in first..<min(first + count, first + d) { mask |= 1 << UInt64(j % d) }
        // Block j of the stripe is row j / d of data strip j % d: the run's rows of each strip go straight to their
        // pages (a scatter read), so sequential reads cost no copy beyond the drive's.
        for strip in 0..<d where mask & (1 << UInt64(strip)) != 0 {
            for r in 0..<rows {
                let j = (firstRow + r) * d + strip
                runPages[strip * rows + r] = j >= first && j < first + count ? page(j - first) : nil
            }
        }
        if store.readPages(stripe: stripe, stripMask: mask, offsetBytes: firstRow * PoolLayout.blockBytes, count: rows * PoolLayout.blockBytes, pages: runPages)
        {
            return true
        }
        // A drive out or a checksum in doubt: read as the back end knows how into the run buffer, then copy.
        for strip in 0..<d { runTargets[strip] = runBuffer.slice(strip) }
        guard
            store.readStrips(
                stripe: stripe, stripMask: mask, offsetBytes: firstRow * PoolLayout.blockBytes, count: rows * PoolLayout.blockBytes, targets: runTargets)
        else { return false }
        for k in 0..<count {
            let j = first + k
            memory.copy(
                from: runBuffer.slice(j % d) + (j / d - firstRow) * PoolLayout.blockBytes, to: page(k), byteCount: PoolLayout.blockBytes)
        }
        return true
    }

    /// The map entry of local block `block` of version `id` (MapEntry.unmapped when not mapped); nil when the
    /// version has no such block or a map node could not be read.
    public func entry(_ id: UInt32, block: UInt64) -> MapEntry? {
        guard let record = versions[id], block < record.blocks else { return nil }
        return map.lookup(id, block: block)
    }

    /// Whether version `id` maps local block `block` to a block of its own (not one a snapshot or clone shares): an
    /// overwrite of it frees as much as it takes.
    public func ownsBlock(_ id: UInt32, block: UInt64) -> Bool {
        guard let record = versions[id], block < record.blocks, let entry = map.lookup(id, block: block) else { return false }
        return entry.isMapped && entry.birth > record.threshold
    }

    /// Back to an empty home, counters and the cleaner's victim included (a recovery attempt from one checkpoint
    /// failed and the other is tried from scratch, or a failover loads the home again).
    func reset() {
        for id in versions.keys { map.removeVersion(id) }
        versions = [:]
        space.forget(home: home)
        generation = 1
        checkpointNumber = 0
        activeSlot = -1
        sequence = 0
        openSegment = -1
        nextSegment = -1
        stripeInSegment = 0
        row = 0
        commitOpen = false
        held = false
        for j in 0..<(2 * layout.blocksPerStripe) {
            borrowed[j] = nil
            blockCRCs[j] = 0
        }
        borrowedCount = 0
        rolledForward = 0
        commitsSinceCheckpoint = 0
        segmentsEmptied = 0
        blocksMovedSinceCheckpoint = 0
        if cleaner.victim >= 0 { space.giveVictimRoom() }
        cleaner.victim = -1
        cleaner.pinned = [:]
    }

    // MARK: Versions

    /// Adds an empty version (a new thin LUN's share of this home). A checkpoint makes it durable.
    public func createVersion(_ id: UInt32, blocks: UInt64) {
        precondition(versions[id] == nil, "version \(id) exists")
        versions[id] = VersionRecord(id: id, kind: .live, blocks: blocks)
        map.addVersion(id, blocks: blocks, root: .unmapped)
    }

    /// Counts each version's dependents again (after any change of origins).
    func recountDependents() {
        for id in versions.keys { versions[id]!.dependentCount = 0 }
        for v in versions.values where v.origin != 0 { versions[v.origin]?.dependentCount += 1 }
    }

    // MARK: Writes

    /// Writes one 4 KiB page as local block `block` of version `id`: into the commit being filled, the map pointing
    /// at it from now on. Durable after the next `commit()`.
    public func write(_ id: UInt32, block: UInt64, from page: UnsafeRawPointer) -> PoolFailure? {
        writeBlock(id, block: block, from: page, reserve: dataReserve)
    }

    /// `write`, the block written from `page` itself when its commit goes down (a gather write), not copied into the
    /// commit: for a caller whose page stays as it is until it calls `keepBorrowedPages()`, before it returns (a
    /// whole-stripe host write from the host's buffer, a read reallocation from the cache's pages).
    public func write(_ id: UInt32, block: UInt64, borrowing page: UnsafeRawPointer) -> PoolFailure? {
        writeBlock(id, block: block, from: page, reserve: dataReserve, borrow: true)
    }

    /// Copies the blocks of the commit being filled that still lie on their writers' pages into the commit: what a
    /// caller of `write(borrowing:)` calls before it returns, so no page of its outlives its call here.
    public func keepBorrowedPages() {
        guard borrowedCount > 0 else { return }
        for bank in 0..<2 {
            for j in 0..<layout.blocksPerStripe {
                guard let page = borrowed[bank * layout.blocksPerStripe + j] else { continue }
                memory.copy(from: page, to: bufferAddress(j, bank: bank), byteCount: PoolLayout.blockBytes)
                borrowed[bank * layout.blocksPerStripe + j] = nil
            }
        }
        borrowedCount = 0
    }

    /// Blocks written again where a sequential read goes next (read reallocation, `PoolPort.readStrips`).
    public private(set) var blocksReallocated: UInt64 = 0

    /// Read reallocation of local block `block` of version `id`: `page` holds what the block holds now (just read),
    /// written again at the log's head like a cleaner's move, so blocks read in order come to lie in order. Only a
    /// block the version owns (a shared one stays where the snapshot has it). Whether it was written.
    public func reallocate(_ id: UInt32, block: UInt64, from page: UnsafeRawPointer) -> Bool {
        guard ownsBlock(id, block: block), writeBlock(id, block: block, from: page, reserve: dataReserve, borrow: true) == nil else { return false }
        blocksReallocated += 1
        return true
    }

    /// `write`, claiming a new segment only while `reserve` stay free (host data: the data reserve; the cleaner's
    /// moves: less, so a full pool can still be cleaned); `borrow`: as `write(borrowing:)`.
    func writeBlock(_ id: UInt32, block: UInt64, from page: UnsafeRawPointer, reserve: Int, borrow: Bool = false) -> PoolFailure? {
        guard let record = versions[id], record.kind == .live, block < record.blocks else { return .io }
        guard makeRoomInMap() else { return .io }
        guard reserveBlock(reserve: reserve) else { return .noSpace }
        let j = commitRow * layout.blocksPerRow + commitBlocks
        precondition(commitOpen && j < layout.blocksPerStripe, "a block past the open stripe")
        let pba = layout.pba(stripe: commitStripe, block: j)
        guard mapBlock(id, block: block, to: pba) else { return .io }
        if borrow {
            borrowed[bankBase(commitStripe) + j] = page
            borrowedCount += 1
        } else {
            memory.copy(from: page, to: bufferAddress(j), byteCount: PoolLayout.blockBytes)
        }
        let crc = crc32c(page, count: PoolLayout.blockBytes)
        blockCRCs[bankBase(commitStripe) + j] = crc
        addEntry(kind: 1, position: block, version: id, last: crc)
        commitBlocks += 1
        return nil
    }

    /// Unmaps `count` local blocks of version `id` from `block` (discard): reads of them answer zeroes from now on.
    public func unmap(_ id: UInt32, block: UInt64, count: UInt64) -> PoolFailure? {
        guard let record = versions[id], record.kind == .live, count > 0, block < record.blocks, count <= record.blocks - block else { return .io }
        // In runs of at most 2^16 blocks, each logged after its map changes: an unmap is idempotent, so a checkpoint
        // in the middle of a run (the map's frames filled) and the run's entry replayed after it agree.
        // Only runs that map something are changed and logged: a discard of a sparse range (fstrim, mkfs) costs
        // what it maps, not its length.
        var first = block
        let end = block + count
        while first < end {
            guard let mapped = map.nextMapped(id, from: first, end: end) else { return .io }
            if mapped >= end { break }
            let run = min(end - mapped, 1 << 16)
            guard reserveEntry() else { return .noSpace }
            guard unmapMapped(id, from: mapped, end: mapped + run, makingRoom: true) else { return .io }
            guard reserveEntry() else { return .noSpace }
            addEntry(kind: 2, position: mapped, version: id, last: UInt32(run))
            unmapRunsLogged += 1
            first = mapped + run
        }
        return nil
    }

    /// Unmaps every block version `id` maps in [from, end) (skipping what it does not map); `makingRoom` checkpoints
    /// whenever half the map's frames are dirty (replay cannot: it must fit).
    func unmapMapped(_ id: UInt32, from: UInt64, end: UInt64, makingRoom: Bool) -> Bool {
        var b = from
        while b < end {
            guard let next = map.nextMapped(id, from: b, end: end) else { return false }
            if next >= end { break }
            guard !makingRoom || makeRoomInMap(), unmapBlock(id, block: next) else { return false }
            b = next + 1
        }
        return true
    }

    /// Reads local block `block` of version `id` into `target` (zeroes when not mapped).
    public func read(_ id: UInt32, block: UInt64, into target: UnsafeMutableRawPointer) -> Bool {
        guard let entry = entry(id, block: block) else { return false }
        guard entry.isMapped else {
            memory.zero(target, byteCount: PoolLayout.blockBytes)
            return true
        }
        return readBlock(entry.pba, into: target)
    }

    /// Takes a checkpoint when half the map's frames are dirty: dirty nodes stay until one writes them.
    func makeRoomInMap() -> Bool {
        map.dirtyFrames < map.frameCount / 2 || checkpoint()
    }

    /// Points local block `block` of version `id` at `pba`, born now, and counts it: what a write does to the map, and
    /// what replaying its commit does again after a crash. False when the map could not be changed (nothing was).
    func mapBlock(_ id: UInt32, block: UInt64, to pba: UInt64) -> Bool {
        guard let old = map.update(id, block: block, to: MapEntry(pba: pba, birth: generation)) else { return false }
        space.addLive(layout.segment(ofBlock: pba))
        account(id, replaced: old, mapped: true)
        return true
    }

    /// Unmaps local block `block` of version `id` and counts it (an unmap, or its replay).
    func unmapBlock(_ id: UInt32, block: UInt64) -> Bool {
        guard let old = map.update(id, block: block, to: .unmapped) else { return false }
        account(id, replaced: old, mapped: false)
        return true
    }

    /// Counts a map change: the replaced block is freed when it was the version's own.
    private func account(_ id: UInt32, replaced old: MapEntry, mapped: Bool) {
        // Every block a write maps comes through here: the record is changed where it lies in the table (one hash,
        // and no copy of the record, label and all, out and back).
        guard let i = versions.index(forKey: id) else { preconditionFailure("a map change for version \(id), which this home does not have") }
        var freed = false
        var origin: UInt32 = 0
        PoolHome.change(&versions.values[i]) { record in
            if old.isMapped {
                record.mapped -= 1
                if old.birth > record.threshold {
                    record.own -= 1
                    freed = true
                } else {
                    origin = record.origin
                }
            }
            if mapped {
                record.mapped += 1
                record.own += 1
            }
        }
        if freed && space.removeLive(layout.segment(ofBlock: old.pba)) { segmentsEmptied += 1 }
        if origin != 0, let o = versions.index(forKey: origin) {
            PoolHome.change(&versions.values[o]) { record in
                // The origin's own block, now mapped by the origin alone.
                if old.birth > record.threshold && record.dependentCount == 1 { record.unique += 1 }
            }
        }
    }

    @inline(__always) private static func change(_ record: inout VersionRecord, _ body: (inout VersionRecord) -> Void) { body(&record) }

    // MARK: Commits

    /// Makes everything written so far durable: the commit being filled goes to the drives, then the drives are
    /// flushed (`flush: false`: written, durable with the next flush; a write-through's commit).
    public func commit(flush: Bool = true) -> Bool {
        if commitOpen || held { guard writeCommit() else { return false } }
        if flush { guard store.flush() else { return false } }
        if !checkpointing && (commitsSinceCheckpoint >= PoolHome.commitsPerCheckpoint || (commitsSinceCheckpoint >= 8 && releasePays)) {
            return checkpoint()
        }
        return true
    }

    /// Room for one more block in a commit: ends a full commit, opens one where the log goes on. False when the log
    /// has nowhere to go (no segment could be had: the pool is full).
    private func reserveBlock(reserve: Int) -> Bool {
        // Host data and the cleaner's moves share the log: a segment the cleaner claimed below the data reserve is
        // the cleaner's to finish its victim in, not host data's (which would take it and leave the victim, and every
        // other home's, stuck half moved with no room to go on).
        guard reserve <= cleanerReserve || space.freeSegments >= reserve else { return false }
        if commitOpen && (commitRow * layout.blocksPerRow + commitBlocks == layout.blocksPerStripe || commitEntries == PoolHome.entryCapacity) {
            guard writeCommit(hold: true) else { return false }
        }
        if !commitOpen { guard openCommit(reserve: reserve) else { return false } }
        if commitRow * layout.blocksPerRow + commitBlocks == layout.blocksPerStripe {
            // One data strip (RAID-1): a commit opened in a stripe's last row is its summary alone. It goes down as an
            // empty commit (recovery reads a summary at every row the log passes) and the block goes in the next
            // stripe. Without this the block was copied past the end of the stripe buffer.
            guard writeCommit(), openCommit(reserve: reserve) else { return false }
        }
        return true
    }

    /// Room for one more entry (an unmap takes no block).
    private func reserveEntry() -> Bool {
        if commitOpen && commitEntries == PoolHome.entryCapacity { guard writeCommit() else { return false } }
        return commitOpen || openCommit(reserve: 0)
    }

    private func openCommit(reserve: Int) -> Bool {
        guard openSegment >= 0 else { return false }
        // The last stripe of a segment: its summaries must name the segment the log goes on in, or the log would
        // end there (only a checkpoint starts it again). Host data takes the next segment only while `reserve` stay
        // free; checkpoints and unmaps may take those, so a full pool can still free space.
        if stripeInSegment == layout.stripesPerSegment - 1 && nextSegment < 0 {
            guard let next = space.claim(home: home, reserve: reserve) else { return false }
            nextSegment = next
        }
        commitOpen = true
        commitRow = row
        commitStripe = layout.firstStripe(segment: openSegment) + stripeInSegment
        commitBlocks = 1
        commitEntries = 0
        memset0(bufferAddress(commitRow * layout.blocksPerRow), PoolLayout.blockBytes)
        return true
    }

    private func addEntry(kind: UInt64, position: UInt64, version: UInt32, last: UInt32) {
        let summary = bufferAddress(commitRow * layout.blocksPerRow)
        let at = PoolHome.summaryHeaderBytes + commitEntries * 16
        summary.storeBytes(of: (kind << 60 | position).littleEndian, toByteOffset: at, as: UInt64.self)
        summary.storeBytes(of: version.littleEndian, toByteOffset: at + 8, as: UInt32.self)
        summary.storeBytes(of: last.littleEndian, toByteOffset: at + 12, as: UInt32.self)
        commitEntries += 1
    }

    /// Seals the summary, pads the last row and writes the commit's rows (parity from memory, nothing read; every
    /// row is new, so the back end records only a write intent), with a held commit's before them. Moves the log on.
    /// `hold`: a commit that fills its stripe, with the log going on in the next stripe of the segment, is held
    /// (sealed, the log moved on, not written) to go down with the next commit. With no commit open, writes a held one.
    private func writeCommit(hold: Bool = false) -> Bool {
        guard commitOpen else { return writeHeld() }
        let rows = sealCommit()
        if hold && !held && commitRow + rows == layout.rowsPerStripe && stripeInSegment + 1 < layout.stripesPerSegment {
            held = true
            heldStripe = commitStripe
            heldRow = commitRow
            heldRows = rows
            commitWritten(rows: rows)
            return true
        }
        if held && !(heldStripe + 1 == commitStripe && commitRow == 0) { guard writeHeld() else { return false } }
        // A held commit's rows end the stripe before this one, and lie just before these on every drive.
        let written =
            held
            ? writeRows(stripe: heldStripe, firstRow: heldRow, rows: heldRows, nextRows: rows)
            : writeRows(stripe: commitStripe, firstRow: commitRow, rows: rows, nextRows: 0)
        guard written else { return false }
        held = false
        commitWritten(rows: rows)
        return true
    }

    /// Writes the held commit on its own (something reads its stripe, or the next commit is not in the next stripe).
    private func writeHeld() -> Bool {
        guard held else { return true }
        guard writeRows(stripe: heldStripe, firstRow: heldRow, rows: heldRows, nextRows: 0) else { return false }
        held = false
        return true
    }

    /// Writes `rows` rows of `stripe` from `firstRow` (to the stripe's end when `nextRows` > 0) and the first `nextRows`
    /// rows of the next stripe with them: each strip's rows from wherever each block lies, the commit's buffer or a
    /// writer's page still (a gather write; parity row by row), with the data blocks' CRCs the summary took. Then
    /// those blocks' pages and CRCs are no longer kept.
    private func writeRows(stripe: UInt64, firstRow: Int, rows: Int, nextRows: Int) -> Bool {
        let d = layout.blocksPerRow
        gatherPages(stripe: stripe, firstRow: firstRow, rows: rows, at: 0)
        if nextRows > 0 { gatherPages(stripe: stripe + 1, firstRow: 0, rows: nextRows, at: d * rows) }
        guard
            store.writePages(
                stripe: stripe, offsetBytes: firstRow * PoolLayout.blockBytes, count: rows * PoolLayout.blockBytes,
                nextCount: nextRows * PoolLayout.blockBytes, pages: commitPages, crcs: commitCRCs)
        else { return false }
        releasePages(stripe: stripe, first: firstRow * d, count: rows * d)
        if nextRows > 0 { releasePages(stripe: stripe + 1, first: 0, count: nextRows * d) }
        return true
    }

    /// Pads the open commit's last row and seals its summary. The commit's rows.
    private func sealCommit() -> Int {
        let d = layout.blocksPerRow
        let first = commitRow * d
        let rows = (commitBlocks + d - 1) / d
        for j in (first + commitBlocks)..<(first + rows * d) { memset0(bufferAddress(j), PoolLayout.blockBytes) }
        paddingBlocks += UInt64(rows * d - commitBlocks)
        let summary = bufferAddress(first)
        summary.storeBytes(of: PoolHome.summaryMagic.littleEndian, toByteOffset: 0, as: UInt32.self)
        summary.storeBytes(of: 0, toByteOffset: 4, as: UInt32.self)
        summary.storeBytes(of: UInt8(home), toByteOffset: 8, as: UInt8.self)
        summary.storeBytes(of: generation.littleEndian, toByteOffset: 12, as: UInt32.self)
        summary.storeBytes(of: checkpointNumber.littleEndian, toByteOffset: 16, as: UInt64.self)
        summary.storeBytes(of: sequence.littleEndian, toByteOffset: 24, as: UInt64.self)
        summary.storeBytes(of: commitStripe.littleEndian, toByteOffset: 32, as: UInt64.self)
        summary.storeBytes(of: UInt32(commitRow).littleEndian, toByteOffset: 40, as: UInt32.self)
        summary.storeBytes(of: UInt32(rows).littleEndian, toByteOffset: 44, as: UInt32.self)
        summary.storeBytes(of: UInt32(commitEntries).littleEndian, toByteOffset: 48, as: UInt32.self)
        summary.storeBytes(of: UInt32(commitBlocks - 1).littleEndian, toByteOffset: 52, as: UInt32.self)
        summary.storeBytes(of: Int32(nextSegment).littleEndian, toByteOffset: 56, as: Int32.self)
        summary.storeBytes(of: poolTag.littleEndian, toByteOffset: 64, as: UInt64.self)
        summary.storeBytes(of: crc32c(summary, count: PoolLayout.blockBytes).littleEndian, toByteOffset: 4, as: UInt32.self)
        return rows
    }

    /// Lists `rows` rows of `stripe` from `firstRow` as `writePages` takes them, from `commitPages[at]` on: each data
    /// strip's rows in turn, each block from a writer's page or the stripe buffer, and its CRC.
    private func gatherPages(stripe: UInt64, firstRow: Int, rows: Int, at: Int) {
        let d = layout.blocksPerRow
        let base = bankBase(stripe)
        for i in 0..<d {
            for r in 0..<rows {
                let j = (firstRow + r) * d + i
                commitPages[at + i * rows + r] = UnsafeMutableRawPointer(mutating: borrowed[base + j]) ?? bufferAddress(j, bank: bank(stripe))
                commitCRCs[at + i * rows + r] = blockCRCs[base + j]
            }
        }
    }

    /// Blocks `[first, first + count)` of `stripe` are on the drives: their pages and CRCs are no longer kept.
    private func releasePages(stripe: UInt64, first: Int, count: Int) {
        let base = bankBase(stripe)
        for j in first..<(first + count) {
            blockCRCs[base + j] = 0
            if borrowed[base + j] != nil {
                borrowed[base + j] = nil
                borrowedCount -= 1
            }
        }
    }

    /// The open commit is sealed (written, or held): the log moves on past its rows.
    private func commitWritten(rows: Int) {
        commitsWritten += 1
        commitsSinceCheckpoint += 1
        sequence += 1
        commitOpen = false
        advance(rows: rows)
    }

    /// Moves the log's position on by `rows` rows: to the next stripe, and from a segment's last stripe to the next
    /// segment its summaries named (none: the log ends here until a checkpoint starts it again).
    func advance(rows: Int) {
        row += rows
        guard row == layout.rowsPerStripe else { return }
        row = 0
        stripeInSegment += 1
        guard stripeInSegment == layout.stripesPerSegment else { return }
        stripeInSegment = 0
        openSegment = nextSegment
        nextSegment = -1
    }

    // MARK: Checkpoints

    /// Makes the home's whole state durable in the other checkpoint slot: dirty map nodes, tables, then the header.
    public func checkpoint() -> Bool {
        // A home a failover could not load from the drives: an empty checkpoint would make its loss durable.
        guard !lost else { return false }
        checkpointing = true
        defer { checkpointing = false }
        // The log must have a head the header can name: a home that has none (new, or its chain ended) claims one.
        if openSegment < 0 {
            if commitOpen { return false }
            guard let s = space.claim(home: home) else { return false }
            openSegment = s
            stripeInSegment = 0
            row = 0
        }
        var ok = true
        let written = map.checkpoint(
            birth: generation,
            write: { node in
                guard self.reserveBlock(reserve: 0) else {
                    ok = false
                    return nil
                }
                let j = self.commitRow * self.layout.blocksPerRow + self.commitBlocks
                let pba = self.layout.pba(stripe: self.commitStripe, block: j)
                self.memory.copy(from: node, to: self.bufferAddress(j), byteCount: PoolLayout.blockBytes)
                let level = UInt64(node.load(fromByteOffset: 8, as: UInt8.self))
                let index = UInt64(littleEndian: node.load(fromByteOffset: 16, as: UInt64.self))
                let version = UInt32(littleEndian: node.load(fromByteOffset: 12, as: UInt32.self))
                self.addEntry(kind: 3, position: level << 56 | (index & ((1 << 56) - 1)), version: version, last: 0)
                self.commitBlocks += 1
                self.space.addLive(self.layout.segment(ofBlock: pba))
                return pba
            },
            replaced: { id, old in
                if let record = self.versions[id], old.birth > record.threshold { self.space.removeLive(self.layout.segment(ofBlock: old.pba)) }
            })
        guard written && ok, commit() else { return false }
        if openSegment < 0 {
            // The nodes filled the last segment of the chain: start a new one for the head.
            guard let s = space.claim(home: home) else { return false }
            openSegment = s
            stripeInSegment = 0
            row = 0
        }
        for (id, _) in versions { versions[id]!.root = map.root(of: id)! }
        let slot = activeSlot == 0 ? 1 : 0
        let number = checkpointNumber + 1
        guard writeSlot(slot, number: number) else { return false }
        checkpointNumber = number
        activeSlot = slot
        sequence = 0
        commitsSinceCheckpoint = 0
        segmentsEmptied = 0
        blocksMovedSinceCheckpoint = 0
        // Segments wholly dead as of this checkpoint are free again (never the ones the log is in).
        for s in space.owned(by: home) where space.liveBlocks(s) == 0 && s != openSegment && s != nextSegment {
            space.release(s, home: home)
            cleaner.pinned[s] = nil
        }
        return true
    }

    /// The table bytes: the version records, then (segment, live) for every segment the home owns and keeps: a
    /// wholly dead segment outside the log is released once this checkpoint is durable, and another home may take it
    /// then, so this checkpoint must not name it (a recovery from it would claim what is another home's).
    private func encodeTables() -> [UInt8] {
        let owned = space.owned(by: home).filter { space.liveBlocks($0) > 0 || $0 == openSegment || $0 == nextSegment }
        var bytes = [UInt8](repeating: 0, count: versions.count * PoolLayout.versionRecordBytes + owned.count * PoolLayout.segmentEntryBytes)
        bytes.withUnsafeMutableBytes { raw in
            let base = raw.baseAddress!
            var at = 0
            for id in versions.keys.sorted() {
                let v = versions[id]!
                base.storeBytes(of: v.id.littleEndian, toByteOffset: at, as: UInt32.self)
                base.storeBytes(of: v.kind.rawValue, toByteOffset: at + 4, as: UInt8.self)
                base.storeBytes(of: v.blocks.littleEndian, toByteOffset: at + 8, as: UInt64.self)
                base.storeBytes(of: v.root.raw.littleEndian, toByteOffset: at + 16, as: UInt64.self)
                base.storeBytes(of: v.origin.littleEndian, toByteOffset: at + 24, as: UInt32.self)
                base.storeBytes(of: v.threshold.littleEndian, toByteOffset: at + 28, as: UInt32.self)
                base.storeBytes(of: v.generation.littleEndian, toByteOffset: at + 32, as: UInt32.self)
                base.storeBytes(of: v.mapped.littleEndian, toByteOffset: at + 40, as: UInt64.self)
                base.storeBytes(of: v.own.littleEndian, toByteOffset: at + 48, as: UInt64.self)
                base.storeBytes(of: v.unique.littleEndian, toByteOffset: at + 56, as: UInt64.self)
                base.storeBytes(of: v.label.lunID.littleEndian, toByteOffset: at + 64, as: UInt32.self)
                let name = Array(v.label.name.utf8)
                base.storeBytes(of: UInt32(name.count).littleEndian, toByteOffset: at + 68, as: UInt32.self)
                base.storeBytes(of: v.label.createdSeconds.littleEndian, toByteOffset: at + 72, as: UInt64.self)
                base.storeBytes(of: v.label.secureUntilSeconds.littleEndian, toByteOffset: at + 80, as: UInt64.self)
                if !name.isEmpty { name.withUnsafeBytes { (base + at + 96).copyMemory(from: $0.baseAddress!, byteCount: name.count) } }
                at += PoolLayout.versionRecordBytes
            }
            for s in owned {
                base.storeBytes(of: UInt32(s).littleEndian, toByteOffset: at, as: UInt32.self)
                base.storeBytes(of: space.liveBlocks(s).littleEndian, toByteOffset: at + 4, as: UInt32.self)
                at += PoolLayout.segmentEntryBytes
            }
        }
        return bytes
    }

    private func writeSlot(_ slot: Int, number: UInt64) -> Bool {
        let tables = encodeTables()
        let start = layout.slotStart(home: home, slot: slot)
        let stripeBytes = Int(layout.geometry.stripeDataBytes)
        let unit = layout.geometry.stripUnitBytes
        let d = layout.blocksPerRow
        let stripes = (tables.count + stripeBytes - 1) / stripeBytes
        guard UInt64(stripes) < layout.slotStripes else { return false }
        let buffer = alignedBuffer(bytes: max(stripeBytes, PoolLayout.blockBytes * d))
        let full: UInt64 = (1 << UInt64(d)) - 1
        for s in 0..<stripes {
            memset0(buffer.base, stripeBytes)
            let from = s * stripeBytes
            let n = min(stripeBytes, tables.count - from)
            tables.withUnsafeBytes { buffer.base.copyMemory(from: $0.baseAddress! + from, byteCount: n) }
            for i in 0..<d { strips[i] = buffer.base + i * unit }
            guard store.writeStripe(stripe: start + 1 + UInt64(s), strips: strips, dirtyMask: full, offsetBytes: 0, count: unit, allNew: true) else {
                return false
            }
        }
        guard store.flush() else { return false }
        // The header: block 0 of the slot's first stripe, alone in its row.
        memset0(buffer.base, PoolLayout.blockBytes * d)
        let h = buffer.base
        h.storeBytes(of: PoolHome.headerMagic.littleEndian, toByteOffset: 0, as: UInt32.self)
        h.storeBytes(of: UInt8(home), toByteOffset: 8, as: UInt8.self)
        h.storeBytes(of: UInt8(layout.homes), toByteOffset: 9, as: UInt8.self)
        h.storeBytes(of: generation.littleEndian, toByteOffset: 12, as: UInt32.self)
        h.storeBytes(of: number.littleEndian, toByteOffset: 16, as: UInt64.self)
        h.storeBytes(of: UInt32(versions.count).littleEndian, toByteOffset: 24, as: UInt32.self)
        h.storeBytes(
            of: UInt32((tables.count - versions.count * PoolLayout.versionRecordBytes) / PoolLayout.segmentEntryBytes).littleEndian, toByteOffset: 28,
            as: UInt32.self)
        h.storeBytes(of: UInt64(tables.count).littleEndian, toByteOffset: 32, as: UInt64.self)
        h.storeBytes(of: tables.withUnsafeBytes { crc32c($0.baseAddress!, count: tables.count) }.littleEndian, toByteOffset: 40, as: UInt32.self)
        h.storeBytes(of: Int32(openSegment).littleEndian, toByteOffset: 48, as: Int32.self)
        h.storeBytes(of: UInt32(row).littleEndian, toByteOffset: 52, as: UInt32.self)
        h.storeBytes(of: stripeInSegment.littleEndian, toByteOffset: 56, as: UInt64.self)
        h.storeBytes(of: Int32(nextSegment).littleEndian, toByteOffset: 64, as: Int32.self)
        h.storeBytes(of: UInt32(layout.blocksPerStripe).littleEndian, toByteOffset: 68, as: UInt32.self)
        h.storeBytes(of: layout.stripesPerSegment.littleEndian, toByteOffset: 72, as: UInt64.self)
        h.storeBytes(of: poolTag.littleEndian, toByteOffset: 80, as: UInt64.self)
        h.storeBytes(of: crc32c(h, count: PoolLayout.blockBytes).littleEndian, toByteOffset: 4, as: UInt32.self)
        for i in 0..<d { strips[i] = buffer.base + i * PoolLayout.blockBytes }
        guard store.writeStripe(stripe: start, strips: strips, dirtyMask: full, offsetBytes: 0, count: PoolLayout.blockBytes, allNew: true) else {
            return false
        }
        return store.flush()
    }
}
