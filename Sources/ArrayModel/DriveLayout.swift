// DriveLayout: where the journal, the checksum area and the data area sit on every drive. Pure arithmetic, shared
// by Metadata (create, superblock checks) and BackEnd (journal I/O). docs/FORMAT.md draws it.
//
//   0 .. 1 MiB                superblocks and LUN tables (Metadata)
//   1 MiB ..                  the stripe journal: one slice per director, `journalSliceBytes` each; a slice starts
//                             with its epoch block (4 KiB), then records
//   checksumOffsetBytes ..    the checksum area: 4 bytes per 4 KiB block of the data area
//   dataOffsetBytes ..        the data area (whole strips), 1 MiB aligned

public struct DriveLayout: Equatable, Sendable {
    public static let journalOffsetBytes: UInt64 = 1 << 20
    public static let journalBlockBytes = 4096
    /// Stripes one write intent covers: full-stripe and mirror writes record the region once per journal epoch.
    public static let intentRegionStripes: UInt64 = 256

    /// Bytes of journal each director owns on every drive.
    public let journalSliceBytes: UInt64
    public let directorCount: Int
    /// Bytes reserved for block checksums (4 per 4 KiB of data), a whole number of 4 KiB blocks.
    public let checksumBytes: UInt64

    public init(journalSliceBytes: UInt64, directorCount: Int, checksumBytes: UInt64) {
        self.journalSliceBytes = journalSliceBytes
        self.directorCount = directorCount
        self.checksumBytes = checksumBytes
    }

    public var journalBytes: UInt64 { journalSliceBytes * UInt64(directorCount) }
    public var checksumOffsetBytes: UInt64 { DriveLayout.journalOffsetBytes + journalBytes }
    public var dataOffsetBytes: UInt64 { roundUp(checksumOffsetBytes + checksumBytes, 1 << 20) }

    /// Where director `director`'s slice starts on every drive.
    public func journalSliceOffset(director: Int) -> UInt64 {
        precondition(director >= 0 && director < directorCount, "director \(director) has no journal slice")
        return DriveLayout.journalOffsetBytes + UInt64(director) * journalSliceBytes
    }

    /// The most payload one drive's record of a batch carries: a whole strip, or 256 KiB for small strips (so a
    /// batch groups several stripes).
    public static func payloadCapacity(stripUnitBytes: Int) -> Int { max(stripUnitBytes, 256 << 10) }

    /// A slice holds its epoch block and at least two full records, so a batch always fits after an epoch change.
    public static func minimumSliceBytes(stripUnitBytes: Int) -> UInt64 {
        let record = UInt64(journalBlockBytes + payloadCapacity(stripUnitBytes: stripUnitBytes))
        return roundUp(UInt64(journalBlockBytes) + 2 * record, 1 << 20)
    }

    public static func checksumBytes(dataBytes: UInt64) -> UInt64 { roundUp(dataBytes / 4096 * 4, 4096) }

    /// The layout and data size for drives of `driveBytes`: slices that together take 1/32 of the drive (each at
    /// least the minimum, at most 64 MiB or the minimum), or nil when not even one strip of data would fit.
    public static func plan(driveBytes: UInt64, stripUnitBytes: Int, directorCount: Int) -> (layout: DriveLayout, dataBytesPerDrive: UInt64)? {
        let minimum = minimumSliceBytes(stripUnitBytes: stripUnitBytes)
        // The journal takes 1/32 of a drive (split between the directors), at most 64 MiB a slice: a slice that fills
        // ends an epoch, which costs a flush of every drive, so small slices cost flushes.
        let slice = max(minimum, min(64 << 20, driveBytes / UInt64(32 * directorCount) / (1 << 20) * (1 << 20)))
        let journalEnd = journalOffsetBytes + slice * UInt64(directorCount)
        guard driveBytes > journalEnd else { return nil }
        let checksums = checksumBytes(dataBytes: driveBytes - journalEnd)
        let layout = DriveLayout(journalSliceBytes: slice, directorCount: directorCount, checksumBytes: checksums)
        guard driveBytes > layout.dataOffsetBytes else { return nil }
        let data = (driveBytes - layout.dataOffsetBytes) / UInt64(stripUnitBytes) * UInt64(stripUnitBytes)
        guard data > 0 else { return nil }
        return (layout, data)
    }

    /// The smallest drive `plan` accepts with four strips of data.
    public static func minimumDriveBytes(stripUnitBytes: Int, directorCount: Int) -> UInt64 {
        let slice = minimumSliceBytes(stripUnitBytes: stripUnitBytes)
        let journalEnd = journalOffsetBytes + slice * UInt64(directorCount)
        return roundUp(journalEnd + 4096, 1 << 20) + 4 * UInt64(stripUnitBytes)
    }
}

@inline(__always)
public func roundUp(_ value: UInt64, _ multiple: UInt64) -> UInt64 { (value + multiple - 1) / multiple * multiple }
