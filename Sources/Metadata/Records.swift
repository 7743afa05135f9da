// Metadata records: the superblock (one per drive, two copies) and the LUN table (on every drive, two copies).
// Both are little-endian, versioned, carry their own length and generation, and end in reserved zero bytes; a CRC32C
// covers the whole record with the CRC field taken as zero. docs/FORMAT.md is the reference for these layouts.
import ArrayModel
import MemoryServices

public enum Layout {
    public static let superblockCopyOffsets: [UInt64] = [0, 4096]
    public static let superblockRecordBytes = 512
    public static let lunTableCopyOffsets: [UInt64] = [64 << 10, 128 << 10]
    public static let lunTableBytes = 64 << 10
    public static let lunCountMax = 256
    public static let lunEntryBytes = 128
    public static let lunHeaderBytes = 64
    /// Members and spares together (a failed-member mask is 64 bits).
    public static let drivesMax = 64
    /// Generations count up by one per metadata write; one at or past this is not one vsa wrote (and `+ 1` must not
    /// trap).
    public static let generationMax: UInt64 = 1 << 62
    /// The largest drive vsa formats or assembles (1 PiB): capacities and offsets then fit in 64 bits with room.
    public static let driveBytesMax: UInt64 = 1 << 50
    /// The cache a superblock, `vsa create --cache` or `-o cache=` may ask for.
    public static let cacheBytesMin: UInt64 = 16 << 20
    public static let cacheBytesMax: UInt64 = 1 << 40

    /// What of the cache (global memory) goes to the directors' slots: 15/32. Global memory is the slots, the
    /// partners' mirrors of write-pending data (as many slots again: a director mirrors its partner's) and the pool
    /// map's frames (a sixteenth), so `--cache` bounds all three and the daemon's memory with them.
    public static func slotBytes(ofCache cacheBytes: UInt64) -> UInt64 { cacheBytes / 32 * 15 }
}

/// Little-endian writer and reader over a fixed-size byte array.
struct RecordWriter {
    var bytes: [UInt8]
    init(size: Int) { bytes = [UInt8](repeating: 0, count: size) }
    mutating func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        var v = value.littleEndian
        withUnsafeBytes(of: &v) { raw in for i in 0..<raw.count { bytes[offset + i] = raw[i] } }
    }
    mutating func put(bytes source: [UInt8], at offset: Int) {
        for i in 0..<source.count { bytes[offset + i] = source[i] }
    }
    mutating func put(uuid: UUID128, at offset: Int) {
        put(uuid.bytes.0, at: offset)
        put(uuid.bytes.1, at: offset + 8)
    }
}

struct RecordReader {
    let bytes: [UInt8]
    func get<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        var v: T = 0
        withUnsafeMutableBytes(of: &v) { raw in for i in 0..<raw.count { raw[i] = bytes[offset + i] } }
        return T(littleEndian: v)
    }
    func uuid(at offset: Int) -> UUID128 { UUID128(high: get(UInt64.self, at: offset), low: get(UInt64.self, at: offset + 8)) }
}

/// CRC32C of `bytes` with the 4-byte field at `crcOffset` taken as zero.
func recordCRC(_ bytes: [UInt8], crcOffset: Int) -> UInt32 {
    var copy = bytes
    for i in 0..<4 { copy[crcOffset + i] = 0 }
    return crc32c(copy)
}

/// Why a record was rejected; the message names the field.
public struct RecordRejection: Error, Equatable, CustomStringConvertible {
    public let reason: String
    public var description: String { reason }
}

public struct Superblock: Equatable, Sendable {
    public static let magic: [UInt8] = Array("VSA-SB01".utf8)
    public static let formatVersion: UInt32 = 2

