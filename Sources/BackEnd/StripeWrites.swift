// The back end's writes: reconstruct-write (every data strip's range given, parity computed from all: a full-stripe
// write when every strip is new), read-modify-write (old data and parity read, the delta written), and write-back's
// destage, which chooses between the two.
import ArrayModel
import Buffers
import Drives
import MemoryServices
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

extension RAIDBackEnd {
    // MARK: Reconstruct-write

    public func writeStripe(
        stripe: UInt64, strips: UnsafeMutablePointer<UnsafeMutableRawPointer?>, dirtyMask: UInt64, offsetBytes: Int, count: Int, allNew: Bool = false
    ) -> Bool {
        checkRange(offsetBytes, count)
        let offset = geometry.driveOffset(stripe: stripe) + UInt64(offsetBytes)
        let d = geometry.dataStripsPerStripe
        let full = dirtyMask.nonzeroBitCount == d
        if hasParity {
            for i in 0..<d { table[i] = strips[i] }
            computeParity(count: count)
            if full {
                marks.fullStripeWrites.add(1, ordering: .relaxed)
            } else {
                marks.reconstructWrites.add(1, ordering: .relaxed)
            }
            // Data that is not new (other strips, or untouched sectors in this range) depends on this parity once
            // the write is torn and a drive is lost: the write goes through the journal. So does a stripe journaled
            // in this epoch, whose older record must not be replayed over this write.
            if let journal, !(full && allNew) || journal.isPending(stripe) || journal.wasJournaled(stripe) {
                return journalWrite(stripe: stripe, strips: strips, dirtyMask: dirtyMask, offsetBytes: offsetBytes, count: count)
            }
        }
        guard recordIntent(stripe: stripe) else { return false }
        recordChecksums(stripe: stripe, strips: strips, dirtyMask: dirtyMask, offset: offset, count: count)
        queueDataWrites(stripe: stripe, strips: strips, dirtyMask: dirtyMask, offset: offset, count: count)
        if hasParity { queueParityWrites(stripe: stripe, offset: offset, count: count) }
        return finishWrite()
    }

    public func writePages(
        stripe: UInt64, offsetBytes: Int, count: Int, nextCount: Int, pages: UnsafeMutablePointer<UnsafeMutableRawPointer?>,
        crcs: UnsafePointer<UInt32>?
    ) -> Bool {
        checkRange(offsetBytes, count)
        precondition(offsetBytes % 4096 == 0 && count % 4096 == 0 && nextCount % 4096 == 0, "a gather write of whole pages")
        let d = geometry.dataStripsPerStripe
        let spans = nextCount > 0
        if spans {
            checkRange(0, nextCount)
            precondition(offsetBytes + count == stripBytes && stripe + 1 < geometry.stripeCount, "rows that run on into the next stripe end this one")
        }
        let pagesPerStrip = count / 4096
        let offset = geometry.driveOffset(stripe: stripe) + UInt64(offsetBytes)
        let secondPages = pages + d * pagesPerStrip
        let secondCRCs = crcs.map { $0 + d * pagesPerStrip }
        if hasParity, let journal,
            journal.isPending(stripe) || journal.wasJournaled(stripe) || (spans && (journal.isPending(stripe + 1) || journal.wasJournaled(stripe + 1)))
        {
            // The journal takes a stripe (it was journaled in this epoch): each stripe is gathered into staging first,
            // as the journal's record copies it anyway. Rare: a pool writes a stripe's rows once per pass of its log.
            guard gatherAndWriteStripe(stripe: stripe, offsetBytes: offsetBytes, count: count, pages: pages) else { return false }
            return !spans || gatherAndWriteStripe(stripe: stripe + 1, offsetBytes: 0, count: nextCount, pages: secondPages)
        }
        if hasParity {
            computePageParity(pages: pages, rows: pagesPerStrip, p: newP, q: newQ)
            if spans { computePageParity(pages: secondPages, rows: nextCount / 4096, p: nextP, q: nextQ) }
        }
        guard recordIntent(stripe: stripe), !spans || recordIntent(stripe: stripe + 1) else { return false }
        // The checksums first: updating them may read a checksum page, which is never done with a batch queued.
        if let checksums {
            recordPageChecksums(checksums, stripe: stripe, offset: offset, count: count, pages: pages, crcs: crcs, p: newP, q: newQ)
            if spans {
                recordPageChecksums(
                    checksums, stripe: stripe + 1, offset: geometry.driveOffset(stripe: stripe + 1), count: nextCount, pages: secondPages, crcs: secondCRCs,
                    p: nextP, q: nextQ)
            }
        }
        // Each member's part of the rows, in both stripes (adjacent on every drive: a stripe's strips lie at the same
        // offset of every member), as one gather write: its data pages, or its parity, whichever it holds in each.
        for member in 0..<m { writeVectorCounts[member] = 0 }
        appendMemberVectors(stripe: stripe, count: count, pages: pages, p: newP, q: newQ)
        if spans { appendMemberVectors(stripe: stripe + 1, count: nextCount, pages: secondPages, p: nextP, q: nextQ) }
        for member in 0..<m where writable(member) && writeVectorCounts[member] > 0 {
            io.queueWriteVector(
                drive: member, vectors: writeVectors + member * writeVectorsPerMember, vectorCount: writeVectorCounts[member], count: count + nextCount,
                offsetBytes: offset)
        }
        marks.stripWrites.add(UInt64(spans ? 2 * d : d), ordering: .relaxed)
        if hasParity { marks.fullStripeWrites.add(spans ? 2 : 1, ordering: .relaxed) }
        return finishWrite()
    }

