// MemoryServices: the seed's "virtualised shared-memory driver". Every data copy between front end and global memory
// (and into the partner's mirror), every parity computation (XOR for RAID-5, P+Q for RAID-6) and every CRC in the
// array happens here, so the copies the architecture allows are the only ones, and they are counted per service.
// Requests are descriptors (ServiceRequest); a caller either queues several (`submit`, then `execute` runs them in
// order, as a DMA engine runs its ring) or runs one at once (`perform`, or the one-line helpers). One instance per
// director, used by whoever holds its executor role (its receive side and its back end); counters are relaxed
// atomics so `vsa status` can read them from another thread.
import Buffers
import Synchronization
import SysISAL

/// What a service request asks for.
public enum ServiceKind: Int, Sendable, CaseIterable, CustomStringConvertible {
    /// Copy (the emulated DMA): host buffers <-> cache slots, slots <-> staging, a slot -> the partner's mirror.
    case copy
    /// Fill with zeroes (punch hole, zero range, discard).
    case zero
    /// XOR parity (RAID-5 P) of `sourceCount` buffers.
    case xor
    /// P and Q (RAID-6) of `sourceCount` buffers.
    case pq
    /// GF(2^8) multiply by a constant (RAID-6 recovery through Q).
    case gfMultiply
    /// CRC32C of a buffer (block checksums; journal and metadata records use the uncounted `crc32c` function).
    case crc
    public var description: String {
        switch self {
        case .copy: return "copy"
        case .zero: return "zero"
        case .xor: return "xor"
        case .pq: return "p+q"
        case .gfMultiply: return "gf-multiply"
        case .crc: return "crc"
        }
    }
}

/// One service request: a descriptor, as a DMA engine takes them. Pointers stay the caller's; nothing is copied
/// into the request but addresses and sizes.
public struct ServiceRequest {
    public var kind: ServiceKind
    public var source: UnsafeRawPointer?
    public var target: UnsafeMutableRawPointer?
    public var byteCount: Int
    /// Parity: the buffer table (sources, then P and Q).
    public var table: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
    public var sourceCount: Int
    public var seed: UInt32
    public var factor: UInt8

    public static func copy(from source: UnsafeRawPointer, to target: UnsafeMutableRawPointer, byteCount: Int) -> ServiceRequest {
        ServiceRequest(kind: .copy, source: source, target: target, byteCount: byteCount, table: nil, sourceCount: 0, seed: 0, factor: 0)
    }
    public static func zero(_ target: UnsafeMutableRawPointer, byteCount: Int) -> ServiceRequest {
        ServiceRequest(kind: .zero, source: nil, target: target, byteCount: byteCount, table: nil, sourceCount: 0, seed: 0, factor: 0)
    }
}

public final class MemoryServices: @unchecked Sendable {
    public struct Counters: Sendable {
        /// Requests and bytes per service, indexed by ServiceKind.rawValue.
        public var requests = [UInt64](repeating: 0, count: ServiceKind.allCases.count)
        public var bytes = [UInt64](repeating: 0, count: ServiceKind.allCases.count)
        public init() {}
        public subscript(kind: ServiceKind) -> (requests: UInt64, bytes: UInt64) { (requests[kind.rawValue], bytes[kind.rawValue]) }
        public var copyCount: UInt64 { requests[ServiceKind.copy.rawValue] }
        public var copyBytes: UInt64 { bytes[ServiceKind.copy.rawValue] }
        public var xorCount: UInt64 { requests[ServiceKind.xor.rawValue] }
        public var pqCount: UInt64 { requests[ServiceKind.pq.rawValue] + requests[ServiceKind.gfMultiply.rawValue] }
        public var parityBytes: UInt64 { bytes[ServiceKind.xor.rawValue] + bytes[ServiceKind.pq.rawValue] + bytes[ServiceKind.gfMultiply.rawValue] }
        public var crcCount: UInt64 { requests[ServiceKind.crc.rawValue] }
        public static func + (a: Counters, b: Counters) -> Counters {
            var c = Counters()
            for i in c.requests.indices {
                c.requests[i] = a.requests[i] + b.requests[i]
                c.bytes[i] = a.bytes[i] + b.bytes[i]
            }
            return c
        }
    }

