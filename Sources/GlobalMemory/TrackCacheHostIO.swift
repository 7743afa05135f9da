// The cache portion's host I/O (TrackCache.swift has the slot table and its states): reads through the slots, writes
// into them (write-pending, promised by the pool for thin LUNs), and write-through of whole stripes.
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
    // MARK: Host I/O (called by the owning director)

    /// The part of a byte range that falls in one track: the track, the byte offset in it, the length, and the first
    /// and last sectors it touches.
    @inline(__always)
    func span(_ position: UInt64, _ remaining: Int) -> (track: UInt64, inTrack: Int, length: Int, first: Int, last: Int) {
        let track = position / UInt64(trackBytes)
        let inTrack = Int(position % UInt64(trackBytes))
        let length = min(remaining, trackBytes - inTrack)
        return (track, inTrack, length, inTrack / sectorBytes, (inTrack + length - 1) / sectorBytes)
    }

    /// Copies `count` bytes of the LUN at `offsetBytes` into `target`. The range must lie in one stripe.
    public func read(lun: LUNRef, offsetBytes: UInt64, count: Int, into target: UnsafeMutableRawPointer) -> Bool {
        let sequential = continuesStream(lun: lun.lunID, offsetBytes: offsetBytes, count: count)
        var done = 0
        while done < count {
            let (track, inTrack, length, first, last) = span(offsetBytes + UInt64(done), count - done)
            var slot = lookup(lun: lun.lunID, track: track)
            if let s = slot, allValid(s, first, last) {
                if slotPrefetched[s] {
                    slotPrefetched[s] = false
                    counters.readMisses.add(1, ordering: .relaxed)
                } else {
                    counters.readHits.add(1, ordering: .relaxed)
                }
                slotReferenced[s] = true
            } else {
                counters.readMisses.add(1, ordering: .relaxed)
                // A read that runs on through the whole next track wants the tracks after this one too: fetched with
                // this one, in one batch (a thin LUN's pages of neighbouring tracks are one run: a read per drive,
                // not one per drive and track).
                let runsOn = count - done >= length + trackBytes
                guard
                    let filled = readMiss(
                        lun: lun, track: track, existing: slot, first: first, last: last, sequential: sequential || done > 0 || runsOn,
                        readsThrough: (offsetBytes + UInt64(count) - 1) / UInt64(trackBytes))
                else {
                    return false
                }
                slot = filled
            }
            memory.copy(from: slotData(slot!) + inTrack, to: target + done, byteCount: length)
            done += length
        }
        return true
    }

    /// A director's batch of host reads, before they run one after another: the tracks they miss entirely (random
    /// reads of a thick LUN within one track that have no slot at all) are installed and read together, one submit
    /// for all (`StripeStore.readBatch`), so a director with several misses waits for the drives once, not once per
    /// read: over a network, the round trips overlap. Each read then runs as it would have and finds its pages.
    /// Order is kept: a track with no slot holds nothing newer than the drives, and every request of the batch
    /// still runs in turn on the slots. A range the batch could not read (a drive out, an error, a checksum) is
    /// given back, and its read goes the usual way. `read(i)` is request i's range, nil when it is not such a read.
    public func prefetchMisses(count n: Int, read: (Int) -> (lun: LUNRef, offsetBytes: UInt64, count: Int)?) {
        let most = min(store.readBatchMax, 64)
        guard most >= 2 else { return }
        let d = UInt64(dataStripsPerStripe)
        /// Request i's track, when it is such a read: a thick LUN's, within one track, not the next read of a stream
        /// (those read ahead their way), and no slot for the track yet.
        func missedTrack(_ i: Int) -> (lun: LUNRef, track: UInt64, first: Int, last: Int)? {
            guard let r = read(i), !r.lun.thin, r.count > 0 else { return nil }
            let (track, _, length, first, last) = span(r.offsetBytes, r.count)
            guard length == r.count, stream(expecting: r.offsetBytes, lun: r.lun.lunID) == nil, lookup(lun: r.lun.lunID, track: track) == nil else {
                return nil
            }
            return (r.lun, track, first, last)
        }
        // Two at least, or there is nothing to overlap (and an install may cost a clean slot, or a destage).
        var candidates = 0
        for i in 0..<n where candidates < 2 && missedTrack(i) != nil { candidates += 1 }
        guard candidates >= 2 else { return }
        var items = 0
        for i in 0..<n where items < most {
            // A second read of a track finds the first one's slot, and goes the usual way.
            guard let (lun, track, first, last) = missedTrack(i) else { continue }
            guard let slot = install(lun: lun.lunID, track: track, stripe: lun.startStripe + track / d, thin: false) else { break }
            slotPinned[slot] = true
            let range = pageAlignedRange(first, last)
            batchReads[items] = BatchRead(
                stripe: slotStripe[slot], strip: Int(track % d), offsetBytes: range.first * sectorBytes,
                count: (range.last - range.first + 1) * sectorBytes, target: slotData(slot) + range.first * sectorBytes)
            batchSlots[items] = Int32(slot)
            items += 1
        }
        let done = items >= 2 ? store.readBatch(batchReads, count: items) : 0
        for k in 0..<items {
            let slot = Int(batchSlots[k])
            slotPinned[slot] = false
            if done & (1 << UInt64(k)) != 0 {
                let first = batchReads[k].offsetBytes / sectorBytes
                setBits(&validBits, slot, first, first + batchReads[k].count / sectorBytes - 1)
                slotPrefetched[slot] = true
            } else {
                evict(slot)
            }
        }
        if done != 0 { counters.batchedMisses.add(UInt64(done.nonzeroBitCount), ordering: .relaxed) }
    }

    /// Fetches what a read missed. A random read fetches just its pages; one that goes on into the next track fetches
    /// its tracks (through `readsThrough`, the read's last) in one batch, not a round trip each; a sequential one (it
    /// continues a read stream, or runs on through a whole track more, or it is the second track of a read that
    /// spans tracks) fetches the rest of its track and the following tracks of its stripe in one batch (read-ahead:
    /// the tracks past the read's last).
    func readMiss(lun: LUNRef, track: UInt64, existing: Int?, first: Int, last: Int, sequential: Bool, readsThrough: UInt64) -> Int? {
        let d = UInt64(dataStripsPerStripe)
        let stripe = lun.startStripe + track / d
        let firstStrip = Int(track % d)
        if !sequential && readsThrough <= track {
            // Random: only the pages asked for.
            var slot = existing
            if slot == nil { slot = install(lun: lun.lunID, track: track, stripe: stripe, thin: lun.thin) }
            guard let slot else { return nil }
            guard fill(slot, first, last) else {
                if !slotDirty[slot] && !anyValid(slot, 0, sectorsPerTrack - 1) { evict(slot) }
                return nil
            }
            return slot
        }
        // The strip of the read's last track in this stripe (past the stripe's end when the read goes on into the
        // next). A read that only spans tracks fetches through it; a sequential one the rest of the stripe.
        let readsToStrip = firstStrip + Int(min(readsThrough >= track ? readsThrough - track : 0, d))
        let lastStrip = sequential ? dataStripsPerStripe - 1 : min(dataStripsPerStripe - 1, readsToStrip)
        let lunTracks = (lun.sizeBytes + UInt64(trackBytes) - 1) / UInt64(trackBytes)
        var mask: UInt64 = 0
        var merge: UInt64 = 0
        // First claim the slots (an install may destage to make room, so pin what is claimed), then aim the reads.
        if let existing { slotPinned[existing] = true }
        for strip in firstStrip...lastStrip {
            let t = track - UInt64(firstStrip) + UInt64(strip)
            if t >= lunTracks { break }
            var slot = strip == firstStrip ? existing : lookup(lun: lun.lunID, track: t)
            if strip != firstStrip && slot != nil { continue }  // already cached: read-ahead skips it
            if slot == nil { slot = install(lun: lun.lunID, track: t, stripe: stripe, thin: lun.thin) }
            if slot == nil {
                if strip == firstStrip {
                    if let existing { slotPinned[existing] = false }
                    return nil
                }
                break  // no room for read-ahead: read what is claimed
            }
            slotPinned[slot!] = true
            stripeSlots[strip] = Int32(slot!)
            mask |= 1 << UInt64(strip)
        }
        for strip in firstStrip...lastStrip where mask & (1 << UInt64(strip)) != 0 {
            let slot = Int(stripeSlots[strip])
            slotPinned[slot] = false
            let partial = anyValid(slot, 0, sectorsPerTrack - 1)
            stripTable[strip] = partial ? staging.slice(strip) : slotData(slot)
            if partial { merge |= 1 << UInt64(strip) }
        }
        // Read-ahead: the tracks fetched past the read's last.
        let ahead = (mask >> UInt64(readsToStrip + 1)).nonzeroBitCount
        if ahead > 0 { counters.readAheadTracks.add(UInt64(ahead), ordering: .relaxed) }
        let ok = readStrips(lun: lun.lunID, thin: lun.thin, stripe: stripe, stripMask: mask, 0, trackBytes, stripTable)
        for strip in firstStrip...lastStrip where mask & (1 << UInt64(strip)) != 0 {
            let slot = Int(stripeSlots[strip])
            if ok {
                if merge & (1 << UInt64(strip)) != 0 { mergeInvalid(slot, from: staging.slice(strip), 0, sectorsPerTrack - 1) }
                setFullyValid(slot)
            } else if !slotDirty[slot] && !anyValid(slot, 0, sectorsPerTrack - 1) {
                evict(slot)
            }
        }
        return ok ? Int(stripeSlots[firstStrip]) : nil
    }

    /// Copies `count` bytes from `source` (or zeroes when nil) into the LUN at `offsetBytes`; write-back.
    public func write(lun: LUNRef, offsetBytes: UInt64, count: Int, from source: UnsafeRawPointer?) -> Bool {
        writeBack(lun: lun, offsetBytes: offsetBytes, count: count, from: source) == 0
    }

    /// `write`, answering 0, EIO, or ENOSPC when a thin LUN's pool cannot promise a block for a page this write
    /// makes write-pending (`replaying`: a failover's replay of acknowledged writes, promised regardless).
    public func writeBack(lun: LUNRef, offsetBytes: UInt64, count: Int, from source: UnsafeRawPointer?, replaying: Bool = false) -> Int32 {
        var done = 0
        while done < count {
            let (track, inTrack, length, first, last) = span(offsetBytes + UInt64(done), count - done)
            let slot: Int
            if let s = lookup(lun: lun.lunID, track: track) {
                slot = s
                counters.writeHits.add(1, ordering: .relaxed)
                slotPrefetched[s] = false
                slotReferenced[s] = true
            } else {
                counters.writeMisses.add(1, ordering: .relaxed)
                guard let s = install(lun: lun.lunID, track: track, stripe: lun.startStripe + track / UInt64(dataStripsPerStripe), thin: lun.thin) else {
                    return EIO
                }
                slot = s
            }
            if lun.thin {
                guard promisePages(slot, first, last, inTrack: inTrack, length: length, zero: source == nil, force: replaying) else {
                    // Nothing of this track changed; an untouched slot goes back.
                    if !slotDirty[slot] && !anyValid(slot, 0, sectorsPerTrack - 1) { evict(slot) }
                    return ENOSPC
                }
            }
            // A write that covers part of a sector needs the rest of that sector first.
            let headPartial = inTrack % sectorBytes != 0 && !testBit(validBits, slot, first)
            let tailPartial = (inTrack + length) % sectorBytes != 0 && !testBit(validBits, slot, last)
            if headPartial { guard fill(slot, first, first) else { return EIO } }
            if tailPartial && !testBit(validBits, slot, last) { guard fill(slot, last, last) else { return EIO } }
            // The host data into the slot and, when mirrored, the slot's sectors into the partner's memory: two
            // service requests queued in order and run together before the write is acknowledged.
            if let source {
                memory.submit(.copy(from: source + done, to: slotData(slot) + inTrack, byteCount: length))
            } else {
                memory.submit(.zero(slotData(slot) + inTrack, byteCount: length))
            }
            setBits(&validBits, slot, first, last)
            markDirty(slot, first, last)
            memory.execute()
            done += length
        }
        return 0
    }

    /// A thin LUN's slot: the pool promises a block to every page of sectors [first, last] that has no promise yet,
    /// except pages this write wholly zeroes (their destage unmaps). False: the pool cannot (ENOSPC).
    func promisePages(_ slot: Int, _ first: Int, _ last: Int, inTrack: Int, length: Int, zero: Bool, force: Bool) -> Bool {
        guard let pool else { return false }
        let base = slot * promiseWordsPerSlot
        let pageBytes = pageSectors * sectorBytes
        @inline(__always) func needs(_ page: Int) -> Bool {
            !testSectorBit(promisedBits, base: base, page) && !(zero && page * pageBytes >= inTrack && (page + 1) * pageBytes <= inTrack + length)
        }
        var needed = 0
        for page in (first / pageSectors)...(last / pageSectors) where needs(page) { needed += 1 }
        guard needed > 0 else { return true }
        let lun = slotLUN[slot]
        let lunStripe = slotStripe[slot]
        if pool.promise(needed, lunID: lun, lunStripe: lunStripe, force: force) {
            for page in (first / pageSectors)...(last / pageSectors) where needs(page) { setSectorBits(&promisedBits, base: base, page, page) }
            slotPromised[slot] += Int32(needed)
            return true
        }
        // A full pool: pages whose blocks the LUN owns are overwrites, which free what they take; only the others need
        // a promise. The owned ones stay unpromised (asked again if written again before their destage). Each page's
        // map is read once: the pages promised are exactly the ones counted.
        let strip = Int(slotTrack[slot] % UInt64(dataStripsPerStripe))
        var fresh = 0
        for w in 0..<promiseWordsPerSlot { freshPages[w] = 0 }
        for page in (first / pageSectors)...(last / pageSectors)
        where needs(page) && !pool.owns(lunID: lun, lunStripe: lunStripe, strip: strip, offsetBytes: page * pageBytes) {
            setSectorBits(&freshPages, base: 0, page, page)
            fresh += 1
        }
        guard fresh == 0 || pool.promise(fresh, lunID: lun, lunStripe: lunStripe, force: false) else { return false }
        for w in 0..<promiseWordsPerSlot { promisedBits[base + w] |= freshPages[w] }
        slotPromised[slot] += Int32(fresh)
        return true
    }

    /// Whether a write of `count` bytes at `offsetBytes` from `source` can go straight to the drives: it covers one
    /// whole stripe, and the buffer suits every drive (direct I/O needs 4 KiB alignment; FUSE's buffers are not).
    @inline(__always)
    public func canWriteThrough(offsetBytes: UInt64, count: Int, from source: UnsafeRawPointer?) -> Bool {
        guard let source, count == trackBytes * dataStripsPerStripe, offsetBytes % UInt64(count) == 0 else { return false }
        // Parity kernels want 32-byte aligned sources; direct I/O wants 4 KiB.
        let address = UInt(bitPattern: source)
        return address % 4096 == 0 || (address % 32 == 0 && !store.needsAlignedBuffers)
    }

    /// Write-through of one whole stripe from the host's buffer: staging it in slots would only add a copy (and, for
    /// a thin LUN, a mirror copy) and a destage (sequential writes are rarely read back soon). A thick LUN's stripe
    /// goes to its place with parity from the request itself, nothing read (a stripe the journal takes is committed
    /// here: no destage pass follows to do it). A thin LUN's pages join its home's commit where they lie (written
    /// from the request by a gather write, before this returns). Either way a host flush still flushes the drives.
    /// Slots holding tracks of the stripe are forgotten after, write-pending or not: every sector is superseded.
    /// Returns 0, ENOSPC (a thin LUN's pool could not promise the blocks, even after cleaning), EAGAIN (promised, but no
    /// segment could be had in time: the director caches the stripe instead) or EIO.
    public func writeThrough(lun: LUNRef, offsetBytes: UInt64, from source: UnsafeRawPointer) -> Int32 {
        let d = dataStripsPerStripe
        let firstTrack = offsetBytes / UInt64(trackBytes)
        precondition(firstTrack % UInt64(d) == 0, "write-through of a partial stripe")
        for strip in 0..<d { destageTable[strip] = UnsafeMutableRawPointer(mutating: source) + strip * trackBytes }
        counters.writeThroughStripes.add(1, ordering: .relaxed)
        // The drives first, then the slots: until the new data is down, write-pending slots of the stripe stay
        // counted, so an fsync meanwhile still waits for this director (and a failed write loses nothing older).
        if lun.thin {
            guard let pool else { return EIO }
            let pageBytes = pageSectors * sectorBytes
            let failure = pool.writeStripe(lunID: lun.lunID, lunStripe: firstTrack / UInt64(d), strips: destageTable) { strip, offset in
                guard let slot = lookup(lun: lun.lunID, track: firstTrack + UInt64(strip)) else { return false }
                return testSectorBit(promisedBits, base: slot * promiseWordsPerSlot, offset / pageBytes)
            }
            // No segment at hand though the space is there: EAGAIN tells the director to cache the stripe.
            if let failure { return failure == .noSpace ? ENOSPC : failure == .noSegmentYet ? EAGAIN : EIO }
        } else {
            let stripe = lun.startStripe + firstTrack / UInt64(d)
            guard
                store.writeStripe(stripe: stripe, strips: destageTable, dirtyMask: (1 << UInt64(d)) - 1, offsetBytes: 0, count: trackBytes, allNew: true),
                store.commitJournal()
            else {
                return EIO
            }
        }
        for strip in 0..<d {
            if let slot = lookup(lun: lun.lunID, track: firstTrack + UInt64(strip)) {
                precondition(!slotPinned[slot], "write-through over a pinned slot")
                markClean(slot)
                evict(slot)
            }
        }
        return 0
    }
}