    public var clean: Bool
    public var generation: UInt64
    public var arrayUUID: UUID128
    public var driveUUID: UUID128
    public var driveIndex: Int
    public var memberCount: Int
    public var spareCount: Int
    public var raidLevel: RAIDLevel
    public var role: DriveRole
    public var stripUnitBytes: Int
    public var engineCount: Int
    public var dataOffsetBytes: UInt64
    public var dataBytesPerDrive: UInt64
    public var cacheBytes: UInt64
    public var createdUnixSeconds: UInt64
    /// Members the array has stopped using (bit i = member i): a failed drive that comes back is not trusted.
    public var failedMemberMask: UInt64 = 0
    /// The member being rebuilt onto a new drive (that drive carries this superblock as member `rebuildMember`), and
    /// how many stripes of it hold their data: the rebuild resumes there after a restart.
    public var rebuildMember: Int? = nil
    public var rebuildCheckpoint: UInt64 = 0
    /// A second failed member whose replacement drive is attached (it takes every write) and waits for its rebuild,
    /// which starts from stripe 0 when `rebuildMember`'s ends: two failed members of a RAID-6, replaced one after the
    /// other. Nil: none queued.
    public var queuedRebuildMember: Int? = nil
    /// Journal bytes per director on every drive, and the checksum area's size (docs/FORMAT.md, "One drive").
    public var journalSliceBytes: UInt64 = 0
    public var checksumBytes: UInt64 = 0

    public var directorCount: Int { 2 * engineCount }
    public var layout: DriveLayout {
        DriveLayout(journalSliceBytes: journalSliceBytes, directorCount: directorCount, checksumBytes: checksumBytes)
    }

    /// How long every drive must be: the metadata area, then the data area.
    public var driveBytesRequired: UInt64 { dataOffsetBytes + dataBytesPerDrive }

    public init(
        clean: Bool, generation: UInt64, arrayUUID: UUID128, driveUUID: UUID128, driveIndex: Int,
        memberCount: Int, spareCount: Int, raidLevel: RAIDLevel, role: DriveRole, stripUnitBytes: Int,
        engineCount: Int, dataOffsetBytes: UInt64, dataBytesPerDrive: UInt64, cacheBytes: UInt64,
        createdUnixSeconds: UInt64
    ) {
        self.clean = clean
        self.generation = generation
        self.arrayUUID = arrayUUID
        self.driveUUID = driveUUID
        self.driveIndex = driveIndex
        self.memberCount = memberCount
        self.spareCount = spareCount
        self.raidLevel = raidLevel
        self.role = role
        self.stripUnitBytes = stripUnitBytes
        self.engineCount = engineCount
        self.dataOffsetBytes = dataOffsetBytes
        self.dataBytesPerDrive = dataBytesPerDrive
        self.cacheBytes = cacheBytes
        self.createdUnixSeconds = createdUnixSeconds
    }

    // Field offsets (docs/FORMAT.md).
    static let crcOffset = 16

    public func encode() -> [UInt8] {
        var w = RecordWriter(size: Layout.superblockRecordBytes)
        w.put(bytes: Superblock.magic, at: 0)
        w.put(Superblock.formatVersion, at: 8)
        w.put(UInt32(Layout.superblockRecordBytes), at: 12)
        w.put(UInt32(clean ? 1 : 0), at: 20)
        w.put(generation, at: 24)
        w.put(uuid: arrayUUID, at: Superblock.arrayUUIDOffset)
        w.put(uuid: driveUUID, at: 48)
        w.put(UInt32(driveIndex), at: 64)
        w.put(UInt32(memberCount), at: 68)
        w.put(UInt32(spareCount), at: 72)
        w.put(raidLevel.rawValue, at: 76)
        w.put(role.rawValue, at: 77)
        w.put(UInt32(stripUnitBytes), at: 80)
        w.put(UInt32(engineCount), at: 84)
        w.put(dataOffsetBytes, at: 88)
        w.put(dataBytesPerDrive, at: 96)
        w.put(cacheBytes, at: 104)
        w.put(createdUnixSeconds, at: 112)
        w.put(failedMemberMask, at: 120)
        w.put(UInt32(rebuildMember.map { $0 + 1 } ?? 0), at: 128)
        w.put(UInt32(queuedRebuildMember.map { $0 + 1 } ?? 0), at: 132)
        w.put(rebuildCheckpoint, at: 136)
        w.put(journalSliceBytes, at: 144)
        w.put(checksumBytes, at: 152)
        w.put(recordCRC(w.bytes, crcOffset: Superblock.crcOffset), at: Superblock.crcOffset)
        return w.bytes
    }

