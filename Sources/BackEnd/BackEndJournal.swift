// The back end's use of its director's stripe journal (StripeJournal.swift says why and how): writes that could
// leave a stripe torn are journaled or recorded as write intents first, committed in batches at the end of a pass.
import ArrayModel
import Buffers
import Drives
import MemoryServices
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

extension RAIDBackEnd {
    // MARK: Stripe journal (StripeJournal.swift says why and how)

    /// A stripe with records in the open batch is not on the drives yet: the batch goes down before the stripe is
    /// read, so nothing reads around it.
    @inline(__always)
    func settle(_ stripe: UInt64) {
        if let journal, journal.hasOpenBatch, journal.isPending(stripe) { _ = commitJournal() }
    }

    /// The members writes reach (bit i = member i).
    var writableMask: UInt64 { ((1 << UInt64(m)) - 1) & ~failedMembers() }

    /// Journaled write: the new contents of every range this write changes (dirty strips' copies, P, Q) join the open
    /// batch; they reach their places when the batch commits (`commitJournal`: at the end of a destage pass, at a
    /// flush, or when the batch is full or a read needs the stripe).
    func journalWrite(stripe: UInt64, strips: UnsafeMutablePointer<UnsafeMutableRawPointer?>, dirtyMask: UInt64, offsetBytes: Int, count: Int)
        -> Bool
    {
        guard let journal else { preconditionFailure("journalWrite without a journal") }
        // A stripe twice in one batch: its in-place writes would race; the first write goes down first.
        if journal.isPending(stripe) { guard commitJournal() else { return false } }
        var members: UInt64 = 0
        for strip in 0..<geometry.dataStripsPerStripe where dirtyMask & (1 << UInt64(strip)) != 0 {
            for drive in geometry.copyDrives(stripe: stripe, strip: strip) where writable(drive) { members |= 1 << UInt64(drive) }
        }
        let p = geometry.parityDrive(stripe: stripe)
        let q = geometry.raidLevel == .raid6 ? geometry.qDrive(stripe: stripe) : -1
        if writable(p) { members |= 1 << UInt64(p) }
        if q >= 0 && writable(q) { members |= 1 << UInt64(q) }
        if !journal.fits(members: members, count: count) { guard commitJournal() else { return false } }
        for strip in 0..<geometry.dataStripsPerStripe where dirtyMask & (1 << UInt64(strip)) != 0 {
            for drive in geometry.copyDrives(stripe: stripe, strip: strip) where writable(drive) {
                journal.add(member: drive, stripe: stripe, offsetBytes: offsetBytes, count: count, from: strips[strip]!, memory: memory)
            }
            marks.stripWrites.add(1, ordering: .relaxed)
        }
        if writable(p) { journal.add(member: p, stripe: stripe, offsetBytes: offsetBytes, count: count, from: newP, memory: memory) }
        if q >= 0 && writable(q) { journal.add(member: q, stripe: stripe, offsetBytes: offsetBytes, count: count, from: newQ, memory: memory) }
        journal.notePending(stripe)
        return geometry.raidLevel.survives(outMask: failedMembers(), memberCount: m)
    }

    /// Before an in-place write that is not journaled (full stripes, mirrors): the region's intent is on the drives.
    /// RAID-0 has nothing to resync, only checksums to recompute.
    func recordIntent(stripe: UInt64) -> Bool {
        guard let journal, geometry.raidLevel != .raid0 || checksums != nil, !journal.hasIntent(stripe: stripe) else { return true }
        guard commitJournal() else { return false }
        journal.addIntent(stripe: stripe, stripeCount: geometry.stripeCount, members: writableMask)
        guard commitJournal() else { return false }
        journal.markIntent()
        return true
    }

    /// Commits the open batch: durable records to every member it touches, then the in-place writes from the
    /// batch buffer. Returns whether the array still survives.
    public func commitJournal() -> Bool {
        guard let journal, journal.hasEntries else { return true }
        var members = journal.batchMembers & writableMask
        while members != 0 {
            if !journal.batchFits(members: members) { guard endEpoch() else { break } }
            let sequence = journal.nextSequence()
            var rest = members
            while rest != 0 {
                let d = rest.trailingZeroBitCount
                rest &= rest - 1
                journal.queueRecord(member: d, batchMask: members, sequence: sequence, io: io)
            }
            // Durable writes: on stable storage when they complete, so no flush stands between them and the in-place
            // writes.
            let lost = io.submit()
            guard lost & members != 0 else { break }
            // A drive failed under the batch: write it again naming only the drives that have it, so a recovery
            // that still finds the failed drive does not take the batch for one that never started.
            members &= ~lost
        }
        if let checksums {
            for d in 0..<m where members & (1 << UInt64(d)) != 0 && writable(d) {
                journal.forEachData(member: d, geometry: geometry) { driveOffset, count, data in
                    checksums.update(member: d, driveOffset: driveOffset, count: count, data: data, io: io, memory: memory)
                }
            }
        }
        for d in 0..<m where members & (1 << UInt64(d)) != 0 && writable(d) { journal.queueInPlace(member: d, geometry: geometry, io: io) }
        io.submit()
        journal.closeBatch()
        return geometry.raidLevel.survives(outMask: failedMembers(), memberCount: m)
    }

    /// Ends the journal's epoch: everything written in place so far is flushed, so no record is needed any more; the
    /// next epoch number goes to every slice's epoch block (flushed) and records start at the top again.
    @discardableResult
    public func advanceEpoch() -> Bool {
        // An open batch goes down in this epoch first: its records must not outlive the epoch they are named in.
        guard commitJournal() else { return false }
        return endEpoch()
    }

    /// `advanceEpoch` without the commit (from inside `commitJournal`, whose batch goes into the new epoch).
    func endEpoch() -> Bool {
        // Checksum entries of this epoch's writes go down with them: the next recovery recomputes only its own.
        checksums?.writeBack(io: io, skipping: failedMembers())
        flushMembers()
        // No journal (the unsafe benchmark switch): the checksum pages reached the drives, nothing else to do.
        guard let journal else { return geometry.raidLevel.survives(outMask: failedMembers(), memberCount: m) }
        let next = journal.epoch + 1
        JournalEpochBlock.encode(into: journal.epochBlock.base, arrayUUID: journal.owner.arrayUUID, director: journal.owner.director, epoch: next)
        // Durable writes: the new epoch is on stable storage before any record of it is written.
        for d in 0..<m where writable(d) {
            io.queueDurableWrite(drive: d, from: journal.epochBlock.base, count: JournalFormat.blockBytes, offsetBytes: journal.sliceOffset)
        }
        io.submit()
        journal.beginEpoch(next)
        return geometry.raidLevel.survives(outMask: failedMembers(), memberCount: m)
    }
}
