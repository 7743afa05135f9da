// PoolLayout: where the pool's blocks, segments and checkpoint slots are in the array's data space. Pure arithmetic
// over the back end's geometry (docs/POOL.md, "Units").
//
// Block numbering inside a stripe goes row by row across the data strips: block j of a stripe is data strip j mod d,
// row j / d (a row is 4 KiB of every data strip). The blocks written so far then always form one stripe range
// [0, rows) of every strip, so a commit is one `writeStripe` of whole rows with parity from memory: nothing is read.
//
// The pool area (a run of stripes the LUN table reserves) holds, per home, two checkpoint slots written alternately.
// A slot is a header stripe (the header in block 0, the rest zeroes) followed by table stripes: the version records,
// then the segment entries.
import ArrayModel

public struct PoolLayout: Equatable, Sendable {
    public static let blockBytes = 4096
    /// About this much data per segment (at least one stripe).
    public static let segmentTargetBytes: UInt64 = 4 << 20
    public static let versionRecordBytes = 256
    public static let segmentEntryBytes = 8
    /// Local blocks one version may have in one home (2^36 blocks: 256 TiB of a LUN per home).
    public static let localBlocksMax: UInt64 = 1 << 36

    public let geometry: ArrayGeometry
    public let homes: Int
    /// Blocks per row (the data strips of a stripe) and rows per stripe.
    public let blocksPerRow: Int
    public let rowsPerStripe: Int
    public let blocksPerStripe: Int
    public let stripesPerSegment: UInt64
    /// Segments over the whole array (a segment overlapping a thick LUN or the pool area is never the pool's).
    public let segmentCount: Int
    /// Version records each checkpoint slot holds (LUNs, snapshots and clones of the whole array).
    public let versionsMax: Int
    public let areaStart: UInt64
    public let slotStripes: UInt64

    /// About this much data per segment on an array of `geometry`: `segmentTargetBytes`, less on arrays under 1 GiB
    /// (a 256th of the capacity, at least a stripe). The segments held back from host data (a few per home) are
    /// counted in segments: 4 MiB ones would leave a 100 MiB array little pool.
    public static func segmentBytes(for geometry: ArrayGeometry) -> UInt64 {
        min(segmentTargetBytes, max(geometry.stripeDataBytes, geometry.capacityBytes / 256))
    }

    /// `segmentBytes`: nil for the array's (`segmentBytes(for:)`); a pool made before the size scaled with the array
    /// passes `segmentTargetBytes`; tests pass small segments to make many.
    public init(geometry: ArrayGeometry, homes: Int, areaStart: UInt64, versionsMax: Int, segmentBytes: UInt64? = nil) {
        let segmentBytes = segmentBytes ?? PoolLayout.segmentBytes(for: geometry)
        precondition(homes >= 1 && homes <= 2 * DirectorID.enginesMax && versionsMax >= 1)
        self.geometry = geometry
        self.homes = homes
        self.versionsMax = versionsMax
        self.areaStart = areaStart
        blocksPerRow = geometry.dataStripsPerStripe
        rowsPerStripe = geometry.stripUnitBytes / PoolLayout.blockBytes
        blocksPerStripe = blocksPerRow * rowsPerStripe
        stripesPerSegment = max(1, segmentBytes / geometry.stripeDataBytes)
        segmentCount = Int(geometry.stripeCount / stripesPerSegment)
        slotStripes = PoolLayout.slotStripes(geometry: geometry, versionsMax: versionsMax, segmentBytes: segmentBytes)
    }

    static func slotStripes(geometry: ArrayGeometry, versionsMax: Int, segmentBytes: UInt64? = nil) -> UInt64 {
        let segmentBytes = segmentBytes ?? PoolLayout.segmentBytes(for: geometry)
        let segments = geometry.stripeCount / max(1, segmentBytes / geometry.stripeDataBytes)
        let tableBytes = UInt64(versionsMax * versionRecordBytes) + segments * UInt64(segmentEntryBytes)
        return 1 + geometry.stripesFor(sizeBytes: tableBytes)
    }

