// Recovery at mount, before any director starts: every director's journal slice is read from the live drives; after
// an unclean stop the complete batches of its newest epoch are written in place again (in sequence order) and the
// regions its write intents name are resynchronised; then every slice gets the next epoch, so this mount's records
// never mix with the last one's. StripeJournal.swift explains the records.
import ArrayModel
import Buffers
import Drives
import MemoryServices

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
            try resync(geometry: geometry, drives: drives, regions: regions.sorted().map { ($0, UInt64(regionStripes[$0]!)) })
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

    /// Makes each region's redundancy agree with its data: P/Q recomputed, mirror copies from the first readable copy.
    /// A stripe with a member out keeps what it has: its parity defines the lost strip, which only a write in flight
    /// could have changed.
    static func resync(geometry: ArrayGeometry, drives: [Drive], regions: [(first: UInt64, count: UInt64)]) throws(VSAError) {
        let backEnd: RAIDBackEnd
        do { backEnd = try RAIDBackEnd(geometry: geometry, drives: drives, memory: MemoryServices(), marks: BackEndMarks()) } catch {
            throw VSAError("cannot set up the back end for resync: \(error)")
        }
        let d = geometry.dataStripsPerStripe
        let strips = Arena(sliceBytes: geometry.stripUnitBytes, sliceCount: d)
        let table = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: d)
        defer { table.deallocate() }
        for i in 0..<d { table[i] = strips.slice(i) }
        let all: UInt64 = d == 64 ? ~0 : (1 << UInt64(d)) - 1
        // Parity levels rewrite P/Q only; mirrors copy the primary to the other copies.
        let rewrite: UInt64 = geometry.parityStripsPerStripe > 0 ? 0 : all
        for region in regions {
            for stripe in region.first..<min(region.first + region.count, geometry.stripeCount) {
                guard backEnd.readStrips(stripe: stripe, stripMask: all, offsetBytes: 0, count: geometry.stripUnitBytes, targets: table) else {
                    throw VSAError("resync: stripe \(stripe) unreadable; the array cannot be mounted safely")
                }
                guard backEnd.writeStripe(stripe: stripe, strips: table, dirtyMask: rewrite, offsetBytes: 0, count: geometry.stripUnitBytes) else {
                    throw VSAError("resync: stripe \(stripe) could not be written; more members failed than \(geometry.raidLevel) survives")
                }
            }
        }
        guard backEnd.flush() else { throw VSAError("resync: flushing the drives failed") }
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