    /// A gather write the journal takes: its pages copied into staging, then `writeStripe`.
    private func gatherAndWriteStripe(stripe: UInt64, offsetBytes: Int, count: Int, pages: UnsafeMutablePointer<UnsafeMutableRawPointer?>) -> Bool {
        let d = geometry.dataStripsPerStripe
        let pagesPerStrip = count / 4096
        for strip in 0..<d {
            destageStrips[strip] = staging.slice(strip)
            for k in 0..<pagesPerStrip {
                memory.copy(from: pages[strip * pagesPerStrip + k]!, to: staging.slice(strip) + k * 4096, byteCount: 4096)
            }
        }
        return writeStripe(stripe: stripe, strips: destageStrips, dirtyMask: (1 << UInt64(d)) - 1, offsetBytes: offsetBytes, count: count, allNew: true)
    }

    /// P (and Q) of `rows` rows of scattered pages, row by row: a row's pages are the parity sources of that row.
    private func computePageParity(pages: UnsafeMutablePointer<UnsafeMutableRawPointer?>, rows: Int, p: UnsafeMutableRawPointer, q: UnsafeMutableRawPointer) {
        let d = geometry.dataStripsPerStripe
        for k in 0..<rows {
            for strip in 0..<d { table[strip] = pages[strip * rows + k] }
            table[d] = p + k * 4096
            table[d + 1] = q + k * 4096
            if geometry.raidLevel == .raid5 {
                memory.xorParity(sourceCount: d, lengthBytes: 4096, table: table)
            } else {
                memory.pqParity(sourceCount: d, lengthBytes: 4096, table: table)
            }
        }
    }

    /// The checksums of a gather write's rows of one stripe: data blocks from their known CRCs where given.
    private func recordPageChecksums(
        _ checksums: BlockChecksums, stripe: UInt64, offset: UInt64, count: Int, pages: UnsafeMutablePointer<UnsafeMutableRawPointer?>,
        crcs: UnsafePointer<UInt32>?, p: UnsafeMutableRawPointer, q: UnsafeMutableRawPointer
    ) {
        let pagesPerStrip = count / 4096
        for strip in 0..<geometry.dataStripsPerStripe {
            for drive in geometry.copyDrives(stripe: stripe, strip: strip) where writable(drive) {
                for k in 0..<pagesPerStrip {
                    let at = offset + UInt64(k * 4096)
                    if let crcs, crcs[strip * pagesPerStrip + k] != 0 {
                        checksums.update(member: drive, driveOffset: at, crc: crcs[strip * pagesPerStrip + k], io: io)
                    } else {
                        checksums.update(member: drive, driveOffset: at, count: 4096, data: pages[strip * pagesPerStrip + k]!, io: io, memory: memory)
                    }
                }
            }
        }
        recordParityChecksums(checksums, stripe: stripe, offset: offset, count: count, p: p, q: q)
    }

