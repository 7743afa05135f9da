// PoolPort: the pool as one director's cache portion sees it (GlobalMemory -> Pool). The cache keeps thin LUNs'
// tracks in its slots as it keeps thick ones; what differs is below: a thin track's pages are read through the map
// of the LUN stripe's home, and destaged page by page into that home's commit (redirect-on-write: new blocks, whole
// rows, nothing read), an all-zero page unmapped instead of written. Every director has one; the homes are shared,
// and each is touched only by the director acting for it (the executor rule), which hands it its own back end.
import ArrayModel
import BackEnd
import Buffers

#if canImport(Glibc)
    import Glibc
#endif

public final class PoolPort {
    public let layout: PoolLayout
    public let homes: [PoolHome]
    private let backEnd: any StripeStore
    private let zeroPage: Arena
    /// Homes this director wrote pages to since its last commit (bit per home).
    private var touched: UInt64 = 0

    public init(layout: PoolLayout, homes: [PoolHome], backEnd: any StripeStore) {
        precondition(homes.count == layout.homes && homes.count <= 64)
        self.layout = layout
        self.homes = homes
        self.backEnd = backEnd
        zeroPage = Arena(sliceBytes: PoolLayout.blockBytes, sliceCount: 1)
    }

    /// The home of LUN stripe `lunStripe`, handed this director's back end.
    @inline(__always) private func home(_ index: Int) -> PoolHome {
        let h = homes[index]
        if h.store !== backEnd { h.store = backEnd }
        return h
    }

    /// Reads range [offsetBytes, offsetBytes + count) (whole pages) of the data strips in `stripMask` of thin LUN
    /// `lunID`'s stripe `lunStripe` into `targets[strip]`. Unmapped pages read as zeroes.
    public func readStrips(
        lunID: UInt32, lunStripe: UInt64, stripMask: UInt64, offsetBytes: Int, count: Int, targets: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    ) -> Bool {
        precondition(offsetBytes % PoolLayout.blockBytes == 0 && count % PoolLayout.blockBytes == 0, "pool reads are whole pages")
        // A strip's pages are consecutive local blocks of one home, and so are the pages of neighbouring strips when
        // each is read whole (a sequential read's read-ahead: the rest of the stripe). Pages mapped to consecutive
        // blocks of one pool stripe (written together: a destage packs a track's pages in order, a whole-stripe
        // write the stripe's) are read as one run, however many strips it spans.
        let unit = layout.geometry.stripUnitBytes
        let pages = count / PoolLayout.blockBytes
        let (h, base) = layout.local(lunStripe: lunStripe, homeOffset: lunID, offsetInStripe: offsetBytes)
        let owner = home(h)
        let wholeStrips = offsetBytes == 0 && count == unit
        var strip = 0
        while strip < layout.blocksPerRow {
            guard stripMask & (1 << UInt64(strip)) != 0 else {
                strip += 1
                continue
            }
            var strips = 1
            while wholeStrips && strip + strips < layout.blocksPerRow && stripMask & (1 << UInt64(strip + strips)) != 0 { strips += 1 }
            let first = base + UInt64(strip * unit / PoolLayout.blockBytes)
            let startStrip = strip
            @inline(__always) func target(_ p: Int) -> UnsafeMutableRawPointer {
                targets[startStrip + p / pages]! + (p % pages) * PoolLayout.blockBytes
            }
            let total = strips * pages
            var page = 0
            var runs = 0
            while page < total {
                guard let entry = owner.entry(lunID, block: first + UInt64(page)) else { return false }
                guard entry.isMapped else {
                    memset(target(page), 0, PoolLayout.blockBytes)
                    page += 1
                    continue
                }
                let inStripe = Int(entry.pba % UInt64(layout.blocksPerStripe))
                var run = 1
                while page + run < total && inStripe + run < layout.blocksPerStripe {
                    guard let next = owner.entry(lunID, block: first + UInt64(page + run)) else { return false }
                    guard next.isMapped && next.pba == entry.pba + UInt64(run) else { break }
                    run += 1
                }
                let start = page
                guard owner.readRun(entry.pba, count: run, pages: { target(start + $0) }) else { return false }
                page += run
                runs += 1
            }
            // Scattered (random writes redirected each page to wherever the log was): written again in order.
            if wholeStrips && runs * PoolPort.scatteredRunPages > total {
                reallocate(owner, lunID: lunID, lunStripe: lunStripe, first: first, pages: total, target)
            }
            strip += strips
        }
        return true
    }

    /// Runs shorter than this on average make a whole-strip read scattered: its pages are worth writing again in order.
    static let scatteredRunPages = 4

