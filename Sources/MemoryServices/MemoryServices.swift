// MemoryServices: the seed's "virtualised shared-memory driver". Every data copy between front end and global memory,
// every parity computation (XOR for RAID-5, P+Q for RAID-6) and every CRC in the array happens here, so the copies
// the architecture allows are the only ones, and they are counted. One instance per director (its send/receive
// threads' service); counters are relaxed atomics so `vsa status` can read them from another thread.
import Buffers
import Synchronization
import SysISAL

public final class MemoryServices: Sendable {
    public struct Counters: Sendable {
        public var copyCount: UInt64 = 0
        public var copyBytes: UInt64 = 0
        public var xorCount: UInt64 = 0
        public var pqCount: UInt64 = 0
        public var parityBytes: UInt64 = 0
        public var crcCount: UInt64 = 0
        public init() {}
        public static func + (a: Counters, b: Counters) -> Counters {
            var c = Counters()
            c.copyCount = a.copyCount + b.copyCount
            c.copyBytes = a.copyBytes + b.copyBytes
            c.xorCount = a.xorCount + b.xorCount
            c.pqCount = a.pqCount + b.pqCount
            c.parityBytes = a.parityBytes + b.parityBytes
            c.crcCount = a.crcCount + b.crcCount
            return c
        }
    }

    private let copyCount = Atomic<UInt64>(0)
    private let copyBytes = Atomic<UInt64>(0)
    private let xorCount = Atomic<UInt64>(0)
    private let pqCount = Atomic<UInt64>(0)
    private let parityBytes = Atomic<UInt64>(0)
    private let crcCount = Atomic<UInt64>(0)

    public init() {}

    /// Copy (the DMA service): moves bytes between host buffers and cache slots, or slots and staging.
    @inline(__always)
    public func copy(from source: UnsafeRawPointer, to target: UnsafeMutableRawPointer, byteCount: Int) {
        target.copyMemory(from: source, byteCount: byteCount)
        copyCount.add(1, ordering: .relaxed)
        copyBytes.add(UInt64(byteCount), ordering: .relaxed)
    }

    /// Fills with zeroes (punch hole / discard arrive as zero writes).
    @inline(__always)
    public func zero(_ target: UnsafeMutableRawPointer, byteCount: Int) {
        target.initializeMemory(as: UInt8.self, repeating: 0, count: byteCount)
    }

    /// XOR of `sourceCount` buffers into `table[sourceCount]`; all 32-byte aligned.
    public func xorParity(sourceCount: Int, lengthBytes: Int, table: UnsafeMutablePointer<UnsafeMutableRawPointer?>) {
        for i in 0...sourceCount { precondition(Int(bitPattern: table[i]!) % 32 == 0, "parity buffers must be 32-byte aligned") }
        ISAL.xorGen(sourceCount: sourceCount, lengthBytes: lengthBytes, table: table)
        xorCount.add(1, ordering: .relaxed)
        parityBytes.add(UInt64(lengthBytes * sourceCount), ordering: .relaxed)
    }

    /// P and Q of `sourceCount` buffers into `table[sourceCount]` and `table[sourceCount+1]`.
    public func pqParity(sourceCount: Int, lengthBytes: Int, table: UnsafeMutablePointer<UnsafeMutableRawPointer?>) {
        for i in 0...(sourceCount + 1) { precondition(Int(bitPattern: table[i]!) % 32 == 0, "parity buffers must be 32-byte aligned") }
        ISAL.pqGen(sourceCount: sourceCount, lengthBytes: lengthBytes, table: table)
        pqCount.add(1, ordering: .relaxed)
        parityBytes.add(UInt64(lengthBytes * sourceCount), ordering: .relaxed)
    }

    /// target = factor · source, byte by byte in GF(2^8) (RAID-6 recovery through Q; rare path).
    public func gfMultiply(factor: UInt8, source: UnsafeRawPointer, target: UnsafeMutableRawPointer, lengthBytes: Int) {
        ISAL.gfMultiply(factor: factor, source: source, target: target, lengthBytes: lengthBytes)
        pqCount.add(1, ordering: .relaxed)
        parityBytes.add(UInt64(lengthBytes), ordering: .relaxed)
    }

    public func crc32c(_ pointer: UnsafeRawPointer, count: Int, seed: UInt32 = 0) -> UInt32 {
        crcCount.add(1, ordering: .relaxed)
        return ISAL.crc32c(pointer, count: count, seed: seed)
    }

    public var counters: Counters {
        var c = Counters()
        c.copyCount = copyCount.load(ordering: .relaxed)
        c.copyBytes = copyBytes.load(ordering: .relaxed)
        c.xorCount = xorCount.load(ordering: .relaxed)
        c.pqCount = pqCount.load(ordering: .relaxed)
        c.parityBytes = parityBytes.load(ordering: .relaxed)
        c.crcCount = crcCount.load(ordering: .relaxed)
        return c
    }
}

/// CRC32C over raw bytes, continuing from `seed` (a previous result), for records (not counted as a service).
public func crc32c(_ pointer: UnsafeRawPointer, count: Int, seed: UInt32 = 0) -> UInt32 {
    ISAL.crc32c(pointer, count: count, seed: seed)
}

/// CRC32C over a byte array, for metadata records (control plane; not counted).
public func crc32c(_ bytes: [UInt8]) -> UInt32 {
    bytes.withUnsafeBytes { ISAL.crc32c($0.baseAddress!, count: $0.count) }
}

/// GF(2^8) scalars (polynomial 0x11D, generator 2: the field of RAID-6's Q), for recovery coefficients.
public enum GaloisField {
    public static func multiply(_ a: UInt8, _ b: UInt8) -> UInt8 { ISAL.gfMul(a, b) }
    public static func inverse(_ a: UInt8) -> UInt8 { ISAL.gfInv(a) }
    /// 2^exponent: the Q coefficient of data strip `exponent`.
    public static func powerOf2(_ exponent: Int) -> UInt8 { ISAL.gfPow2(exponent) }
}
