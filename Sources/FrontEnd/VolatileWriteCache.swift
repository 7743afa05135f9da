// The host's view with a volatile write cache (`-o powercut`): what a power cut would lose. vsa itself keeps every
// acknowledged write (mirrored write-pending slots, the journal). Software above it must survive the disks that
// don't: a write that only reached the drive's volatile cache is gone when power goes, and only what an fsync, an
// O_SYNC/O_DSYNC write or a flush made durable is kept. LazyFS and dm-log-writes test databases against that.
//
// Armed at mount, this port sits between the front end and the directors. Before a write or zeroed range changes a
// 4 KiB block for the first time since its LUN's last flush, it reads the block's contents (the array's, through
// the same port) and keeps them: the block as it was when last made durable. A flush of the LUN makes them all
// durable, so it forgets them. `cut` writes every kept block back: the LUN is as it was at its last flush (torn: each
// block, at random but seeded, either rolls back or keeps its newest contents, as 4 KiB sectors of a write can land
// or not).
//
// Bounded as a drive's cache is: it holds at most `capacityBlocks` blocks (preallocated at mount). When full, its
// oldest block is taken as written back to stable media (forgotten), as a full drive cache writes back.
//
// One lock serialises writes, zeroes and flushes through it (writes run one at a time while it is armed): the cost
// of knowing exactly what a flush covered. Unarmed, none of this exists (the front end talks to the directors).
import ArrayModel
import Directors
import SysPosix

public final class VolatileWriteCache: HostIOPort, @unchecked Sendable {
    public static let blockBytes = 4096
    public let capacityBlocks: Int
    private let port: HostIOPort
    private let arena: UnsafeMutableRawPointer
    private let state: Locked<State>

    struct State {
        /// (LUN id << 40 | block) -> arena slot.
        var slotOf: [UInt64: Int] = [:]
        var freeSlots: [Int]
        /// Keys, oldest first from `head`: the order a full cache writes back in.
        var order: [UInt64] = []
        var head = 0
        var writtenBack: UInt64 = 0
        var lunOfKey: [UInt32: LUNRef] = [:]
    }

    /// What one power cut did.
    public struct Cut: Sendable {
        public var droppedBlocks = 0
        /// Torn: blocks that kept their newest contents.
        public var keptBlocks = 0
        public var luns: [UInt32: Int] = [:]
        /// The first write that failed (0: none).
        public var rc: Int32 = 0
    }

    public init(port: HostIOPort, capacityBytes: UInt64) {
        self.port = port
        capacityBlocks = Int(max(1, capacityBytes / UInt64(Self.blockBytes)))
        arena = Posix.allocateAligned(bytes: capacityBlocks * Self.blockBytes)
        var s = State(freeSlots: Array((0..<capacityBlocks).reversed()))
        s.slotOf.reserveCapacity(capacityBlocks)
        s.order.reserveCapacity(capacityBlocks)
        state = Locked(s)
    }

    deinit { Posix.free(arena) }

    static func key(_ lunID: UInt32, _ block: UInt64) -> UInt64 { UInt64(lunID) << 40 | block }

    /// Blocks held now (written since their LUN's last flush), and blocks a full cache has taken as written back.
    public var unsyncedBlocks: Int { state.withLock { $0.slotOf.count } }
    public var writtenBackBlocks: UInt64 { state.withLock { $0.writtenBack } }

    public func read(lun: LUNRef, offsetBytes: UInt64, count: Int, into target: UnsafeMutableRawPointer) -> Int32 {
        port.read(lun: lun, offsetBytes: offsetBytes, count: count, into: target)
    }

    public func write(lun: LUNRef, offsetBytes: UInt64, count: Int, from source: UnsafeRawPointer) -> Int32 {
        state.withLock { s in
            keepOldContents(&s, lun: lun, offsetBytes: offsetBytes, count: UInt64(count))
            return port.write(lun: lun, offsetBytes: offsetBytes, count: count, from: source)
        }
    }

    public func zero(lun: LUNRef, offsetBytes: UInt64, count: UInt64) -> Int32 {
        state.withLock { s in
            keepOldContents(&s, lun: lun, offsetBytes: offsetBytes, count: count)
            return port.zero(lun: lun, offsetBytes: offsetBytes, count: count)
        }
    }

    public func flush(lun: LUNRef?) -> Int32 {
        state.withLock { s in
            let rc = port.flush(lun: lun)
            // A failed flush made nothing durable that the host may count on.
            if rc == 0 { forget(&s, lunID: lun?.lunID) }
            return rc
        }
    }

    /// A LUN went away (deleted): what it held is nobody's.
    public func drop(lunID: UInt32) { state.withLock { forget(&$0, lunID: lunID) } }

