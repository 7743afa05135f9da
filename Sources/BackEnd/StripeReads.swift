// The back end's reads (StripeStore.swift says what a stripe range is): a data strip from its drive, from its mirror,
// or rebuilt from the others and parity when its drive is out; block checksums verified and what fails them repaired.
import ArrayModel
import Buffers
import Drives
import MemoryServices
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

extension RAIDBackEnd {
    // MARK: Reads

    /// `StripeStore.readPages`: one scatter read per strip, from the strip's first readable copy, then each wanted
    /// page checked against its checksum. Any doubt returns false before anything is repaired or counted as a
    /// mismatch: `readStrips` reads it all again and does both.
    public func readPages(stripe: UInt64, stripMask: UInt64, offsetBytes: Int, count: Int, pages: UnsafeMutablePointer<UnsafeMutableRawPointer?>) -> Bool {
        checkRange(offsetBytes, count)
        guard offsetBytes % 4096 == 0 && count % 4096 == 0 else { return false }
        settle(stripe)
        let pagesPerStrip = count / 4096
        let offset = geometry.driveOffset(stripe: stripe) + UInt64(offsetBytes)
        var strips: UInt64 = 0
        for strip in 0..<geometry.dataStripsPerStripe where stripMask & (1 << UInt64(strip)) != 0 {
            guard let source = firstReadableCopy(stripe: stripe, strip: strip) else {
                io.readErrors = .report
                _ = io.submit()  // what was queued goes (and is ignored): a batch is never left half built
                return false
            }
            readFrom[strip] = source
            let vectors = pageVectors + strip * pagesPerStrip
            for k in 0..<pagesPerStrip {
                vectors[k] = iovec(iov_base: pages[strip * pagesPerStrip + k] ?? unwantedPage.base, iov_len: 4096)
            }
            io.queueReadVector(drive: source, vectors: vectors, vectorCount: pagesPerStrip, count: count, offsetBytes: offset)
            strips += 1
        }
        // A read error gives up here, its drive left online: `readStrips` reads again, and repairs it.
        io.readErrors = .report
        guard io.submit() == 0 else { return false }
        marks.stripReads.add(strips, ordering: .relaxed)
        guard let checksums else { return true }
        for strip in 0..<geometry.dataStripsPerStripe where stripMask & (1 << UInt64(strip)) != 0 {
            for k in 0..<pagesPerStrip {
                guard let page = pages[strip * pagesPerStrip + k] else { continue }
                let at = offset + UInt64(k * 4096)
                guard checksums.verify(member: readFrom[strip], driveOffset: at, count: 4096, data: page, io: io, memory: memory) == nil else { return false }
            }
        }
        return true
    }

    /// The drive the healthy reads of a strip go to: its first copy that is readable at `stripe`.
    @inline(__always)
    func firstReadableCopy(stripe: UInt64, strip: Int) -> Int? {
        for drive in geometry.copyDrives(stripe: stripe, strip: strip) where readable(drive, stripe) { return drive }
        return nil
    }

    public var readBatchMax: Int { min(64, io.capacity) }

    /// `StripeStore.readBatch`: every stripe's open journal batch down first (a commit submits, and nothing of the
    /// reads is queued yet), then a read per range from its strip's first readable copy, one submit for all, then
    /// each range checked against its checksums. A range whose drive failed, gave a read error or holds a block
    /// that disagrees is left out of the answer, its drive left online: `readStrips` reads it again and repairs it.
    public func readBatch(_ reads: UnsafeMutablePointer<BatchRead>, count n: Int) -> UInt64 {
        precondition(n >= 0 && n <= readBatchMax, "readBatch: \(n) reads, at most \(readBatchMax)")
        for i in 0..<n {
            checkRange(reads[i].offsetBytes, reads[i].count)
            settle(reads[i].stripe)
        }
        var queued: UInt64 = 0
        for i in 0..<n {
            let r = reads[i]
            guard r.offsetBytes % 4096 == 0, r.count % 4096 == 0, r.strip >= 0, r.strip < geometry.dataStripsPerStripe else { continue }
            // A journal batch that could not go down still holds the stripe: the drives are older than it.
            if let journal, journal.hasOpenBatch, journal.isPending(r.stripe) { continue }
            guard let source = firstReadableCopy(stripe: r.stripe, strip: r.strip) else { continue }
            reads[i].source = source
            io.queueRead(drive: source, into: r.target, count: r.count, offsetBytes: geometry.driveOffset(stripe: r.stripe) + UInt64(r.offsetBytes))
            queued |= 1 << UInt64(i)
        }
        guard queued != 0 else { return 0 }
        io.readErrors = .report
        let failed = io.submit() | io.lastReadErrors
        marks.stripReads.add(UInt64(queued.nonzeroBitCount), ordering: .relaxed)
        var done: UInt64 = 0
        for i in 0..<n where queued & (1 << UInt64(i)) != 0 && failed & (1 << UInt64(reads[i].source)) == 0 {
            let r = reads[i]
            if let checksums {
                let at = geometry.driveOffset(stripe: r.stripe) + UInt64(r.offsetBytes)
                guard checksums.verify(member: r.source, driveOffset: at, count: r.count, data: r.target, io: io, memory: memory) == nil else { continue }
            }
            done |= 1 << UInt64(i)
        }
        return done
    }

