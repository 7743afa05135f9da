// Parity and CRC against naive references: XOR by hand, GF(2^8) multiplication by hand (polynomial 0x11D).
import Buffers
import MemoryServices
import SysISAL
import XCTest

/// GF(2^8) multiply, bit by bit, with the RAID-6 polynomial x^8+x^4+x^3+x^2+1.
func gfMultiplyNaive(_ a: UInt8, _ b: UInt8) -> UInt8 {
    var a = a, b = b, p: UInt8 = 0
    while b != 0 {
        if b & 1 != 0 { p ^= a }
        let carry = a & 0x80
        a <<= 1
        if carry != 0 { a ^= 0x1D }
        b >>= 1
    }
    return p
}

final class ParityTests: XCTestCase {
    func fill(_ arena: Arena, seed: UInt64) {
        var state = seed
        for i in 0..<arena.totalBytes {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            arena.base.storeBytes(of: UInt8(truncatingIfNeeded: state >> 33), toByteOffset: i, as: UInt8.self)
        }
    }

    func testXorMatchesNaiveReference() {
        for sources in [1, 2, 3, 5, 8] {
            let length = 4096
            let data = Arena(sliceBytes: length, sliceCount: sources + 1)
            fill(data, seed: UInt64(sources))
            let table = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: sources + 1)
            defer { table.deallocate() }
            for i in 0...sources { table[i] = data.slice(i) }
            MemoryServices().xorParity(sourceCount: sources, lengthBytes: length, table: table)
            for byte in 0..<length {
                var expected: UInt8 = 0
                for s in 0..<sources { expected ^= data.slice(s).load(fromByteOffset: byte, as: UInt8.self) }
                XCTAssertEqual(data.slice(sources).load(fromByteOffset: byte, as: UInt8.self), expected, "xor, \(sources) sources, byte \(byte)")
            }
        }
    }

    func testPQMatchesNaiveGaloisReference() {
        for sources in [2, 3, 4, 6] {
            let length = 4096
            let data = Arena(sliceBytes: length, sliceCount: sources + 2)
            fill(data, seed: 99 + UInt64(sources))
            let table = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: sources + 2)
            defer { table.deallocate() }
            for i in 0..<(sources + 2) { table[i] = data.slice(i) }
            let memory = MemoryServices()
            memory.pqParity(sourceCount: sources, lengthBytes: length, table: table)
            for byte in stride(from: 0, to: length, by: 7) {
                var p: UInt8 = 0, q: UInt8 = 0
                var g: UInt8 = 1  // generator 2 raised to the source index
                for s in 0..<sources {
                    let d = data.slice(s).load(fromByteOffset: byte, as: UInt8.self)
                    p ^= d
                    q ^= gfMultiplyNaive(g, d)
                    g = gfMultiplyNaive(g, 2)
                }
                XCTAssertEqual(data.slice(sources).load(fromByteOffset: byte, as: UInt8.self), p, "P byte \(byte)")
                XCTAssertEqual(data.slice(sources + 1).load(fromByteOffset: byte, as: UInt8.self), q, "Q byte \(byte)")
            }
            XCTAssertEqual(memory.counters.pqCount, 1)
        }
    }

    func testCRC32CKnownVectors() {
        XCTAssertEqual(crc32c(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(crc32c([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
        XCTAssertEqual(crc32c([UInt8](repeating: 0xFF, count: 32)), 0x62A8_AB43)
    }

    /// A 4 KiB block's CRC32C under any seed, from its CRC with seed 0 alone (how the back end's checksums of a
    /// pool's blocks are made from the CRCs their summary holds), equals the CRC computed over the block.
    func testCRC32COfA4KBlockReseededMatchesTheCRCComputedWithTheSeed() {
        var rng = SystemRandomNumberGenerator()
        let block = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 64)
        defer { block.deallocate() }
        for round in 0..<200 {
            for i in 0..<512 { block.storeBytes(of: round == 0 ? 0 : rng.next() as UInt64, toByteOffset: i * 8, as: UInt64.self) }
            let seeds: [UInt32] = [0, 1, 0x8000_0000, 0xFFFF_FFFF, rng.next()]
            for seed in seeds {
                XCTAssertEqual(crc32c4KReseeded(crc32c(block, count: 4096), seed: seed), crc32c(block, count: 4096, seed: seed), "seed \(seed)")
            }
        }
    }

    func testCopyIsCounted() {
        let memory = MemoryServices()
        let a = Arena(sliceBytes: 4096, sliceCount: 2)
        fill(a, seed: 5)
        memory.copy(from: a.slice(0), to: a.slice(1), byteCount: 4096)
        XCTAssertEqual(memcmp(a.slice(0), a.slice(1), 4096), 0)
        XCTAssertEqual(memory.counters.copyCount, 1)
        XCTAssertEqual(memory.counters.copyBytes, 4096)
    }
}