    /// Keeps each block of the range not yet kept since its LUN's last flush, as it is now. A range of more blocks than
    /// the cache holds (a discard of a whole LUN) writes back everything held and keeps only its last blocks, as a
    /// drive's cache would end up; a block that cannot be read is taken as written back, and the write goes ahead.
    private func keepOldContents(_ s: inout State, lun: LUNRef, offsetBytes: UInt64, count: UInt64) {
        guard count > 0, offsetBytes < lun.sizeBytes else { return }
        let end = min(lun.sizeBytes, offsetBytes + min(count, lun.sizeBytes))
        let bytes = UInt64(Self.blockBytes)
        var block = offsetBytes / bytes
        let last = (end - 1) / bytes
        if last - block + 1 >= UInt64(capacityBlocks) {
            s.writtenBack += UInt64(s.slotOf.count)
            forget(&s, lunID: nil)
            block = last + 1 - UInt64(capacityBlocks)
        }
        while block <= last {
            let key = Self.key(lun.lunID, block)
            if s.slotOf[key] == nil {
                if s.freeSlots.isEmpty { writeBackOldest(&s) }
                let slot = s.freeSlots.removeLast()
                let at = arena + slot * Self.blockBytes
                let length = Int(min(bytes, lun.sizeBytes - block * bytes))
                if port.read(lun: lun, offsetBytes: block * bytes, count: length, into: at) == 0 {
                    s.slotOf[key] = slot
                    s.order.append(key)
                    s.lunOfKey[lun.lunID] = lun
                } else {
                    s.freeSlots.append(slot)
                    s.writtenBack += 1
                }
            }
            block += 1
        }
    }

    /// The oldest block kept is taken as written back to stable media: forgotten, as a full drive cache writes back.
    private func writeBackOldest(_ s: inout State) {
        while s.head < s.order.count {
            let key = s.order[s.head]
            s.head += 1
            if let slot = s.slotOf.removeValue(forKey: key) {
                s.freeSlots.append(slot)
                s.writtenBack += 1
                break
            }
        }
        compact(&s)
    }

    /// Forgets the blocks of one LUN (every LUN's for nil): they are durable now.
    private func forget(_ s: inout State, lunID: UInt32?) {
        if let lunID {
            var kept: [UInt64] = []
            kept.reserveCapacity(s.order.count - s.head)
            for key in s.order[s.head...] {
                if key >> 40 != UInt64(lunID) {
                    kept.append(key)
                } else if let slot = s.slotOf.removeValue(forKey: key) {
                    s.freeSlots.append(slot)
                }
            }
            s.order = kept
        } else {
            for (_, slot) in s.slotOf { s.freeSlots.append(slot) }
            s.slotOf.removeAll(keepingCapacity: true)
            s.order.removeAll(keepingCapacity: true)
        }
        s.head = 0
    }

    private func compact(_ s: inout State) {
        guard s.head > 1024, s.head * 2 > s.order.count else { return }
        s.order.removeFirst(s.head)
        s.head = 0
    }

    /// The power cut: every block written since its LUN's last flush goes back to what it was then (torn: each one
    /// only when the seeded coin says so), through the port under this cache; then the array is flushed, so the
    /// rolled-back state is what the drives hold, and nothing is held any more.
    public func cut(torn: Bool, seed: UInt64) -> Cut {
        state.withLock { s in
            var result = Cut()
            var random = seed
            for key in s.order[s.head...] {
                guard let slot = s.slotOf[key], let lun = s.lunOfKey[UInt32(key >> 40)] else { continue }
                let block = key & ((1 << 40) - 1)
                if torn && SplitMix64.next(&random) & 1 == 1 {
                    result.keptBlocks += 1
                    continue
                }
                let offset = block * UInt64(Self.blockBytes)
                let length = Int(min(UInt64(Self.blockBytes), lun.sizeBytes - offset))
                let image = arena + slot * Self.blockBytes
                // A block of zeroes goes back as a zeroed range: a thin LUN then frees it, rather than taking pool space.
                let zeroes = (0..<length / 8).allSatisfy { image.load(fromByteOffset: $0 * 8, as: UInt64.self) == 0 }
                let rc =
                    zeroes && length % 8 == 0
                    ? port.zero(lun: lun, offsetBytes: offset, count: UInt64(length))
                    : port.write(lun: lun, offsetBytes: offset, count: length, from: image)
                if rc != 0 && result.rc == 0 { result.rc = rc }
                result.droppedBlocks += 1
                result.luns[lun.lunID, default: 0] += 1
            }
            let rc = port.flush(lun: nil)
            if rc != 0 && result.rc == 0 { result.rc = rc }
            forget(&s, lunID: nil)
            return result
        }
    }
}