    /// Stripes the pool area needs for `homes` homes.
    public static func areaStripes(geometry: ArrayGeometry, homes: Int, versionsMax: Int) -> UInt64 {
        UInt64(2 * homes) * slotStripes(geometry: geometry, versionsMax: versionsMax)
    }

    public var areaStripes: UInt64 { UInt64(2 * homes) * slotStripes }

    /// Versions an array of this capacity keeps: one per MiB of data, at least 64, at most 16384.
    public static func versionsMax(capacityBytes: UInt64) -> Int { Int(min(16384, max(64, capacityBytes >> 20))) }

    /// The first stripe of checkpoint slot `slot` (0 or 1) of `home`.
    public func slotStart(home: Int, slot: Int) -> UInt64 {
        precondition(home >= 0 && home < homes && (slot == 0 || slot == 1))
        return areaStart + UInt64(home * 2 + slot) * slotStripes
    }

    @inline(__always) public func firstStripe(segment: Int) -> UInt64 { UInt64(segment) * stripesPerSegment }
    @inline(__always) public func segment(ofStripe stripe: UInt64) -> Int { Int(stripe / stripesPerSegment) }
    @inline(__always) public func segment(ofBlock pba: UInt64) -> Int { segment(ofStripe: pba / UInt64(blocksPerStripe)) }
    public var blockCount: UInt64 { geometry.stripeCount * UInt64(blocksPerStripe) }
    public var blocksPerSegment: Int { Int(stripesPerSegment) * blocksPerStripe }

    /// Block j of `stripe`.
    @inline(__always) public func pba(stripe: UInt64, block j: Int) -> UInt64 { stripe * UInt64(blocksPerStripe) + UInt64(j) }

    /// Where a block lives: its stripe, data strip and byte offset in the strip.
    @inline(__always) public func location(_ pba: UInt64) -> (stripe: UInt64, strip: Int, offsetBytes: Int) {
        let j = Int(pba % UInt64(blocksPerStripe))
        return (pba / UInt64(blocksPerStripe), j % blocksPerRow, j / blocksPerRow * PoolLayout.blockBytes)
    }

    /// Why an array cannot hold a pool (nil: it can). A commit is a summary block and the blocks it carries, in
    /// one stripe: a stripe of one 4 KiB block (RAID-1 of 4 KiB strips) has room for the summary alone.
    public static func unfit(_ geometry: ArrayGeometry) -> String? {
        guard geometry.stripeDataBytes < 2 * UInt64(blockBytes) else { return nil }
        return "thin LUNs need stripes of at least 8 KiB of data (this array's hold 4 KiB): use thick LUNs, or an array made with --stripe-unit 8K or more"
    }

    /// Local blocks of home `home` for a LUN of `sizeBytes` placed with `homeOffset`: the blocks of the LUN stripes k
    /// with (k + homeOffset) mod homes == home.
    public func localBlocks(sizeBytes: UInt64, homeOffset: UInt32, home: Int) -> UInt64 {
        let stripes = geometry.stripesFor(sizeBytes: sizeBytes)
        let first = UInt64((home - Int(homeOffset % UInt32(homes)) + homes) % homes)  // the first LUN stripe of this home
        let mine = stripes > first ? (stripes - first + UInt64(homes) - 1) / UInt64(homes) : 0
        return mine * UInt64(blocksPerStripe)
    }

    /// The home of LUN stripe `lunStripe`, and its local block for byte `offsetInStripe` of that stripe.
    @inline(__always) public func local(lunStripe: UInt64, homeOffset: UInt32, offsetInStripe: Int) -> (home: Int, block: UInt64) {
        let home = Int((lunStripe + UInt64(homeOffset)) % UInt64(homes))
        return (home, lunStripe / UInt64(homes) * UInt64(blocksPerStripe) + UInt64(offsetInStripe / PoolLayout.blockBytes))
    }
}
