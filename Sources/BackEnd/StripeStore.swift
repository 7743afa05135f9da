// BackEnd: RAID 0/1/10/5/6 over the drives. The port the cache (GlobalMemory) uses is `StripeStore`: read data
// strips, write a stripe whose data strips are all in memory, flush. One `RAIDBackEnd` instance is a director's
// back-end adapter: it owns its io_uring (through DriveIO), staging strips and a parity pointer table, all allocated
// when the director starts; it runs on that director's thread only and takes no lock.
//
// Degraded I/O: a data strip on a failed drive is rebuilt from its mirror or from the other strips and P (RAID-5/6);
// writes skip failed drives but parity still covers the new data. More failures than the level tolerates -> EIO.
import ArrayModel
import Buffers
import Drives
import MemoryServices
import Synchronization

/// The back end as the cache sees it. Thread: the owning director's.
public protocol StripeStore: AnyObject {
    var geometry: ArrayGeometry { get }
    /// Whether a stripe write needs every data strip in memory (levels with parity).
    var writesNeedWholeStripe: Bool { get }
    /// Reads the data strips of `stripe` named by `stripMask` (bit i = data strip i) into `targets[i]`, each
    /// `stripUnitBytes` long. Returns false if some strip could not be read or rebuilt.
    func readStrips(stripe: UInt64, stripMask: UInt64, targets: UnsafeMutablePointer<UnsafeMutableRawPointer?>) -> Bool
    /// Writes the data strips in `dirtyMask` to every copy, and (parity levels) P/Q computed from all of `strips`.
    func writeStripe(stripe: UInt64, strips: UnsafeMutablePointer<UnsafeMutableRawPointer?>, dirtyMask: UInt64) -> Bool
    /// Makes everything written so far durable on every online drive.
    func flush() -> Bool
}

/// Counters of the rare and the common paths, readable from the control plane.
public final class BackEndMarks: Sendable {
    public let fullStripeWrites = Atomic<UInt64>(0)
    public let reconstructWrites = Atomic<UInt64>(0)
    public let degradedReads = Atomic<UInt64>(0)
    public let degradedWrites = Atomic<UInt64>(0)
    public let stripReads = Atomic<UInt64>(0)
    public let stripWrites = Atomic<UInt64>(0)
    public init() {}
}

public final class RAIDBackEnd: StripeStore {
    public let geometry: ArrayGeometry
    private let drives: [Drive]
    private let io: DriveIO
    private let memory: MemoryServices
    public let marks: BackEndMarks
    /// Staging: one strip per member (reconstruction) plus P and Q.
    private let staging: Arena
    private let table: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    private let stripBytes: Int

    public init(geometry: ArrayGeometry, drives: [Drive], memory: MemoryServices, marks: BackEndMarks) throws {
        self.geometry = geometry
        self.drives = Array(drives.prefix(geometry.memberCount))
        self.memory = memory
        self.marks = marks
        self.stripBytes = geometry.stripUnitBytes
        self.io = try DriveIO(drives: self.drives, capacity: 4 * geometry.memberCount * 4 + 16)
        self.staging = Arena(sliceBytes: geometry.stripUnitBytes, sliceCount: geometry.memberCount + 2)
        self.table = .allocate(capacity: geometry.memberCount + 2)
        self.table.initialize(repeating: nil, count: geometry.memberCount + 2)
    }

    deinit { table.deallocate() }

    public var writesNeedWholeStripe: Bool { geometry.parityStripsPerStripe > 0 }

    @inline(__always) private func online(_ drive: Int) -> Bool { drives[drive].state == .online }

    // MARK: Reads

    public func readStrips(stripe: UInt64, stripMask: UInt64, targets: UnsafeMutablePointer<UnsafeMutableRawPointer?>) -> Bool {
        let offset = geometry.driveOffset(stripe: stripe)
        var attempt = 0
        var remaining = stripMask
        while remaining != 0 && attempt < 3 {
            attempt += 1
            var degradedMask: UInt64 = 0
            for strip in 0..<geometry.dataStripsPerStripe where remaining & (1 << UInt64(strip)) != 0 {
                // Read from the first online copy.
                var issued = false
                for drive in geometry.copyDrives(stripe: stripe, strip: strip) where online(drive) {
                    io.queueRead(drive: drive, into: targets[strip]!, count: stripBytes, offsetBytes: offset)
                    issued = true
                    break
                }
                if !issued { degradedMask |= 1 << UInt64(strip) }
            }
            let failed = io.submit()
            marks.stripReads.add(UInt64(remaining.nonzeroBitCount), ordering: .relaxed)
            // Strips whose copy failed just now are retried (next copy, or degraded).
            var retry: UInt64 = 0
            if failed != 0 {
                for strip in 0..<geometry.dataStripsPerStripe where remaining & (1 << UInt64(strip)) != 0 {
                    if geometry.copyDrives(stripe: stripe, strip: strip).contains(where: { failed & (1 << UInt64($0)) != 0 }) {
                        retry |= 1 << UInt64(strip)
                    }
                }
            }
            if degradedMask != 0 {
                for strip in 0..<geometry.dataStripsPerStripe where degradedMask & (1 << UInt64(strip)) != 0 {
                    if !reconstruct(stripe: stripe, strip: strip, into: targets[strip]!) { return false }
                }
            }
            remaining = retry & ~degradedMask
        }
        return remaining == 0
    }

