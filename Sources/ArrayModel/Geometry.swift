// ArrayGeometry: where a LUN's bytes live. Pure arithmetic, shared by Metadata (placement) and BackEnd (I/O).
//
// Vocabulary (Linux md's): a strip is `stripUnitBytes` on one drive; a stripe is the strips at the same offset on
// every member drive; a stripe carries `dataStripsPerStripe` data strips and 0, 1 (P) or 2 (P, Q) parity strips.
// RAID-5 and RAID-6 rotate parity left-symmetrically, as md's default does: for stripe s on n members the P drive is
// n-1-(s mod n), Q follows P, and data strips follow parity round the members. RAID-1 writes every strip to all
// members; RAID-10 mirrors data strip i on drives 2i and 2i+1.

public struct ArrayGeometry: Equatable, Sendable {
    public let raidLevel: RAIDLevel
    public let memberCount: Int
    public let stripUnitBytes: Int
    /// Strips per member drive usable for data (= stripes in the array).
    public let stripeCount: UInt64
    public let dataOffsetBytes: UInt64
    /// Journal and checksum areas (nil: a bare geometry, as in layout tests; no journal).
    public let layout: DriveLayout?

    public init(
        raidLevel: RAIDLevel, memberCount: Int, stripUnitBytes: Int, stripeCount: UInt64, dataOffsetBytes: UInt64, layout: DriveLayout? = nil
    ) {
        precondition(memberCount >= raidLevel.minimumDrives, "\(raidLevel) needs \(raidLevel.minimumDrives) drives")
        precondition(raidLevel != .raid10 || memberCount % 2 == 0, "raid10 needs an even drive count")
        precondition(stripUnitBytes % 4096 == 0)
        self.raidLevel = raidLevel
        self.memberCount = memberCount
        self.stripUnitBytes = stripUnitBytes
        self.stripeCount = stripeCount
        self.dataOffsetBytes = dataOffsetBytes
        self.layout = layout
        precondition(layout == nil || layout!.dataOffsetBytes == dataOffsetBytes, "the data area starts where the layout says")
    }

    public var dataStripsPerStripe: Int { raidLevel.dataStripsPerStripe(memberCount: memberCount) }
    public var stripeDataBytes: UInt64 { UInt64(dataStripsPerStripe * stripUnitBytes) }
    public var capacityBytes: UInt64 { stripeCount * stripeDataBytes }
    public var parityStripsPerStripe: Int {
        switch raidLevel {
        case .raid5: return 1
        case .raid6: return 2
        default: return 0
        }
    }

    /// Byte offset of stripe `stripe`'s strips on each member drive.
    @inline(__always)
    public func driveOffset(stripe: UInt64) -> UInt64 {
        precondition(stripe < stripeCount, "stripe \(stripe) beyond the array's \(stripeCount)")
        return dataOffsetBytes + stripe * UInt64(stripUnitBytes)
    }

    /// The P drive of a RAID-5/6 stripe.
    @inline(__always)
    public func parityDrive(stripe: UInt64) -> Int { memberCount - 1 - Int(stripe % UInt64(memberCount)) }

    /// The Q drive of a RAID-6 stripe.
    @inline(__always)
    public func qDrive(stripe: UInt64) -> Int { (parityDrive(stripe: stripe) + 1) % memberCount }

    /// The first (for mirrors: primary) drive holding data strip `strip` of `stripe`.
    @inline(__always)
    public func dataDrive(stripe: UInt64, strip: Int) -> Int {
        precondition(strip >= 0 && strip < dataStripsPerStripe)
        switch raidLevel {
        case .raid0: return strip
        case .raid1: return 0
        case .raid10: return strip * 2
        case .raid5: return (parityDrive(stripe: stripe) + 1 + strip) % memberCount
        case .raid6: return (parityDrive(stripe: stripe) + 2 + strip) % memberCount
        }
    }

    /// Every drive holding a copy of data strip `strip` of `stripe` (one for striped levels, more for mirrors).
    public func copyDrives(stripe: UInt64, strip: Int) -> ClosedRange<Int> {
        switch raidLevel {
        case .raid1: return 0...(memberCount - 1)
        case .raid10: return (strip * 2)...(strip * 2 + 1)
        default:
            let d = dataDrive(stripe: stripe, strip: strip)
            return d...d
        }
    }

    /// Stripes needed to hold `sizeBytes` (any size: a round-up that cannot overflow).
    public func stripesFor(sizeBytes: UInt64) -> UInt64 { sizeBytes / stripeDataBytes + (sizeBytes % stripeDataBytes == 0 ? 0 : 1) }
}
