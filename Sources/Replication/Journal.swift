// The journal of an asynchronous group: an NBD export on R2's side (`--journal URI`) that takes each delta set
// whole before any of it reaches the images. Applying a set is many writes to several exports; a link that goes
// mid-way would leave R2 a mix of two cycles. With the set and a header saying "pending" on R2's side first, the
// images can always be brought to the set's boundary: by R1 when the link comes back, or on R2's side without R1
// (`vsa replica recover`).
//
// Layout (little-endian):
//   0       header, 4 KiB: magic "VSAJRNL1", version 1, state, member count, cycle, first slot, count, slot count,
//           CRC32C of the set (its records, then its blocks), the group's name, each member image's size (at 128,
//           so `recover` can tell images given in the wrong order); CRC32C of the header in its last 4 bytes
//   4096    records, 16 bytes per slot (member, block): `slotCount` of them, rounded up to 4 KiB
//   after   blocks, 4 KiB per slot
// A set is an arc of slots (DeltaSets' ring), so it is written as at most two runs of records and two of blocks.
//
// The header's state says what R2's images are:
//   consistent  the source as of the boundary of `cycle`; nothing to apply
//   pending     the set of `cycle` is here whole and may be partly applied: apply it (again) and they are at its
//               boundary
//   resyncing   changed tracks are being copied over (after a partition or a suspend): a mix, consistent again only
//               when the resync ends (SRDF/A's R2 is inconsistent in the same window)
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

    static let magic: UInt64 = 0x3149_4E52_4A41_5356  // "VSAJRNL1"
    static let headerBytes = 4096
    static let recordBytes = 16
    /// At most 4 GiB of slots (what `--cache` allows).
    static let slotCountMax: UInt64 = 1 << 20

    static func recordsOffset() -> UInt64 { UInt64(headerBytes) }
    static func blocksOffset(slotCount: UInt64) -> UInt64 { UInt64(headerBytes) + (slotCount * UInt64(recordBytes) + 4095) / 4096 * 4096 }
    /// The bytes a journal for `slotCount` slots needs.
    public static func bytes(slotCount: UInt64) -> UInt64 { blocksOffset(slotCount: slotCount) + slotCount * UInt64(DeltaSets.blockBytes) }

    func encode(into buffer: UnsafeMutableRawPointer) {
        memset(buffer, 0, Self.headerBytes)
        func put<T: FixedWidthInteger>(_ v: T, _ at: Int) { buffer.storeBytes(of: v.littleEndian, toByteOffset: at, as: T.self) }
        put(Self.magic, 0)
        put(UInt32(1), 8)
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
        for (i, size) in memberBytes.prefix(256).enumerated() { put(size, 128 + 8 * i) }
        put(crc32c(buffer, count: Self.headerBytes - 4), Self.headerBytes - 4)
    }

    /// A header read from a journal of `journalBytes`: every number bounded before it is used (a journal is input).
    static func decode(_ buffer: UnsafeRawPointer, journalBytes: UInt64) throws(VSAError) -> JournalHeader {
        func get<T: FixedWidthInteger>(_ at: Int, _: T.Type) -> T { T(littleEndian: buffer.loadUnaligned(fromByteOffset: at, as: T.self)) }
        guard get(0, UInt64.self) == magic else { throw VSAError("holds no vsa journal (no header)") }
        guard get(headerBytes - 4, UInt32.self) == crc32c(buffer, count: headerBytes - 4) else {
            throw VSAError("has a journal header that fails its checksum")
        }
        guard get(8, UInt32.self) == 1 else { throw VSAError("has a journal of version \(get(8, UInt32.self)), not 1") }
        guard let state = State(rawValue: get(12, UInt32.self)) else { throw VSAError("has a journal header in no known state") }
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
            setCRC: get(20, UInt32.self), group: name, memberBytes: (0..<Int(members)).map { get(128 + 8 * $0, UInt64.self) })
    }
}

