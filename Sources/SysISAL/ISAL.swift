// SysISAL: ISA-L's parity and CRC kernels. Preconditions are ISA-L's own: every buffer 32-byte aligned and the
// length a multiple of 32 (vsa's strips are multiples of 4 KiB). The pointer table is owned by the caller and
// preallocated, so these calls allocate nothing.
import CISAL

public enum ISAL {
    /// XOR parity: `table[0..<sourceCount]` are sources, `table[sourceCount]` receives their XOR.
    public static func xorGen(sourceCount: Int, lengthBytes: Int, table: UnsafeMutablePointer<UnsafeMutableRawPointer?>) {
        precondition(sourceCount >= 1 && lengthBytes % 32 == 0, "xor_gen: \(sourceCount) sources, \(lengthBytes) bytes")
        if sourceCount == 1 {
            // ISA-L wants at least two sources; one source's parity is a copy of it.
            table[1]!.copyMemory(from: table[0]!, byteCount: lengthBytes)
            return
        }
        let rc = xor_gen(Int32(sourceCount + 1), Int32(lengthBytes), table)
        precondition(rc == 0, "xor_gen failed")
    }

    /// P+Q parity (RAID-6, GF(2^8) with generator 2): `table[0..<sourceCount]` are sources, `table[sourceCount]`
    /// receives P and `table[sourceCount + 1]` receives Q.
    public static func pqGen(sourceCount: Int, lengthBytes: Int, table: UnsafeMutablePointer<UnsafeMutableRawPointer?>) {
        precondition(sourceCount >= 2 && lengthBytes % 32 == 0, "pq_gen: \(sourceCount) sources, \(lengthBytes) bytes")
        let rc = pq_gen(Int32(sourceCount + 2), Int32(lengthBytes), table)
        precondition(rc == 0, "pq_gen failed")
    }

    /// CRC32C (Castagnoli, as iSCSI uses it), standard form: crc32c("123456789") == 0xE3069283.
    public static func crc32c(_ pointer: UnsafeRawPointer, count: Int, seed: UInt32 = 0) -> UInt32 {
        ~crc32_iscsi(UnsafeMutablePointer(mutating: pointer.assumingMemoryBound(to: UInt8.self)), Int32(count), ~seed)
    }

    /// Multiplies every byte of `source` by the GF(2^8) constant `factor` (polynomial 0x11D) into `target`.
    public static func gfMultiply(factor: UInt8, source: UnsafeRawPointer, target: UnsafeMutableRawPointer, lengthBytes: Int) {
        var tables = [UInt8](repeating: 0, count: 32)
        gf_vect_mul_init(factor, &tables)
        let rc = gf_vect_mul(Int32(lengthBytes), &tables, UnsafeMutableRawPointer(mutating: source), target)
        precondition(rc == 0, "gf_vect_mul failed")
    }

    /// a · b in GF(2^8) (polynomial 0x11D, the one pq_gen uses).
    public static func gfMul(_ a: UInt8, _ b: UInt8) -> UInt8 { gf_mul(a, b) }

    /// The multiplicative inverse of a non-zero element of GF(2^8).
    public static func gfInv(_ a: UInt8) -> UInt8 {
        precondition(a != 0, "zero has no inverse")
        return gf_inv(a)
    }

    /// 2^exponent in GF(2^8): the coefficient of data strip `exponent` in Q.
    public static func gfPow2(_ exponent: Int) -> UInt8 {
        var v: UInt8 = 1
        for _ in 0..<exponent { v = gf_mul(v, 2) }
        return v
    }
}