    /// Read reallocation (as WAFL's read_realloc; docs/POOL.md): redirect-on-write puts each randomly written page
    /// wherever the log is, so a later sequential read of them is a read per page where a thick LUN reads a strip.
    /// Pages just read whole strips at a time that came in short runs are written again at the log's head, in order:
    /// the next sequential read of them is a few long runs. It moves data the way the cleaner does (the same
    /// contents, born now; a crash replays or forgets the commit, and either way the block reads the same), and only
    /// pages the LUN owns: a page a snapshot shares stays shared. Only while the pool has room to spare (15% free:
    /// the cleaner, at its background rate below 25%, keeps up with the dead blocks it leaves, and is never made
    /// urgent by it), with the space promised like a write's, so it never takes what cached writes were promised,
    /// and never under `-o read_realloc=off`.
    private func reallocate(_ owner: PoolHome, lunID: UInt32, lunStripe: UInt64, first: UInt64, pages: Int, _ page: (Int) -> UnsafeMutableRawPointer) {
        let space = owner.space
        guard space.readReallocation.load(ordering: .relaxed), space.freeFraction >= 0.15, space.promise(pages, force: false) else { return }
        defer { keep(pages) }
        if space.sharing.load(ordering: .relaxed) && !space.promisesFitFreeSegments { return }
        // The pages are the cache's, just read, and stay as they are for this call: written from there.
        defer { owner.keepBorrowedPages() }
        var written = 0
        for p in 0..<pages where owner.reallocate(lunID, block: first + UInt64(p), from: page(p)) { written += 1 }
        if written > 0 { _ = owner.commit(flush: false) }
    }

    /// Destages one page of thin LUN `lunID`: byte `offsetBytes` (a page boundary) of data strip `strip` of LUN stripe
    /// `lunStripe`. Durable after `commit()`.
    public func writePage(lunID: UInt32, lunStripe: UInt64, strip: Int, offsetBytes: Int, from page: UnsafeRawPointer) -> PoolFailure? {
        writePage(lunID: lunID, lunStripe: lunStripe, strip: strip, offsetBytes: offsetBytes, from: page, borrow: false)
    }

    /// `borrow`: the page is written from where it is when its commit goes down (`PoolHome.write(borrowing:)`); the
    /// caller calls the home's `keepBorrowedPages()` before it returns.
    private func writePage(lunID: UInt32, lunStripe: UInt64, strip: Int, offsetBytes: Int, from page: UnsafeRawPointer, borrow: Bool) -> PoolFailure? {
        let (h, block) = layout.local(lunStripe: lunStripe, homeOffset: lunID, offsetInStripe: strip * layout.geometry.stripUnitBytes + offsetBytes)
        touched |= 1 << UInt64(h)
        let owner = home(h)
        if memcmp(page, zeroPage.base, PoolLayout.blockBytes) == 0 { return owner.unmap(lunID, block: block, count: 1) }
        func write() -> PoolFailure? { borrow ? owner.write(lunID, block: block, borrowing: page) : owner.write(lunID, block: block, from: page) }
        let failure = write()
        guard failure == .noSpace else { return failure }
        // The page was promised space, but no free segment is at hand: the dead blocks of partly used segments are
        // where it is (promises leave the spare segments' worth of them). If none comes, the destage of acknowledged
        // data fails: it is tried again with the next pass (the data stays write-pending).
        var outcome: PoolFailure? = .noSpace
        _ = makeRoom(in: owner) {
            outcome = write()
            return outcome != .noSpace
        }
        return outcome
    }

    /// Until `done()` holds (asked after each try): `owner` (this director acts for it) cleans, and when it has nothing
    /// to clean, the other homes' cleaners (which run flat out once free segments are short) are waited for a little;
    /// this director's queue waits too, about 60 ms at most. Whether `done()` held.
    private func makeRoom(in owner: PoolHome, until done: () -> Bool) -> Bool {
        for attempt in 0..<20 {
            if !makeRoom(in: owner) { usleep(attempt < 10 ? 1000 : 5000) }
            if done() { return true }
        }
        return false
    }

    /// Cleans `owner` (this director acts for it) until a segment comes back or nothing is worth moving. The bar is
    /// lower than the background cleaner's: a write is waiting, and a victim gives back more than its moves take
    /// as long as its dead blocks outnumber the summaries and padding of the commits that move its live ones.
    private func makeRoom(in owner: PoolHome) -> Bool {
        let freeBefore = owner.space.freeSegments
        if owner.releasePays {
            guard owner.checkpoint() else { return false }
            if owner.space.freeSegments > freeBefore { return true }
        }
        let minimumDead = max(8, layout.blocksPerSegment / 16)
        for _ in 0..<8 {
            guard owner.startVictim(minimumDead: minimumDead) else {
                if owner.hasEmptiedSegments { guard owner.checkpoint() else { return false } }
                return owner.space.freeSegments > freeBefore
            }
            guard owner.clean(stripes: Int(layout.stripesPerSegment), minimumDead: minimumDead) != nil else { return false }
            if owner.releasePays { guard owner.checkpoint() else { return false } }
            if owner.space.freeSegments > freeBefore { return true }
        }
        return false
    }