    /// Where the array's UUID sits in the record (what a remote drive is recognised by after a new connection).
    public static let arrayUUIDOffset = 32

    /// Whether the bytes begin with a vsa superblock magic (used to tell "foreign" from "damaged vsa").
    public static func hasMagic(_ bytes: [UInt8]) -> Bool {
        bytes.count >= 8 && Array(bytes[0..<8]) == magic
    }

    public static func decode(_ bytes: [UInt8]) throws(RecordRejection) -> Superblock {
        guard bytes.count >= Layout.superblockRecordBytes else { throw RecordRejection(reason: "superblock truncated (\(bytes.count) bytes)") }
        let record = Array(bytes[0..<Layout.superblockRecordBytes])
        let r = RecordReader(bytes: record)
        guard Array(record[0..<8]) == magic else { throw RecordRejection(reason: "no vsa superblock magic") }
        let version = r.get(UInt32.self, at: 8)
        guard version == formatVersion else {
            throw RecordRejection(reason: "superblock format version \(version) is not supported (this vsa reads version \(formatVersion))")
        }
        let length = r.get(UInt32.self, at: 12)
        guard length == UInt32(Layout.superblockRecordBytes) else { throw RecordRejection(reason: "superblock length \(length) is wrong") }
        let stored = r.get(UInt32.self, at: crcOffset)
        guard stored == recordCRC(record, crcOffset: crcOffset) else { throw RecordRejection(reason: "superblock checksum mismatch") }
        let flags = r.get(UInt32.self, at: 20)
        guard flags <= 1 else { throw RecordRejection(reason: "superblock flags \(flags) unknown") }
        guard let raid = RAIDLevel(rawValue: r.get(UInt8.self, at: 76)) else { throw RecordRejection(reason: "superblock RAID level unknown") }
        guard let role = DriveRole(rawValue: r.get(UInt8.self, at: 77)) else { throw RecordRejection(reason: "superblock drive role unknown") }
        var sb = Superblock(
            clean: flags == 1, generation: r.get(UInt64.self, at: 24), arrayUUID: r.uuid(at: 32), driveUUID: r.uuid(at: 48),
            driveIndex: Int(r.get(UInt32.self, at: 64)), memberCount: Int(r.get(UInt32.self, at: 68)),
            spareCount: Int(r.get(UInt32.self, at: 72)), raidLevel: raid, role: role,
            stripUnitBytes: Int(r.get(UInt32.self, at: 80)), engineCount: Int(r.get(UInt32.self, at: 84)),
            dataOffsetBytes: r.get(UInt64.self, at: 88), dataBytesPerDrive: r.get(UInt64.self, at: 96),
            cacheBytes: r.get(UInt64.self, at: 104), createdUnixSeconds: r.get(UInt64.self, at: 112))
        sb.failedMemberMask = r.get(UInt64.self, at: 120)
        let rebuildField = Int(r.get(UInt32.self, at: 128))
        sb.rebuildMember = rebuildField == 0 ? nil : rebuildField - 1
        sb.rebuildCheckpoint = r.get(UInt64.self, at: 136)
        let queuedField = Int(r.get(UInt32.self, at: 132))
        sb.queuedRebuildMember = queuedField == 0 ? nil : queuedField - 1
        sb.journalSliceBytes = r.get(UInt64.self, at: 144)
        sb.checksumBytes = r.get(UInt64.self, at: 152)
        guard sb.memberCount >= raid.minimumDrives, sb.memberCount <= Layout.drivesMax, raid != .raid10 || sb.memberCount % 2 == 0 else {
            throw RecordRejection(reason: "superblock member count \(sb.memberCount) invalid")
        }
        guard sb.spareCount <= Layout.drivesMax - sb.memberCount else {
            throw RecordRejection(reason: "superblock spare count \(sb.spareCount) invalid (members and spares are at most \(Layout.drivesMax))")
        }
        guard sb.generation < Layout.generationMax else { throw RecordRejection(reason: "superblock generation \(sb.generation) out of range") }
        guard sb.cacheBytes >= Layout.cacheBytesMin, sb.cacheBytes <= Layout.cacheBytesMax else {
            throw RecordRejection(reason: "superblock cache size \(sb.cacheBytes) out of range")
        }
        guard record[160..<Layout.superblockRecordBytes].allSatisfy({ $0 == 0 }) else {
            throw RecordRejection(reason: "superblock reserved bytes are not zero")
        }
        guard sb.driveIndex < sb.memberCount + sb.spareCount else { throw RecordRejection(reason: "superblock drive index \(sb.driveIndex) out of range") }
        guard sb.stripUnitBytes >= 4096, sb.stripUnitBytes <= 1 << 24, sb.stripUnitBytes & (sb.stripUnitBytes - 1) == 0 else {
            throw RecordRejection(reason: "superblock stripe unit \(sb.stripUnitBytes) invalid")
        }
        guard sb.engineCount >= 1, sb.engineCount <= DirectorID.enginesMax else { throw RecordRejection(reason: "superblock engine count invalid") }
        let minimumSlice = DriveLayout.minimumSliceBytes(stripUnitBytes: sb.stripUnitBytes)
        guard sb.journalSliceBytes % (1 << 20) == 0, sb.journalSliceBytes >= minimumSlice, sb.journalSliceBytes <= max(64 << 20, minimumSlice) else {
            throw RecordRejection(reason: "superblock journal size \(sb.journalSliceBytes) invalid")
        }
        guard sb.checksumBytes % 4096 == 0, sb.checksumBytes >= DriveLayout.checksumBytes(dataBytes: sb.dataBytesPerDrive), sb.checksumBytes < 1 << 50 else {
            throw RecordRejection(reason: "superblock checksum area too small for the data area")
        }
        guard sb.dataOffsetBytes == sb.layout.dataOffsetBytes else { throw RecordRejection(reason: "superblock data offset invalid") }
        guard sb.dataBytesPerDrive % UInt64(sb.stripUnitBytes) == 0, sb.dataBytesPerDrive >= UInt64(sb.stripUnitBytes),
            sb.dataBytesPerDrive <= Layout.driveBytesMax
        else { throw RecordRejection(reason: "superblock data size \(sb.dataBytesPerDrive) invalid") }
        guard sb.memberCount == 64 || sb.failedMemberMask >> UInt64(sb.memberCount) == 0 else {
            throw RecordRejection(reason: "superblock failed-member mask names drives beyond the members")
        }
        guard (sb.driveIndex < sb.memberCount) == (role == .member) else { throw RecordRejection(reason: "superblock role does not match drive index") }
        if let member = sb.rebuildMember {
            guard member < sb.memberCount, sb.failedMemberMask & (1 << UInt64(member)) == 0 else {
                throw RecordRejection(reason: "superblock rebuild member \(member) invalid")
            }
            guard sb.rebuildCheckpoint <= sb.dataBytesPerDrive / UInt64(sb.stripUnitBytes) else {
                throw RecordRejection(reason: "superblock rebuild checkpoint beyond the array's stripes")
            }
        } else {
            guard sb.rebuildCheckpoint == 0 else { throw RecordRejection(reason: "superblock rebuild checkpoint without a rebuild") }
        }
        if let queued = sb.queuedRebuildMember {
            guard let current = sb.rebuildMember, queued < sb.memberCount, queued != current, sb.failedMemberMask & (1 << UInt64(queued)) == 0 else {
                throw RecordRejection(reason: "superblock queued rebuild member \(queued) invalid")
            }
        }
        return sb
    }
}

