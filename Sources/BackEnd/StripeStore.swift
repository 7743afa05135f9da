// BackEnd: RAID 0/1/10/5/6 over the drives. The port the cache (GlobalMemory) uses is `StripeStore`. Every call
// works on one stripe and one byte range [offsetBytes, offsetBytes + count) that is the same in each of the stripe's
// strips (a "stripe range": whole sectors; the cache uses whole 4 KiB pages), so a 4 KiB host write costs 4 KiB drive
// I/Os, not whole strips.
//
// Writes come in two forms, and the cache picks the cheaper one per stripe:
//   reconstruct-write  the caller supplies every data strip's range; parity is computed from all of them.
//                      When every strip was write-pending this is a full-stripe write and needs no reads at all.
//   read-modify-write  `readOld` fetches the old contents of the dirty strips and of P/Q; `writeDelta` computes
//                      P' = P ^ Σ(old ^ new) and Q' = Q ^ Σ g^i·(old ^ new) and writes only dirty strips and parity.
//
// One `RAIDBackEnd` is one director's back-end adapter: it owns its io_uring (through DriveIO), its staging strips
// and its parity pointer table, all allocated when the director starts; it runs on that director's thread only.
//
// Degraded I/O: a data strip on a failed drive is read from its mirror, or rebuilt from the other strips and P
// (RAID-5/6), or through Q when P is lost too or two data strips are (RAID-6); writes skip failed drives, parity
// still covers the new data. More failures than the level tolerates -> false (EIO). A drive being rebuilt receives
// every write but is read only below its rebuild progress (`Drive.isReadable(stripe:)`).
import ArrayModel
import Buffers
import Drives
import MemoryServices
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The back end as the cache sees it. Thread: the owning director's. Ranges are 512-byte aligned (4 KiB for writes
/// with parity); `targets[i]` / `strips[i]` point at the range's first byte for data strip i.
public protocol StripeStore: AnyObject {
    var geometry: ArrayGeometry { get }
    /// Whether the level keeps parity (reconstruct-write needs every data strip; read-modify-write is possible).
    var hasParity: Bool { get }
    /// Whether every member's part of `stripe` is readable (read-modify-write needs the old data and parity).
    func canReadModifyWrite(stripe: UInt64) -> Bool
    /// Whether some drive does direct I/O, so buffers handed to `writeStripe` must be 4 KiB aligned.
    var needsAlignedBuffers: Bool { get }
    /// Reads the range of the data strips in `stripMask` (bit i = data strip i) into `targets[i]`.
    func readStrips(stripe: UInt64, stripMask: UInt64, offsetBytes: Int, count: Int, targets: UnsafeMutablePointer<UnsafeMutableRawPointer?>) -> Bool
    /// Reconstruct-write: writes the range of the strips in `dirtyMask` to every copy, and P/Q computed from all `strips`.
    /// `allNew`: every byte of every data strip's range is new host data (nothing older rides along), so a torn write
    /// can only garble data that was in flight, and the write needs no journal, only a write intent.
    func writeStripe(stripe: UInt64, strips: UnsafeMutablePointer<UnsafeMutableRawPointer?>, dirtyMask: UInt64, offsetBytes: Int, count: Int, allNew: Bool)
        -> Bool
    /// Read-modify-write, step 1: reads the old range of the dirty strips and of P/Q into the adapter's staging.
    func readOld(stripe: UInt64, dirtyMask: UInt64, offsetBytes: Int, count: Int) -> Bool
    /// The old contents of data strip `strip`'s range, valid after `readOld`.
    func oldData(strip: Int) -> UnsafeMutableRawPointer
    /// Read-modify-write, step 2: updates P/Q from old and new data and writes dirty strips and parity.
    func writeDelta(stripe: UInt64, strips: UnsafeMutablePointer<UnsafeMutableRawPointer?>, dirtyMask: UInt64, offsetBytes: Int, count: Int) -> Bool
    /// Makes everything written so far durable on every online drive.
    func flush() -> Bool
    /// Sends the journal's open batch to the drives (the end of a destage pass). False if the array failed.
    func commitJournal() -> Bool
}