    /// Writes one whole LUN stripe of thin LUN `lunID` (the host's buffer, strip by strip in `strips`) into its home's
    /// log, page by page as a destage would (pages of zeroes unmapped), and writes the commit out, without a flush
    /// (a host flush makes it durable, as it does a thick LUN's write-through). Blocks are promised first, so space
    /// cached pages were promised is never taken: `.noSpace` (ENOSPC) only when the promise is refused, before
    /// anything is written; `.noSegmentYet` when the promised space could not be had in a segment in time.
    /// `promisedInCache(strip, offsetBytes)`: whether the cache holds a promise for that page already (a write-pending
    /// page this stripe supersedes; its promise goes back once the write is down and the slot forgotten).
    public func writeStripe(
        lunID: UInt32, lunStripe: UInt64, strips: UnsafeMutablePointer<UnsafeMutableRawPointer?>, promisedInCache: (Int, Int) -> Bool
    ) -> PoolFailure? {
        let unit = layout.geometry.stripUnitBytes
        var promised = layout.blocksPerStripe
        if !promise(promised, lunID: lunID, lunStripe: lunStripe, force: false) {
            // A full pool: the blocks the LUN owns already are overwrites and need no promise, and pages the cache
            // promised (write-pending, not destaged yet: not mapped) have theirs until this write supersedes them.
            promised = 0
            for strip in 0..<layout.blocksPerRow {
                for offset in stride(from: 0, to: unit, by: PoolLayout.blockBytes)
                where !promisedInCache(strip, offset) && !owns(lunID: lunID, lunStripe: lunStripe, strip: strip, offsetBytes: offset) { promised += 1 }
            }
            guard promised == 0 || promise(promised, lunID: lunID, lunStripe: lunStripe, force: false) else { return .noSpace }
        }
        defer { keep(promised) }
        // The host's buffer stays as it is for this call: its pages are written from there (a gather write), and what
        // a failure leaves in the open commit is copied in before the call returns.
        let (h, _) = layout.local(lunStripe: lunStripe, homeOffset: lunID, offsetInStripe: 0)
        defer { home(h).keepBorrowedPages() }
        for strip in 0..<layout.blocksPerRow {
            for offset in stride(from: 0, to: unit, by: PoolLayout.blockBytes) {
                if let failure = writePage(lunID: lunID, lunStripe: lunStripe, strip: strip, offsetBytes: offset, from: strips[strip]! + offset, borrow: true) {
                    // The space was promised, so a missing segment is not ENOSPC: the pages written so far hold the
                    // new data (uncommitted) and the caller puts the whole stripe in the cache instead.
                    return failure == .noSpace ? .noSegmentYet : failure
                }
            }
        }
        return home(h).commit(flush: false) ? nil : .io
    }

    /// Makes every page this director destaged since the last commit durable.
    public func commit() -> Bool {
        var ok = true
        for h in 0..<homes.count where touched & (1 << UInt64(h)) != 0 { ok = home(h).commit() && ok }
        if ok { touched = 0 }
        return ok
    }

    /// Promises blocks to `count` pages of LUN stripe `lunStripe` about to become write-pending: false (ENOSPC) when
    /// the pool's capacity would be passed. Space, not a free segment now: the destage finds room (cleaning first
    /// if it must, `writePage`). No lock, nothing read.
    public func promise(_ count: Int, lunID: UInt32, lunStripe: UInt64, force: Bool) -> Bool {
        let space = homes[0].space
        guard space.promise(count, force: force) else { return false }
        guard !force, space.sharing.load(ordering: .relaxed), !space.promisesFitFreeSegments else { return true }
        // Versions share blocks: dead blocks beside shared ones stay until the sharing ends, so promises also stay
        // within the free segments. The stripe's home (this director acts for it) cleans first; other homes' cleaners
        // are waited for a little; then the write gets ENOSPC, before it is acknowledged.
        let (h, _) = layout.local(lunStripe: lunStripe, homeOffset: lunID, offsetInStripe: 0)
        if commit() && makeRoom(in: home(h), until: { space.promisesFitFreeSegments }) { return true }
        keep(count)
        return false
    }

