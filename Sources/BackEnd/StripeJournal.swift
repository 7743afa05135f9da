// The stripe journal: how a RAID-5/6 array closes the write hole, and how every redundant level knows, after an
// unclean stop, which stripes may have been caught half-written.
//
// The write hole: a partial-stripe write updates a data strip and P (and Q) in place, on different drives. A crash in
// between leaves parity that disagrees with the data; nothing notices until a drive fails and the stripe's lost strip
// is rebuilt from that parity: wrong data for a strip nobody was writing. Resyncing parity at mount fixes it only while
// every drive is there; an array that crashes degraded has no way back. So, per director and per drive:
//
//   journaled write   (partial-stripe writes on RAID-5/6) the new contents of every strip range the write touches,
//                     parity included, go first to the journal slice on that range's own drive, batched (a destage
//                     pass is one batch: a 4 KiB header per drive, then the payload), written durable (RWF_DSYNC: FUA
//                     where the device has it, so nothing else on the drive is flushed with it); only once every
//                     record is down are the ranges written in place, from the batch buffer. A batch whose records are on
//                     every live drive it names may have started in place and is replayed at an unclean mount; one
//                     missing on a live drive never started. Replay writes what the batch meant: data and parity agree.
//   write intent      (full-stripe writes, mirrors) the data needs nothing older, so only the region (256 stripes) is
//                     recorded, once per epoch, before its first in-place write; an unclean mount resyncs the regions
//                     named (parity from data, mirror copies from the first copy) while the drives allow it.
//
// A slice is written from its start: epoch block, then records in order. When a batch does not fit, the director
// flushes every drive (all earlier in-place writes are durable, so no record is needed any more), writes and flushes
// the next epoch number in its epoch blocks, and starts again at the top. Replay reads only records of the newest
// epoch, so an old record is never replayed over newer data. A stripe journaled in this epoch keeps being journaled
// even for full-stripe writes: replaying its older record after a newer unjournaled write would bring old data back.
//
// Costs: a journaled 4 KiB write adds 4 KiB of payload per drive written plus a header share, and one durable write
// per drive per batch (not per stripe); an fsync needs no flush of the in-place writes (the journal has them).
// Full-stripe writes pay one durable intent record per four regions per epoch.
import ArrayModel
import Buffers
import Drives
import MemoryServices

/// Who this journal belongs to: the array, the director (its slice) and the epoch it writes in (the mount's
/// recovery wrote that epoch's blocks).
public struct JournalOwner: Sendable {
    public let arrayUUID: UUID128
    public let director: Int
    public let epoch: UInt64
    public init(arrayUUID: UUID128, director: Int, epoch: UInt64) {
        self.arrayUUID = arrayUUID
        self.director = director
        self.epoch = epoch
    }
}

/// One director's journal state. Owned by its `RAIDBackEnd`, used on the director's thread only; every buffer is
/// allocated when the director starts.
final class StripeJournal {
    let owner: JournalOwner
    let layout: DriveLayout
    let sliceOffset: UInt64
    let sliceBytes: UInt64
    let payloadCapacity: Int
    let m: Int
    private(set) var epoch: UInt64
    private var sequence: UInt64 = 0
    /// Next record offset within the slice, per member.
    private var position: [UInt64]
    /// Per member: a 4 KiB header, then the payload.
    private let buffers: Arena
    private var entryCount: [Int]
    private var payloadBytes: [Int]
    /// Stripes with records in the open batch.
    private let pending: UnsafeMutablePointer<UInt64>
    private(set) var pendingCount = 0
    private let pendingCapacity: Int
    /// Stripes journaled in this epoch: open addressing, UInt64.max = empty.
    private let journaled: UnsafeMutablePointer<UInt64>
    private let journaledMask: Int
    private var journaledCount = 0
    private let journaledLimit: Int
    /// Intent regions recorded in this epoch (bit per region).
    private let intentBits: UnsafeMutablePointer<UInt64>
    private let intentWords: Int
    private(set) var intentRegions = 0
    /// The regions the intent record being committed names.
    private let intentFirsts = UnsafeMutablePointer<UInt64>.allocate(capacity: Int(StripeJournal.intentRegionsAhead))
    private var intentCount = 0
    let epochBlock: Arena
    let marks: BackEndMarks

