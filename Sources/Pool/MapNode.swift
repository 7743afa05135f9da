// Pool: thin LUNs, redirect-on-write destage, snapshots (docs/POOL.md). This file: the map's node, the unit the map
// is read, cached and written in. One node is one 4 KiB pool block:
//
//   0   magic "VMN1"        4   CRC32C of the block with this field zero
//   8   level (0 = leaf)    9   home      10  reserved (0)      12  version that wrote it
//   16  index at its level (the node covers blocks [index x fanout^(level+1), ...))
//   24  birth (generation it was written in)     28  mapped entries (informational)     30..63 reserved (0)
//   64  504 entries of 8 bytes: bits 0-39 = PBA + 1 (0: not mapped), bits 40-63 = birth
//
// Nothing read from a drive is trusted: `MapNode.check` bounds every field before the map uses the node.
import MemoryServices

/// One map entry: where a block (or a child node) lives and the generation it was born in. 0 = not mapped (`unmapped`; not `.none`, which an optional would take for nil).
public struct MapEntry: Equatable, Sendable {
    public let raw: UInt64
    public static let unmapped = MapEntry(raw: 0)
    /// PBAs are 40 bits (4 PiB of 4 KiB blocks); births 24 bits.
    public static let pbaLimit: UInt64 = (1 << 40) - 1
    public static let birthLimit: UInt32 = 1 << 24

    @inline(__always) public init(raw: UInt64) { self.raw = raw }
    @inline(__always) public init(pba: UInt64, birth: UInt32) {
        precondition(pba < MapEntry.pbaLimit && birth < MapEntry.birthLimit, "map entry out of range")
        raw = (pba + 1) | UInt64(birth) << 40
    }
    @inline(__always) public var isMapped: Bool { raw != 0 }
    @inline(__always) public var pba: UInt64 { (raw & MapEntry.pbaLimit) &- 1 }
    @inline(__always) public var birth: UInt32 { UInt32(truncatingIfNeeded: raw >> 40) }
}

public enum MapNode {
    public static let bytes = 4096
    public static let headerBytes = 64
    public static let fanout = 504
    static let magic: UInt32 = 0x314E_4D56  // "VMN1" little-endian
    /// Deepest tree: fanout^5 blocks (about 2^45, 128 PiB) is more than any LUN a superblock allows.
    public static let maxDepth = 5

    /// Levels a tree needs for `blocks` blocks: the smallest depth >= 1 with fanout^depth >= blocks.
    public static func depth(forBlocks blocks: UInt64) -> Int {
        var depth = 1
        var span = UInt64(fanout)
        while span < blocks && depth < maxDepth {
            depth += 1
            span *= UInt64(fanout)
        }
        return depth
    }

    /// Blocks one entry of a node at `level` covers: fanout^level.
    @inline(__always) public static func entrySpan(level: Int) -> UInt64 {
        var span: UInt64 = 1
        for _ in 0..<level { span &*= UInt64(fanout) }
        return span
    }

    @inline(__always) static func entries(_ node: UnsafeMutableRawPointer) -> UnsafeMutablePointer<UInt64> {
        (node + headerBytes).assumingMemoryBound(to: UInt64.self)
    }

    /// Fills in the header and the CRC before the node is written.
    static func seal(_ node: UnsafeMutableRawPointer, level: Int, home: UInt8, version: UInt32, index: UInt64, birth: UInt32) {
        let e = entries(node)
        var mapped: UInt16 = 0
        for i in 0..<fanout where e[i] != 0 { mapped += 1 }
        memset0(node, headerBytes)
        node.storeBytes(of: magic.littleEndian, toByteOffset: 0, as: UInt32.self)
        node.storeBytes(of: UInt8(level), toByteOffset: 8, as: UInt8.self)
        node.storeBytes(of: home, toByteOffset: 9, as: UInt8.self)
        node.storeBytes(of: version.littleEndian, toByteOffset: 12, as: UInt32.self)
        node.storeBytes(of: index.littleEndian, toByteOffset: 16, as: UInt64.self)
        node.storeBytes(of: birth.littleEndian, toByteOffset: 24, as: UInt32.self)
        node.storeBytes(of: mapped.littleEndian, toByteOffset: 28, as: UInt16.self)
        node.storeBytes(of: crc32c(node, count: bytes).littleEndian, toByteOffset: 4, as: UInt32.self)
    }

    /// Why a node read from a drive cannot be used (nil: it can): wrong magic or CRC, or not the node its parent
    /// points at (level, index or home differ: a misdirected or stale write), or an entry out of range.
    static func check(_ node: UnsafeMutableRawPointer, level: Int, home: UInt8, index: UInt64, blockLimit: UInt64) -> String? {
        guard UInt32(littleEndian: node.load(fromByteOffset: 0, as: UInt32.self)) == magic else { return "not a map node" }
        let stored = UInt32(littleEndian: node.load(fromByteOffset: 4, as: UInt32.self))
        node.storeBytes(of: 0, toByteOffset: 4, as: UInt32.self)
        let actual = crc32c(node, count: bytes)
        node.storeBytes(of: stored.littleEndian, toByteOffset: 4, as: UInt32.self)
        guard actual == stored else { return "map node CRC mismatch" }
        guard Int(node.load(fromByteOffset: 8, as: UInt8.self)) == level, node.load(fromByteOffset: 9, as: UInt8.self) == home,
            UInt64(littleEndian: node.load(fromByteOffset: 16, as: UInt64.self)) == index
        else { return "map node is not the one its parent names (level, home or index)" }
        let e = entries(node)
        for i in 0..<fanout where e[i] != 0 && MapEntry(raw: e[i]).pba >= blockLimit { return "map entry beyond the pool" }
        return nil
    }

    static func birth(_ node: UnsafeMutableRawPointer) -> UInt32 { UInt32(littleEndian: node.load(fromByteOffset: 24, as: UInt32.self)) }
}

@inline(__always) func memset0(_ p: UnsafeMutableRawPointer, _ count: Int) { p.initializeMemory(as: UInt8.self, repeating: 0, count: count) }
