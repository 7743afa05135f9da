// BackEnd: RAID 0/1/10/5/6 over the drives. The port the cache (GlobalMemory) uses is `StripeStore`. Every call
// works on one stripe and one byte range [offsetBytes, offsetBytes + count) that is the same in each of the stripe's
// strips (a "stripe range": whole sectors; the cache uses whole 4 KiB pages), so a 4 KiB host write costs 4 KiB drive
// I/Os, not whole strips.
//
// Writes come in two forms, and the back end picks the cheaper one per stripe when the cache destages (`destage`;
// the cache asks nothing about parity or members: StripeWrites.swift):
//   reconstruct-write  the caller supplies every data strip's range; parity is computed from all of them.
//                      When every strip was write-pending this is a full-stripe write and needs no reads at all.
//   read-modify-write  `readOld` fetches the old contents of the dirty strips and of P/Q; `writeDelta` computes
//                      P' = P ^ Σ(old ^ new) and Q' = Q ^ Σ g^i·(old ^ new) and writes only dirty strips and parity.
//
// The class is split by section: reads (StripeReads.swift), writes and destage (StripeWrites.swift), scrub and
// rebuild (StripeMaintenance.swift), the journal's use (BackEndJournal.swift).
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
    /// Whether some drive does direct I/O, so buffers handed to `writeStripe` must be 4 KiB aligned.
    var needsAlignedBuffers: Bool { get }
    /// Reads the range of the data strips in `stripMask` (bit i = data strip i) into `targets[i]`.
    func readStrips(stripe: UInt64, stripMask: UInt64, offsetBytes: Int, count: Int, targets: UnsafeMutablePointer<UnsafeMutableRawPointer?>) -> Bool
    /// The healthy case of a read whose 4 KiB pages go to scattered places: page k of data strip i's range goes to
    /// `pages[i * count / 4096 + k]` (nil: not wanted), straight from the drives, nothing copied. False when it cannot
    /// be done so (a strip's copy out, a drive failed, a checksum disagrees): nothing is repaired, and the caller
    /// reads with `readStrips`, which knows every other way.
    func readPages(stripe: UInt64, stripMask: UInt64, offsetBytes: Int, count: Int, pages: UnsafeMutablePointer<UnsafeMutableRawPointer?>) -> Bool
    /// Several reads of one data strip's range each, in one submit (a director's batch of random read misses, which
    /// would otherwise wait for the drives one after another): done as `readPages` does one (the first readable copy,
    /// checksums verified, nothing repaired). Returns a bit per read done so (bit i: `reads[i]`); what the others
    /// read is not to be used, and `readStrips` reads them again, knowing every other way. At most `readBatchMax`.
    func readBatch(_ reads: UnsafeMutablePointer<BatchRead>, count: Int) -> UInt64
    /// The most reads `readBatch` takes at once (0: it takes none).
    var readBatchMax: Int { get }
    /// Reconstruct-write: writes the range of the strips in `dirtyMask` to every copy, and P/Q computed from all `strips`.
    /// `allNew`: every byte of every data strip's range is new host data (nothing older rides along), so a torn write
    /// can only garble data that was in flight, and the write needs no journal, only a write intent.
    func writeStripe(stripe: UInt64, strips: UnsafeMutablePointer<UnsafeMutableRawPointer?>, dirtyMask: UInt64, offsetBytes: Int, count: Int, allNew: Bool)
        -> Bool
    /// Reconstruct-write of new rows whose 4 KiB pages lie in scattered places (a pool's commit, blocks from the
    /// host's buffer): page k of data strip i's range comes from `pages[i * count / 4096 + k]`, written straight from
    /// there (a gather write per strip), parity computed row by row; as `writeStripe` with every strip dirty and
    /// `allNew`. `crcs`, when given, holds the same pages' CRC32C (seed 0) where known (0: not known), so their
    /// checksums need not read them again. The pages must not change until it returns.
    /// `nextCount` > 0: the rows run from `offsetBytes` to the end of `stripe` and on into the first `nextCount` bytes
    /// of stripe `stripe + 1` (a log's commits across a stripe boundary); the second stripe's pages follow the first's
    /// in `pages` (and `crcs`), laid out alike. Adjacent stripes are adjacent on every drive, so each member is written
    /// once for both: half the writes of two calls.
    func writePages(
        stripe: UInt64, offsetBytes: Int, count: Int, nextCount: Int, pages: UnsafeMutablePointer<UnsafeMutableRawPointer?>, crcs: UnsafePointer<UInt32>?
    ) -> Bool
    /// Write-back's destage of one stripe: writes range [offsetBytes, offsetBytes + count) of the data strips in
    /// `dirtyMask`. `strips[i]` is the cache's copy of data strip i's range (nil: not cached), `cachedMask` the strips
    /// whose copy holds the range whole. The back end chooses how (read-modify-write or reconstruct-write: what reads
    /// less, and what its members allow) and reads what that needs; whatever it reads of a strip the cache has a copy
    /// of goes to `complete(strip, old)` before the write, since the write covers the whole range: the cache fills in
    /// the sectors its copy lacked. `allNew`: as for `writeStripe`.
    func destage(
        stripe: UInt64, strips: UnsafeMutablePointer<UnsafeMutableRawPointer?>, dirtyMask: UInt64, cachedMask: UInt64, offsetBytes: Int, count: Int,
        allNew: Bool, complete: (_ strip: Int, _ old: UnsafeRawPointer) -> Void
    ) -> Bool
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

