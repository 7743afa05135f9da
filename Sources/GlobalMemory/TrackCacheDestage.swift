// The cache portion's destage (TrackCache.swift has the slot table and its states): passes of the oldest write-pending
// stripes, thick ones through the back end's port (which chooses read-modify-write or reconstruct-write), thin ones
// page by page into the pool; discards; and what a failover asks of a portion.
import ArrayModel
import BackEnd
import Buffers
import MemoryServices
import Pool
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

extension TrackCache {
    // MARK: Destage

    /// Destages up to `stripeBudget` stripes, oldest write-pending first. Returns how many went down.
    @discardableResult
    public func destage(stripeBudget: Int) -> Int {
        var destaged = 0
        while destaged < stripeBudget && dirtyQueued > 0 {
            let slot = popDirty()
            guard slotInUse[slot] && slotDirty[slot] && !slotCommitting[slot] else { continue }
            if destageStripe(containing: slot) {
                destaged += 1
                afterEachStripe?()
            } else {
                // Could not destage (too many failed drives): keep it write-pending and stop for now.
                queueDirty(slot)
                break
            }
        }
        // The pass's journaled stripes go down as one batch: one flush for all of them. Only then are they clean.
        return finishPass() ? destaged : 0
    }

    /// Ends a destage pass: commits the journal batch holding the pass's writes, then marks their slots clean (the
    /// mirror copies go with it). A batch that cannot commit (the array lost more members than it survives) leaves
    /// them write-pending, back in the dirty queue. Returns whether the commit held.
    func finishPass() -> Bool {
        if stripesThisPass > 0 { beforeCommit?() }
        stripesThisPass = 0
        var committed = store.commitJournal()
        // Thin LUNs' pages this pass gave the pool: its commit makes them durable.
        if let pool, pool.hasUncommitted { committed = pool.commit() && committed }
        for i in 0..<committingCount {
            let slot = Int(committing[i])
            slotCommitting[slot] = false
            if committed {
                markClean(slot)
            } else if !slotInDirtyQueue[slot] {
                queueDirty(slot)
            }
        }
        committingCount = 0
        return committed
    }

    /// A slot whose stripe this pass wrote: clean once the pass's journal batch is durable (`finishPass`).
    func markCommitting(_ slot: Int) {
        precondition(slotDirty[slot] && !slotCommitting[slot], "committing a slot that is not write-pending")
        slotCommitting[slot] = true
        committing[committingCount] = Int32(slot)
        committingCount += 1
    }

    /// Destages every write-pending slot (of one LUN, or all). Returns false if some could not go down.
    public func destageAll(lunID: UInt32? = nil) -> Bool {
        // Every write-pending slot is in the dirty queue, so walking it costs what is dirty, not the whole portion:
        // an fsync after one small write does one stripe's work. The walk also drops the entries of slots that went
        // clean (else they pile up and every fsync walks them); other LUNs' slots and failures go back in order.
        var ok = true
        for _ in 0..<dirtyQueued {
            let slot = popDirty()
            guard slotInUse[slot] && slotDirty[slot] && !slotCommitting[slot] else { continue }
            if lunID == nil || slotLUN[slot] == lunID! {
                if destageStripe(containing: slot) {
                    afterEachStripe?()
                    continue
                }
                ok = false
            }
            queueDirty(slot)
        }
        return finishPass() && ok
    }

    /// The range of sectors with write-pending data in `slot` (nil when none).
    func dirtyRange(_ slot: Int) -> (first: Int, last: Int)? {
        var first = -1
        var last = -1
        let base = slot * wordsPerSlot
        for w in 0..<wordsPerSlot where dirtyBits[base + w] != 0 {
            let word = dirtyBits[base + w]
            if first < 0 { first = w * 64 + word.trailingZeroBitCount }
            last = w * 64 + 63 - word.leadingZeroBitCount
        }
        return first < 0 ? nil : (first, last)
    }