/// The journal and the images of one group, as R1's group thread (sending sets, replaying a pending one) and
/// `vsa replica recover` (on R2's side) use them.
struct Journal {
    let journal: RemoteImage
    let images: [RemoteImage]
    let group: String
    /// A 4 KiB header buffer and a 4 MiB one for replays (allocated once per user).
    private let header: UnsafeMutableRawPointer
    private let chunk: UnsafeMutableRawPointer
    static let chunkBytes = 4 << 20

    init(journal: RemoteImage, images: [RemoteImage], group: String) {
        self.journal = journal
        self.images = images
        self.group = group
        header = Posix.allocateAligned(bytes: JournalHeader.headerBytes)
        chunk = Posix.allocateAligned(bytes: Self.chunkBytes)
    }

    func release() {
        Posix.free(header)
        Posix.free(chunk)
    }

    /// Writes the header (FUA): R2's images are `state` as of `cycle`.
    func mark(_ state: JournalHeader.State, cycle: UInt64, slotCount: Int) -> Bool {
        write(
            JournalHeader(
                state: state, cycle: cycle, slotCount: UInt64(slotCount), memberCount: UInt32(images.count), group: group,
                memberBytes: images.map(\.sizeBytes)))
    }

    private func write(_ h: JournalHeader) -> Bool {
        h.encode(into: header)
        return journal.write(offsetBytes: 0, count: JournalHeader.headerBytes, from: header)
    }

    /// Sends a delta set: its records and blocks to the journal (flushed), the header "pending" (FUA), its blocks to
    /// the images (flushed), the header "consistent" at its cycle. False when the link failed anywhere (R2 is then
    /// either untouched or has the whole set pending in its journal).
    func send(_ set: DeltaSets.Set, from sets: DeltaSets) -> Bool {
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
        else { return false }
        guard
            write(
                JournalHeader(
                    state: .pending, cycle: set.cycle, start: UInt64(set.start), count: UInt64(set.count), slotCount: UInt64(slots),
                    memberCount: UInt32(images.count), setCRC: crc, group: group, memberBytes: images.map(\.sizeBytes)))
        else { return false }
        // The images, from the arena in ring order.
        let refused = apply(
            count: set.count, record: { sets.records[(set.start + $0) % slots] },
            block: { UnsafeRawPointer(sets.arena + (set.start + $0) % slots * DeltaSets.blockBytes) })
        guard refused == nil else { return false }
        return mark(.consistent, cycle: set.cycle, slotCount: slots)
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

    /// Applies a pending set from the journal to the images (again, if it was partly applied) and marks them
    /// consistent at its cycle. Every record and the set's checksum are checked before anything is written: a set
    /// that fails them is not applied (the images stay as they are). The images must be the group's, in its order
    /// (their sizes, as the header keeps them). Returns the header as it is afterwards.
    func replay() throws(VSAError) -> (header: JournalHeader, appliedBlocks: Int) {
        let h = try readHeader()
        guard Int(h.memberCount) == images.count else {
            throw VSAError("\(journal.uri) is the journal of a group of \(h.memberCount) LUNs; \(images.count) targets were given")
        }
        for (i, image) in images.enumerated() where image.sizeBytes != h.memberBytes[i] {
            throw VSAError(
                "\(image.uri) is \(image.sizeBytes) bytes, but the group's LUN \(i + 1) is \(h.memberBytes[i]): give the targets in the order create had them")
        }
        guard h.state == .pending else { return (h, 0) }
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
        }
        var chunkCRCs: [UInt32] = []
        try each(records: false) { (_, n, p) throws(VSAError) in
            crc = crc32c(p, count: n * DeltaSets.blockBytes, seed: crc)
            chunkCRCs.append(crc32c(p, count: n * DeltaSets.blockBytes))
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
        }
        var after = h
        after.state = .consistent
        after.start = 0
        after.count = 0
        after.setCRC = 0
        guard write(after) else {
            throw VSAError("\(journal.uri) did not take its header; the set stays pending (applying it again is safe)")
        }
        return (after, count)
    }
}
