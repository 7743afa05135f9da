// BackEnd: RAID 0/1/10/5/6 over the drives. The port the cache (GlobalMemory) uses is `StripeStore`. Every call
// works on one stripe and one byte range [offsetBytes, offsetBytes + count) that is the same in each of the stripe's
// strips (a "stripe range": whole sectors; the cache uses whole 4 KiB pages), so a 4 KiB host write costs 4 KiB drive
// I/Os, not whole strips.
//
// Writes come in two forms, and the cache picks the cheaper one per stripe:
//   reconstruct-write  the caller supplies every data strip's range; parity is computed from all of them.
//                      When every strip was write-pending this is a full-stripe write and needs no reads at all.
//   read-modify-write  `readOld` fetches the old contents of the dirty strips and of P/Q; `writeDelta` computes
//                      P' = P ^ Σ(old ^ new) and Q' = Q ^ Σ g^i·(old ^ new) and writes only dirty strips and parity.
//
// One `RAIDBackEnd` is one director's back-end adapter: it owns its io_uring (through DriveIO), its staging strips
// and its parity pointer table, all allocated when the director starts; it runs on that director's thread only.
//
// Degraded I/O: a data strip on a failed drive is rebuilt from its mirror, or from the other strips and P (RAID-5/6);
// writes skip failed drives, parity still covers the new data. More failures than the level tolerates -> false (EIO).
import ArrayModel
import Buffers
import Drives
import MemoryServices
import Synchronization

/// The back end as the cache sees it. Thread: the owning director's. Ranges are 512-byte aligned (4 KiB for writes
/// with parity); `targets[i]` / `strips[i]` point at the range's first byte for data strip i.
public protocol StripeStore: AnyObject {
    var geometry: ArrayGeometry { get }
    /// Whether the level keeps parity (reconstruct-write needs every data strip; read-modify-write is possible).
    var hasParity: Bool { get }
    /// Whether every member drive is online (read-modify-write needs the old data and parity).
    var allMembersOnline: Bool { get }
    /// Whether some drive does direct I/O, so buffers handed to `writeStripe` must be 4 KiB aligned.
    var needsAlignedBuffers: Bool { get }
    /// Reads the range of the data strips in `stripMask` (bit i = data strip i) into `targets[i]`.
    func readStrips(stripe: UInt64, stripMask: UInt64, offsetBytes: Int, count: Int, targets: UnsafeMutablePointer<UnsafeMutableRawPointer?>) -> Bool
    /// Reconstruct-write: writes the range of the strips in `dirtyMask` to every copy, and P/Q computed from all `strips`.
    func writeStripe(stripe: UInt64, strips: UnsafeMutablePointer<UnsafeMutableRawPointer?>, dirtyMask: UInt64, offsetBytes: Int, count: Int) -> Bool
    /// Read-modify-write, step 1: reads the old range of the dirty strips and of P/Q into the adapter's staging.
    func readOld(stripe: UInt64, dirtyMask: UInt64, offsetBytes: Int, count: Int) -> Bool
    /// The old contents of data strip `strip`'s range, valid after `readOld`.
    func oldData(strip: Int) -> UnsafeMutableRawPointer
    /// Read-modify-write, step 2: updates P/Q from old and new data and writes dirty strips and parity.
    func writeDelta(stripe: UInt64, strips: UnsafeMutablePointer<UnsafeMutableRawPointer?>, dirtyMask: UInt64, offsetBytes: Int, count: Int) -> Bool
    /// Makes everything written so far durable on every online drive.
    func flush() -> Bool
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
    public init() {}
}

public final class RAIDBackEnd: StripeStore {
    public let geometry: ArrayGeometry
    private let drives: [Drive]
    private let io: DriveIO
    private let memory: MemoryServices
    public let marks: BackEndMarks
    private let stripBytes: Int
    /// Staging, one strip each: [0, m) reconstruction sources; [m, 2m) old data (RMW); [2m, 3m) deltas (RMW);
    /// then new P, new Q, old P, old Q, delta P, delta Q, and a strip of zeroes.
    private let staging: Arena
    private let table: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    private let m: Int