    init(owner: JournalOwner, geometry: ArrayGeometry, marks: BackEndMarks) {
        self.marks = marks
        let layout = geometry.layout!
        self.owner = owner
        self.layout = layout
        self.m = geometry.memberCount
        self.epoch = owner.epoch
        self.sliceOffset = layout.journalSliceOffset(director: owner.director)
        self.sliceBytes = layout.journalSliceBytes
        self.payloadCapacity = DriveLayout.payloadCapacity(stripUnitBytes: geometry.stripUnitBytes)
        self.position = Array(repeating: UInt64(JournalFormat.blockBytes), count: m)
        self.buffers = Arena(sliceBytes: JournalFormat.blockBytes + payloadCapacity, sliceCount: m)
        self.entryCount = Array(repeating: 0, count: m)
        self.payloadBytes = Array(repeating: 0, count: m)
        self.pendingCapacity = JournalFormat.entryCapacity * m
        self.pending = .allocate(capacity: pendingCapacity)
        // Every journaled stripe costs at least 4 KiB of some drive's slice in this epoch: that bounds the set.
        journaledLimit = Int(sliceBytes / 4096) * m
        var size = 1024
        while size < 2 * journaledLimit { size <<= 1 }
        journaledMask = size - 1
        journaled = .allocate(capacity: size)
        journaled.initialize(repeating: .max, count: size)
        intentWords = Int((geometry.stripeCount / DriveLayout.intentRegionStripes + 64) / 64)
        intentBits = .allocate(capacity: intentWords)
        intentBits.initialize(repeating: 0, count: intentWords)
        epochBlock = Arena(sliceBytes: JournalFormat.blockBytes, sliceCount: 1)
    }

    deinit {
        pending.deallocate()
        journaled.deallocate()
        intentBits.deallocate()
        intentFirsts.deallocate()
    }

    // MARK: The open batch

    func isPending(_ stripe: UInt64) -> Bool {
        for i in 0..<pendingCount where pending[i] == stripe { return true }
        return false
    }

    var hasOpenBatch: Bool { pendingCount > 0 }
    var hasEntries: Bool {
        for d in 0..<m where entryCount[d] > 0 { return true }
        return false
    }

    /// Whether `count` more payload bytes for each member in `members` fit the open batch.
    func fits(members: UInt64, count: Int) -> Bool {
        guard pendingCount < pendingCapacity else { return false }
        var rest = members
        while rest != 0 {
            let d = rest.trailingZeroBitCount
            rest &= rest - 1
            if entryCount[d] == JournalFormat.entryCapacity || payloadBytes[d] + count > payloadCapacity { return false }
        }
        return true
    }

    /// Adds the new contents of one strip range on member `d` to the open batch: the copy the journal exists for.
    func add(member d: Int, stripe: UInt64, offsetBytes: Int, count: Int, from source: UnsafeRawPointer, memory: MemoryServices) {
        precondition(entryCount[d] < JournalFormat.entryCapacity && payloadBytes[d] + count <= payloadCapacity, "journal batch overflow")
        let buffer = buffers.slice(d)
        encodeEntry(into: buffer, index: entryCount[d], JournalEntry(kind: .data, stripe: stripe, offsetBytes: offsetBytes, count: count))
        memory.copy(from: source, to: buffer + JournalFormat.blockBytes + payloadBytes[d], byteCount: count)
        entryCount[d] += 1
        payloadBytes[d] += count
    }

    func notePending(_ stripe: UInt64) {
        if !isPending(stripe) {
            pending[pendingCount] = stripe
            pendingCount += 1
        }
    }

