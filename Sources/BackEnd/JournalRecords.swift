// The stripe journal's on-drive records (docs/FORMAT.md, "Stripe journal"): the epoch block at the start of each
// director's slice and the 4 KiB header of each record. Little-endian, CRC32C-protected, versioned. Encoding runs on
// the hot path straight into the batch buffer (no arrays); decoding runs only when an array is assembled, over
// bytes read from a drive that may hold anything, so it checks every field it trusts.
import ArrayModel
import MemoryServices

public enum JournalFormat {
    public static let blockBytes = DriveLayout.journalBlockBytes
    public static let recordMagic = Array("VSA-JR01".utf8)
    public static let epochMagic = Array("VSA-JE01".utf8)
    public static let version: UInt32 = 1
    public static let entriesOffset = 128
    public static let entryBytes = 24
    /// Entries one record's header holds.
    public static let entryCapacity = (blockBytes - entriesOffset) / entryBytes
    static let headerCRCOffset = 16
    static let epochCRCOffset = 12
    static let epochRecordBytes = 64
    /// Epoch and sequence numbers at or past this are refused (they count up from 1; arithmetic on them must not trap).
    public static let epochMax: UInt64 = 1 << 62
}

/// One entry of a record: new contents of a range of one stripe's strip on the record's drive (the payload holds
/// them, in entry order), or the intent to write a region of stripes in place (no payload).
public struct JournalEntry: Equatable, Sendable {
    public enum Kind: UInt8, Sendable { case data = 1, intent = 2 }
    public var kind: Kind
    /// data: the stripe; intent: the region's first stripe.
    public var stripe: UInt64
    /// data: byte offset within the strip; intent: 0.
    public var offsetBytes: Int
    /// data: bytes; intent: stripes in the region.
    public var count: Int
    public init(kind: Kind, stripe: UInt64, offsetBytes: Int, count: Int) {
        self.kind = kind
        self.stripe = stripe
        self.offsetBytes = offsetBytes
        self.count = count
    }
}

/// A record header as read back from a drive.
public struct JournalHeader: Equatable, Sendable {
    public var arrayUUID: UUID128
    public var epoch: UInt64
    public var director: Int
    public var member: Int
    public var sequence: UInt64
    /// Members that got a record of this batch (bit i = member i).
    public var batchMask: UInt64
    public var payloadBytes: Int
    public var payloadCRC: UInt32
    public var entries: [JournalEntry]

    /// What a 4 KiB block read where a record may be turns out to hold.
    public enum Read: Equatable, Sendable {
        /// A whole, valid record of this array, director and drive.
        case record(JournalHeader)
        /// No record: free space, a torn write (its CRC fails), an older epoch's or another array's record.
        case none
        /// A record whose CRC holds but whose fields do not make sense for this array (the reason names the field):
        /// damage no crash explains. Recovery says so and replays nothing from there on in that slice.
        case damaged(String)
    }

    /// Decodes and checks a 4 KiB header against the array it must belong to.
    public static func decode(_ block: UnsafeRawPointer, count: Int, geometry: ArrayGeometry, arrayUUID: UUID128, director: Int, member: Int)
        -> JournalHeader?
    {
        if case .record(let header) = read(block, count: count, geometry: geometry, arrayUUID: arrayUUID, director: director, member: member) {
            return header
        }
        return nil
    }

