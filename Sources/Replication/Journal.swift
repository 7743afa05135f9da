// The journal of an asynchronous group: an NBD export on R2's side (`--journal URI`) that takes each delta set
// whole before any of it reaches the images. Applying a set is many writes to several exports; a link that goes
// mid-way would leave R2 a mix of two cycles. With the set and a header saying "pending" on R2's side first, the
// images can always be brought to the set's boundary: by whoever applies sets (R1, or a receiver on R2's side), or
// on R2's side without R1 (`vsa replica recover`).
//
// Layout (little-endian):
//   0       header, 4 KiB, written by R1 only: magic "VSAJRNL1", version 2, state, member count, CRC32C of the set
//           (its records, then its blocks), cycle, first slot, count, slot count, the group's name, a nonce (random,
//           new with every header written), who applies sets (R1 or R2's receiver), each member image's size (at
//           192, so `recover` can tell images given in the wrong order); CRC32C of the header in its last 4 bytes
//   4096    the receiver's stamp, 4 KiB, written by R2's receiver only (`ReceiverStamp`)
//   8192    records, 16 bytes per slot (member, block): `slotCount` of them, rounded up to 4 KiB
//   after   blocks, 4 KiB per slot
// A set is an arc of slots (DeltaSets' ring), so it is written as at most two runs of records and two of blocks.
//
// The header's state says what R2's images are:
//   consistent  the source as of the boundary of `cycle`; nothing to apply
//   pending     the set of `cycle` is here whole and may be partly applied: apply it (again) and they are at its
//               boundary (unless the receiver's stamp says it applied this very header's set)
//   resyncing   changed tracks are being copied over (after a partition or a suspend): a mix, consistent again only
//               when the resync ends (SRDF/A's R2 is inconsistent in the same window)
//
// Who applies (`--apply`): R1 itself (every byte of a set crosses the link twice, once to the journal and once to
// the images: an NBD export cannot copy within itself), or a `vsa replica receive` next to R2's images, which reads
// each pending set there and applies it (a set crosses once). The two sides then share the journal by ownership:
// R1 writes only the header, the receiver only its stamp. The receiver stamps the nonce of every header it has read
// while idle (`saw`) and of every pending set it has applied (`applied`), and beats (`progress`) while it applies.
// R1 waits for `applied` before it writes the next set, and for `saw` of its "resyncing" header before it writes
// the images itself (a resync, after a partition): the receiver reads the header again after every set it applies,
// so once it has said it saw "resyncing" it writes no image until R1 says "pending" again.
import ArrayModel
import MemoryServices
import SysPosix

#if canImport(Glibc)
    import Glibc
#endif

/// One slot's record in the journal: which block of which member LUN the slot holds.
struct JournalRecord {
    private var memberLE: UInt32
    private var reserved: UInt32 = 0
    private var blockLE: UInt64
    init(member: UInt32, block: UInt64) {
        memberLE = member.littleEndian
        blockLE = block.littleEndian
    }
    var member: UInt32 { UInt32(littleEndian: memberLE) }
    var block: UInt64 { UInt64(littleEndian: blockLE) }
}

public struct JournalHeader: Equatable, Sendable {
    public enum State: UInt32, Sendable { case consistent = 0, pending = 1, resyncing = 2 }
    /// Who writes a pending set's blocks to the images: R1 itself, or a receiver on R2's side.
    public enum Applier: UInt32, Sendable { case r1 = 0, r2 = 1 }
    public var state: State
    public var cycle: UInt64
    public var start: UInt64 = 0
    public var count: UInt64 = 0
    public var slotCount: UInt64
    public var memberCount: UInt32
    public var setCRC: UInt32 = 0
    public var group: String
    /// Each member image's size, in the group's order.
    public var memberBytes: [UInt64] = []
    public var applier: Applier = .r1
    /// New with every header R1 writes: what the receiver's stamp names to say it read (or applied) this one.
    public var nonce: UInt64 = 0

    static let magic: UInt64 = 0x3149_4E52_4A41_5356  // "VSAJRNL1"
    static let headerBytes = 4096
    static let recordBytes = 16
    /// At most 4 GiB of slots (what `--cache` allows).
    static let slotCountMax: UInt64 = 1 << 20