    public init(geometry: ArrayGeometry, drives: [Drive], memory: MemoryServices, marks: BackEndMarks) throws {
        self.geometry = geometry
        self.drives = Array(drives.prefix(geometry.memberCount))
        self.memory = memory
        self.marks = marks
        self.stripBytes = geometry.stripUnitBytes
        self.m = geometry.memberCount
        self.io = try DriveIO(drives: self.drives, capacity: 8 * geometry.memberCount + 16)
        self.staging = Arena(sliceBytes: geometry.stripUnitBytes, sliceCount: 3 * geometry.memberCount + 7)
        self.table = .allocate(capacity: 2 * geometry.memberCount + 4)
        self.table.initialize(repeating: nil, count: 2 * geometry.memberCount + 4)
    }

    deinit { table.deallocate() }

    private var newP: UnsafeMutableRawPointer { staging.slice(3 * m) }
    private var newQ: UnsafeMutableRawPointer { staging.slice(3 * m + 1) }
    private var oldP: UnsafeMutableRawPointer { staging.slice(3 * m + 2) }
    private var oldQ: UnsafeMutableRawPointer { staging.slice(3 * m + 3) }
    private var deltaP: UnsafeMutableRawPointer { staging.slice(3 * m + 4) }
    private var deltaQ: UnsafeMutableRawPointer { staging.slice(3 * m + 5) }
    private var zeroes: UnsafeMutableRawPointer { staging.slice(3 * m + 6) }

    public var hasParity: Bool { geometry.parityStripsPerStripe > 0 }

    public var needsAlignedBuffers: Bool { drives.contains { $0.usesDirectIO } }

    public var allMembersOnline: Bool {
        for drive in 0..<m where !online(drive) { return false }
        return true
    }

    @inline(__always) private func online(_ drive: Int) -> Bool { drives[drive].state == .online }

    @inline(__always) private func checkRange(_ offsetBytes: Int, _ count: Int) {
        precondition(
            offsetBytes >= 0 && count > 0 && offsetBytes + count <= stripBytes, "stripe range \(offsetBytes)+\(count) outside a \(stripBytes)-byte strip")
        precondition(offsetBytes % sectorBytes == 0 && count % sectorBytes == 0, "stripe ranges are whole sectors")
    }

    // MARK: Reads

    public func readStrips(stripe: UInt64, stripMask: UInt64, offsetBytes: Int, count: Int, targets: UnsafeMutablePointer<UnsafeMutableRawPointer?>) -> Bool {
        checkRange(offsetBytes, count)
        let offset = geometry.driveOffset(stripe: stripe) + UInt64(offsetBytes)
        var remaining = stripMask
        for _ in 0..<3 where remaining != 0 {
            var degradedMask: UInt64 = 0
            for strip in 0..<geometry.dataStripsPerStripe where remaining & (1 << UInt64(strip)) != 0 {
                // Read from the first online copy.
                var issued = false
                for drive in geometry.copyDrives(stripe: stripe, strip: strip) where online(drive) {
                    io.queueRead(drive: drive, into: targets[strip]!, count: count, offsetBytes: offset)
                    issued = true
                    break
                }
                if !issued { degradedMask |= 1 << UInt64(strip) }
            }
            let failed = io.submit()
            marks.stripReads.add(UInt64(remaining.nonzeroBitCount), ordering: .relaxed)
            // Strips whose copy failed just now are tried again: another copy, or rebuilt.
            var retry: UInt64 = 0
            if failed != 0 {
                for strip in 0..<geometry.dataStripsPerStripe where remaining & (1 << UInt64(strip)) != 0 {
                    if geometry.copyDrives(stripe: stripe, strip: strip).contains(where: { failed & (1 << UInt64($0)) != 0 }) {
                        retry |= 1 << UInt64(strip)
                    }
                }
            }
            for strip in 0..<geometry.dataStripsPerStripe where degradedMask & (1 << UInt64(strip)) != 0 {
                if !reconstruct(stripe: stripe, strip: strip, offsetBytes: offsetBytes, count: count, into: targets[strip]!) { return false }
            }
            remaining = retry & ~degradedMask
        }
        return remaining == 0
    }