    /// Writes one stripe: all its write-pending tracks together, over the page-aligned range that covers their
    /// dirty sectors. The back end chooses read-modify-write or reconstruct-write (`StripeStore.destage`).
    func destageStripe(containing slot: Int) -> Bool {
        if slotThin[slot] { return destageThin(containing: slot) }
        let d = dataStripsPerStripe
        let lun = slotLUN[slot]
        let stripe = slotStripe[slot]
        let baseTrack = slotTrack[slot] - slotTrack[slot] % UInt64(d)
        var dirtyMask: UInt64 = 0
        var first = Int.max
        var last = -1
        for strip in 0..<d {
            let s = lookup(lun: lun, track: baseTrack + UInt64(strip)) ?? -1
            destageSlots[strip] = Int32(s)
            if s >= 0 && slotDirty[s] && !slotCommitting[s], let range = dirtyRange(s) {
                dirtyMask |= 1 << UInt64(strip)
                first = min(first, range.first)
                last = max(last, range.last)
            }
        }
        precondition(dirtyMask != 0, "destaging a stripe with nothing write-pending")
        (first, last) = pageAlignedRange(first, last)
        let offset = first * sectorBytes
        let count = (last - first + 1) * sectorBytes
        // The cache's copies, and which hold the range whole: the back end chooses read-modify-write or
        // reconstruct-write and reads what it needs; what it reads of a strip the cache has fills in that copy.
        var cachedMask: UInt64 = 0
        for strip in 0..<d {
            let s = Int(destageSlots[strip])
            destageTable[strip] = s >= 0 ? slotData(s) + offset : nil
            if s >= 0 && allValid(s, first, last) { cachedMask |= 1 << UInt64(strip) }
        }
        // Whether every sector of every strip's range is write-pending: then nothing older rides along.
        var allNew = dirtyMask.nonzeroBitCount == d
        for strip in 0..<d where allNew {
            let s = Int(destageSlots[strip])
            for sector in first...last where !testBit(dirtyBits, s, sector) {
                allNew = false
                break
            }
        }
        let ok = store.destage(
            stripe: stripe, strips: destageTable, dirtyMask: dirtyMask, cachedMask: cachedMask, offsetBytes: offset, count: count, allNew: allNew
        ) { strip, old in
            let s = Int(destageSlots[strip])
            mergeInvalid(s, from: old, first, last)
            setBits(&validBits, s, first, last)
        }
        guard ok else { return false }
        for strip in 0..<d where dirtyMask & (1 << UInt64(strip)) != 0 { markCommitting(Int(destageSlots[strip])) }
        counters.destagedStripes.add(1, ordering: .relaxed)
        stripesThisPass += 1
        return true
    }

    /// A thin LUN's stripe: every page that holds write-pending sectors goes to the pool, whole (completed from the
    /// pool first where the slot lacks some of its sectors): new blocks, nothing read for parity. Durable at the
    /// pass's commit (`finishPass`).
    func destageThin(containing slot: Int) -> Bool {
        guard let pool else { return false }
        let d = dataStripsPerStripe
        let lun = slotLUN[slot]
        let lunStripe = slotStripe[slot]
        let baseTrack = slotTrack[slot] - slotTrack[slot] % UInt64(d)
        var any = false
        for strip in 0..<d {
            guard let s = lookup(lun: lun, track: baseTrack + UInt64(strip)), slotDirty[s] && !slotCommitting[s] else { continue }
            var first = 0
            while first < sectorsPerTrack {
                let last = first + pageSectors - 1
                if anyBit(dirtyBits, s, first, last) {
                    if !allValid(s, first, last) { guard fill(s, first, last) else { return false } }
                    guard
                        pool.writePage(
                            lunID: lun, lunStripe: lunStripe, strip: strip, offsetBytes: first * sectorBytes, from: slotData(s) + first * sectorBytes) == nil
                    else { return false }
                }
                first += pageSectors
            }
            markCommitting(s)
            any = true
        }
        precondition(any, "destaging a stripe with nothing write-pending")
        counters.destagedStripes.add(1, ordering: .relaxed)
        stripesThisPass += 1
        return true
    }

    /// Forgets what the cache read of one stripe of a LUN (a scrub rewrote a data strip there): clean slots go, and a
    /// write-pending slot keeps only its write-pending sectors.
    public func forgetClean(lunID: UInt32, lunStripe: UInt64) {
        let d = UInt64(dataStripsPerStripe)
        for strip in 0..<d {
            guard let slot = lookup(lun: lunID, track: lunStripe * d + strip), !slotPinned[slot] else { continue }
            if slotDirty[slot] {
                for w in 0..<wordsPerSlot { validBits[slot * wordsPerSlot + w] = dirtyBits[slot * wordsPerSlot + w] }
            } else {
                evict(slot)
            }
        }
    }