    /// Appends each member's part of one stripe's rows to its gather list: the data pages of the strip it holds a
    /// copy of (pages that lie one after another in memory are one buffer: a commit's own rows are), or its parity.
    private func appendMemberVectors(
        stripe: UInt64, count: Int, pages: UnsafeMutablePointer<UnsafeMutableRawPointer?>, p: UnsafeMutableRawPointer, q: UnsafeMutableRawPointer
    ) {
        let pagesPerStrip = count / 4096
        for strip in 0..<geometry.dataStripsPerStripe {
            for member in geometry.copyDrives(stripe: stripe, strip: strip) {
                for k in 0..<pagesPerStrip { appendVector(member: member, base: pages[strip * pagesPerStrip + k]!, length: 4096) }
            }
        }
        if hasParity { appendVector(member: geometry.parityDrive(stripe: stripe), base: p, length: count) }
        if geometry.raidLevel == .raid6 { appendVector(member: geometry.qDrive(stripe: stripe), base: q, length: count) }
    }

    @inline(__always) private func appendVector(member: Int, base: UnsafeMutableRawPointer, length: Int) {
        let vectors = writeVectors + member * writeVectorsPerMember
        let n = writeVectorCounts[member]
        if n > 0 && vectors[n - 1].iov_base! + vectors[n - 1].iov_len == base {
            vectors[n - 1].iov_len += length
        } else {
            precondition(n < writeVectorsPerMember, "a member's gather list overflows")
            vectors[n] = iovec(iov_base: base, iov_len: length)
            writeVectorCounts[member] = n + 1
        }
    }

    /// The checksums of a write about to go in place (its intent or journal record is on the drives already).
    func recordChecksums(stripe: UInt64, strips: UnsafeMutablePointer<UnsafeMutableRawPointer?>, dirtyMask: UInt64, offset: UInt64, count: Int) {
        guard let checksums else { return }
        precondition(offset % 4096 == 0 && count % 4096 == 0, "checksummed writes are whole blocks")
        for strip in 0..<geometry.dataStripsPerStripe where dirtyMask & (1 << UInt64(strip)) != 0 {
            for drive in geometry.copyDrives(stripe: stripe, strip: strip) where writable(drive) {
                checksums.update(member: drive, driveOffset: offset, count: count, data: strips[strip]!, io: io, memory: memory)
            }
        }
        recordParityChecksums(checksums, stripe: stripe, offset: offset, count: count, p: newP, q: newQ)
    }

    /// The checksums of the new P (and Q) of a write about to go in place.
    private func recordParityChecksums(
        _ checksums: BlockChecksums, stripe: UInt64, offset: UInt64, count: Int, p newP: UnsafeMutableRawPointer, q newQ: UnsafeMutableRawPointer
    ) {
        guard hasParity else { return }
        let p = geometry.parityDrive(stripe: stripe)
        if writable(p) { checksums.update(member: p, driveOffset: offset, count: count, data: newP, io: io, memory: memory) }
        if geometry.raidLevel == .raid6 {
            let q = geometry.qDrive(stripe: stripe)
            if writable(q) { checksums.update(member: q, driveOffset: offset, count: count, data: newQ, io: io, memory: memory) }
        }
    }

    func queueDataWrites(stripe: UInt64, strips: UnsafeMutablePointer<UnsafeMutableRawPointer?>, dirtyMask: UInt64, offset: UInt64, count: Int) {
        for strip in 0..<geometry.dataStripsPerStripe where dirtyMask & (1 << UInt64(strip)) != 0 {
            for drive in geometry.copyDrives(stripe: stripe, strip: strip) where writable(drive) {
                io.queueWrite(drive: drive, from: strips[strip]!, count: count, offsetBytes: offset)
            }
            marks.stripWrites.add(1, ordering: .relaxed)
        }
    }