    /// Rebuilds a data strip whose drive (every copy) is failed, from the other strips and P.
    private func reconstruct(stripe: UInt64, strip: Int, into target: UnsafeMutableRawPointer) -> Bool {
        guard geometry.raidLevel == .raid5 || geometry.raidLevel == .raid6 else { return false }
        marks.degradedReads.add(1, ordering: .relaxed)
        let offset = geometry.driveOffset(stripe: stripe)
        let p = geometry.parityDrive(stripe: stripe)
        guard online(p) else { return false }  // double failures with Q come with the reliability issue
        let d = geometry.dataStripsPerStripe
        var sources = 0
        for other in 0..<d where other != strip {
            let drive = geometry.dataDrive(stripe: stripe, strip: other)
            guard online(drive) else { return false }
            io.queueRead(drive: drive, into: staging.slice(sources), count: stripBytes, offsetBytes: offset)
            table[sources] = staging.slice(sources)
            sources += 1
        }
        io.queueRead(drive: p, into: staging.slice(sources), count: stripBytes, offsetBytes: offset)
        table[sources] = staging.slice(sources)
        sources += 1
        if io.submit() != 0 { return false }
        table[sources] = target
        memory.xorParity(sourceCount: sources, lengthBytes: stripBytes, table: table)
        return true
    }

    // MARK: Writes

    public func writeStripe(stripe: UInt64, strips: UnsafeMutablePointer<UnsafeMutableRawPointer?>, dirtyMask: UInt64) -> Bool {
        let offset = geometry.driveOffset(stripe: stripe)
        let d = geometry.dataStripsPerStripe
        var lost = 0
        for strip in 0..<d where dirtyMask & (1 << UInt64(strip)) != 0 {
            var wrote = false
            for drive in geometry.copyDrives(stripe: stripe, strip: strip) where online(drive) {
                io.queueWrite(drive: drive, from: strips[strip]!, count: stripBytes, offsetBytes: offset)
                wrote = true
            }
            if !wrote { lost += 1 }
            marks.stripWrites.add(1, ordering: .relaxed)
        }
        switch geometry.raidLevel {
        case .raid5, .raid6:
            for i in 0..<d { table[i] = strips[i] }
            table[d] = staging.slice(geometry.memberCount)
            table[d + 1] = staging.slice(geometry.memberCount + 1)
            if geometry.raidLevel == .raid5 {
                memory.xorParity(sourceCount: d, lengthBytes: stripBytes, table: table)
            } else {
                memory.pqParity(sourceCount: d, lengthBytes: stripBytes, table: table)
            }
            let p = geometry.parityDrive(stripe: stripe)
            if online(p) { io.queueWrite(drive: p, from: table[d]!, count: stripBytes, offsetBytes: offset) } else { lost += 1 }
            if geometry.raidLevel == .raid6 {
                let q = geometry.qDrive(stripe: stripe)
                if online(q) { io.queueWrite(drive: q, from: table[d + 1]!, count: stripBytes, offsetBytes: offset) } else { lost += 1 }
            }
            if dirtyMask.nonzeroBitCount == d {
                marks.fullStripeWrites.add(1, ordering: .relaxed)
            } else {
                marks.reconstructWrites.add(1, ordering: .relaxed)
            }
        default:
            break
        }
        let failed = io.submit()
        if failed != 0 || lost > 0 { marks.degradedWrites.add(1, ordering: .relaxed) }
        return failedMembers() <= geometry.raidLevel.faultTolerance(memberCount: geometry.memberCount)
    }

    public func flush() -> Bool {
        for drive in 0..<geometry.memberCount where online(drive) { io.queueFlush(drive: drive) }
        io.submit()
        return failedMembers() <= geometry.raidLevel.faultTolerance(memberCount: geometry.memberCount)
    }

    private func failedMembers() -> Int {
        var n = 0
        for drive in 0..<geometry.memberCount where !online(drive) { n += 1 }
        return n
    }
}