    public func readStrips(stripe: UInt64, stripMask: UInt64, offsetBytes: Int, count: Int, targets: UnsafeMutablePointer<UnsafeMutableRawPointer?>) -> Bool {
        checkRange(offsetBytes, count)
        settle(stripe)
        if checksums != nil && (offsetBytes % 4096 != 0 || count % 4096 != 0) {
            return readWholeBlocks(stripe: stripe, stripMask: stripMask, offsetBytes: offsetBytes, count: count, targets: targets)
        }
        let offset = geometry.driveOffset(stripe: stripe) + UInt64(offsetBytes)
        var remaining = stripMask
        // Copies whose blocks failed their checksums or their reads in this call (the latter also in `readFailed`), and
        // strips rebuilt from parity because of a checksum.
        var badDrives: UInt64 = 0
        var readFailed: UInt64 = 0
        var rebuilt: UInt64 = 0
        for _ in 0..<4 where remaining != 0 {
            var degradedMask: UInt64 = 0
            for strip in 0..<geometry.dataStripsPerStripe where remaining & (1 << UInt64(strip)) != 0 {
                // Read from the first online copy.
                var issued = false
                for drive in geometry.copyDrives(stripe: stripe, strip: strip) where readable(drive, stripe) && badDrives & (1 << UInt64(drive)) == 0 {
                    io.queueRead(drive: drive, into: targets[strip]!, count: count, offsetBytes: offset)
                    readFrom[strip] = drive
                    issued = true
                    break
                }
                if !issued { degradedMask |= 1 << UInt64(strip) }
            }
            // A failed read leaves its drive online while the drive is within its read-error budget: the strip comes
            // from another copy or from parity, and goes back to the drive below (md's read-error repair).
            io.readErrors = .count
            let failed = io.submit()
            readFailed |= io.lastReadErrors
            badDrives |= io.lastReadErrors
            marks.stripReads.add(UInt64(remaining.nonzeroBitCount), ordering: .relaxed)
            // Strips whose copy failed just now are tried again: another copy, or rebuilt.
            var retry: UInt64 = 0
            if failed != 0 {
                for strip in 0..<geometry.dataStripsPerStripe where remaining & (1 << UInt64(strip)) != 0 {
                    if geometry.copyDrives(stripe: stripe, strip: strip).contains(where: { failed & (1 << UInt64($0)) != 0 }) {
                        retry |= 1 << UInt64(strip)
                    }
                }
            }
            if let checksums {
                // Every block read is checked: a bad copy is read from another copy or rebuilt from parity.
                for strip in 0..<geometry.dataStripsPerStripe where remaining & ~(degradedMask | retry) & (1 << UInt64(strip)) != 0 {
                    let drive = readFrom[strip]
                    guard checksums.verify(member: drive, driveOffset: offset, count: count, data: targets[strip]!, io: io, memory: memory) != nil else {
                        continue
                    }
                    checksums.mismatches.add(1, ordering: .relaxed)
                    badDrives |= 1 << UInt64(drive)
                    if geometry.copyDrives(stripe: stripe, strip: strip).count > 1 {
                        retry |= 1 << UInt64(strip)
                    } else if hasParity {
                        memory.copy(from: targets[strip]!, to: staging.slice(2 * m + strip), byteCount: count)
                        degradedMask |= 1 << UInt64(strip)
                        rebuilt |= 1 << UInt64(strip)
                    } else {
                        // RAID-0: nothing else holds it. The host gets an error, never wrong data.
                        checksums.unrecoverable.add(1, ordering: .relaxed)
                        return false
                    }
                }
            }
            if degradedMask != 0 && !reconstruct(stripe: stripe, wanted: degradedMask, offsetBytes: offsetBytes, count: count, targets: targets) {
                if rebuilt != 0 { checksums?.unrecoverable.add(1, ordering: .relaxed) }
                return false
            }
            remaining = retry & ~degradedMask
        }
        guard remaining == 0 else {
            if badDrives != 0 { checksums?.unrecoverable.add(1, ordering: .relaxed) }
            return false
        }
        if badDrives != 0 {
            return repairBlocks(
                stripe: stripe, stripMask: stripMask, offset: offset, count: count, targets: targets, badDrives: badDrives, rebuilt: rebuilt,
                readFailed: readFailed)
        }
        return true
    }