/// One read of `readBatch`: `count` bytes at `offsetBytes` of data strip `strip` of `stripe`, into `target` (4 KiB
/// aligned ranges).
public struct BatchRead {
    public var stripe: UInt64
    public var strip: Int
    public var offsetBytes: Int
    public var count: Int
    public var target: UnsafeMutableRawPointer
    /// The drive it was read from (the back end's own).
    var source = -1
    public init(stripe: UInt64, strip: Int, offsetBytes: Int, count: Int, target: UnsafeMutableRawPointer) {
        self.stripe = stripe
        self.strip = strip
        self.offsetBytes = offsetBytes
        self.count = count
        self.target = target
    }
}

extension StripeStore {
    /// Stores that read one range at a time take no batches.
    public func readBatch(_ reads: UnsafeMutablePointer<BatchRead>, count: Int) -> UInt64 { 0 }
    public var readBatchMax: Int { 0 }
}

public final class RAIDBackEnd: StripeStore {
    public let geometry: ArrayGeometry
    var drives: [Drive]
    let io: DriveIO
    let memory: MemoryServices
    public let marks: BackEndMarks
    let stripBytes: Int
    /// Staging, one strip each: [0, m) reconstruction sources; [m, 2m) old data (RMW); [2m, 3m) deltas (RMW);
    /// then new P, new Q, old P, old Q, delta P, delta Q, and a strip of zeroes.
    let staging: Arena
    let table: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    let m: Int

    /// The director's stripe journal (nil: no journal, as for recovery's own back end and bare geometries).
    let journal: StripeJournal?
    /// The array's block checksums, shared by its directors (nil: not verified, as for recovery's resync).
    let checksums: BlockChecksums?
    /// Which drive each data strip was read from in the current `readStrips`.
    let readFrom: UnsafeMutablePointer<Int>
    /// A destage's strips: the cache's copies, or what was read for strips it lacks.
    let destageStrips: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    /// Whole-block reads for ranges that do not start or end on a 4 KiB block (checksums cover whole blocks).
    let alignedStaging: Arena
    /// `readPages`' scatter lists, a page each (a strip's range is at most a strip), and the page its unwanted pages
    /// land in.
    let pageVectors: UnsafeMutablePointer<iovec>
    let unwantedPage: Arena
    /// `writePages`' gather lists, one member's after another (each drive is written once a call, and its list is
    /// consumed as it goes, so no two writes share one).
    let writeVectors: UnsafeMutablePointer<iovec>
    let writeVectorsPerMember: Int
    /// How many vectors each member's list holds so far.
    let writeVectorCounts: UnsafeMutablePointer<Int>