/// What scrubbing one stripe found.
public enum ScrubOutcome: Int, Sendable, CustomStringConvertible {
    public var description: String {
        switch self {
        case .consistent: return "consistent"
        case .mismatch: return "mismatch (not repaired)"
        case .repaired: return "mismatch, parity or copy rewritten"
        case .repairedData: return "mismatch, bad data strip located and rewritten"
        case .unrecoverable: return "mismatch no single bad strip explains (left as it is)"
        case .skipped: return "skipped (a member is out)"
        case .unreadable: return "a drive failed while reading"
        }
    }

    /// Redundancy agrees with the data.
    case consistent = 0
    /// A mismatch, left as it is (check only).
    case mismatch = 1
    /// A mismatch, fixed by rewriting parity or a mirror copy.
    case repaired = 2
    /// A mismatch traced to one data strip (RAID-6), rewritten: cached copies of the stripe are stale.
    case repairedData = 3
    /// A mismatch no single bad strip explains (RAID-6): left as it is.
    case unrecoverable = 4
    /// A member is out: the stripe cannot be checked now.
    case skipped = 5
    /// A drive failed while reading.
    case unreadable = 6
}

/// Counters of the rare and the common paths, readable from the control plane.
public final class BackEndMarks: Sendable {
    public let fullStripeWrites = Atomic<UInt64>(0)
    public let reconstructWrites = Atomic<UInt64>(0)
    public let readModifyWrites = Atomic<UInt64>(0)
    public let degradedReads = Atomic<UInt64>(0)
    public let degradedWrites = Atomic<UInt64>(0)
    public let stripReads = Atomic<UInt64>(0)
    public let stripWrites = Atomic<UInt64>(0)
    /// Stripe journal: batches committed, payload bytes journaled, write intents recorded, epochs ended.
    public let journalBatches = Atomic<UInt64>(0)
    public let journalBytes = Atomic<UInt64>(0)
    public let journalIntents = Atomic<UInt64>(0)
    public let journalEpochs = Atomic<UInt64>(0)
    public init() {}
}

public final class RAIDBackEnd: StripeStore {
    public let geometry: ArrayGeometry
    private var drives: [Drive]
    private let io: DriveIO
    private let memory: MemoryServices
    public let marks: BackEndMarks
    private let stripBytes: Int
    /// Staging, one strip each: [0, m) reconstruction sources; [m, 2m) old data (RMW); [2m, 3m) deltas (RMW);
    /// then new P, new Q, old P, old Q, delta P, delta Q, and a strip of zeroes.
    private let staging: Arena
    private let table: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    private let m: Int

    /// The director's stripe journal (nil: no journal, as for recovery's own back end and bare geometries).
    let journal: StripeJournal?
    /// The array's block checksums, shared by its directors (nil: not verified, as for recovery's resync).
    let checksums: BlockChecksums?
    /// Which drive each data strip was read from in the current `readStrips`.
    private let readFrom: UnsafeMutablePointer<Int>
    /// Whole-block reads for ranges that do not start or end on a 4 KiB block (checksums cover whole blocks).
    private let alignedStaging: Arena