    /// After a read found blocks failing their checksums and got them right from another copy or from parity: the
    /// good contents go back to the bad drive. A rebuilt strip that still disagrees with its checksum but equals
    /// what the drive gave was right all along (the checksum entry was the damaged one): the entry is rewritten.
    /// A rebuilt strip that matches neither (the block and its entry both damaged, as when one drive takes damage
    /// across its checksum area and its data) is still the truth: it came from the other members, each verified
    /// against its own drive's checksums, so damage confined to one drive never costs data. The block and its entry
    /// are both rewritten.
    /// Drives in `readFailed` gave a read error, not bad blocks: their strips are written back the same way (the drive
    /// reallocates a bad sector on write), without counting a checksum repair. Without checksums nothing is
    /// rewritten: the host got its data from redundancy, and the next read tries the drive again.
    func repairBlocks(
        stripe: UInt64, stripMask: UInt64, offset: UInt64, count: Int, targets: UnsafeMutablePointer<UnsafeMutableRawPointer?>, badDrives: UInt64,
        rebuilt: UInt64, readFailed: UInt64 = 0
    ) -> Bool {
        guard let checksums else { return true }
        // Every checksum look-up first (a page miss reads through `io`, which must be idle), then the writes.
        var rewrite: UInt64 = 0
        for strip in 0..<geometry.dataStripsPerStripe where stripMask & (1 << UInt64(strip)) != 0 {
            if rebuilt & (1 << UInt64(strip)) != 0 {
                let drive = geometry.dataDrive(stripe: stripe, strip: strip)
                if checksums.verify(member: drive, driveOffset: offset, count: count, data: targets[strip]!, io: io, memory: memory) == nil {
                    rewrite |= 1 << UInt64(strip)
                    checksums.repairs.add(1, ordering: .relaxed)
                } else if memcmp(targets[strip]!, staging.slice(2 * m + strip), count) == 0 {
                    checksums.update(member: drive, driveOffset: offset, count: count, data: targets[strip]!, io: io, memory: memory)
                    checksums.entryRepairs.add(1, ordering: .relaxed)
                } else {
                    checksums.update(member: drive, driveOffset: offset, count: count, data: targets[strip]!, io: io, memory: memory)
                    rewrite |= 1 << UInt64(strip)
                    checksums.repairs.add(1, ordering: .relaxed)
                    checksums.entryRepairs.add(1, ordering: .relaxed)
                }
            } else {
                for drive in geometry.copyDrives(stripe: stripe, strip: strip) where badDrives & (1 << UInt64(drive)) != 0 && writable(drive) {
                    checksums.update(member: drive, driveOffset: offset, count: count, data: targets[strip]!, io: io, memory: memory)
                    if readFailed & (1 << UInt64(drive)) == 0 { checksums.repairs.add(1, ordering: .relaxed) }
                }
                rewrite |= 1 << UInt64(strip)
            }
        }
        for strip in 0..<geometry.dataStripsPerStripe where rewrite & (1 << UInt64(strip)) != 0 {
            if rebuilt & (1 << UInt64(strip)) != 0 {
                io.queueWrite(drive: geometry.dataDrive(stripe: stripe, strip: strip), from: targets[strip]!, count: count, offsetBytes: offset)
            } else {
                for drive in geometry.copyDrives(stripe: stripe, strip: strip) where badDrives & (1 << UInt64(drive)) != 0 && writable(drive) {
                    io.queueWrite(drive: drive, from: targets[strip]!, count: count, offsetBytes: offset)
                }
            }
        }
        io.submit()
        return true
    }