    // MARK: Stripes journaled in this epoch

    func wasJournaled(_ stripe: UInt64) -> Bool {
        var i = Int(truncatingIfNeeded: (stripe &* 0x9E37_79B9_7F4A_7C15) >> 20) & journaledMask
        while true {
            let v = journaled[i]
            if v == stripe { return true }
            if v == .max { return false }
            i = (i + 1) & journaledMask
        }
    }

    /// False when the set is full (the caller starts a new epoch).
    private func insertJournaled(_ stripe: UInt64) -> Bool {
        var i = Int(truncatingIfNeeded: (stripe &* 0x9E37_79B9_7F4A_7C15) >> 20) & journaledMask
        while true {
            let v = journaled[i]
            if v == stripe { return true }
            if v == .max {
                guard journaledCount < journaledLimit else { return false }
                journaled[i] = stripe
                journaledCount += 1
                return true
            }
            i = (i + 1) & journaledMask
        }
    }

    // MARK: Intents

    func hasIntent(stripe: UInt64) -> Bool {
        let region = Int(stripe / DriveLayout.intentRegionStripes)
        return intentBits[region >> 6] & (1 << UInt64(region & 63)) != 0
    }

    /// Regions one intent record names: the one written now and the next ones without an intent yet, so a stream
    /// of full-stripe writes pays one record and flush per `intentRegionsAhead` regions.
    static let intentRegionsAhead: UInt64 = 4

    /// Calls `body` with the first stripe of each region the intent for `stripe` covers.
    private func intentRegionsFor(stripe: UInt64, stripeCount: UInt64, _ body: (UInt64) -> Void) {
        let first = stripe / DriveLayout.intentRegionStripes
        let regions = (stripeCount + DriveLayout.intentRegionStripes - 1) / DriveLayout.intentRegionStripes
        for region in first..<min(first + StripeJournal.intentRegionsAhead, regions)
        where region == first || !hasIntent(stripe: region * DriveLayout.intentRegionStripes) {
            body(region * DriveLayout.intentRegionStripes)
        }
    }

    /// Puts the intent entries for `stripe`'s region (and the next ones) in every member's header of the (empty)
    /// open batch, and remembers which regions they name.
    func addIntent(stripe: UInt64, stripeCount: UInt64, members: UInt64) {
        precondition(pendingCount == 0, "intents go in a batch of their own")
        intentCount = 0
        intentRegionsFor(stripe: stripe, stripeCount: stripeCount) { first in
            intentFirsts[intentCount] = first
            intentCount += 1
            let entry = JournalEntry(kind: .intent, stripe: first, offsetBytes: 0, count: Int(min(DriveLayout.intentRegionStripes, stripeCount - first)))
            var rest = members
            while rest != 0 {
                let d = rest.trailingZeroBitCount
                rest &= rest - 1
                encodeEntry(into: buffers.slice(d), index: entryCount[d], entry)
                entryCount[d] += 1
            }
        }
    }

    /// The intents `addIntent` put down are on the drives (in whatever epoch the commit wrote them): exactly those
    /// regions are marked.
    func markIntent() {
        for i in 0..<intentCount {
            let region = Int(intentFirsts[i] / DriveLayout.intentRegionStripes)
            intentBits[region >> 6] |= 1 << UInt64(region & 63)
            intentRegions += 1
        }
        intentCount = 0
        marks.journalIntents.add(1, ordering: .relaxed)
    }

    // MARK: Commit

    /// Whether the open batch's records fit the slice from where each member is.
    func batchFits(members: UInt64) -> Bool {
        var rest = members
        while rest != 0 {
            let d = rest.trailingZeroBitCount
            rest &= rest - 1
            if position[d] + UInt64(JournalFormat.blockBytes + payloadBytes[d]) > sliceBytes { return false }
        }
        // The stripes of this batch join the epoch's set: room for all of them, or a new epoch.
        return journaledCount + pendingCount <= journaledLimit
    }

