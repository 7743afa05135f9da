// Scrub and rebuild, stripe by stripe, on the owning director's executor: a scrub checks redundancy against the
// data (and repairs it), a rebuild writes a member's strips from the others.
import ArrayModel
import Buffers
import Drives
import MemoryServices
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

extension RAIDBackEnd {
    // MARK: Scrub

    /// Checks one stripe's redundancy on the drives: mirrors' copies agree, P (and Q) match the data. With `repair`,
    /// a mismatch is fixed: mirrors get the primary copy, RAID-5 gets P recomputed (nothing says which strip is wrong),
    /// RAID-6 locates a single bad strip (data, P or Q) from the two syndromes and rewrites it. A stripe with a member
    /// out cannot be checked. Runs on the stripe's owning director. Uses staging [m, 2m) and the parity scratch.
    public func scrub(stripe: UInt64, repair: Bool) -> ScrubOutcome {
        let outcome = scrubStripe(stripe: stripe, repair: repair)
        // A repair is durable before it is reported: were it lost to a power cut, an intent resync at the next mount
        // could copy the damaged strip over its good copies and checksum it anew.
        if outcome == .repaired || outcome == .repairedData { flushMembers() }
        return outcome
    }

    func scrubStripe(stripe: UInt64, repair: Bool) -> ScrubOutcome {
        settle(stripe)
        let d = geometry.dataStripsPerStripe
        let offset = geometry.driveOffset(stripe: stripe)
        var outMask: UInt64 = 0
        for drive in 0..<m where !readable(drive, stripe) { outMask |= 1 << UInt64(drive) }
        if outMask != 0 {
            // Redundancy cannot be compared with a member out, but every block still has its checksum.
            guard checksums != nil else { return .skipped }
            var bad: UInt64 = 0
            for member in 0..<m where outMask & (1 << UInt64(member)) == 0 {
                io.queueRead(drive: member, into: staging.slice(m), count: stripBytes, offsetBytes: offset)
                guard io.submit() == 0 else { return .unreadable }
                if !checksumsMatch(drive: member, offset: offset, data: staging.slice(m)) { bad |= 1 << UInt64(member) }
            }
            guard bad != 0 else { return .skipped }
            guard geometry.raidLevel.survives(outMask: outMask | bad, memberCount: m) else { return .unrecoverable }
            guard repair else { return .mismatch }
            for member in 0..<m where bad & (1 << UInt64(member)) != 0 {
                guard rebuild(stripe: stripe, member: member) else { return .unrecoverable }
            }
            return .repairedData
        }
        switch geometry.raidLevel {
        case .raid0:
            for strip in 0..<d { io.queueRead(drive: strip, into: staging.slice(m + strip), count: stripBytes, offsetBytes: offset) }
            guard io.submit() == 0 else { return .unreadable }
            for strip in 0..<d where !checksumsMatch(drive: strip, offset: offset, data: staging.slice(m + strip)) { return .unrecoverable }
            return .consistent
        case .raid1, .raid10:
            var outcome = ScrubOutcome.consistent
            for strip in 0..<d {
                let copies = geometry.copyDrives(stripe: stripe, strip: strip)
                for (i, drive) in copies.enumerated() {
                    io.queueRead(drive: drive, into: staging.slice(m + i), count: stripBytes, offsetBytes: offset)
                }
                guard io.submit() == 0 else { return .unreadable }
                // The reference copy: the first whose blocks match their checksums (the primary without checksums).
                let good = copies.enumerated().map { $0 }.firstIndex { checksumsMatch(drive: $0.element, offset: offset, data: staging.slice(m + $0.offset)) }
                guard let good else { return .unrecoverable }
                for (i, drive) in copies.enumerated() where i != good {
                    let sameBytes = memcmp(staging.slice(m + good), staging.slice(m + i), stripBytes) == 0
                    guard !sameBytes || !checksumsMatch(drive: drive, offset: offset, data: staging.slice(m + i)) else { continue }
                    outcome = .mismatch
                    if repair {
                        checksums?.update(member: drive, driveOffset: offset, count: stripBytes, data: staging.slice(m + good), io: io, memory: memory)
                        if !sameBytes { io.queueWrite(drive: drive, from: staging.slice(m + good), count: stripBytes, offsetBytes: offset) }
                        guard io.submit() == 0 else { return .unreadable }
                        outcome = .repaired
                    }
                }
            }
            return outcome
        case .raid5, .raid6:
            for strip in 0..<d {
                io.queueRead(drive: geometry.dataDrive(stripe: stripe, strip: strip), into: staging.slice(m + strip), count: stripBytes, offsetBytes: offset)
            }
            let p = geometry.parityDrive(stripe: stripe)
            let q = geometry.raidLevel == .raid6 ? geometry.qDrive(stripe: stripe) : -1
            io.queueRead(drive: p, into: oldP, count: stripBytes, offsetBytes: offset)
            if q >= 0 { io.queueRead(drive: q, into: oldQ, count: stripBytes, offsetBytes: offset) }
            guard io.submit() == 0 else { return .unreadable }
            if checksums != nil {
                // Blocks failing their checksums name the bad members outright; each is rebuilt from the others.
                var bad: [Int] = []
                for strip in 0..<d
                where !checksumsMatch(drive: geometry.dataDrive(stripe: stripe, strip: strip), offset: offset, data: staging.slice(m + strip)) {
                    bad.append(geometry.dataDrive(stripe: stripe, strip: strip))
                }
                if !checksumsMatch(drive: p, offset: offset, data: oldP) { bad.append(p) }
                if q >= 0 && !checksumsMatch(drive: q, offset: offset, data: oldQ) { bad.append(q) }
                if !bad.isEmpty {
                    guard bad.count <= geometry.parityStripsPerStripe else { return .unrecoverable }
                    guard repair else { return .mismatch }
                    for member in bad { guard rebuild(stripe: stripe, member: member) else { return .unrecoverable } }
                    return bad.contains { $0 != p && $0 != q } ? .repairedData : .repaired
                }
            }
            for strip in 0..<d { table[strip] = staging.slice(m + strip) }
            computeParity(count: stripBytes)
            let pBad = memcmp(newP, oldP, stripBytes) != 0
            let qBad = q >= 0 && memcmp(newQ, oldQ, stripBytes) != 0
            guard pBad || qBad else { return .consistent }
            guard repair else { return .mismatch }
            if q < 0 || pBad != qBad {
                // RAID-5, or only one of P and Q disagrees: that parity strip is the bad one.
                if pBad { checksums?.update(member: p, driveOffset: offset, count: stripBytes, data: newP, io: io, memory: memory) }
                if qBad { checksums?.update(member: q, driveOffset: offset, count: stripBytes, data: newQ, io: io, memory: memory) }
                if pBad { io.queueWrite(drive: p, from: newP, count: stripBytes, offsetBytes: offset) }
                if qBad { io.queueWrite(drive: q, from: newQ, count: stripBytes, offsetBytes: offset) }
                return io.submit() == 0 ? .repaired : .unreadable
            }
            // Both disagree: one bad data strip z explains it when Q ^ Q' = g^z · (P ^ P') for every byte.
            table[0] = newP
            table[1] = oldP
            table[2] = deltaP  // the error in strip z
            memory.xorParity(sourceCount: 2, lengthBytes: stripBytes, table: table)
            table[0] = newQ
            table[1] = oldQ
            table[2] = deltaQ  // g^z times that error
            memory.xorParity(sourceCount: 2, lengthBytes: stripBytes, table: table)
            for z in 0..<d {
                memory.gfMultiply(factor: GaloisField.powerOf2(z), source: deltaP, target: zeroes, lengthBytes: stripBytes)
                guard memcmp(zeroes, deltaQ, stripBytes) == 0 else { continue }
                table[0] = staging.slice(m + z)
                table[1] = deltaP
                table[2] = newP  // the strip as it should be (P and Q are right)
                memory.xorParity(sourceCount: 2, lengthBytes: stripBytes, table: table)
                checksums?.update(
                    member: geometry.dataDrive(stripe: stripe, strip: z), driveOffset: offset, count: stripBytes, data: newP, io: io, memory: memory)
                io.queueWrite(drive: geometry.dataDrive(stripe: stripe, strip: z), from: newP, count: stripBytes, offsetBytes: offset)
                return io.submit() == 0 ? .repairedData : .unreadable
            }
            return .unrecoverable
        }
    }