    /// Rebuilds the range of a data strip whose drive (every copy) is failed, from the other strips and P.
    private func reconstruct(stripe: UInt64, strip: Int, offsetBytes: Int, count: Int, into target: UnsafeMutableRawPointer) -> Bool {
        guard geometry.raidLevel == .raid5 || geometry.raidLevel == .raid6 else { return false }
        let offset = geometry.driveOffset(stripe: stripe) + UInt64(offsetBytes)
        let p = geometry.parityDrive(stripe: stripe)
        guard online(p) else { return false }  // rebuilding through Q comes with the reliability issue
        var sources = 0
        for other in 0..<geometry.dataStripsPerStripe where other != strip {
            let drive = geometry.dataDrive(stripe: stripe, strip: other)
            guard online(drive) else { return false }
            io.queueRead(drive: drive, into: staging.slice(sources), count: count, offsetBytes: offset)
            table[sources] = staging.slice(sources)
            sources += 1
        }
        io.queueRead(drive: p, into: staging.slice(sources), count: count, offsetBytes: offset)
        table[sources] = staging.slice(sources)
        sources += 1
        if io.submit() != 0 { return false }
        table[sources] = target
        memory.xorParity(sourceCount: sources, lengthBytes: count, table: table)
        marks.degradedReads.add(1, ordering: .relaxed)
        return true
    }

    // MARK: Reconstruct-write

    public func writeStripe(stripe: UInt64, strips: UnsafeMutablePointer<UnsafeMutableRawPointer?>, dirtyMask: UInt64, offsetBytes: Int, count: Int) -> Bool {
        checkRange(offsetBytes, count)
        let offset = geometry.driveOffset(stripe: stripe) + UInt64(offsetBytes)
        let d = geometry.dataStripsPerStripe
        queueDataWrites(stripe: stripe, strips: strips, dirtyMask: dirtyMask, offset: offset, count: count)
        if hasParity {
            for i in 0..<d { table[i] = strips[i] }
            table[d] = newP
            table[d + 1] = newQ
            if geometry.raidLevel == .raid5 {
                memory.xorParity(sourceCount: d, lengthBytes: count, table: table)
            } else {
                memory.pqParity(sourceCount: d, lengthBytes: count, table: table)
            }
            queueParityWrites(stripe: stripe, offset: offset, count: count)
            if dirtyMask.nonzeroBitCount == d {
                marks.fullStripeWrites.add(1, ordering: .relaxed)
            } else {
                marks.reconstructWrites.add(1, ordering: .relaxed)
            }
        }
        return finishWrite()
    }

    private func queueDataWrites(stripe: UInt64, strips: UnsafeMutablePointer<UnsafeMutableRawPointer?>, dirtyMask: UInt64, offset: UInt64, count: Int) {
        for strip in 0..<geometry.dataStripsPerStripe where dirtyMask & (1 << UInt64(strip)) != 0 {
            for drive in geometry.copyDrives(stripe: stripe, strip: strip) where online(drive) {
                io.queueWrite(drive: drive, from: strips[strip]!, count: count, offsetBytes: offset)
            }
            marks.stripWrites.add(1, ordering: .relaxed)
        }
    }

    private func queueParityWrites(stripe: UInt64, offset: UInt64, count: Int) {
        let p = geometry.parityDrive(stripe: stripe)
        if online(p) { io.queueWrite(drive: p, from: newP, count: count, offsetBytes: offset) }
        if geometry.raidLevel == .raid6 {
            let q = geometry.qDrive(stripe: stripe)
            if online(q) { io.queueWrite(drive: q, from: newQ, count: count, offsetBytes: offset) }
        }
    }

    private func finishWrite() -> Bool {
        let failed = io.submit()
        let down = failedMembers()
        if failed != 0 || down > 0 { marks.degradedWrites.add(1, ordering: .relaxed) }
        return down <= geometry.raidLevel.faultTolerance(memberCount: m)
    }

    // MARK: Read-modify-write

    public func oldData(strip: Int) -> UnsafeMutableRawPointer { staging.slice(m + strip) }