    func queueParityWrites(stripe: UInt64, offset: UInt64, count: Int) {
        let p = geometry.parityDrive(stripe: stripe)
        if writable(p) { io.queueWrite(drive: p, from: newP, count: count, offsetBytes: offset) }
        if geometry.raidLevel == .raid6 {
            let q = geometry.qDrive(stripe: stripe)
            if writable(q) { io.queueWrite(drive: q, from: newQ, count: count, offsetBytes: offset) }
        }
    }

    func finishWrite() -> Bool {
        let failed = io.submit()
        let down = failedMembers()
        if failed != 0 || down != 0 { marks.degradedWrites.add(1, ordering: .relaxed) }
        return geometry.raidLevel.survives(outMask: down, memberCount: m)
    }

    // MARK: Destage: read-modify-write or reconstruct-write

    public func destage(
        stripe: UInt64, strips: UnsafeMutablePointer<UnsafeMutableRawPointer?>, dirtyMask: UInt64, cachedMask: UInt64, offsetBytes: Int, count: Int,
        allNew: Bool, complete: (_ strip: Int, _ old: UnsafeRawPointer) -> Void
    ) -> Bool {
        let d = geometry.dataStripsPerStripe
        let missingMask = ((1 << UInt64(d)) - 1) & ~cachedMask
        // Read-modify-write reads the dirty strips and parity; reconstruct-write reads the data strips the cache
        // lacks. The first only when it reads fewer and every member's part of the stripe can be read.
        if hasParity && missingMask != 0 && dirtyMask.nonzeroBitCount + geometry.parityStripsPerStripe < missingMask.nonzeroBitCount
            && canReadModifyWrite(stripe: stripe)
        {
            if readOld(stripe: stripe, dirtyMask: dirtyMask, offsetBytes: offsetBytes, count: count) {
                for strip in 0..<d where dirtyMask & (1 << UInt64(strip)) != 0 { complete(strip, oldData(strip: strip)) }
                return writeDelta(stripe: stripe, strips: strips, dirtyMask: dirtyMask, offsetBytes: offsetBytes, count: count)
            }
            // A drive failed since the check, or an old block failed its checksum; nothing has changed yet:
            // reconstruct instead, through readStrips, which repairs what it can.
        }
        // Reconstruct-write: every strip's range in memory (without parity, only the dirty strips matter).
        let readMask = hasParity ? missingMask : missingMask & dirtyMask
        for strip in 0..<d {
            destageStrips[strip] = readMask & (1 << UInt64(strip)) != 0 ? oldData(strip: strip) : strips[strip]
        }
        if readMask != 0 {
            guard readStrips(stripe: stripe, stripMask: readMask, offsetBytes: offsetBytes, count: count, targets: destageStrips) else { return false }
            for strip in 0..<d where readMask & (1 << UInt64(strip)) != 0 {
                guard let copy = strips[strip] else { continue }  // not cached: parity uses what was read
                complete(strip, oldData(strip: strip))
                destageStrips[strip] = copy
            }
        }
        return writeStripe(stripe: stripe, strips: destageStrips, dirtyMask: dirtyMask, offsetBytes: offsetBytes, count: count, allNew: allNew)
    }

    // MARK: Read-modify-write

    public func oldData(strip: Int) -> UnsafeMutableRawPointer { staging.slice(m + strip) }