    // Per-service counters: relaxed atomics, so `vsa status` reads them from another thread.
    private let requestCounts: UnsafeMutablePointer<Atomic<UInt64>>
    private let byteCounts: UnsafeMutablePointer<Atomic<UInt64>>
    private static let kinds = ServiceKind.allCases.count

    // The service queue: descriptors submitted by the owning director's executor (its receive side and its back
    // end) and run in order by `execute`. One executor at a time uses an instance, so the queue takes no lock.
    private let queue: UnsafeMutablePointer<ServiceRequest>
    private var queued = 0
    public let queueCapacity = 16

    public init() {
        requestCounts = .allocate(capacity: MemoryServices.kinds)
        byteCounts = .allocate(capacity: MemoryServices.kinds)
        for i in 0..<MemoryServices.kinds {
            (requestCounts + i).initialize(to: Atomic(0))
            (byteCounts + i).initialize(to: Atomic(0))
        }
        queue = .allocate(capacity: queueCapacity)
    }

    deinit {
        _ = requestCounts.deinitialize(count: MemoryServices.kinds)
        _ = byteCounts.deinitialize(count: MemoryServices.kinds)
        requestCounts.deallocate()
        byteCounts.deallocate()
        queue.deallocate()
    }

    /// Queues a request; it runs at the next `execute()` (a full queue runs first). Order is kept.
    @inline(__always)
    public func submit(_ request: ServiceRequest) {
        if queued == queueCapacity { execute() }
        (queue + queued).initialize(to: request)
        queued += 1
    }

    /// Runs every queued request, in the order submitted.
    @inline(__always)
    public func execute() {
        for i in 0..<queued { _ = perform(queue[i]) }
        queued = 0
    }

    /// Runs one request now, ahead of anything queued (callers run their queue before they depend on it). Returns the
    /// CRC for `.crc`, else 0.
    @inline(__always)
    @discardableResult
    public func perform(_ request: ServiceRequest) -> UInt32 {
        var result: UInt32 = 0
        var bytes = request.byteCount
        switch request.kind {
        case .copy:
            request.target!.copyMemory(from: request.source!, byteCount: request.byteCount)
        case .zero:
            request.target!.initializeMemory(as: UInt8.self, repeating: 0, count: request.byteCount)
        case .xor:
            let table = request.table!
            for i in 0...request.sourceCount { precondition(Int(bitPattern: table[i]!) % 32 == 0, "parity buffers must be 32-byte aligned") }
            ISAL.xorGen(sourceCount: request.sourceCount, lengthBytes: request.byteCount, table: table)
            bytes = request.byteCount * request.sourceCount
        case .pq:
            let table = request.table!
            for i in 0...(request.sourceCount + 1) { precondition(Int(bitPattern: table[i]!) % 32 == 0, "parity buffers must be 32-byte aligned") }
            ISAL.pqGen(sourceCount: request.sourceCount, lengthBytes: request.byteCount, table: table)
            bytes = request.byteCount * request.sourceCount
        case .gfMultiply:
            ISAL.gfMultiply(factor: request.factor, source: request.source!, target: request.target!, lengthBytes: request.byteCount)
        case .crc:
            result = ISAL.crc32c(request.source!, count: request.byteCount, seed: request.seed)
        }
        requestCounts[request.kind.rawValue].add(1, ordering: .relaxed)
        byteCounts[request.kind.rawValue].add(UInt64(bytes), ordering: .relaxed)
        return result
    }

    // The services one at a time (each runs through `perform`, so it is counted like a queued one).

    /// Copy (the DMA service): moves bytes between host buffers and cache slots, or slots and staging.
    @inline(__always)
    public func copy(from source: UnsafeRawPointer, to target: UnsafeMutableRawPointer, byteCount: Int) {
        perform(.copy(from: source, to: target, byteCount: byteCount))
    }