    static let version: UInt32 = 2
    static let stampOffset: UInt64 = 4096
    static func recordsOffset() -> UInt64 { 8192 }
    static func blocksOffset(slotCount: UInt64) -> UInt64 { recordsOffset() + (slotCount * UInt64(recordBytes) + 4095) / 4096 * 4096 }
    /// The bytes a journal for `slotCount` slots needs.
    public static func bytes(slotCount: UInt64) -> UInt64 { blocksOffset(slotCount: slotCount) + slotCount * UInt64(DeltaSets.blockBytes) }

    func encode(into buffer: UnsafeMutableRawPointer) {
        memset(buffer, 0, Self.headerBytes)
        func put<T: FixedWidthInteger>(_ v: T, _ at: Int) { buffer.storeBytes(of: v.littleEndian, toByteOffset: at, as: T.self) }
        put(Self.magic, 0)
        put(Self.version, 8)
        put(state.rawValue, 12)
        put(memberCount, 16)
        put(setCRC, 20)
        put(cycle, 24)
        put(start, 32)
        put(count, 40)
        put(slotCount, 48)
        let name = Array(group.utf8.prefix(64))
        put(UInt32(name.count), 56)
        for (i, b) in name.enumerated() { buffer.storeBytes(of: b, toByteOffset: 60 + i, as: UInt8.self) }
        put(nonce, 128)
        put(applier.rawValue, 136)
        for (i, size) in memberBytes.prefix(256).enumerated() { put(size, 192 + 8 * i) }
        put(crc32c(buffer, count: Self.headerBytes - 4), Self.headerBytes - 4)
    }

    /// A header read from a journal of `journalBytes`: every number bounded before it is used (a journal is input).
    static func decode(_ buffer: UnsafeRawPointer, journalBytes: UInt64) throws(VSAError) -> JournalHeader {
        func get<T: FixedWidthInteger>(_ at: Int, _: T.Type) -> T { T(littleEndian: buffer.loadUnaligned(fromByteOffset: at, as: T.self)) }
        guard get(0, UInt64.self) == magic else { throw VSAError("holds no vsa journal (no header)") }
        guard get(headerBytes - 4, UInt32.self) == crc32c(buffer, count: headerBytes - 4) else {
            throw VSAError("has a journal header that fails its checksum")
        }
        guard get(8, UInt32.self) == version else { throw VSAError("has a journal of version \(get(8, UInt32.self)), not \(version)") }
        guard let state = State(rawValue: get(12, UInt32.self)) else { throw VSAError("has a journal header in no known state") }
        guard let applier = Applier(rawValue: get(136, UInt32.self)) else { throw VSAError("has a journal header naming no known applier") }
        let slotCount = get(48, UInt64.self)
        guard slotCount >= 1, slotCount <= slotCountMax, bytes(slotCount: slotCount) <= journalBytes else {
            throw VSAError("has a journal header for \(slotCount) slots, which do not fit its \(journalBytes) bytes")
        }
        let start = get(32, UInt64.self)
        let count = get(40, UInt64.self)
        guard start < slotCount, count <= slotCount else { throw VSAError("has a journal header whose set (\(start), \(count)) is out of bounds") }
        let members = get(16, UInt32.self)
        guard members >= 1, members <= 256 else { throw VSAError("has a journal header for \(members) LUNs") }
        let nameCount = Int(min(get(56, UInt32.self), 64))
        let name = String(decoding: UnsafeRawBufferPointer(start: buffer + 60, count: nameCount), as: UTF8.self)
        return JournalHeader(
            state: state, cycle: get(24, UInt64.self), start: start, count: count, slotCount: slotCount, memberCount: members,
            setCRC: get(20, UInt32.self), group: name, memberBytes: (0..<Int(members)).map { get(192 + 8 * $0, UInt64.self) }, applier: applier,
            nonce: get(128, UInt64.self))
    }
}