    /// Whether the page at byte `offsetBytes` of data strip `strip` of LUN stripe `lunStripe` is a block thin LUN
    /// `lunID` owns (mapped, shared with no snapshot): an overwrite of it needs no promise, since the block it
    /// writes kills one, so a full pool still takes overwrites of what is allocated (the cleaner gives the dead
    /// block back). Asked only once a promise failed: it reads the map.
    public func owns(lunID: UInt32, lunStripe: UInt64, strip: Int, offsetBytes: Int) -> Bool {
        // While versions share blocks, the block an overwrite kills may sit beside shared ones the cleaner cannot move.
        guard !homes[0].space.sharing.load(ordering: .relaxed) else { return false }
        let (h, block) = layout.local(lunStripe: lunStripe, homeOffset: lunID, offsetInStripe: strip * layout.geometry.stripUnitBytes + offsetBytes)
        return home(h).ownsBlock(lunID, block: block)
    }

    /// Gives back the promises of pages committed or dropped.
    public func keep(_ count: Int) { homes[0].space.keep(count) }

    /// Unmaps home `index`'s share of LUN stripes `stripes` of thin LUN `lunID` and commits it: the stripes whose home
    /// it is are consecutive local stripes there, so one run of local blocks.
    public func unmapStripes(lunID: UInt32, stripes: Range<UInt64>, home index: Int) -> Bool {
        let homes = UInt64(layout.homes)
        let offset = (UInt64(index) + homes - UInt64(lunID) % homes) % homes  // the home's LUN stripes are offset mod homes
        let first = stripes.lowerBound + (offset + homes - stripes.lowerBound % homes) % homes
        guard first < stripes.upperBound else { return true }
        let count = (stripes.upperBound - 1 - first) / homes + 1
        let h = home(index)
        guard let record = h.versions[lunID] else { return false }
        let block = first / homes * UInt64(layout.blocksPerStripe)
        guard block < record.blocks else { return true }
        let blocks = min(count * UInt64(layout.blocksPerStripe), record.blocks - block)
        let logged = h.unmapRunsLogged
        guard h.unmap(lunID, block: block, count: blocks) == nil else { return false }
        if h.unmapRunsLogged == logged { return true }  // nothing was mapped there: nothing to make durable
        touched |= 1 << UInt64(index)
        return commit()
    }

    /// Whether pages wait for `commit()`.
    public var hasUncommitted: Bool { touched != 0 }

    /// This director failed: the pages it put in homes' commits since its last commit went with the homes' memory
    /// (they are write-pending in the mirror); nothing is left for it to commit.
    public func forgetUncommitted() { touched = 0 }

    /// Loads home `index` from the drives for this director, which takes it over from a failed one
    /// (`PoolHome.reloadFromDrives`).
    public func reload(home index: Int) throws(VSAError) { try home(index).reloadFromDrives() }

    /// Runs `body` on home `index` with this director's back end (control requests: versions, checkpoints).
    public func withHome<T>(_ index: Int, _ body: (PoolHome) -> T) -> T { body(home(index)) }
}

/// A home's counters as the control plane reads them (copied on the home's executor by a stats request).
public final class PoolHomeStats: @unchecked Sendable {
    /// Per version: its kind, origin, counters (mapped, own, unique blocks) and label (snapshots' names and times).
    public var records: [UInt32: VersionRecord] = [:]
    public var ownedSegments = 0
    public var liveBlocks: UInt64 = 0
    public var checkpoint: UInt64 = 0
    public var commits: UInt64 = 0
    public var paddingBlocks: UInt64 = 0
    public var mapFrames = 0
    public var dirtyFrames = 0
    public var damagedNodes: UInt64 = 0
    public var cleaner = PoolCleanerCounters()
    public var reclaimableBlocks: UInt64 = 0
    public var stripesPerSegment: UInt64 = 1
    public var reallocatedBlocks: UInt64 = 0
    public init() {}

    public func capture(_ h: PoolHome) {
        records = h.versions
        let owned = h.space.owned(by: h.home)
        ownedSegments = owned.count
        liveBlocks = owned.reduce(0) { $0 + UInt64(h.space.liveBlocks($1)) }
        checkpoint = h.checkpointNumber
        commits = h.commitsWritten
        paddingBlocks = h.paddingBlocks
        reallocatedBlocks = h.blocksReallocated
        mapFrames = h.map.frameCount
        dirtyFrames = h.map.dirtyFrames
        damagedNodes = h.map.damagedNodes
        cleaner = h.cleanerCounters
        reclaimableBlocks = h.reclaimableBlocks
        stripesPerSegment = h.layout.stripesPerSegment
    }
}