    /// Forgets the checksums of whole stripes about to be zeroed (a deleted LUN's).
    public func clearChecksums(firstStripe: UInt64, stripeCount: UInt64) {
        _ = commitJournal()
        checksums?.clear(firstStripe: firstStripe, stripeCount: stripeCount, io: io)
    }

    /// Whether a whole strip read from `drive` matches its checksums (always, without checksums).
    func checksumsMatch(drive: Int, offset: UInt64, data: UnsafeRawPointer) -> Bool {
        guard let checksums else { return true }
        return checksums.verify(member: drive, driveOffset: offset, count: stripBytes, data: data, io: io, memory: memory) == nil
    }

    // MARK: Rebuild

    /// Writes member `member`'s whole strip of `stripe` (data, a mirror copy, P or Q) from what the other members
    /// hold: the rebuild of one stripe onto a drive that took a failed member's place. Runs on the stripe's owning
    /// director, so no destage of the stripe interleaves with it.
    public func rebuild(stripe: UInt64, member: Int) -> Bool {
        settle(stripe)
        guard writable(member) else { return false }
        let d = geometry.dataStripsPerStripe
        let offset = geometry.driveOffset(stripe: stripe)
        var source: UnsafeMutableRawPointer? = nil
        switch geometry.raidLevel {
        case .raid0:
            return false
        case .raid1, .raid10:
            // The strip this member mirrors, from any readable copy.
            for strip in 0..<d where geometry.copyDrives(stripe: stripe, strip: strip).contains(member) {
                guard readStripsExcluding(member: member, stripe: stripe, strip: strip, into: staging.slice(m)) else { return false }
                source = staging.slice(m)
            }
        case .raid5, .raid6:
            // A data member: just its strip, rebuilt from the others (each survivor read once). P or Q: every data
            // strip (any lost one rebuilt through parity), then the parity computed from them.
            for strip in 0..<d { table[2 * m + 4 + strip] = staging.slice(m + strip) }
            let targets = table + (2 * m + 4)
            let isParity = member == geometry.parityDrive(stripe: stripe) || (geometry.raidLevel == .raid6 && member == geometry.qDrive(stripe: stripe))
            let own = (0..<d).first { geometry.dataDrive(stripe: stripe, strip: $0) == member }
            let mask: UInt64 = isParity ? (1 << UInt64(d)) - 1 : own.map { 1 << UInt64($0) } ?? 0
            guard mask != 0, readStrips(stripe: stripe, stripMask: mask, offsetBytes: 0, count: stripBytes, targets: targets) else { return false }
            if isParity {
                for strip in 0..<d { table[strip] = staging.slice(m + strip) }
                computeParity(count: stripBytes)
                source = member == geometry.parityDrive(stripe: stripe) ? newP : newQ
            } else {
                source = staging.slice(m + own!)
            }
        }
        guard let source else { return false }
        checksums?.update(member: member, driveOffset: offset, count: stripBytes, data: source, io: io, memory: memory)
        io.queueWrite(drive: member, from: source, count: stripBytes, offsetBytes: offset)
        return io.submit() == 0
    }

    /// Reads a mirrored strip from a readable copy other than `member`.
    func readStripsExcluding(member: Int, stripe: UInt64, strip: Int, into target: UnsafeMutableRawPointer) -> Bool {
        let offset = geometry.driveOffset(stripe: stripe)
        for drive in geometry.copyDrives(stripe: stripe, strip: strip) where drive != member && readable(drive, stripe) {
            io.queueRead(drive: drive, into: target, count: stripBytes, offsetBytes: offset)
            if io.submit() == 0 && checksumsMatch(drive: drive, offset: offset, data: target) { return true }
        }
        return false
    }
}