/// One LUN: a name, an exact size in bytes, and either its placement as a run of whole stripes of the array (thick)
/// or none (thin: its blocks come from the pool, docs/POOL.md).
public struct LUNEntry: Equatable, Sendable {
    public var lunID: UInt32  // stable for the LUN's life; the FUSE inode is derived from it
    public var name: String
    public var sizeBytes: UInt64
    public var startStripe: UInt64
    public var stripeCount: UInt64
    public var thin: Bool
    /// A linked clone's snapshot (its pool version id; 0: not a clone, or unlinked).
    public var linkedSnapshot: UInt32
    /// A restore or relink under way: the snapshot every home resets the LUN to (0: none). Set before the homes
    /// change and cleared after, so a crash between is finished at the next mount, never left half done.
    public var pendingReset: UInt32
    /// A thin LUN made offline: the next mount gives it its versions in the pool's homes (flags bit 1).
    public var versionsPending: Bool
    public init(
        lunID: UInt32, name: String, sizeBytes: UInt64, startStripe: UInt64, stripeCount: UInt64, thin: Bool = false, linkedSnapshot: UInt32 = 0,
        pendingReset: UInt32 = 0, versionsPending: Bool = false
    ) {
        self.versionsPending = versionsPending
        self.lunID = lunID
        self.name = name
        self.sizeBytes = sizeBytes
        self.startStripe = startStripe
        self.stripeCount = stripeCount
        self.thin = thin
        self.linkedSnapshot = linkedSnapshot
        self.pendingReset = pendingReset
    }
    /// The most a thin LUN provisions: 256 TiB.
    public static let thinBytesMax: UInt64 = 1 << 48
}

