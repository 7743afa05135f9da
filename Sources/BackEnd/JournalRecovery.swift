// Recovery at mount, before any director starts: every director's journal slice is read from the live drives; after
// an unclean stop the complete batches of its newest epoch are written in place again (in sequence order) and the
// regions its write intents name are resynchronised; then every slice gets the next epoch, so this mount's records
// never mix with the last one's. StripeJournal.swift explains the records.
import ArrayModel
import Buffers
import Drives
import MemoryServices

#if canImport(Glibc)
    import Glibc
#endif

public struct JournalRecoveryReport: Sendable {
    /// The epoch each director writes in from now on (its blocks are on the drives).
    public var epochs: [UInt64] = []
    /// Batches whose records were on every live drive they name: written in place again.
    public var replayedBatches = 0
    public var replayedBytes: UInt64 = 0
    /// Batches missing on a live drive: they never started in place, and are dropped.
    public var droppedBatches = 0
    /// Intent regions resynchronised (parity from data, mirror copies from the first copy).
    public var resyncedRegions = 0
    /// Strips (or mirror copies) in those regions that failed their checksums while the rest of their stripe passed:
    /// rebuilt from the others instead of being copied over them or folded into new parity.
    public var resyncRepairedStrips = 0
    /// Stripes in those regions whose members disagreed and whose checksums could not say which was right (the
    /// entries of a write in flight are stale by design): resynchronised the old way (parity from data, the first
    /// copy wins).
    public var resyncUnverifiedStripes = 0
    /// Records whose CRC holds but whose fields make no sense (damage no crash explains): where, and why. Nothing
    /// from there on in that slice was replayed.
    public var damaged: [String] = []
    public init() {}
}