    public func readOld(stripe: UInt64, dirtyMask: UInt64, offsetBytes: Int, count: Int) -> Bool {
        checkRange(offsetBytes, count)
        precondition(hasParity, "read-modify-write needs parity")
        // Another director may have failed a drive since the caller looked: then the caller reconstructs instead.
        guard canReadModifyWrite(stripe: stripe) else { return false }
        settle(stripe)
        let offset = geometry.driveOffset(stripe: stripe) + UInt64(offsetBytes)
        for strip in 0..<geometry.dataStripsPerStripe where dirtyMask & (1 << UInt64(strip)) != 0 {
            io.queueRead(drive: geometry.dataDrive(stripe: stripe, strip: strip), into: oldData(strip: strip), count: count, offsetBytes: offset)
        }
        io.queueRead(drive: geometry.parityDrive(stripe: stripe), into: oldP, count: count, offsetBytes: offset)
        if geometry.raidLevel == .raid6 {
            io.queueRead(drive: geometry.qDrive(stripe: stripe), into: oldQ, count: count, offsetBytes: offset)
        }
        marks.stripReads.add(UInt64(dirtyMask.nonzeroBitCount + geometry.parityStripsPerStripe), ordering: .relaxed)
        guard io.submit() == 0 else { return false }
        // A block failing its checksum makes the delta wrong: the caller reconstructs instead, through readStrips,
        // which repairs what it can.
        if let checksums {
            for strip in 0..<geometry.dataStripsPerStripe where dirtyMask & (1 << UInt64(strip)) != 0 {
                let drive = geometry.dataDrive(stripe: stripe, strip: strip)
                if checksums.verify(member: drive, driveOffset: offset, count: count, data: oldData(strip: strip), io: io, memory: memory) != nil {
                    return false
                }
            }
            if checksums.verify(member: geometry.parityDrive(stripe: stripe), driveOffset: offset, count: count, data: oldP, io: io, memory: memory) != nil {
                return false
            }
            if geometry.raidLevel == .raid6
                && checksums.verify(member: geometry.qDrive(stripe: stripe), driveOffset: offset, count: count, data: oldQ, io: io, memory: memory) != nil
            {
                return false
            }
        }
        return true
    }

    public func writeDelta(stripe: UInt64, strips: UnsafeMutablePointer<UnsafeMutableRawPointer?>, dirtyMask: UInt64, offsetBytes: Int, count: Int) -> Bool {
        checkRange(offsetBytes, count)
        let offset = geometry.driveOffset(stripe: stripe) + UInt64(offsetBytes)
        let d = geometry.dataStripsPerStripe
        if geometry.raidLevel == .raid5 {
            // P' = P ^ Σ(old_i ^ new_i) over the dirty strips: one XOR pass over exactly those sources.
            var sources = 0
            table[sources] = oldP
            sources += 1
            for strip in 0..<d where dirtyMask & (1 << UInt64(strip)) != 0 {
                table[sources] = oldData(strip: strip)
                table[sources + 1] = strips[strip]
                sources += 2
            }
            table[sources] = newP
            memory.xorParity(sourceCount: sources, lengthBytes: count, table: table)
        } else {
            // Q needs each delta at its strip's position (its GF(2^8) coefficient): delta_i = old_i ^ new_i for dirty
            // strips, zeroes for the others, then P/Q of the deltas folded into the old P and Q.
            zeroes.initializeMemory(as: UInt8.self, repeating: 0, count: count)
            for strip in 0..<d {
                if dirtyMask & (1 << UInt64(strip)) != 0 {
                    let delta = staging.slice(2 * m + strip)
                    table[0] = oldData(strip: strip)
                    table[1] = strips[strip]
                    table[2] = delta
                    memory.xorParity(sourceCount: 2, lengthBytes: count, table: table)
                    table[d + 2 + strip] = delta
                } else {
                    table[d + 2 + strip] = zeroes
                }
            }
            for i in 0..<d { table[i] = table[d + 2 + i] }
            table[d] = deltaP
            table[d + 1] = deltaQ
            memory.pqParity(sourceCount: d, lengthBytes: count, table: table)
            table[0] = oldP
            table[1] = deltaP
            table[2] = newP
            memory.xorParity(sourceCount: 2, lengthBytes: count, table: table)
            table[0] = oldQ
            table[1] = deltaQ
            table[2] = newQ
            memory.xorParity(sourceCount: 2, lengthBytes: count, table: table)
        }
        marks.readModifyWrites.add(1, ordering: .relaxed)
        if journal != nil { return journalWrite(stripe: stripe, strips: strips, dirtyMask: dirtyMask, offsetBytes: offsetBytes, count: count) }
        recordChecksums(stripe: stripe, strips: strips, dirtyMask: dirtyMask, offset: offset, count: count)
        queueDataWrites(stripe: stripe, strips: strips, dirtyMask: dirtyMask, offset: offset, count: count)
        queueParityWrites(stripe: stripe, offset: offset, count: count)
        return finishWrite()
    }
}