    public static func read(_ block: UnsafeRawPointer, count: Int, geometry: ArrayGeometry, arrayUUID: UUID128, director: Int, member: Int) -> Read {
        guard count >= JournalFormat.blockBytes else { return .none }
        let bytes = UnsafeRawBufferPointer(start: block, count: JournalFormat.blockBytes)
        guard Array(bytes[0..<8]) == JournalFormat.recordMagic else { return .none }
        guard
            load(UInt32.self, bytes, JournalFormat.headerCRCOffset)
                == blockCRC(block, crcOffset: JournalFormat.headerCRCOffset, count: JournalFormat.blockBytes)
        else { return .none }
        let version = load(UInt32.self, bytes, 8)
        guard version == JournalFormat.version else { return .damaged("record format version \(version) is not supported") }
        let entryCount = Int(load(UInt32.self, bytes, 12))
        guard entryCount >= 1, entryCount <= JournalFormat.entryCapacity else { return .damaged("record entry count \(entryCount) invalid") }
        let header = JournalHeader(
            arrayUUID: UUID128(high: load(UInt64.self, bytes, 32), low: load(UInt64.self, bytes, 40)), epoch: load(UInt64.self, bytes, 24),
            director: Int(load(UInt32.self, bytes, 48)), member: Int(load(UInt32.self, bytes, 52)), sequence: load(UInt64.self, bytes, 56),
            batchMask: load(UInt64.self, bytes, 64), payloadBytes: Int(load(UInt32.self, bytes, 72)), payloadCRC: load(UInt32.self, bytes, 20),
            entries: [])
        let m = geometry.memberCount
        guard header.arrayUUID == arrayUUID else { return .none }
        guard header.director == director, header.member == member else {
            return .damaged("record of director \(header.director), drive \(header.member) in the wrong place")
        }
        guard header.sequence > 0 else { return .damaged("record sequence 0") }
        guard header.batchMask & (1 << UInt64(member)) != 0, m == 64 || header.batchMask >> UInt64(m) == 0 else {
            return .damaged("record batch mask \(String(header.batchMask, radix: 2)) invalid")
        }
        guard header.payloadBytes % 512 == 0, header.payloadBytes <= DriveLayout.payloadCapacity(stripUnitBytes: geometry.stripUnitBytes) else {
            return .damaged("record payload size \(header.payloadBytes) invalid")
        }
        var entries: [JournalEntry] = []
        var payload = 0
        for i in 0..<entryCount {
            let at = JournalFormat.entriesOffset + i * JournalFormat.entryBytes
            guard let kind = JournalEntry.Kind(rawValue: bytes[at + 16]) else { return .damaged("record entry \(i) kind \(bytes[at + 16]) unknown") }
            let entry = JournalEntry(
                kind: kind, stripe: load(UInt64.self, bytes, at), offsetBytes: Int(load(UInt32.self, bytes, at + 8)),
                count: Int(load(UInt32.self, bytes, at + 12)))
            switch kind {
            case .data:
                guard entry.stripe < geometry.stripeCount, entry.count > 0, entry.count % 512 == 0, entry.offsetBytes % 512 == 0,
                    entry.offsetBytes + entry.count <= geometry.stripUnitBytes
                else { return .damaged("record entry \(i) (stripe \(entry.stripe), \(entry.offsetBytes)+\(entry.count)) outside the array") }
                payload += entry.count
            case .intent:
                guard entry.offsetBytes == 0, entry.stripe % DriveLayout.intentRegionStripes == 0, entry.stripe < geometry.stripeCount,
                    entry.count > 0, UInt64(entry.count) <= DriveLayout.intentRegionStripes,
                    UInt64(entry.count) <= geometry.stripeCount - entry.stripe
                else { return .damaged("record entry \(i) (intent at stripe \(entry.stripe), \(entry.count) stripes) invalid") }
            }
            entries.append(entry)
        }
        guard payload == header.payloadBytes else { return .damaged("record payload size \(header.payloadBytes) disagrees with its entries (\(payload))") }
        var result = header
        result.entries = entries
        return .record(result)
    }

    /// The CRC32C a record's payload must have.
    public static func payloadCRC(_ pointer: UnsafeRawPointer, count: Int) -> UInt32 { crc32c(pointer, count: count) }
}

/// A slice's epoch block: which epoch the director's records in this slice belong to.
public enum JournalEpochBlock {
    public static func encode(into block: UnsafeMutableRawPointer, arrayUUID: UUID128, director: Int, epoch: UInt64) {
        block.initializeMemory(as: UInt8.self, repeating: 0, count: JournalFormat.blockBytes)
        for (i, byte) in JournalFormat.epochMagic.enumerated() { block.storeBytes(of: byte, toByteOffset: i, as: UInt8.self) }
        store(JournalFormat.version, block, 8)
        store(arrayUUID.bytes.0, block, 16)
        store(arrayUUID.bytes.1, block, 24)
        store(UInt32(director), block, 32)
        store(epoch, block, 40)
        store(blockCRC(block, crcOffset: JournalFormat.epochCRCOffset, count: JournalFormat.epochRecordBytes), block, JournalFormat.epochCRCOffset)
    }