/// What R2's receiver says (the journal's second 4 KiB, written by the receiver only): the nonce of the last header
/// it read while idle, of the last pending set it applied (and that set's cycle), and a count that goes up while it
/// applies one, so R1 can tell a receiver at work from one that is gone.
public struct ReceiverStamp: Equatable, Sendable {
    public var saw: UInt64 = 0
    public var applied: UInt64 = 0
    public var appliedCycle: UInt64 = 0
    public var progress: UInt64 = 0

    static let magic: UInt64 = 0x3156_4345_5241_5356  // "VSARECV1"

    func encode(into buffer: UnsafeMutableRawPointer) {
        memset(buffer, 0, JournalHeader.headerBytes)
        func put<T: FixedWidthInteger>(_ v: T, _ at: Int) { buffer.storeBytes(of: v.littleEndian, toByteOffset: at, as: T.self) }
        put(Self.magic, 0)
        put(saw, 8)
        put(applied, 16)
        put(appliedCycle, 24)
        put(progress, 32)
        put(crc32c(buffer, count: JournalHeader.headerBytes - 4), JournalHeader.headerBytes - 4)
    }

    /// The stamp in `buffer`, or nil when there is none (never written, or torn: no receiver has said anything).
    static func decode(_ buffer: UnsafeRawPointer) -> ReceiverStamp? {
        func get<T: FixedWidthInteger>(_ at: Int, _: T.Type) -> T { T(littleEndian: buffer.loadUnaligned(fromByteOffset: at, as: T.self)) }
        guard get(0, UInt64.self) == magic, get(JournalHeader.headerBytes - 4, UInt32.self) == crc32c(buffer, count: JournalHeader.headerBytes - 4) else {
            return nil
        }
        return ReceiverStamp(saw: get(8, UInt64.self), applied: get(16, UInt64.self), appliedCycle: get(24, UInt64.self), progress: get(32, UInt64.self))
    }
}

/// The journal and the images of one group, as R1's group thread (sending sets, replaying a pending one) and
/// `vsa replica recover` (on R2's side) use them.
struct Journal {
    let journal: RemoteImage
    let images: [RemoteImage]
    let group: String
    /// Who applies the sets R1 sends (R1's side only).
    let applier: JournalHeader.Applier
    /// A 4 KiB header buffer, a 4 KiB stamp buffer and a 4 MiB one for replays (allocated once per user).
    private let header: UnsafeMutableRawPointer
    private let stamp: UnsafeMutableRawPointer
    private let chunk: UnsafeMutableRawPointer
    static let chunkBytes = 4 << 20

    init(journal: RemoteImage, images: [RemoteImage], group: String, applier: JournalHeader.Applier = .r1) {
        self.journal = journal
        self.images = images
        self.group = group
        self.applier = applier
        header = Posix.allocateAligned(bytes: JournalHeader.headerBytes)
        stamp = Posix.allocateAligned(bytes: JournalHeader.headerBytes)
        chunk = Posix.allocateAligned(bytes: Self.chunkBytes)
    }

    func release() {
        Posix.free(header)
        Posix.free(stamp)
        Posix.free(chunk)
    }

    /// Writes the header (FUA): R2's images are `state` as of `cycle`. Its nonce, or nil when the link failed.
    @discardableResult
    func mark(_ state: JournalHeader.State, cycle: UInt64, slotCount: Int) -> UInt64? {
        write(
            JournalHeader(
                state: state, cycle: cycle, slotCount: UInt64(slotCount), memberCount: UInt32(images.count), group: group,
                memberBytes: images.map(\.sizeBytes), applier: applier))
    }

    /// Writes a header with a new nonce (FUA); the nonce, or nil when the export did not take it.
    private func write(_ h: JournalHeader) -> UInt64? {
        var h = h
        var generator = SystemRandomNumberGenerator()
        h.nonce = generator.next() | 1
        h.encode(into: header)
        return journal.write(offsetBytes: 0, count: JournalHeader.headerBytes, from: header) ? h.nonce : nil
    }

