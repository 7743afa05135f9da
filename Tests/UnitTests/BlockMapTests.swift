// The pool's map (Sources/Pool/BlockMap.swift) against an oracle: random updates through a node cache far smaller
// than the tree, checkpoints to an in-memory block store, reloads from the roots alone, snapshots sharing nodes,
// walks, and damaged or misdirected nodes refused.
import XCTest

@testable import Pool

/// Pool blocks in memory: each checkpoint write gets the next PBA (never reused, as in the pool).
final class MemoryMapBlocks: MapBlockReader {
    var blocks: [UInt64: [UInt8]] = [:]
    var next: UInt64 = 0
    var reads = 0
    func readMapBlock(_ pba: UInt64, into target: UnsafeMutableRawPointer) -> Bool {
        reads += 1
        guard let block = blocks[pba] else { return false }
        block.withUnsafeBytes { target.copyMemory(from: $0.baseAddress!, byteCount: MapNode.bytes) }
        return true
    }
    func write(_ node: UnsafeMutableRawPointer) -> UInt64? {
        let pba = next
        next += 1
        blocks[pba] = Array(UnsafeRawBufferPointer(start: node, count: MapNode.bytes))
        return pba
    }
}

final class BlockMapTests: XCTestCase {

    func testRandomUpdatesThroughASmallCacheMatchTheOracleAcrossCheckpointsAndReloads() {
        var seeded = SplitMix(seed: 7)
        let store = MemoryMapBlocks()
        let blocks: UInt64 = 3_000_000  // depth 3
        let map = BlockMap(home: 1, frameCount: 40, blockLimit: 1 << 30, reader: store)
        map.addVersion(5, blocks: blocks, root: .unmapped)
        XCTAssertEqual(map.depth(of: 5), 3)
        var oracle: [UInt64: MapEntry] = [:]
        var birth: UInt32 = 1
        var replaced = 0
        for round in 0..<30 {
            for _ in 0..<200 {
                // Clustered and scattered blocks, some unmaps.
                let block = Bool.random(using: &seeded) ? UInt64.random(in: 0..<blocks, using: &seeded) : UInt64.random(in: 0..<5000, using: &seeded)
                let entry =
                    Int.random(in: 0..<8, using: &seeded) == 0
                    ? MapEntry.unmapped : MapEntry(pba: UInt64.random(in: 0..<(1 << 30), using: &seeded), birth: birth)
                if map.dirtyFrames > 30 {
                    XCTAssertTrue(map.checkpoint(birth: birth, write: store.write, replaced: { _, _ in replaced += 1 }))
                    birth += 1
                }
                guard let old = map.update(5, block: block, to: entry) else { return XCTFail("update failed at round \(round)") }
                XCTAssertEqual(old, oracle[block] ?? MapEntry.unmapped)
                oracle[block] = entry.isMapped ? entry : nil
            }
            for _ in 0..<100 {
                let block = Bool.random(using: &seeded) ? UInt64.random(in: 0..<blocks, using: &seeded) : (oracle.keys.randomElement(using: &seeded) ?? 0)
                XCTAssertEqual(map.lookup(5, block: block), oracle[block] ?? MapEntry.unmapped)
            }
            // The next mapped block from anywhere (dirty and clean nodes mixed), as the oracle says.
            let mapped = oracle.keys.sorted()
            for _ in 0..<20 {
                let from = UInt64.random(in: 0..<blocks, using: &seeded)
                let end = min(blocks, from + UInt64.random(in: 1..<(1 << 21), using: &seeded))
                let expected = mapped.first { $0 >= from && $0 < end } ?? end
                XCTAssertEqual(map.nextMapped(5, from: from, end: end), expected, "from \(from) to \(end)")
            }
        }
        XCTAssertTrue(map.checkpoint(birth: birth, write: store.write, replaced: { _, _ in replaced += 1 }))
        XCTAssertGreaterThan(replaced, 0, "checkpoints after the first replace nodes")
        XCTAssertFalse(map.isDirty(5))
        // A new map knows only the root: everything is read from the blocks.
        let reloaded = BlockMap(home: 1, frameCount: 16, blockLimit: 1 << 30, reader: store)
        reloaded.addVersion(5, blocks: blocks, root: map.root(of: 5)!)
        for (block, entry) in oracle { XCTAssertEqual(reloaded.lookup(5, block: block), entry) }
        var walked: [UInt64: MapEntry] = [:]
        var last: UInt64? = nil
        XCTAssertTrue(
            reloaded.walk(5) { block, entry in
                XCTAssertTrue(last == nil || block > last!, "walk goes in block order")
                last = block
                walked[block] = entry
            })
        XCTAssertEqual(walked, oracle)
    }