    /// Forgets every slot of a LUN, write-pending or not (the LUN is being deleted).
    /// Drops the LUN's tracks in LUN stripes `stripes`, write-pending or not (a thin LUN's stripes being unmapped:
    /// what the cache held of them is superseded). Not for thick LUNs, whose slots name array stripes.
    public func discard(lunID: UInt32, stripes: Range<UInt64>) {
        func drop(_ slot: Int) {
            precondition(slotThin[slot] && !slotCommitting[slot] && !slotPinned[slot], "discarding a thick, committing or pinned slot")
            markClean(slot)
            evict(slot)
        }
        // A short range (fstrim sends one per free extent) looks its tracks up; a long one walks the slots once.
        let d = UInt64(dataStripsPerStripe)
        if stripes.count * Int(d) < slotCount - freeCount {
            for track in (stripes.lowerBound * d)..<(stripes.upperBound * d) {
                if let slot = lookup(lun: lunID, track: track) { drop(slot) }
            }
            return
        }
        for slot in 0..<slotCount where slotInUse[slot] && slotLUN[slot] == lunID && stripes.contains(slotStripe[slot]) { drop(slot) }
    }

    public func discard(lunID: UInt32) {
        for slot in 0..<slotCount where slotInUse[slot] && slotLUN[slot] == lunID {
            markClean(slot)
            evict(slot)
        }
    }

    // MARK: Failover (called only while the owning director is idle: its executor role held by the caller)

    /// Mirrors write-pending data into `mirror` from now on (nil: no mirror, the partner is out). Nothing may be
    /// write-pending when the mirror changes: what is dirty now was mirrored in the old place, or not at all.
    public func setMirror(_ mirror: WritePendingMirror?) {
        precondition(dirtyCount == 0, "changing the mirror with \(dirtyCount) write-pending slots")
        precondition(mirror == nil || mirror!.slotCount == slotCount, "a mirror must have a slot per cache slot")
        mirror?.reset()
        self.mirror = mirror
    }

    /// Destages the stripe that holds `offsetBytes` of the LUN if it has write-pending data, and commits the journal:
    /// a write acknowledged while the partner is out is on the drives first.
    public func destageStripe(lunID: UInt32, offsetBytes: UInt64) -> Bool {
        let d = UInt64(dataStripsPerStripe)
        let baseTrack = offsetBytes / UInt64(trackBytes) / d * d
        for strip in 0..<d {
            if let slot = lookup(lun: lunID, track: baseTrack + strip), slotDirty[slot] {
                guard destageStripe(containing: slot) else { return false }
                return finishPass()
            }
        }
        return true
    }

    /// Forgets the clean slots of the LUN stripes `moved` says went to another director (failover or restore): a
    /// director caches only what it owns, so a later owner change never meets stale copies. Destage first.
    public func forget(moved: (_ lunID: UInt32, _ lunStripe: UInt64) -> Bool) {
        let d = UInt64(dataStripsPerStripe)
        for slot in 0..<slotCount where slotInUse[slot] && moved(slotLUN[slot], slotTrack[slot] / d) {
            precondition(!slotDirty[slot] && !slotPinned[slot], "forgetting a write-pending slot")
            evict(slot)
        }
    }

    /// Drops everything, write-pending or not: the director was fenced and its memory portion is gone (its
    /// write-pending data lives on in the partner's mirror, which the partner replays).
    public func reset() {
        // The mirror link goes first (the partner's copy was replayed, or is kept for its replay: markClean must not
        // drop it); a restore pairs the portion again through setMirror, which empties the mirror.
        mirror = nil
        for slot in 0..<slotCount where slotInUse[slot] {
            markClean(slot)
            slotPinned[slot] = false
            evict(slot)
        }
        precondition(dirtyCount == 0, "reset left write-pending slots")
        while dirtyQueued > 0 { _ = popDirty() }
        for i in 0..<TrackCache.streamCount { streamNext[i] = UInt64.max }
    }

    public var writePendingSlots: Int { dirtyCount }
    /// Entries in the dirty queue (write-pending slots, plus any that went clean and are not yet popped).
    public var dirtyQueueLength: Int { dirtyQueued }
}