    enum Ping {
        /// Wait for the receiver's stamp to name `nonce` (as applied: the header is a pending set's).
        case wait(nonce: UInt64, applied: Bool)
        /// The receiver has answered the header as it is: it is idle, and stays so until R1 writes "pending".
        case nothing
        case linkFailed
    }

    /// R1, before it writes R2's images itself: what the receiver must say first. A pending set must be applied
    /// (the stamp's `applied` names its header), any other header seen while idle (`saw`). Nothing is rewritten, so a
    /// pending set stays in the journal for `recover` for as long as the receiver is gone. A header that is not this
    /// group's, or does not decode, is replaced by "resyncing" and the receiver must have seen that.
    func ping(cycle: UInt64, slotCount: Int) -> Ping {
        guard journal.read(offsetBytes: 0, count: JournalHeader.headerBytes, into: header) else { return .linkFailed }
        let h: JournalHeader
        do {
            h = try JournalHeader.decode(header, journalBytes: journal.sizeBytes)
            try checkShape(h)
            guard h.group == group else { throw VSAError("another group's") }
        } catch {
            guard let nonce = mark(.resyncing, cycle: cycle, slotCount: slotCount) else { return .linkFailed }
            return .wait(nonce: nonce, applied: false)
        }
        let stamp: ReceiverStamp?
        do { stamp = try readStamp() } catch { return .linkFailed }
        let applied = h.state == .pending && h.applier == .r2
        if let stamp, applied ? stamp.applied == h.nonce : stamp.saw == h.nonce { return .nothing }
        return .wait(nonce: h.nonce, applied: applied)
    }

    /// The receiver's stamp: nil when none is there (or it is torn); throws when the journal cannot be read.
    func readStamp() throws(VSAError) -> ReceiverStamp? {
        guard journal.read(offsetBytes: JournalHeader.stampOffset, count: JournalHeader.headerBytes, into: stamp) else {
            throw VSAError("\(journal.uri) cannot be read")
        }
        return ReceiverStamp.decode(stamp)
    }

    /// The receiver's side: writes its stamp (FUA). False when the export did not take it.
    func writeStamp(_ s: ReceiverStamp) -> Bool {
        s.encode(into: stamp)
        return journal.write(offsetBytes: JournalHeader.stampOffset, count: JournalHeader.headerBytes, from: stamp)
    }

    /// Sends a delta set: `stage` (the set on R2's side, pending), its blocks to the images (flushed), the header
    /// "consistent" at its cycle. False when the link failed anywhere (R2 is then either untouched or has the whole
    /// set pending in its journal).
    func send(_ set: DeltaSets.Set, from sets: DeltaSets) -> Bool {
        guard stage(set, from: sets) != nil else { return false }
        let slots = sets.slotCount
        // The images, from the arena in ring order.
        let refused = apply(
            count: set.count, record: { sets.records[(set.start + $0) % slots] },
            block: { UnsafeRawPointer(sets.arena + (set.start + $0) % slots * DeltaSets.blockBytes) })
        guard refused == nil else { return false }
        return mark(.consistent, cycle: set.cycle, slotCount: slots) != nil
    }

    /// A delta set's records and blocks to the journal (flushed), then the header "pending" (FUA): the set is on
    /// R2's side whole. The header's nonce (what R2's receiver names once it has applied the set), or nil when the
    /// link failed.
    func stage(_ set: DeltaSets.Set, from sets: DeltaSets) -> UInt64? {
        let slots = sets.slotCount
        // The set's arc, as at most two runs of slots.
        let firstRun = min(set.count, slots - set.start)
        let runs = [(set.start, firstRun), (0, set.count - firstRun)].filter { $0.1 > 0 }
        let blocksAt = JournalHeader.blocksOffset(slotCount: UInt64(slots))
        var crc: UInt32 = 0
        for (s, n) in runs { crc = crc32c(UnsafeRawPointer(sets.records + s), count: n * JournalHeader.recordBytes, seed: crc) }
        for (s, n) in runs { crc = crc32c(sets.arena + s * DeltaSets.blockBytes, count: n * DeltaSets.blockBytes, seed: crc) }
        var pieces: [(UInt64, Int, UnsafeRawPointer)] = []
        for (s, n) in runs {
            pieces.append(
                (JournalHeader.recordsOffset() + UInt64(s * JournalHeader.recordBytes), n * JournalHeader.recordBytes, UnsafeRawPointer(sets.records + s)))
            pieces.append((blocksAt + UInt64(s * DeltaSets.blockBytes), n * DeltaSets.blockBytes, UnsafeRawPointer(sets.arena + s * DeltaSets.blockBytes)))
        }
        var next = 0
        guard
            journal.writeRuns({ () -> (UInt64, Int, UnsafeRawPointer)? in
                defer { next += 1 }
                return next < pieces.count ? pieces[next] : nil
            })
        else { return nil }
        return write(
            JournalHeader(
                state: .pending, cycle: set.cycle, start: UInt64(set.start), count: UInt64(set.count), slotCount: UInt64(slots),
                memberCount: UInt32(images.count), setCRC: crc, group: group, memberBytes: images.map(\.sizeBytes), applier: applier))
    }