    public init(
        geometry: ArrayGeometry, drives: [Drive], memory: MemoryServices, marks: BackEndMarks, journal owner: JournalOwner? = nil,
        checksums: BlockChecksums? = nil
    ) throws {
        self.checksums = checksums
        self.readFrom = .allocate(capacity: geometry.memberCount)
        self.readFrom.initialize(repeating: 0, count: geometry.memberCount)
        self.destageStrips = .allocate(capacity: geometry.memberCount)
        self.destageStrips.initialize(repeating: nil, count: geometry.memberCount)
        self.alignedStaging = Arena(sliceBytes: geometry.stripUnitBytes, sliceCount: checksums == nil ? 1 : geometry.dataStripsPerStripe)
        self.pageVectors = .allocate(capacity: max(1, geometry.dataStripsPerStripe * geometry.stripUnitBytes / 4096))
        self.unwantedPage = Arena(sliceBytes: 4096, sliceCount: 1)
        // A member's part of a gather write spans at most two stripes' rows, a vector per page at worst.
        self.writeVectorsPerMember = max(1, 2 * geometry.stripUnitBytes / 4096)
        self.writeVectors = .allocate(capacity: geometry.memberCount * writeVectorsPerMember)
        self.writeVectorCounts = .allocate(capacity: geometry.memberCount)
        self.writeVectorCounts.initialize(repeating: 0, count: geometry.memberCount)
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
        destageStrips.deallocate()
        pageVectors.deallocate()
        writeVectors.deallocate()
        writeVectorCounts.deallocate()
    }

    var newP: UnsafeMutableRawPointer { staging.slice(3 * m) }
    var newQ: UnsafeMutableRawPointer { staging.slice(3 * m + 1) }
    var oldP: UnsafeMutableRawPointer { staging.slice(3 * m + 2) }
    var oldQ: UnsafeMutableRawPointer { staging.slice(3 * m + 3) }
    /// The P and Q of a gather write's second stripe (`writePages(nextCount:)`): the old parity's slots, which a
    /// write that reads nothing does not use.
    var nextP: UnsafeMutableRawPointer { oldP }
    var nextQ: UnsafeMutableRawPointer { oldQ }
    var deltaP: UnsafeMutableRawPointer { staging.slice(3 * m + 4) }
    var deltaQ: UnsafeMutableRawPointer { staging.slice(3 * m + 5) }
    var zeroes: UnsafeMutableRawPointer { staging.slice(3 * m + 6) }

    public var hasParity: Bool { geometry.parityStripsPerStripe > 0 }

    /// Kept up to date by `attach`: a new drive may do direct I/O where the others did not.
    public private(set) var needsAlignedBuffers = false

    public func canReadModifyWrite(stripe: UInt64) -> Bool {
        for drive in 0..<m where !drives[drive].isReadable(stripe: stripe) { return false }
        return true
    }

    @inline(__always) func readable(_ drive: Int, _ stripe: UInt64) -> Bool { drives[drive].isReadable(stripe: stripe) }
    @inline(__always) func writable(_ drive: Int) -> Bool { drives[drive].isWritable }

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

    @inline(__always) func checkRange(_ offsetBytes: Int, _ count: Int) {
        precondition(
            offsetBytes >= 0 && count > 0 && offsetBytes + count <= stripBytes, "stripe range \(offsetBytes)+\(count) outside a \(stripBytes)-byte strip")
        precondition(offsetBytes % sectorBytes == 0 && count % sectorBytes == 0, "stripe ranges are whole sectors")
    }

    /// Whether some member keeps writes where a flush must push them (not memory-backed). Read from any thread:
    /// an atomic kept by init and `attach`, not a look at `drives`, which only the executor may touch.
    public var needsFlush: Bool { flushNeeded.load(ordering: .acquiring) }
    let flushNeeded = Atomic<Bool>(true)

    public func flush() -> Bool {
        guard commitJournal() else { return false }
        flushMembers()
        // Many write intents make an unclean mount resync many regions: a new epoch forgets them (all is flushed).
        if let journal, journal.intentRegions > 64 { _ = advanceEpoch() }
        return geometry.raidLevel.survives(outMask: failedMembers(), memberCount: m)
    }

    /// Flushes every member that takes writes. Memory-backed drives (tmpfs) keep nothing across a power cut
    /// whatever we do; flushing them only costs an io-wq round trip.
    func flushMembers() {
        for drive in 0..<m where writable(drive) && !drives[drive].isMemoryBacked { io.queueFlush(drive: drive) }
        io.submit()
    }

    /// The members no write reaches (bit i = member i).
    func failedMembers() -> UInt64 {
        var mask: UInt64 = 0
        for drive in 0..<m where !writable(drive) { mask |= 1 << UInt64(drive) }
        return mask
    }

}