    public func readOld(stripe: UInt64, dirtyMask: UInt64, offsetBytes: Int, count: Int) -> Bool {
        checkRange(offsetBytes, count)
        precondition(hasParity, "read-modify-write needs parity")
        // Another director may have failed a drive since the caller looked: then the caller reconstructs instead.
        guard allMembersOnline else { return false }
        let offset = geometry.driveOffset(stripe: stripe) + UInt64(offsetBytes)
        for strip in 0..<geometry.dataStripsPerStripe where dirtyMask & (1 << UInt64(strip)) != 0 {
            io.queueRead(drive: geometry.dataDrive(stripe: stripe, strip: strip), into: oldData(strip: strip), count: count, offsetBytes: offset)
        }
        io.queueRead(drive: geometry.parityDrive(stripe: stripe), into: oldP, count: count, offsetBytes: offset)
        if geometry.raidLevel == .raid6 {
            io.queueRead(drive: geometry.qDrive(stripe: stripe), into: oldQ, count: count, offsetBytes: offset)
        }
        marks.stripReads.add(UInt64(dirtyMask.nonzeroBitCount + geometry.parityStripsPerStripe), ordering: .relaxed)
        return io.submit() == 0
    }

    public func writeDelta(stripe: UInt64, strips: UnsafeMutablePointer<UnsafeMutableRawPointer?>, dirtyMask: UInt64, offsetBytes: Int, count: Int) -> Bool {
        checkRange(offsetBytes, count)
        let offset = geometry.driveOffset(stripe: stripe) + UInt64(offsetBytes)
        let d = geometry.dataStripsPerStripe
        if geometry.raidLevel == .raid5 {
            // P' = P ^ Σ(old_i ^ new_i) over the dirty strips: one XOR pass over exactly those sources.
            var sources = 0
            table[sources] = oldP
            sources += 1
            for strip in 0..<d where dirtyMask & (1 << UInt64(strip)) != 0 {
                table[sources] = oldData(strip: strip)
                table[sources + 1] = strips[strip]
                sources += 2
            }
            table[sources] = newP
            memory.xorParity(sourceCount: sources, lengthBytes: count, table: table)
        } else {
            // Q needs each delta at its strip's position (its GF(2^8) coefficient): delta_i = old_i ^ new_i for dirty
            // strips, zeroes for the others, then P/Q of the deltas folded into the old P and Q.
            zeroes.initializeMemory(as: UInt8.self, repeating: 0, count: count)
            for strip in 0..<d {
                if dirtyMask & (1 << UInt64(strip)) != 0 {
                    let delta = staging.slice(2 * m + strip)
                    table[0] = oldData(strip: strip)
                    table[1] = strips[strip]
                    table[2] = delta
                    memory.xorParity(sourceCount: 2, lengthBytes: count, table: table)
                    table[d + 2 + strip] = delta
                } else {
                    table[d + 2 + strip] = zeroes
                }
            }
            for i in 0..<d { table[i] = table[d + 2 + i] }
            table[d] = deltaP
            table[d + 1] = deltaQ
            memory.pqParity(sourceCount: d, lengthBytes: count, table: table)
            table[0] = oldP
            table[1] = deltaP
            table[2] = newP
            memory.xorParity(sourceCount: 2, lengthBytes: count, table: table)
            table[0] = oldQ
            table[1] = deltaQ
            table[2] = newQ
            memory.xorParity(sourceCount: 2, lengthBytes: count, table: table)
        }
        queueDataWrites(stripe: stripe, strips: strips, dirtyMask: dirtyMask, offset: offset, count: count)
        queueParityWrites(stripe: stripe, offset: offset, count: count)
        marks.readModifyWrites.add(1, ordering: .relaxed)
        return finishWrite()
    }

    /// Whether some online drive keeps writes where a flush must push them (not memory-backed).
    public var needsFlush: Bool {
        for drive in 0..<m where online(drive) && !drives[drive].isMemoryBacked { return true }
        return false
    }

    public func flush() -> Bool {
        // Memory-backed drives (tmpfs) keep nothing across a power cut whatever we do; flushing them only costs an
        // io-wq round trip.
        for drive in 0..<m where online(drive) && !drives[drive].isMemoryBacked { io.queueFlush(drive: drive) }
        io.submit()
        return failedMembers() <= geometry.raidLevel.faultTolerance(memberCount: m)
    }

    private func failedMembers() -> Int {
        var n = 0
        for drive in 0..<m where !online(drive) { n += 1 }
        return n
    }
}