    /// The epoch a valid block of this array and director names, else nil.
    public static func decode(_ block: UnsafeRawPointer, arrayUUID: UUID128, director: Int) -> UInt64? {
        let bytes = UnsafeRawBufferPointer(start: block, count: JournalFormat.epochRecordBytes)
        guard Array(bytes[0..<8]) == JournalFormat.epochMagic, load(UInt32.self, bytes, 8) == JournalFormat.version else { return nil }
        guard
            load(UInt32.self, bytes, JournalFormat.epochCRCOffset)
                == blockCRC(block, crcOffset: JournalFormat.epochCRCOffset, count: JournalFormat.epochRecordBytes)
        else { return nil }
        guard UUID128(high: load(UInt64.self, bytes, 16), low: load(UInt64.self, bytes, 24)) == arrayUUID, load(UInt32.self, bytes, 32) == UInt32(director)
        else { return nil }
        // Epochs count up by one per slice fill; one near 2^64 is not one vsa wrote (and `epoch + 1` must not trap).
        let epoch = load(UInt64.self, bytes, 40)
        return epoch < JournalFormat.epochMax ? epoch : nil
    }
}

/// Writes a record header's fixed fields (the entries are already in place) and its CRC.
func encodeRecordHeader(
    into block: UnsafeMutableRawPointer, entryCount: Int, arrayUUID: UUID128, epoch: UInt64, director: Int, member: Int, sequence: UInt64,
    batchMask: UInt64, payloadBytes: Int, payloadCRC: UInt32
) {
    for (i, byte) in JournalFormat.recordMagic.enumerated() { block.storeBytes(of: byte, toByteOffset: i, as: UInt8.self) }
    store(JournalFormat.version, block, 8)
    store(UInt32(entryCount), block, 12)
    store(payloadCRC, block, 20)
    store(epoch, block, 24)
    store(arrayUUID.bytes.0, block, 32)
    store(arrayUUID.bytes.1, block, 40)
    store(UInt32(director), block, 48)
    store(UInt32(member), block, 52)
    store(sequence, block, 56)
    store(batchMask, block, 64)
    store(UInt32(payloadBytes), block, 72)
    (block + 76).initializeMemory(as: UInt8.self, repeating: 0, count: JournalFormat.entriesOffset - 76)
    let used = JournalFormat.entriesOffset + entryCount * JournalFormat.entryBytes
    (block + used).initializeMemory(as: UInt8.self, repeating: 0, count: JournalFormat.blockBytes - used)
    store(blockCRC(block, crcOffset: JournalFormat.headerCRCOffset, count: JournalFormat.blockBytes), block, JournalFormat.headerCRCOffset)
}

/// Writes entry `index` of a header.
@inline(__always)
func encodeEntry(into block: UnsafeMutableRawPointer, index: Int, _ entry: JournalEntry) {
    let at = JournalFormat.entriesOffset + index * JournalFormat.entryBytes
    store(entry.stripe, block, at)
    store(UInt32(entry.offsetBytes), block, at + 8)
    store(UInt32(entry.count), block, at + 12)
    store(UInt64(entry.kind.rawValue), block, at + 16)
}

/// CRC32C of `count` bytes with the 4-byte CRC field at `crcOffset` taken as zero.
func blockCRC(_ block: UnsafeRawPointer, crcOffset: Int, count: Int) -> UInt32 {
    let zero: UInt32 = 0
    var crc = crc32c(block, count: crcOffset)
    crc = withUnsafeBytes(of: zero) { crc32c($0.baseAddress!, count: 4, seed: crc) }
    return crc32c(block + crcOffset + 4, count: count - crcOffset - 4, seed: crc)
}

@inline(__always)
private func store<T: FixedWidthInteger>(_ value: T, _ block: UnsafeMutableRawPointer, _ offset: Int) {
    block.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
}

@inline(__always)
private func load<T: FixedWidthInteger>(_: T.Type, _ bytes: UnsafeRawBufferPointer, _ offset: Int) -> T {
    T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
}