public enum JournalRecovery {
    /// Reads (and after an unclean stop, replays) every director's journal; then starts a new epoch in every slice.
    public static func recover(
        geometry: ArrayGeometry, drives allDrives: [Drive], arrayUUID: UUID128, unclean: Bool, checksums: BlockChecksums? = nil
    ) throws(VSAError) -> JournalRecoveryReport {
        guard let layout = geometry.layout else { throw VSAError("this array has no journal area") }
        let m = geometry.memberCount
        let drives = Array(allDrives.prefix(m))
        let io: DriveIO
        do { io = try DriveIO(drives: drives, capacity: 4 * m + 8) } catch { throw VSAError("cannot set up io_uring for recovery: \(error)") }
        let recordBytes = JournalFormat.blockBytes + DriveLayout.payloadCapacity(stripUnitBytes: geometry.stripUnitBytes)
        let buffer = Arena(sliceBytes: recordBytes, sliceCount: 1)
        let live = (0..<m).map { drives[$0].isWritable && !drives[$0].isMissing }
        var report = JournalRecoveryReport()
        var regions = Set<UInt64>()
        var regionStripes: [UInt64: Int] = [:]
        // Every range a record of the newest epochs names, replayed or not: its checksums are recomputed.
        var touched: [(member: Int, driveOffset: UInt64, count: Int)] = []

        // Memory-backed drives (tmpfs) have nothing to flush.
        func flushLive() {
            for d in 0..<m where drives[d].isWritable && !drives[d].isMemoryBacked { io.queueFlush(drive: d) }
            io.submit()
        }

        func read(_ d: Int, _ offset: UInt64, _ count: Int) -> Bool {
            io.queueRead(drive: d, into: buffer.base, count: count, offsetBytes: offset)
            return io.submit() == 0
        }

        for director in 0..<layout.directorCount {
            let sliceOffset = layout.journalSliceOffset(director: director)
            var epoch: UInt64 = 0
            for d in 0..<m where live[d] && read(d, sliceOffset, JournalFormat.blockBytes) {
                if let e = JournalEpochBlock.decode(buffer.base, arrayUUID: arrayUUID, director: director) { epoch = max(epoch, e) }
            }
            if unclean && epoch > 0 {
                // Each live drive's records of this epoch, from the top of the slice to the first that is not whole.
                var batches: [UInt64: [(member: Int, position: UInt64, header: JournalHeader)]] = [:]
                for d in 0..<m where live[d] {
                    var position = UInt64(JournalFormat.blockBytes)
                    var last: UInt64 = 0
                    while position + UInt64(JournalFormat.blockBytes) <= layout.journalSliceBytes {
                        guard read(d, sliceOffset + position, JournalFormat.blockBytes) else { break }
                        let found = JournalHeader.read(
                            buffer.base, count: JournalFormat.blockBytes, geometry: geometry, arrayUUID: arrayUUID, director: director, member: d)
                        if case .damaged(let reason) = found {
                            report.damaged.append("drive \(d), director \(director)'s journal at byte \(sliceOffset + position): \(reason)")
                            break
                        }
                        guard case .record(let header) = found, header.epoch == epoch, header.sequence > last,
                            position + UInt64(JournalFormat.blockBytes + header.payloadBytes) <= layout.journalSliceBytes
                        else { break }
                        if header.payloadBytes > 0 {
                            guard read(d, sliceOffset + position + UInt64(JournalFormat.blockBytes), header.payloadBytes),
                                JournalHeader.payloadCRC(buffer.base, count: header.payloadBytes) == header.payloadCRC
                            else { break }
                        }
                        batches[header.sequence, default: []].append((d, position, header))
                        for entry in header.entries where entry.kind == .data {
                            touched.append((d, geometry.driveOffset(stripe: entry.stripe) + UInt64(entry.offsetBytes), entry.count))
                        }
                        last = header.sequence
                        position += UInt64(JournalFormat.blockBytes + header.payloadBytes)
                    }
                }
                for sequence in batches.keys.sorted() {
                    let records = batches[sequence]!
                    let mask = records[0].header.batchMask
                    // Live as of now: a drive that failed while recovery read it has no say.
                    let complete = (0..<m).allSatisfy { i in
                        mask & (1 << UInt64(i)) == 0 || !drives[i].isWritable || drives[i].isMissing
                            || records.contains { $0.member == i && $0.header.batchMask == mask }
                    }
                    guard complete else {
                        report.droppedBatches += 1
                        continue
                    }
                    for record in records where drives[record.member].isWritable {
                        let header = record.header
                        if header.payloadBytes > 0 {
                            guard read(record.member, sliceOffset + record.position + UInt64(JournalFormat.blockBytes), header.payloadBytes) else { continue }
                        }
                        var at = 0
                        for entry in header.entries {
                            switch entry.kind {
                            case .data:
                                io.queueWrite(
                                    drive: record.member, from: buffer.base + at, count: entry.count,
                                    offsetBytes: geometry.driveOffset(stripe: entry.stripe) + UInt64(entry.offsetBytes))
                                at += entry.count
                                report.replayedBytes += UInt64(entry.count)
                            case .intent:
                                regions.insert(entry.stripe)
                                regionStripes[entry.stripe] = entry.count
                            }
                            if io.queuedCount == io.capacity { io.submit() }
                        }
                        io.submit()
                    }
                    report.replayedBatches += 1
                }
            }
            report.epochs.append(epoch + 1)
        }
        flushLive()

        if !regions.isEmpty && geometry.raidLevel != .raid0 {
            try resync(
                geometry: geometry, drives: drives, regions: regions.sorted().map { ($0, UInt64(regionStripes[$0]!)) }, checksums: checksums,
                report: &report)
            report.resyncedRegions = regions.count
        }
        if let checksums {
            // What the drives hold now in every range this epoch may have changed is what the checksums must say;
            // everything older was written back when its epoch ended. Then the pages go down with the epoch.
            for region in regions {
                let stripes = UInt64(regionStripes[region]!)
                for member in 0..<m where drives[member].isWritable {
                    touched.append((member, geometry.driveOffset(stripe: region), Int(stripes) * geometry.stripUnitBytes))
                }
            }
            let memory = MemoryServices()
            for range in touched {
                var done = 0
                while done < range.count {
                    let step = min(range.count - done, recordBytes)
                    if read(range.member, range.driveOffset + UInt64(done), step) {
                        checksums.update(
                            member: range.member, driveOffset: range.driveOffset + UInt64(done), count: step, data: buffer.base, io: io, memory: memory)
                    }
                    done += step
                }
            }
            checksums.writeBack(io: io, skipping: ArrayGeometry.outMask(drives: drives))
            // Down before the new epoch makes this epoch's records (the only other source) unreadable.
            flushLive()
        }

        // The next epoch in every slice (flushed): records of this mount never mix with the last one's.
        for director in 0..<layout.directorCount {
            JournalEpochBlock.encode(into: buffer.base, arrayUUID: arrayUUID, director: director, epoch: report.epochs[director])
            for d in 0..<m where drives[d].isWritable {
                io.queueWrite(drive: d, from: buffer.base, count: JournalFormat.blockBytes, offsetBytes: layout.journalSliceOffset(director: director))
            }
            io.submit()
        }
        flushLive()
        guard geometry.raidLevel.survives(outMask: ArrayGeometry.outMask(drives: drives), memberCount: m) else {
            throw VSAError("recovery: more members failed than \(geometry.raidLevel) survives")
        }
        return report
    }