    /// Fills with zeroes (punch hole / discard arrive as zero writes).
    @inline(__always)
    public func zero(_ target: UnsafeMutableRawPointer, byteCount: Int) {
        perform(.zero(target, byteCount: byteCount))
    }

    /// XOR of `sourceCount` buffers into `table[sourceCount]`; all 32-byte aligned.
    public func xorParity(sourceCount: Int, lengthBytes: Int, table: UnsafeMutablePointer<UnsafeMutableRawPointer?>) {
        perform(ServiceRequest(kind: .xor, source: nil, target: nil, byteCount: lengthBytes, table: table, sourceCount: sourceCount, seed: 0, factor: 0))
    }

    /// P and Q of `sourceCount` buffers into `table[sourceCount]` and `table[sourceCount+1]`.
    public func pqParity(sourceCount: Int, lengthBytes: Int, table: UnsafeMutablePointer<UnsafeMutableRawPointer?>) {
        perform(ServiceRequest(kind: .pq, source: nil, target: nil, byteCount: lengthBytes, table: table, sourceCount: sourceCount, seed: 0, factor: 0))
    }

    /// target = factor · source, byte by byte in GF(2^8) (RAID-6 recovery through Q; rare path).
    public func gfMultiply(factor: UInt8, source: UnsafeRawPointer, target: UnsafeMutableRawPointer, lengthBytes: Int) {
        perform(ServiceRequest(kind: .gfMultiply, source: source, target: target, byteCount: lengthBytes, table: nil, sourceCount: 0, seed: 0, factor: factor))
    }

    public func crc32c(_ pointer: UnsafeRawPointer, count: Int, seed: UInt32 = 0) -> UInt32 {
        perform(ServiceRequest(kind: .crc, source: pointer, target: nil, byteCount: count, table: nil, sourceCount: 0, seed: seed, factor: 0))
    }

    public var counters: Counters {
        var c = Counters()
        for i in 0..<MemoryServices.kinds {
            c.requests[i] = requestCounts[i].load(ordering: .relaxed)
            c.bytes[i] = byteCounts[i].load(ordering: .relaxed)
        }
        return c
    }
}

/// CRC32C over raw bytes, continuing from `seed` (a previous result), for records (not counted as a service).
public func crc32c(_ pointer: UnsafeRawPointer, count: Int, seed: UInt32 = 0) -> UInt32 {
    ISAL.crc32c(pointer, count: count, seed: seed)
}

/// The CRC32C of a 4 KiB block with seed `seed`, from its CRC32C with seed 0 (`crc`), without reading the block
/// again. CRC32C is linear in its register: crc(s, d) = crc(0, d) ^ L(s), where L(s) is what 4096 zero bytes make of a
/// register holding s, a linear map of 32 bits, applied here a byte of `seed` at a time from four tables.
@inline(__always)
public func crc32c4KReseeded(_ crc: UInt32, seed: UInt32) -> UInt32 {
    Crc32c4KShift.table.withUnsafeBufferPointer { t in
        crc ^ t[Int(seed & 0xFF)] ^ t[256 + Int(seed >> 8 & 0xFF)] ^ t[512 + Int(seed >> 16 & 0xFF)] ^ t[768 + Int(seed >> 24)]
    }
}

private enum Crc32c4KShift {
    /// Entry 256 * p + v: L(v << 8p). Built once from L of the 32 single bits (each the difference of two CRCs of a
    /// zero block).
    static let table: [UInt32] = {
        let zeroes = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 64)
        defer { zeroes.deallocate() }
        zeroes.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
        let base = ISAL.crc32c(zeroes, count: 4096, seed: 0)
        let bit = (0..<32).map { ISAL.crc32c(zeroes, count: 4096, seed: UInt32(1) << UInt32($0)) ^ base }
        var table = [UInt32](repeating: 0, count: 1024)
        for p in 0..<4 {
            for v in 0..<256 {
                for b in 0..<8 where v & (1 << b) != 0 { table[256 * p + v] ^= bit[8 * p + b] }
            }
        }
        return table
    }()
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