    public init(
        geometry: ArrayGeometry, drives: [Drive], memory: MemoryServices, marks: BackEndMarks, journal owner: JournalOwner? = nil,
        checksums: BlockChecksums? = nil
    ) throws {
        self.checksums = checksums
        self.readFrom = .allocate(capacity: geometry.memberCount)
        self.readFrom.initialize(repeating: 0, count: geometry.memberCount)
        self.alignedStaging = Arena(sliceBytes: geometry.stripUnitBytes, sliceCount: checksums == nil ? 1 : geometry.dataStripsPerStripe)
        self.geometry = geometry
        self.drives = Array(drives.prefix(geometry.memberCount))
        self.memory = memory
        self.marks = marks
        self.stripBytes = geometry.stripUnitBytes
        self.m = geometry.memberCount
        self.io = try DriveIO(drives: self.drives, capacity: 8 * geometry.memberCount + 16)
        self.needsAlignedBuffers = self.drives.contains { $0.usesDirectIO }
        self.flushNeeded.store(self.drives.contains { !$0.isMemoryBacked && !$0.isMissing }, ordering: .releasing)
        self.staging = Arena(sliceBytes: geometry.stripUnitBytes, sliceCount: 3 * geometry.memberCount + 7)
        // [0, 2m + 4): parity source lists; [2m + 4, 3m + 4): rebuild's read targets.
        // [0, 2m + 4): parity source lists; [2m + 4, 3m + 4): rebuild's read targets; [3m + 4, 4m + 4): whole-block
        // read targets.
        self.table = .allocate(capacity: 4 * geometry.memberCount + 4)
        self.table.initialize(repeating: nil, count: 4 * geometry.memberCount + 4)
        // VSA_UNSAFE_NO_JOURNAL=1 turns the journal off, only to measure what it costs (docs/ROADMAP.md) and to
        // watch the crash tests fail without it: the write hole is open then.
        let disabled = getenv("VSA_UNSAFE_NO_JOURNAL").map { String(cString: $0) == "1" } ?? false
        self.journal = disabled ? nil : owner.flatMap { owner in geometry.layout.map { _ in StripeJournal(owner: owner, geometry: geometry, marks: marks) } }
    }

    /// Whether writes go through a stripe journal (its counters are in `marks`).
    public var hasJournal: Bool { journal != nil }

    deinit {
        table.deallocate()
        readFrom.deallocate()
    }

    private var newP: UnsafeMutableRawPointer { staging.slice(3 * m) }
    private var newQ: UnsafeMutableRawPointer { staging.slice(3 * m + 1) }
    private var oldP: UnsafeMutableRawPointer { staging.slice(3 * m + 2) }
    private var oldQ: UnsafeMutableRawPointer { staging.slice(3 * m + 3) }
    private var deltaP: UnsafeMutableRawPointer { staging.slice(3 * m + 4) }
    private var deltaQ: UnsafeMutableRawPointer { staging.slice(3 * m + 5) }
    private var zeroes: UnsafeMutableRawPointer { staging.slice(3 * m + 6) }

    public var hasParity: Bool { geometry.parityStripsPerStripe > 0 }

    /// Kept up to date by `attach`: a new drive may do direct I/O where the others did not.
    public private(set) var needsAlignedBuffers = false

    public func canReadModifyWrite(stripe: UInt64) -> Bool {
        for drive in 0..<m where !drives[drive].isReadable(stripe: stripe) { return false }
        return true
    }

    @inline(__always) private func readable(_ drive: Int, _ stripe: UInt64) -> Bool { drives[drive].isReadable(stripe: stripe) }
    @inline(__always) private func writable(_ drive: Int) -> Bool { drives[drive].isWritable }

    /// Puts `drive` in member position `member` (a spare or new drive taking a failed member's place). Runs on the
    /// owning director's executor, between requests.
    public func attach(member: Int, drive: Drive) {
        precondition(member >= 0 && member < m, "member \(member) out of range")
        _ = commitJournal()
        drives[member] = drive
        io.replace(index: member, with: drive)
        checksums?.forget(member: member)
        needsAlignedBuffers = drives.contains { $0.usesDirectIO }
        flushNeeded.store(drives.contains { !$0.isMemoryBacked && !$0.isMissing }, ordering: .releasing)
        // The new drive's slice holds no records of this epoch: a new epoch starts every slice at its top again, so
        // recovery reads each drive's records from there without a gap.
        if journal != nil { _ = advanceEpoch() }
    }

    @inline(__always) private func checkRange(_ offsetBytes: Int, _ count: Int) {
        precondition(
            offsetBytes >= 0 && count > 0 && offsetBytes + count <= stripBytes, "stripe range \(offsetBytes)+\(count) outside a \(stripBytes)-byte strip")
        precondition(offsetBytes % sectorBytes == 0 && count % sectorBytes == 0, "stripe ranges are whole sectors")
    }