    /// Makes each region's redundancy agree with its data: P/Q recomputed, mirror copies made equal. A stripe with a
    /// member out is read degraded (a lost strip through P) and its parity rewritten from that, as before.
    ///
    /// Recovery never launders rot. Each strip read here is first checked against the checksum entries on the drives
    /// (written back when the last epoch ended). Those entries are stale for blocks a write in flight changed, so a
    /// failure alone proves nothing; but where the rest of the stripe passes, the one strip (or copy) that fails is
    /// rebuilt from the others, instead of being copied over good mirrors or folded into new parity. Only where the
    /// checks cannot decide (several members fail: a torn write, whose data no fsync acknowledged) does the old rule
    /// hold: the first copy wins, parity follows the data.
    static func resync(
        geometry: ArrayGeometry, drives: [Drive], regions: [(first: UInt64, count: UInt64)], checksums: BlockChecksums?,
        report: inout JournalRecoveryReport
    ) throws(VSAError) {
        let m = geometry.memberCount
        let d = geometry.dataStripsPerStripe
        let stripBytes = geometry.stripUnitBytes
        let io: DriveIO
        do { io = try DriveIO(drives: drives, capacity: 2 * m + 8) } catch { throw VSAError("cannot set up io_uring for resync: \(error)") }
        let memory = MemoryServices()
        let strips = Arena(sliceBytes: stripBytes, sliceCount: m + 2)  // every member's strip, then P' and Q'
        let table = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: m + 2)
        defer { table.deallocate() }
        // Stripes with a member out go through a back end of their own (degraded reads, no checksums), as they always did.
        let degraded: RAIDBackEnd
        do { degraded = try RAIDBackEnd(geometry: geometry, drives: drives, memory: memory, marks: BackEndMarks()) } catch {
            throw VSAError("cannot set up the back end for resync: \(error)")
        }
        let all: UInt64 = d == 64 ? ~0 : (1 << UInt64(d)) - 1
        // Parity levels rewrite P/Q only; mirrors copy the primary to the other copies.
        let rewriteAll: UInt64 = geometry.parityStripsPerStripe > 0 ? 0 : all
        for region in regions {
            for stripe in region.first..<min(region.first + region.count, geometry.stripeCount) {
                let offset = geometry.driveOffset(stripe: stripe)
                guard (0..<m).allSatisfy({ drives[$0].isReadable(stripe: stripe) }) else {
                    // A member out (failed, or rebuilding and not there yet): nothing to compare a strip with. Parity
                    // follows the data as read (a lost strip through P), so Q and the members still taking writes agree.
                    for i in 0..<d { table[i] = strips.slice(i) }
                    guard degraded.readStrips(stripe: stripe, stripMask: all, offsetBytes: 0, count: stripBytes, targets: table) else {
                        throw VSAError("resync: stripe \(stripe) unreadable; the array cannot be mounted safely")
                    }
                    guard degraded.writeStripe(stripe: stripe, strips: table, dirtyMask: rewriteAll, offsetBytes: 0, count: stripBytes) else {
                        throw VSAError("resync: stripe \(stripe) could not be written; more members failed than \(geometry.raidLevel) survives")
                    }
                    continue
                }
                for member in 0..<m { io.queueRead(drive: member, into: strips.slice(member), count: stripBytes, offsetBytes: offset) }
                guard io.submit() == 0 else { throw VSAError("resync: stripe \(stripe) unreadable; the array cannot be mounted safely") }
                var failing: UInt64 = 0
                if let checksums {
                    for member in 0..<m
                    where checksums.verify(member: member, driveOffset: offset, count: stripBytes, data: strips.slice(member), io: io, memory: memory) != nil {
                        failing |= 1 << UInt64(member)
                    }
                }
                if geometry.parityStripsPerStripe == 0 {
                    // Mirrors: for each data strip, the copies must agree; a copy that passes wins over those that fail.
                    for strip in 0..<d {
                        let copies = Array(geometry.copyDrives(stripe: stripe, strip: strip))
                        let differing = copies.filter { memcmp(strips.slice($0), strips.slice(copies[0]), stripBytes) != 0 }
                        guard !differing.isEmpty else { continue }
                        let passing = copies.filter { failing & (1 << UInt64($0)) == 0 }
                        let winner: Int
                        if let good = passing.first, passing.count < copies.count {
                            winner = good
                            report.resyncRepairedStrips += copies.filter { memcmp(strips.slice($0), strips.slice(good), stripBytes) != 0 }.count
                        } else {
                            winner = copies[0]
                            report.resyncUnverifiedStripes += 1
                        }
                        for copy in copies where memcmp(strips.slice(copy), strips.slice(winner), stripBytes) != 0 {
                            io.queueWrite(drive: copy, from: strips.slice(winner), count: stripBytes, offsetBytes: offset)
                        }
                    }
                } else {
                    // Parity: P' (and Q') of the data as it is; consistent stripes need nothing.
                    let dataDrives = (0..<d).map { geometry.dataDrive(stripe: stripe, strip: $0) }
                    let pDrive = geometry.parityDrive(stripe: stripe)
                    let qDrive = geometry.raidLevel == .raid6 ? geometry.qDrive(stripe: stripe) : -1
                    func parityOfData() {
                        for i in 0..<d { table[i] = strips.slice(dataDrives[i]) }
                        table[d] = strips.slice(m)
                        table[d + 1] = strips.slice(m + 1)
                        if qDrive < 0 {
                            memory.xorParity(sourceCount: d, lengthBytes: stripBytes, table: table)
                        } else {
                            memory.pqParity(sourceCount: d, lengthBytes: stripBytes, table: table)
                        }
                    }
                    parityOfData()
                    let pOK = memcmp(strips.slice(m), strips.slice(pDrive), stripBytes) == 0
                    let qOK = qDrive < 0 || memcmp(strips.slice(m + 1), strips.slice(qDrive), stripBytes) == 0
                    guard !(pOK && qOK) else { continue }
                    let failingData = dataDrives.filter { failing & (1 << UInt64($0)) != 0 }
                    if failingData.count == 1 && failing & (1 << UInt64(pDrive)) == 0 && failing.nonzeroBitCount == 1 {
                        // One data strip fails its checksums, P passes: the strip is rebuilt from P and the others.
                        let bad = failingData[0]
                        var sources = 0
                        for drive in dataDrives where drive != bad {
                            table[sources] = strips.slice(drive)
                            sources += 1
                        }
                        table[sources] = strips.slice(pDrive)
                        table[sources + 1] = strips.slice(bad)
                        memory.xorParity(sourceCount: sources + 1, lengthBytes: stripBytes, table: table)
                        io.queueWrite(drive: bad, from: strips.slice(bad), count: stripBytes, offsetBytes: offset)
                        report.resyncRepairedStrips += 1
                        parityOfData()  // Q of the repaired data
                    } else if !failingData.isEmpty {
                        // Several members fail: nothing says which is right. Parity follows the data, as it always did
                        // (when only P or Q fails, that is simply the repair).
                        report.resyncUnverifiedStripes += 1
                    }
                    if memcmp(strips.slice(m), strips.slice(pDrive), stripBytes) != 0 {
                        io.queueWrite(drive: pDrive, from: strips.slice(m), count: stripBytes, offsetBytes: offset)
                    }
                    if qDrive >= 0 && memcmp(strips.slice(m + 1), strips.slice(qDrive), stripBytes) != 0 {
                        io.queueWrite(drive: qDrive, from: strips.slice(m + 1), count: stripBytes, offsetBytes: offset)
                    }
                }
                guard io.submit() == 0 || geometry.raidLevel.survives(outMask: ArrayGeometry.outMask(drives: drives), memberCount: m) else {
                    throw VSAError("resync: stripe \(stripe) could not be written; more members failed than \(geometry.raidLevel) survives")
                }
            }
        }
        guard degraded.flush() else { throw VSAError("resync: flushing the drives failed") }
    }
}

extension ArrayGeometry {
    /// Members no write reaches (bit i = member i).
    static func outMask(drives: [Drive]) -> UInt64 {
        var mask: UInt64 = 0
        for (i, drive) in drives.enumerated() where !drive.isWritable { mask |= 1 << UInt64(i) }
        return mask
    }
}