    /// Writes blocks `0..<count` (block i is `record(i)`'s, its data at `block(i)`) to the images and flushes them:
    /// each member's blocks on one connection, neighbours (the next block of the LUN, its data right after in
    /// memory) in one write. The image that did not take them, if one did not.
    private func apply(count: Int, record: (Int) -> JournalRecord, block: (Int) -> UnsafeRawPointer) -> RemoteImage? {
        let bytes = DeltaSets.blockBytes
        for (member, image) in images.enumerated() {
            var i = 0
            let sent = image.writeRuns { () -> (UInt64, Int, UnsafeRawPointer)? in
                while i < count {
                    let r = record(i)
                    let start = block(i)
                    i += 1
                    guard Int(r.member) == member else { continue }
                    var n = 1
                    while i < count, record(i).member == r.member, record(i).block == r.block + UInt64(n), block(i) == start + n * bytes {
                        n += 1
                        i += 1
                    }
                    return (r.block * UInt64(bytes), n * bytes, start)
                }
                return nil
            }
            guard sent else { return image }
        }
        return nil
    }

    /// Reads the header: what state R2's images are in.
    func readHeader() throws(VSAError) -> JournalHeader {
        guard journal.read(offsetBytes: 0, count: JournalHeader.headerBytes, into: header) else {
            throw VSAError("\(journal.uri) cannot be read")
        }
        do { return try JournalHeader.decode(header, journalBytes: journal.sizeBytes) } catch { throw VSAError("\(journal.uri) \(error.message)") }
    }

    /// Applies a pending set from the journal to the images (again, if it was partly applied) and, if
    /// `markConsistent`, marks them consistent at its cycle. Every record and the set's checksum are checked before
    /// anything is written: a set that fails them is not applied (the images stay as they are). A set the
    /// receiver's stamp says it applied is not applied again. The images must be the group's, in its order (their
    /// sizes, as the header keeps them). `beat` is called after each 4 MiB checked or applied. Returns the header as it was read
    /// (its state consistent if it was pending and is now applied) and the blocks written.
    func replay(markConsistent: Bool = true, beat: () -> Void = {}) throws(VSAError) -> (header: JournalHeader, appliedBlocks: Int) {
        try replay(try readHeader(), markConsistent: markConsistent, beat: beat)
    }

    /// The images are the group's, in its order (the header keeps each one's size).
    func checkShape(_ h: JournalHeader) throws(VSAError) {
        guard Int(h.memberCount) == images.count else {
            throw VSAError("\(journal.uri) is the journal of a group of \(h.memberCount) LUNs; \(images.count) targets were given")
        }
        for (i, image) in images.enumerated() where image.sizeBytes != h.memberBytes[i] {
            throw VSAError(
                "\(image.uri) is \(image.sizeBytes) bytes, but the group's LUN \(i + 1) is \(h.memberBytes[i]): give the targets in the order create had them")
        }
    }