/// Where the pool keeps its checkpoints: a run of stripes the LUN table reserves, made with the first thin LUN.
public struct PoolArea: Equatable, Sendable {
    public var startStripe: UInt64
    public var stripeCount: UInt64
    public var versionsMax: UInt32
    /// Made offline with a thin LUN: no home has written its checkpoint slots yet; the next mount makes the homes.
    public var fresh: Bool
    public init(startStripe: UInt64, stripeCount: UInt64, versionsMax: UInt32, fresh: Bool = false) {
        self.startStripe = startStripe
        self.stripeCount = stripeCount
        self.versionsMax = versionsMax
        self.fresh = fresh
    }
    /// Header bytes 60-63: versions, and bit 31 for `fresh` (versions are at most 16384).
    static let freshBit: UInt32 = 1 << 31
}

public struct LUNTable: Equatable, Sendable {
    public static let magic: [UInt8] = Array("VSA-LT01".utf8)
    /// Version 3 adds thin LUNs (flags at entry byte 92) and the pool area (header bytes 48-63); version 4 a clone's
    /// linked snapshot (entry byte 96) and a restore under way (entry byte 100), zero in the tables version 3 wrote.
    /// Versions 2 (all LUNs thick, no pool) and 3 are still read; a vsa that reads an older version refuses a newer
    /// table by name, so none drops what it does not know of.
    public static let formatVersion: UInt32 = 4
    static let crcOffset = 16

    public var generation: UInt64
    public var arrayUUID: UUID128
    public var entries: [LUNEntry]
    public var pool: PoolArea?

    /// The runs of stripes thick LUNs and the pool area hold: what neither a new thick LUN nor a pool segment may take.
    public var reservedRuns: [Range<UInt64>] {
        var runs = entries.filter { !$0.thin }.map { $0.startStripe..<($0.startStripe + $0.stripeCount) }
        if let pool { runs.append(pool.startStripe..<(pool.startStripe + pool.stripeCount)) }
        return runs
    }

    public init(generation: UInt64, arrayUUID: UUID128, entries: [LUNEntry], pool: PoolArea? = nil) {
        self.generation = generation
        self.arrayUUID = arrayUUID
        self.entries = entries
        self.pool = pool
    }