    func testASnapshotSharesNodesAndNeverChanges() {
        let store = MemoryMapBlocks()
        let map = BlockMap(home: 0, frameCount: 64, blockLimit: 1 << 30, reader: store)
        let blocks: UInt64 = 600_000
        map.addVersion(1, blocks: blocks, root: .unmapped)
        var oracle: [UInt64: MapEntry] = [:]
        for b in stride(from: UInt64(0), to: blocks, by: 997) {
            let e = MapEntry(pba: b + 10, birth: 1)
            XCTAssertNotNil(map.update(1, block: b, to: e))
            oracle[b] = e
            if map.dirtyFrames > 50 { XCTAssertTrue(map.checkpoint(birth: 1, write: store.write, replaced: { _, _ in })) }
        }
        XCTAssertTrue(map.checkpoint(birth: 1, write: store.write, replaced: { _, _ in }))
        // The snapshot: a version whose root is the live root. Live changes from generation 2 on.
        map.addVersion(2, blocks: blocks, root: map.root(of: 1)!)
        let frozen = oracle
        var replacedOwn = 0
        var replacedShared = 0
        for b in stride(from: UInt64(0), to: blocks, by: 1993) {
            let e = MapEntry(pba: b + 20, birth: 2)
            XCTAssertEqual(map.update(1, block: b, to: e), oracle[b] ?? MapEntry.unmapped)
            oracle[b] = e
            if map.dirtyFrames > 50 {
                XCTAssertTrue(
                    map.checkpoint(birth: 2, write: store.write, replaced: { _, old in if old.birth > 1 { replacedOwn += 1 } else { replacedShared += 1 } }))
            }
        }
        XCTAssertTrue(map.checkpoint(birth: 2, write: store.write, replaced: { _, old in if old.birth > 1 { replacedOwn += 1 } else { replacedShared += 1 } }))
        XCTAssertGreaterThan(replacedShared, 0, "the first change of a shared node copies it")
        for (b, e) in frozen { XCTAssertEqual(map.lookup(2, block: b), e, "snapshot block \(b)") }
        for (b, e) in oracle { XCTAssertEqual(map.lookup(1, block: b), e, "live block \(b)") }
        // A walk of the live version that skips what it shares with the snapshot sees only what changed.
        var own = 0
        XCTAssertTrue(map.walk(1, skip: { _, _, entry in entry.birth <= 1 }) { _, entry in if entry.birth > 1 { own += 1 } })
        XCTAssertEqual(own, oracle.values.filter { $0.birth == 2 }.count)
    }

    func testDamagedAndMisdirectedNodesAreRefused() {
        let store = MemoryMapBlocks()
        let map = BlockMap(home: 3, frameCount: 32, blockLimit: 1 << 20, reader: store)
        map.addVersion(9, blocks: 300_000, root: .unmapped)
        for b: UInt64 in [0, 600, 250_000] { XCTAssertNotNil(map.update(9, block: b, to: MapEntry(pba: b, birth: 1))) }
        XCTAssertTrue(map.checkpoint(birth: 1, write: store.write, replaced: { _, _ in }))
        let root = map.root(of: 9)!
        func fresh() -> BlockMap {
            let m = BlockMap(home: 3, frameCount: 32, blockLimit: 1 << 20, reader: store)
            m.addVersion(9, blocks: 300_000, root: root)
            return m
        }
        XCTAssertEqual(fresh().lookup(9, block: 600), MapEntry(pba: 600, birth: 1))
        // A bit flip in the leaf that maps block 600: refused, the host gets an error, not a wrong block.
        let leafOf600 = store.blocks.keys.sorted()[1]
        store.blocks[leafOf600]![100] ^= 0x40
        let damaged = fresh()
        XCTAssertNil(damaged.lookup(9, block: 600))
        XCTAssertEqual(damaged.damagedNodes, 1)
        XCTAssertEqual(damaged.lastDamage, "map node CRC mismatch")
        XCTAssertEqual(damaged.lookup(9, block: 0), MapEntry(pba: 0, birth: 1), "other leaves still read")
        store.blocks[leafOf600]![100] ^= 0x40
        // Another home's tree, or a node of another position, is not this one's.
        let other = BlockMap(home: 4, frameCount: 32, blockLimit: 1 << 20, reader: store)
        other.addVersion(9, blocks: 300_000, root: root)
        XCTAssertNil(other.lookup(9, block: 0))
        let misdirected = BlockMap(home: 3, frameCount: 32, blockLimit: 1 << 20, reader: store)
        misdirected.addVersion(9, blocks: 300_000, root: MapEntry(pba: leafOf600, birth: 1))
        XCTAssertNil(misdirected.lookup(9, block: 0))
        XCTAssertEqual(misdirected.lastDamage, "map node is not the one its parent names (level, home or index)")
        // A root beyond the pool.
        let beyond = BlockMap(home: 3, frameCount: 32, blockLimit: 1 << 20, reader: store)
        beyond.addVersion(9, blocks: 300_000, root: MapEntry(pba: 1 << 21, birth: 1))
        XCTAssertNil(beyond.lookup(9, block: 0))
    }

    func testAnUpdateWithEveryFrameDirtyFailsAndChangesNothing() {
        let store = MemoryMapBlocks()
        let map = BlockMap(home: 0, frameCount: 20, blockLimit: 1 << 30, reader: store)
        map.addVersion(1, blocks: 1 << 30, root: .unmapped)  // depth 4
        var b: UInt64 = 0
        var done = 0
        while let _ = map.update(1, block: b, to: MapEntry(pba: b, birth: 1)) {
            done += 1
            b += 504 * 504
        }
        XCTAssertLessThan(map.dirtyFrames, 20)
        XCTAssertEqual(map.lookup(1, block: b), MapEntry.unmapped, "the refused update left nothing behind")
        XCTAssertTrue(map.checkpoint(birth: 1, write: store.write, replaced: { _, _ in }))
        XCTAssertNotNil(map.update(1, block: b, to: MapEntry(pba: b, birth: 2)), "room again after a checkpoint")
        XCTAssertEqual(map.lookup(1, block: 504 * 504), MapEntry(pba: 504 * 504, birth: 1))
        XCTAssertGreaterThan(done, 2)
    }
}