    /// A read whose range does not start and end on 4 KiB blocks: the whole blocks are read (and checked), then the
    /// asked-for bytes copied out.
    func readWholeBlocks(stripe: UInt64, stripMask: UInt64, offsetBytes: Int, count: Int, targets: UnsafeMutablePointer<UnsafeMutableRawPointer?>)
        -> Bool
    {
        let start = offsetBytes / 4096 * 4096
        let end = (offsetBytes + count + 4095) / 4096 * 4096
        let whole = table + (3 * m + 4)
        for strip in 0..<geometry.dataStripsPerStripe { whole[strip] = alignedStaging.slice(strip) }
        guard readStrips(stripe: stripe, stripMask: stripMask, offsetBytes: start, count: end - start, targets: whole) else { return false }
        for strip in 0..<geometry.dataStripsPerStripe where stripMask & (1 << UInt64(strip)) != 0 {
            memory.copy(from: alignedStaging.slice(strip) + (offsetBytes - start), to: targets[strip]!, byteCount: count)
        }
        return true
    }

    /// Rebuilds the range of the data strips in `wanted` (none of their copies readable) into `targets`, from what
    /// survives: XOR with P when one data strip is lost and P is readable; through Q when P is lost too (RAID-6) or
    /// when two data strips are. Uses staging [0, m) as sources (data strip i in slice i, P in d, Q in d + 1).
    func reconstruct(stripe: UInt64, wanted: UInt64, offsetBytes: Int, count: Int, targets: UnsafeMutablePointer<UnsafeMutableRawPointer?>)
        -> Bool
    {
        guard hasParity else { return false }
        // A drive may fail while we read the survivors, or a survivor's blocks fail their checksums: then look again
        // with it counted as lost.
        var suspect: UInt64 = 0  // data strip i = bit i, P = bit d, Q = bit d + 1
        for _ in 0..<3 {
            let d = geometry.dataStripsPerStripe
            // The wanted strips count as lost even if a copy became readable since the caller looked.
            var lost: UInt64 = wanted | (suspect & ((1 << UInt64(d)) - 1))
            for strip in 0..<d where !readable(geometry.dataDrive(stripe: stripe, strip: strip), stripe) { lost |= 1 << UInt64(strip) }
            let p = geometry.parityDrive(stripe: stripe)
            let hasP = readable(p, stripe) && suspect & (1 << UInt64(d)) == 0
            let hasQ = geometry.raidLevel == .raid6 && readable(geometry.qDrive(stripe: stripe), stripe) && suspect & (1 << UInt64(d + 1)) == 0
            let lostCount = lost.nonzeroBitCount
            guard (lostCount == 1 && (hasP || hasQ)) || (lostCount == 2 && hasP && hasQ) else { return false }
            let offset = geometry.driveOffset(stripe: stripe) + UInt64(offsetBytes)
            for strip in 0..<d where lost & (1 << UInt64(strip)) == 0 {
                io.queueRead(drive: geometry.dataDrive(stripe: stripe, strip: strip), into: staging.slice(strip), count: count, offsetBytes: offset)
            }
            if hasP { io.queueRead(drive: p, into: staging.slice(d), count: count, offsetBytes: offset) }
            if hasQ { io.queueRead(drive: geometry.qDrive(stripe: stripe), into: staging.slice(d + 1), count: count, offsetBytes: offset) }
            if io.submit() != 0 { continue }
            if let checksums {
                var bad: UInt64 = 0
                for strip in 0..<d where lost & (1 << UInt64(strip)) == 0 {
                    let drive = geometry.dataDrive(stripe: stripe, strip: strip)
                    if checksums.verify(member: drive, driveOffset: offset, count: count, data: staging.slice(strip), io: io, memory: memory) != nil {
                        bad |= 1 << UInt64(strip)
                    }
                }
                if hasP && checksums.verify(member: p, driveOffset: offset, count: count, data: staging.slice(d), io: io, memory: memory) != nil {
                    bad |= 1 << UInt64(d)
                }
                if hasQ
                    && checksums.verify(
                        member: geometry.qDrive(stripe: stripe), driveOffset: offset, count: count, data: staging.slice(d + 1), io: io, memory: memory)
                        != nil
                {
                    bad |= 1 << UInt64(d + 1)
                }
                if bad != 0 {
                    checksums.mismatches.add(UInt64(bad.nonzeroBitCount), ordering: .relaxed)
                    suspect |= bad
                    continue
                }
            }
            let x = lost.trailingZeroBitCount
            if lostCount == 1 && hasP {
                // D_x = P ^ (every other data strip).
                var sources = 0
                for strip in 0..<d where strip != x {
                    table[sources] = staging.slice(strip)
                    sources += 1
                }
                table[sources] = staging.slice(d)
                table[sources + 1] = targets[x]
                memory.xorParity(sourceCount: sources + 1, lengthBytes: count, table: table)
            } else {
                // Through Q: P' and Q' of the survivors with the lost strips as zeroes; then
                //   one lost (x):     Q ^ Q' = g^x·D_x                      -> D_x = g^-x · (Q ^ Q')
                //   two lost (x < y): P ^ P' = D_x ^ D_y, Q ^ Q' = g^x·D_x ^ g^y·D_y
                //                     -> D_x = (g^(y-x)·(P ^ P') ^ g^-x·(Q ^ Q')) / (g^(y-x) ^ 1),  D_y = (P ^ P') ^ D_x
                zeroes.initializeMemory(as: UInt8.self, repeating: 0, count: count)
                for strip in 0..<d { table[strip] = lost & (1 << UInt64(strip)) != 0 ? zeroes : staging.slice(strip) }
                table[d] = newP
                table[d + 1] = newQ
                memory.pqParity(sourceCount: d, lengthBytes: count, table: table)
                table[0] = staging.slice(d + 1)
                table[1] = newQ
                table[2] = oldQ  // Q ^ Q'
                memory.xorParity(sourceCount: 2, lengthBytes: count, table: table)
                let target = wanted & (1 << UInt64(x)) != 0 ? targets[x]! : deltaQ
                if lostCount == 1 {
                    memory.gfMultiply(factor: GaloisField.inverse(GaloisField.powerOf2(x)), source: oldQ, target: target, lengthBytes: count)
                } else {
                    let y = (lost & ~(1 << UInt64(x))).trailingZeroBitCount
                    table[0] = staging.slice(d)
                    table[1] = newP
                    table[2] = oldP  // P ^ P'
                    memory.xorParity(sourceCount: 2, lengthBytes: count, table: table)
                    let a = GaloisField.powerOf2(y - x)
                    let scale = GaloisField.inverse(a ^ 1)
                    memory.gfMultiply(factor: GaloisField.multiply(a, scale), source: oldP, target: deltaP, lengthBytes: count)
                    memory.gfMultiply(
                        factor: GaloisField.multiply(GaloisField.inverse(GaloisField.powerOf2(x)), scale), source: oldQ, target: newQ, lengthBytes: count)
                    table[0] = deltaP
                    table[1] = newQ
                    table[2] = target
                    memory.xorParity(sourceCount: 2, lengthBytes: count, table: table)
                    if wanted & (1 << UInt64(y)) != 0 {
                        table[0] = oldP
                        table[1] = target
                        table[2] = targets[y]
                        memory.xorParity(sourceCount: 2, lengthBytes: count, table: table)
                    }
                }
            }
            marks.degradedReads.add(1, ordering: .relaxed)
            return true
        }
        return false
    }

    /// P (RAID-5) or P and Q (RAID-6) of the data strips in `table[0..<d]` (the caller puts them there) into newP
    /// and newQ.
    func computeParity(count: Int) {
        let d = geometry.dataStripsPerStripe
        table[d] = newP
        table[d + 1] = newQ
        if geometry.raidLevel == .raid5 {
            memory.xorParity(sourceCount: d, lengthBytes: count, table: table)
        } else {
            memory.pqParity(sourceCount: d, lengthBytes: count, table: table)
        }
    }
}