    // MARK: Reads

    public func readStrips(stripe: UInt64, stripMask: UInt64, offsetBytes: Int, count: Int, targets: UnsafeMutablePointer<UnsafeMutableRawPointer?>) -> Bool {
        checkRange(offsetBytes, count)
        settle(stripe)
        if checksums != nil && (offsetBytes % 4096 != 0 || count % 4096 != 0) {
            return readWholeBlocks(stripe: stripe, stripMask: stripMask, offsetBytes: offsetBytes, count: count, targets: targets)
        }
        let offset = geometry.driveOffset(stripe: stripe) + UInt64(offsetBytes)
        var remaining = stripMask
        // Copies whose blocks failed their checksums in this call, and strips rebuilt from parity because of it.
        var badDrives: UInt64 = 0
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
            let failed = io.submit()
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
            return repairBlocks(stripe: stripe, stripMask: stripMask, offset: offset, count: count, targets: targets, badDrives: badDrives, rebuilt: rebuilt)
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
    private func repairBlocks(
        stripe: UInt64, stripMask: UInt64, offset: UInt64, count: Int, targets: UnsafeMutablePointer<UnsafeMutableRawPointer?>, badDrives: UInt64,
        rebuilt: UInt64
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
                    checksums.repairs.add(1, ordering: .relaxed)
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
    private func readWholeBlocks(stripe: UInt64, stripMask: UInt64, offsetBytes: Int, count: Int, targets: UnsafeMutablePointer<UnsafeMutableRawPointer?>)
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
    private func reconstruct(stripe: UInt64, wanted: UInt64, offsetBytes: Int, count: Int, targets: UnsafeMutablePointer<UnsafeMutableRawPointer?>)
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
    private func computeParity(count: Int) {
        let d = geometry.dataStripsPerStripe
        table[d] = newP
        table[d + 1] = newQ
        if geometry.raidLevel == .raid5 {
            memory.xorParity(sourceCount: d, lengthBytes: count, table: table)
        } else {
            memory.pqParity(sourceCount: d, lengthBytes: count, table: table)
        }
    }

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

    private func scrubStripe(stripe: UInt64, repair: Bool) -> ScrubOutcome {
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
    private func checksumsMatch(drive: Int, offset: UInt64, data: UnsafeRawPointer) -> Bool {
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
    private func readStripsExcluding(member: Int, stripe: UInt64, strip: Int, into target: UnsafeMutableRawPointer) -> Bool {
        let offset = geometry.driveOffset(stripe: stripe)
        for drive in geometry.copyDrives(stripe: stripe, strip: strip) where drive != member && readable(drive, stripe) {
            io.queueRead(drive: drive, into: target, count: stripBytes, offsetBytes: offset)
            if io.submit() == 0 && checksumsMatch(drive: drive, offset: offset, data: target) { return true }
        }
        return false
    }

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

    /// The checksums of a write about to go in place (its intent or journal record is on the drives already).
    private func recordChecksums(stripe: UInt64, strips: UnsafeMutablePointer<UnsafeMutableRawPointer?>, dirtyMask: UInt64, offset: UInt64, count: Int) {
        guard let checksums else { return }
        precondition(offset % 4096 == 0 && count % 4096 == 0, "checksummed writes are whole blocks")
        for strip in 0..<geometry.dataStripsPerStripe where dirtyMask & (1 << UInt64(strip)) != 0 {
            for drive in geometry.copyDrives(stripe: stripe, strip: strip) where writable(drive) {
                checksums.update(member: drive, driveOffset: offset, count: count, data: strips[strip]!, io: io, memory: memory)
            }
        }
        guard hasParity else { return }
        let p = geometry.parityDrive(stripe: stripe)
        if writable(p) { checksums.update(member: p, driveOffset: offset, count: count, data: newP, io: io, memory: memory) }
        if geometry.raidLevel == .raid6 {
            let q = geometry.qDrive(stripe: stripe)
            if writable(q) { checksums.update(member: q, driveOffset: offset, count: count, data: newQ, io: io, memory: memory) }
        }
    }

    private func queueDataWrites(stripe: UInt64, strips: UnsafeMutablePointer<UnsafeMutableRawPointer?>, dirtyMask: UInt64, offset: UInt64, count: Int) {
        for strip in 0..<geometry.dataStripsPerStripe where dirtyMask & (1 << UInt64(strip)) != 0 {
            for drive in geometry.copyDrives(stripe: stripe, strip: strip) where writable(drive) {
                io.queueWrite(drive: drive, from: strips[strip]!, count: count, offsetBytes: offset)
            }
            marks.stripWrites.add(1, ordering: .relaxed)
        }
    }

    private func queueParityWrites(stripe: UInt64, offset: UInt64, count: Int) {
        let p = geometry.parityDrive(stripe: stripe)
        if writable(p) { io.queueWrite(drive: p, from: newP, count: count, offsetBytes: offset) }
        if geometry.raidLevel == .raid6 {
            let q = geometry.qDrive(stripe: stripe)
            if writable(q) { io.queueWrite(drive: q, from: newQ, count: count, offsetBytes: offset) }
        }
    }

    private func finishWrite() -> Bool {
        let failed = io.submit()
        let down = failedMembers()
        if failed != 0 || down != 0 { marks.degradedWrites.add(1, ordering: .relaxed) }
        return geometry.raidLevel.survives(outMask: down, memberCount: m)
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

    /// Whether some member keeps writes where a flush must push them (not memory-backed). Read from any thread:
    /// an atomic kept by init and `attach`, not a look at `drives`, which only the executor may touch.
    public var needsFlush: Bool { flushNeeded.load(ordering: .acquiring) }
    private let flushNeeded = Atomic<Bool>(true)

    public func flush() -> Bool {
        guard commitJournal() else { return false }
        flushMembers()
        // Many write intents make an unclean mount resync many regions: a new epoch forgets them (all is flushed).
        if let journal, journal.intentRegions > 64 { _ = advanceEpoch() }
        return geometry.raidLevel.survives(outMask: failedMembers(), memberCount: m)
    }

    /// Flushes every member that takes writes. Memory-backed drives (tmpfs) keep nothing across a power cut
    /// whatever we do; flushing them only costs an io-wq round trip.
    private func flushMembers() {
        for drive in 0..<m where writable(drive) && !drives[drive].isMemoryBacked { io.queueFlush(drive: drive) }
        io.submit()
    }

    /// The members no write reaches (bit i = member i).
    private func failedMembers() -> UInt64 {
        var mask: UInt64 = 0
        for drive in 0..<m where !writable(drive) { mask |= 1 << UInt64(drive) }
        return mask
    }

    // MARK: Stripe journal (StripeJournal.swift says why and how)

    /// A stripe with records in the open batch is not on the drives yet: the batch goes down before the stripe is
    /// read, so nothing reads around it.
    @inline(__always)
    private func settle(_ stripe: UInt64) {
        if let journal, journal.hasOpenBatch, journal.isPending(stripe) { _ = commitJournal() }
    }

    /// The members writes reach (bit i = member i).
    private var writableMask: UInt64 { ((1 << UInt64(m)) - 1) & ~failedMembers() }

    /// Journaled write: the new contents of every range this write changes (dirty strips' copies, P, Q) join the open
    /// batch; they reach their places when the batch commits (`commitJournal`: at the end of a destage pass, at a
    /// flush, or when the batch is full or a read needs the stripe).
    private func journalWrite(stripe: UInt64, strips: UnsafeMutablePointer<UnsafeMutableRawPointer?>, dirtyMask: UInt64, offsetBytes: Int, count: Int)
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
    private func recordIntent(stripe: UInt64) -> Bool {
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
    private func endEpoch() -> Bool {
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