    func replay(_ h: JournalHeader, markConsistent: Bool, beat: () -> Void) throws(VSAError) -> (header: JournalHeader, appliedBlocks: Int) {
        try checkShape(h)
        guard h.state == .pending else { return (h, 0) }
        var after = h
        after.state = .consistent
        after.start = 0
        after.count = 0
        after.setCRC = 0
        if h.applier == .r2, try readStamp()?.applied == h.nonce {
            // The receiver applied this very set: nothing to write but the header.
            guard !markConsistent || write(after) != nil else {
                throw VSAError("\(journal.uri) did not take its header; the set stays pending (applying it again is safe)")
            }
            return (after, 0)
        }
        let slots = Int(h.slotCount)
        let count = Int(h.count)
        let start = Int(h.start)
        let blocksAt = JournalHeader.blocksOffset(slotCount: h.slotCount)
        let perChunk = Self.chunkBytes / DeltaSets.blockBytes
        let recordsPerChunk = Self.chunkBytes / JournalHeader.recordBytes
        // The set's records and blocks, a chunk at a time, in ring order: `body(position, n, pointer)`.
        func each(records: Bool, _ body: (Int, Int, UnsafeRawPointer) throws(VSAError) -> Void) throws(VSAError) {
            var position = 0
            while position < count {
                let slot = (start + position) % slots
                let n = min(count - position, slots - slot, records ? recordsPerChunk : perChunk)
                let (offset, bytes) =
                    records
                    ? (JournalHeader.recordsOffset() + UInt64(slot * JournalHeader.recordBytes), n * JournalHeader.recordBytes)
                    : (blocksAt + UInt64(slot * DeltaSets.blockBytes), n * DeltaSets.blockBytes)
                guard journal.read(offsetBytes: offset, count: bytes, into: chunk) else { throw VSAError("\(journal.uri) cannot be read") }
                try body(position, n, chunk)
                position += n
            }
        }
        // Pass 1: the checksum over records then blocks, every record in bounds, and kept (16 bytes a slot, at most
        // 16 MiB: pass 2 uses these, not a second reading); each chunk of blocks' own checksum kept too.
        var crc: UInt32 = 0
        var records = [JournalRecord](repeating: JournalRecord(member: 0, block: 0), count: count)
        try each(records: true) { (position, n, p) throws(VSAError) in
            crc = crc32c(p, count: n * JournalHeader.recordBytes, seed: crc)
            for i in 0..<n {
                let r = p.loadUnaligned(fromByteOffset: i * JournalHeader.recordBytes, as: JournalRecord.self)
                let member = Int(r.member)
                guard member < images.count, r.block < images[member].sizeBytes / UInt64(DeltaSets.blockBytes) else {
                    throw VSAError("\(journal.uri) holds a record past its LUN's end (LUN \(member), block \(r.block)); nothing applied")
                }
                records[position + i] = r
            }
            beat()
        }
        var chunkCRCs: [UInt32] = []
        try each(records: false) { (_, n, p) throws(VSAError) in
            crc = crc32c(p, count: n * DeltaSets.blockBytes, seed: crc)
            chunkCRCs.append(crc32c(p, count: n * DeltaSets.blockBytes))
            beat()
        }
        guard crc == h.setCRC else { throw VSAError("\(journal.uri) holds a set that fails its checksum; nothing applied") }
        // Pass 2: the blocks read again, each chunk written only if it is what pass 1 checked (an export that changes
        // under us writes nothing it did not show the first time; the set stays pending).
        var chunkIndex = 0
        try each(records: false) { (position, n, p) throws(VSAError) in
            guard chunkIndex < chunkCRCs.count, crc32c(p, count: n * DeltaSets.blockBytes) == chunkCRCs[chunkIndex] else {
                throw VSAError("\(journal.uri) changed while it was read; the set stays pending")
            }
            chunkIndex += 1
            if let image = apply(count: n, record: { records[position + $0] }, block: { UnsafeRawPointer(p + $0 * DeltaSets.blockBytes) }) {
                throw VSAError("\(image.uri) did not take a write; the set stays pending in the journal")
            }
            beat()
        }
        guard !markConsistent || write(after) != nil else {
            throw VSAError("\(journal.uri) did not take its header; the set stays pending (applying it again is safe)")
        }
        return (after, count)
    }
}
