// GlobalMemory: the mirrored half of write-pending data. A director's write-pending sectors are acknowledged to the
// host only once they are in two memory portions: the owner's slot, and this mirror, which lives in the partner
// director's portion (arrays mirror write-pending data across the pair so a director can fail without losing what
// it acknowledged). The mirror is indexed by the owner's slot number: mirror slot i holds the write-pending sectors
// of the owner's slot i, with the same key and dirty bits. Clean data is never mirrored (it is on the drives).
//
// Writers: only the owner's executor (through its TrackCache: `record` when sectors go write-pending, `drop` when
// they are destaged or discarded), so no lock. Readers: the partner, only after the owner was fenced (its executor
// is stopped and its executor role taken, which orders every earlier write before the replay).
import ArrayModel
import Buffers
import MemoryServices
import Synchronization

public final class WritePendingMirror: @unchecked Sendable {
    public let slotCount: Int
    public let trackBytes: Int
    private let sectorsPerTrack: Int
    private let wordsPerSlot: Int
    private let arena: Arena
    private var slotLUN: [UInt32]
    private var slotTrack: [UInt64]
    private var slotLUNStart: [UInt64]
    private var slotThin: [Bool]
    private var slotHeld: [Bool]
    private var dirtyBits: [UInt64]
    /// Owner slots with mirrored write-pending sectors now (for `vsa status`).
    public let mirroredSlots = Atomic<Int>(0)

    public init(slotCount: Int, trackBytes: Int) {
        self.slotCount = slotCount
        self.trackBytes = trackBytes
        self.sectorsPerTrack = trackBytes / sectorBytes
        self.wordsPerSlot = (sectorsPerTrack + 63) / 64
        arena = Arena(sliceBytes: trackBytes, sliceCount: slotCount)
        slotLUN = Array(repeating: 0, count: slotCount)
        slotTrack = Array(repeating: 0, count: slotCount)
        slotLUNStart = Array(repeating: 0, count: slotCount)
        slotThin = Array(repeating: false, count: slotCount)
        slotHeld = Array(repeating: false, count: slotCount)
        dirtyBits = Array(repeating: 0, count: slotCount * wordsPerSlot)
    }

    /// Mirrors sectors [first, last] of the owner's `slot` (which holds LUN `lun`'s `track`; the LUN starts at array stripe `lunStart`):
    /// the data goes across by the memory services' copy (the emulated DMA into the partner's memory).
    @inline(__always)
    func record(
        slot: Int, lun: UInt32, track: UInt64, lunStart: UInt64, thin: Bool, first: Int, last: Int, from slotData: UnsafeRawPointer,
        memory: MemoryServices
    ) {
        if !slotHeld[slot] {
            slotHeld[slot] = true
            slotLUN[slot] = lun
            slotTrack[slot] = track
            slotLUNStart[slot] = lunStart
            slotThin[slot] = thin
            mirroredSlots.add(1, ordering: .relaxed)
        } else {
            precondition(slotLUN[slot] == lun && slotTrack[slot] == track, "mirror slot \(slot) holds another track")
        }
        let offset = first * sectorBytes
        let count = (last - first + 1) * sectorBytes
        // Queued behind the copy into the slot (the caller runs the queue): the sectors leave the slot once filled.
        memory.submit(.copy(from: slotData + offset, to: arena.slice(slot) + offset, byteCount: count))
        setSectorBits(&dirtyBits, base: slot * wordsPerSlot, first, last)
    }

    /// The owner's slot went clean (destaged) or was discarded: its mirror is no longer needed.
    @inline(__always)
    func drop(slot: Int) {
        guard slotHeld[slot] else { return }
        slotHeld[slot] = false
        for w in 0..<wordsPerSlot { dirtyBits[slot * wordsPerSlot + w] = 0 }
        mirroredSlots.subtract(1, ordering: .relaxed)
    }

    /// Forgets everything (after a replay, or when the pair is re-formed).
    public func reset() {
        for slot in 0..<slotCount { drop(slot: slot) }
    }

    public var isEmpty: Bool { mirroredSlots.load(ordering: .relaxed) == 0 }

    /// Calls `body` for every run of mirrored write-pending sectors: the LUN (id, first array stripe, thin), the
    /// byte offset in the LUN, the length, and where the bytes are. Only after the owner was fenced.
    public func forEachRun(_ body: (_ lun: LUNRef, _ offsetBytes: UInt64, _ count: Int, _ data: UnsafeRawPointer) -> Void) {
        let d = UInt64(trackBytes)
        for slot in 0..<slotCount where slotHeld[slot] {
            var s = 0
            while s < sectorsPerTrack {
                guard testDirty(slot, s) else {
                    s += 1
                    continue
                }
                var e = s
                while e + 1 < sectorsPerTrack && testDirty(slot, e + 1) { e += 1 }
                body(
                    LUNRef(lunID: slotLUN[slot], startStripe: slotLUNStart[slot], sizeBytes: 0, thin: slotThin[slot]),
                    slotTrack[slot] * d + UInt64(s * sectorBytes), (e - s + 1) * sectorBytes, arena.slice(slot) + s * sectorBytes)
                s = e + 1
            }
        }
    }

    @inline(__always) private func testDirty(_ slot: Int, _ sector: Int) -> Bool { testSectorBit(dirtyBits, base: slot * wordsPerSlot, sector) }
}