    public func encode() -> [UInt8] {
        precondition(entries.count <= Layout.lunCountMax)
        let length = Layout.lunHeaderBytes + entries.count * Layout.lunEntryBytes
        var w = RecordWriter(size: length)
        w.put(bytes: LUNTable.magic, at: 0)
        w.put(LUNTable.formatVersion, at: 8)
        w.put(UInt32(length), at: 12)
        w.put(UInt32(entries.count), at: 20)
        w.put(generation, at: 24)
        w.put(uuid: arrayUUID, at: 32)
        if let pool {
            w.put(pool.startStripe, at: 48)
            w.put(UInt32(truncatingIfNeeded: pool.stripeCount), at: 56)
            w.put(pool.versionsMax | (pool.fresh ? PoolArea.freshBit : 0), at: 60)
        }
        for (i, e) in entries.enumerated() {
            let base = Layout.lunHeaderBytes + i * Layout.lunEntryBytes
            let nameBytes = Array(e.name.utf8)
            precondition(nameBytes.count <= 64)
            w.put(bytes: nameBytes, at: base)
            w.put(e.sizeBytes, at: base + 64)
            w.put(e.startStripe, at: base + 72)
            w.put(e.stripeCount, at: base + 80)
            w.put(e.lunID, at: base + 88)
            w.put(UInt32(e.thin ? 1 : 0) | (e.versionsPending ? 2 : 0), at: base + 92)
            w.put(e.linkedSnapshot, at: base + 96)
            w.put(e.pendingReset, at: base + 100)
        }
        w.put(recordCRC(w.bytes, crcOffset: LUNTable.crcOffset), at: LUNTable.crcOffset)
        return w.bytes
    }

    public static func hasMagic(_ bytes: [UInt8]) -> Bool { bytes.count >= 8 && Array(bytes[0..<8]) == magic }

    public static func decode(_ bytes: [UInt8]) throws(RecordRejection) -> LUNTable {
        guard bytes.count >= Layout.lunHeaderBytes else { throw RecordRejection(reason: "LUN table truncated") }
        let header = RecordReader(bytes: bytes)
        guard Array(bytes[0..<8]) == magic else { throw RecordRejection(reason: "no LUN table magic") }
        let version = header.get(UInt32.self, at: 8)
        guard version >= 2 && version <= formatVersion else {
            throw RecordRejection(reason: "LUN table format version \(version) is not supported (this vsa reads versions 2 to \(formatVersion))")
        }
        let length = Int(header.get(UInt32.self, at: 12))
        let count = Int(header.get(UInt32.self, at: 20))
        guard count <= Layout.lunCountMax, length == Layout.lunHeaderBytes + count * Layout.lunEntryBytes else {
            throw RecordRejection(reason: "LUN table length \(length) does not match its \(count) entries")
        }
        guard bytes.count >= length else { throw RecordRejection(reason: "LUN table truncated") }
        let record = Array(bytes[0..<length])
        guard header.get(UInt32.self, at: crcOffset) == recordCRC(record, crcOffset: crcOffset) else {
            throw RecordRejection(reason: "LUN table checksum mismatch")
        }
        let r = RecordReader(bytes: record)
        var entries: [LUNEntry] = []
        for i in 0..<count {
            let base = Layout.lunHeaderBytes + i * Layout.lunEntryBytes
            var nameBytes = Array(record[base..<(base + 64)])
            while nameBytes.last == 0 { nameBytes.removeLast() }
            guard let name = String(validating: nameBytes, as: UTF8.self), validateLUNName(name) == nil else {
                throw RecordRejection(reason: "LUN table entry \(i) has an invalid name")
            }
            let flags = version >= 3 ? r.get(UInt32.self, at: base + 92) : 0
            guard flags <= 1 || (version >= 4 && flags == 3) else { throw RecordRejection(reason: "LUN table entry \(i) has unknown flags \(flags)") }
            entries.append(
                LUNEntry(
                    lunID: r.get(UInt32.self, at: base + 88), name: name, sizeBytes: r.get(UInt64.self, at: base + 64),
                    startStripe: r.get(UInt64.self, at: base + 72), stripeCount: r.get(UInt64.self, at: base + 80), thin: flags & 1 != 0,
                    linkedSnapshot: version >= 3 ? r.get(UInt32.self, at: base + 96) : 0, pendingReset: version >= 3 ? r.get(UInt32.self, at: base + 100) : 0,
                    versionsPending: flags & 2 != 0))
        }
        let generation = header.get(UInt64.self, at: 24)
        guard generation < Layout.generationMax else { throw RecordRejection(reason: "LUN table generation \(generation) out of range") }
        var pool: PoolArea? = nil
        if version >= 3 && header.get(UInt32.self, at: 56) > 0 {
            pool = PoolArea(
                startStripe: header.get(UInt64.self, at: 48), stripeCount: UInt64(header.get(UInt32.self, at: 56)),
                versionsMax: header.get(UInt32.self, at: 60) & ~PoolArea.freshBit,
                fresh: version >= 4 && header.get(UInt32.self, at: 60) & PoolArea.freshBit != 0
            )
        }
        return LUNTable(generation: generation, arrayUUID: header.uuid(at: 32), entries: entries, pool: pool)
    }