    /// Members with something in the open batch.
    var batchMembers: UInt64 {
        var mask: UInt64 = 0
        for d in 0..<m where entryCount[d] > 0 { mask |= 1 << UInt64(d) }
        return mask
    }

    /// Queues member `d`'s record of the open batch under sequence `sequence`, naming `batchMask`.
    func queueRecord(member d: Int, batchMask: UInt64, sequence: UInt64, io: DriveIO) {
        let buffer = buffers.slice(d)
        let payload = payloadBytes[d]
        let crc = crc32c(buffer + JournalFormat.blockBytes, count: payload)
        encodeRecordHeader(
            into: buffer, entryCount: entryCount[d], arrayUUID: owner.arrayUUID, epoch: epoch, director: owner.director, member: d,
            sequence: sequence, batchMask: batchMask, payloadBytes: payload, payloadCRC: crc)
        let bytes = JournalFormat.blockBytes + payload
        io.queueDurableWrite(drive: d, from: buffer, count: bytes, offsetBytes: sliceOffset + position[d])
        position[d] += UInt64(bytes)
    }

    func nextSequence() -> UInt64 {
        sequence += 1
        return sequence
    }

    /// Calls `body` with each of member `d`'s data entries in the open batch: where it goes on the drive, how many
    /// bytes, and the new contents in the batch buffer.
    @inline(__always)
    func forEachData(member d: Int, geometry: ArrayGeometry, _ body: (UInt64, Int, UnsafeMutableRawPointer) -> Void) {
        let buffer = buffers.slice(d)
        var payload = JournalFormat.blockBytes
        for i in 0..<entryCount[d] {
            let at = JournalFormat.entriesOffset + i * JournalFormat.entryBytes
            guard buffer.load(fromByteOffset: at + 16, as: UInt8.self) == JournalEntry.Kind.data.rawValue else { continue }
            let stripe = UInt64(littleEndian: buffer.loadUnaligned(fromByteOffset: at, as: UInt64.self))
            let offset = Int(UInt32(littleEndian: buffer.loadUnaligned(fromByteOffset: at + 8, as: UInt32.self)))
            let count = Int(UInt32(littleEndian: buffer.loadUnaligned(fromByteOffset: at + 12, as: UInt32.self)))
            body(geometry.driveOffset(stripe: stripe) + UInt64(offset), count, buffer + payload)
            payload += count
        }
    }

    /// Queues the in-place writes of member `d`'s data entries, submitting whenever the ring is full.
    func queueInPlace(member d: Int, geometry: ArrayGeometry, io: DriveIO) {
        forEachData(member: d, geometry: geometry) { driveOffset, count, data in
            if io.queuedCount == io.capacity { io.submit() }
            io.queueWrite(drive: d, from: data, count: count, offsetBytes: driveOffset)
        }
    }

    /// After the in-place writes: the batch's stripes are journaled in this epoch; the batch is empty again.
    func closeBatch() {
        for i in 0..<pendingCount { _ = insertJournaled(pending[i]) }
        marks.journalBatches.add(1, ordering: .relaxed)
        for d in 0..<m {
            marks.journalBytes.add(UInt64(payloadBytes[d]), ordering: .relaxed)
            entryCount[d] = 0
            payloadBytes[d] = 0
        }
        pendingCount = 0
    }

    /// Starts the next epoch's bookkeeping (the caller flushed the drives and wrote the epoch blocks).
    func beginEpoch(_ next: UInt64) {
        epoch = next
        for d in 0..<m { position[d] = UInt64(JournalFormat.blockBytes) }
        journaled.update(repeating: .max, count: journaledMask + 1)
        journaledCount = 0
        intentBits.update(repeating: 0, count: intentWords)
        intentRegions = 0
        marks.journalEpochs.add(1, ordering: .relaxed)
    }
}