    /// Checks every entry against the array it claims to describe: ids unique and in 1...lunCountMax, names unique,
    /// sizes positive whole sectors that their stripe counts hold exactly, stripe runs inside the array and disjoint.
    /// A table that fails is not used (a CRC only says the bytes are as written, not that a vsa wrote them).
    public func validate(geometry: ArrayGeometry) throws(RecordRejection) {
        var ids = Set<UInt32>()
        var names = Set<String>()
        for (i, e) in entries.enumerated() {
            guard e.lunID >= 1, e.lunID <= UInt32(Layout.lunCountMax), ids.insert(e.lunID).inserted else {
                throw RecordRejection(reason: "LUN table entry \(i) (\(e.name)) has an invalid or duplicate id \(e.lunID)")
            }
            guard names.insert(e.name).inserted else { throw RecordRejection(reason: "LUN table names \(e.name) twice") }
            if e.thin {
                guard pool != nil, e.sizeBytes > 0, e.sizeBytes % UInt64(sectorBytes) == 0, e.sizeBytes <= LUNEntry.thinBytesMax, e.startStripe == 0,
                    e.stripeCount == 0
                else { throw RecordRejection(reason: "LUN table entry \(e.name): a thin LUN of \(e.sizeBytes) bytes out of range or without a pool") }
                // Snapshots' version ids lie above the LUN ids (a LUN's live version is its LUN id).
                for id in [e.linkedSnapshot, e.pendingReset] where id != 0 && id <= UInt32(Layout.lunCountMax) {
                    throw RecordRejection(reason: "LUN table entry \(e.name) names snapshot \(id), which cannot be a snapshot")
                }
                continue
            }
            guard e.linkedSnapshot == 0, e.pendingReset == 0 else {
                throw RecordRejection(reason: "LUN table entry \(e.name): a thick LUN cannot be a clone or be restored from a snapshot")
            }
            guard e.sizeBytes > 0, e.sizeBytes % UInt64(sectorBytes) == 0, e.sizeBytes <= geometry.capacityBytes,
                e.stripeCount == geometry.stripesFor(sizeBytes: e.sizeBytes)
            else { throw RecordRejection(reason: "LUN table entry \(e.name): size \(e.sizeBytes) and \(e.stripeCount) stripes disagree") }
            guard e.startStripe <= geometry.stripeCount, e.stripeCount <= geometry.stripeCount - e.startStripe else {
                throw RecordRejection(reason: "LUN table entry \(e.name): stripes \(e.startStripe)+\(e.stripeCount) lie outside the array")
            }
        }
        if let pool {
            guard pool.stripeCount > 0, pool.startStripe <= geometry.stripeCount, pool.stripeCount <= geometry.stripeCount - pool.startStripe,
                pool.versionsMax >= 1, pool.versionsMax <= 16384
            else { throw RecordRejection(reason: "LUN table: the pool area (stripes \(pool.startStripe)+\(pool.stripeCount)) is out of range") }
        }
        // Thick runs and the pool area: inside the array (checked above) and disjoint.
        var runs = entries.filter { !$0.thin }.map { ($0.name, $0.startStripe, $0.stripeCount) }
        if let pool { runs.append(("the pool area", pool.startStripe, pool.stripeCount)) }
        let sorted = runs.sorted { $0.1 < $1.1 }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.1 + a.2 > b.1 {
            throw RecordRejection(reason: "LUN table entries \(a.0) and \(b.0) overlap")
        }
    }
}
