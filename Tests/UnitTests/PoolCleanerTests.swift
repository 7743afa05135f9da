// The cleaner (Sources/Pool/PoolCleaner.swift) on a real RAID-5 back end with small segments: it empties partly dead
// segments and its moves survive a crash; overwrites at high fill go on forever with it; blocks a snapshot shares
// stay until the snapshot goes; map nodes move too. Every check is against an oracle of what each block holds and
// of every segment's live blocks.
import ArrayModel
import Foundation
import XCTest

@testable import Pool

final class PoolCleanerTests: XCTestCase {
    /// Segments of 8 stripes of 12 blocks.
    static let segmentBytes: UInt64 = 8 * 48 << 10
    let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
    deinit { page.deallocate() }

    func write(_ h: PoolHome, _ id: UInt32, _ block: UInt64, _ stamp: UInt64) -> PoolFailure? {
        page.storeBytes(of: stamp, as: UInt64.self)
        page.storeBytes(of: block, toByteOffset: 8, as: UInt64.self)
        return h.write(id, block: block, from: page)
    }

    func check(_ h: PoolHome, _ id: UInt32, _ oracle: [UInt64: UInt64], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        var wrong = 0
        for (block, stamp) in oracle {
            XCTAssertTrue(h.read(id, block: block, into: page), file: file, line: line)
            if page.load(as: UInt64.self) != stamp || page.load(fromByteOffset: 8, as: UInt64.self) != block { wrong += 1 }
        }
        XCTAssertEqual(wrong, 0, "\(what): blocks that do not read back", file: file, line: line)
        XCTAssertEqual(h.versions[id]?.mapped, UInt64(oracle.count), "\(what): mapped blocks", file: file, line: line)
    }

    /// Cleans until the cleaner finds nothing more to do; returns the blocks moved.
    func cleanAll(_ h: PoolHome, file: StaticString = #filePath, line: UInt = #line) -> Int {
        var moved = 0
        for _ in 0..<10_000 {
            guard let n = h.clean(stripes: 3) else {
                XCTFail("a cleaner step failed", file: file, line: line)
                return moved
            }
            moved += n
            if n == 0 && h.cleanerCounters.victim < 0 && h.chooseVictim(minimumDead: h.worthCleaning) == nil { break }
        }
        return moved
    }

    func testTheCleanerEmptiesPartlyDeadSegmentsAndItsMovesSurviveACrash() throws {
        let array = try PoolTestArray(name: "clean", driveBytes: 32 << 20, segmentBytes: PoolCleanerTests.segmentBytes)
        var h = array.newHome()
        h.createVersion(1, blocks: 4000)
        XCTAssertTrue(h.checkpoint())
        var oracle: [UInt64: UInt64] = [:]
        var rng = SplitMix(seed: 5)
        var stamp: UInt64 = 1
        for b: UInt64 in 0..<2000 {
            XCTAssertNil(write(h, 1, b, stamp))
            oracle[b] = stamp
            stamp += 1
            if b % 100 == 99 { XCTAssertTrue(h.commit()) }
        }
        // Overwrite a third at random: every segment of the first pass is left partly dead.
        for i in 0..<700 {
            let b = UInt64.random(in: 0..<2000, using: &rng)
            XCTAssertNil(write(h, 1, b, stamp))
            oracle[b] = stamp
            stamp += 1
            if i % 50 == 49 { XCTAssertTrue(h.commit()) }
        }
        XCTAssertTrue(h.commit())
        XCTAssertTrue(h.checkpoint())
        let ownedBefore = array.space.owned(by: 0).count
        let reclaimable = h.reclaimableBlocks
        XCTAssertGreaterThan(reclaimable, 400)
        let moved = cleanAll(h)
        XCTAssertGreaterThan(moved, 0)
        XCTAssertTrue(h.checkpoint())
        XCTAssertGreaterThan(h.cleanerCounters.segmentsCleaned, 0)
        XCTAssertLessThan(array.space.owned(by: 0).count, ownedBefore, "segments went back to the pool")
        XCTAssertLessThan(h.reclaimableBlocks, reclaimable / 2)
        check(h, 1, oracle, "after cleaning")
        checkPoolSpace(h, array.space, array.layout)

        // More overwrites, cleaning between them, then a crash with the last moves only in the log.
        for round in 0..<4 {
            for _ in 0..<300 {
                let b = UInt64.random(in: 0..<2000, using: &rng)
                XCTAssertNil(write(h, 1, b, stamp))
                oracle[b] = stamp
                stamp += 1
            }
            XCTAssertTrue(h.commit())
            for _ in 0..<(round + 2) { XCTAssertNotNil(h.clean(stripes: 4)) }
        }
        // The crash comes in the middle of a victim: its first stripe's moves are in the log only.
        for _ in 0..<300 {
            let b = UInt64.random(in: 0..<2000, using: &rng)
            XCTAssertNil(write(h, 1, b, stamp))
            oracle[b] = stamp
            stamp += 1
        }
        XCTAssertTrue(h.commit())
        XCTAssertTrue(h.checkpoint())
        XCTAssertEqual(h.cleanerCounters.victim, -1)
        let movedBefore = h.cleanerCounters.blocksMoved
        XCTAssertEqual(h.clean(stripes: 1).map { $0 > 0 }, true)
        XCTAssertGreaterThan(h.cleanerCounters.blocksMoved, movedBefore)
        XCTAssertGreaterThanOrEqual(h.cleanerCounters.victim, 0)
        try array.restart()
        h = try array.recover()
        XCTAssertGreaterThan(h.rolledForward, 0, "moves since the last checkpoint were replayed")
        check(h, 1, oracle, "after a crash")
        XCTAssertTrue(h.checkpoint())
        checkPoolSpace(h, array.space, array.layout)
        _ = cleanAll(h)
        XCTAssertTrue(h.checkpoint())
        check(h, 1, oracle, "cleaned after the crash")
        checkPoolSpace(h, array.space, array.layout)
    }

    func testOverwritesAtHighFillGoOnWithTheCleaner() throws {
        let array = try PoolTestArray(name: "fill", driveBytes: 12 << 20, segmentBytes: PoolCleanerTests.segmentBytes)
        let h = array.newHome()
        let held = array.space.heldBackSegments.load(ordering: .relaxed)
        let usable = (array.space.poolSegments - held) * array.layout.blocksPerSegment
        let blocks = UInt64(usable * 80 / 100)
        h.createVersion(1, blocks: blocks)
        XCTAssertTrue(h.checkpoint())
        var oracle: [UInt64: UInt64] = [:]
        var stamp: UInt64 = 1
        for b in 0..<blocks {
            XCTAssertNil(write(h, 1, b, stamp))
            oracle[b] = stamp
            stamp += 1
            if b % 200 == 199 { XCTAssertTrue(h.commit()) }
        }
        XCTAssertTrue(h.commit())
        // Three times the LUN in random overwrites: without the cleaner the pool runs out after about a fifth of it.
        var rng = SplitMix(seed: 9)
        var cleanings = 0
        for i in 0..<(3 * Int(blocks)) {
            let b = UInt64.random(in: 0..<blocks, using: &rng)
            var failure = write(h, 1, b, stamp)
            var tries = 0
            while failure == .noSpace && tries < 50 {
                // What a director does before a write gets ENOSPC: commit, clean, let a checkpoint free the victims.
                XCTAssertTrue(h.commit())
                XCTAssertNotNil(h.clean(stripes: Int(array.layout.stripesPerSegment)))
                XCTAssertTrue(h.checkpoint())
                cleanings += 1
                tries += 1
                failure = write(h, 1, b, stamp)
            }
            XCTAssertNil(failure, "overwrite \(i) at 80% fill")
            if failure != nil { break }
            oracle[b] = stamp
            stamp += 1
            if i % 100 == 99 { XCTAssertTrue(h.commit()) }
        }
        XCTAssertTrue(h.commit())
        XCTAssertTrue(h.checkpoint())
        XCTAssertGreaterThan(cleanings, 0)
        XCTAssertGreaterThan(h.cleanerCounters.segmentsCleaned, 10)
        check(h, 1, oracle, "after overwrites at high fill")
        checkPoolSpace(h, array.space, array.layout)
    }

    func testBlocksASnapshotSharesStayUntilItIsDeleted() throws {
        let array = try PoolTestArray(name: "pin", driveBytes: 32 << 20, segmentBytes: PoolCleanerTests.segmentBytes)
        let h = array.newHome()
        h.createVersion(1, blocks: 2000)
        XCTAssertTrue(h.checkpoint())
        var live: [UInt64: UInt64] = [:]
        for b: UInt64 in 0..<1000 {
            XCTAssertNil(write(h, 1, b, b + 1))
            live[b] = b + 1
        }
        XCTAssertTrue(h.commit())
        // Half of the first pass overwritten (dead), then a snapshot shares the other half.
        for b in stride(from: UInt64(0), to: 1000, by: 2) {
            XCTAssertNil(write(h, 1, b, 5000 + b))
            live[b] = 5000 + b
        }
        XCTAssertTrue(h.commit())
        XCTAssertTrue(h.snapshot(1, as: 300))
        let snapshot = live
        for b in stride(from: UInt64(1), to: 1000, by: 4) {
            XCTAssertNil(write(h, 1, b, 9000 + b))
            live[b] = 9000 + b
        }
        XCTAssertTrue(h.commit())
        XCTAssertTrue(h.checkpoint())
        // The first pass's segments are half dead, and the snapshot holds the rest: nothing of them moves.
        _ = cleanAll(h)
        XCTAssertTrue(h.checkpoint())
        XCTAssertGreaterThan(h.cleanerCounters.blocksPinned, 200)
        XCTAssertEqual(h.cleanerCounters.blocksMoved, 0, "shared blocks stay")
        XCTAssertEqual(h.cleanerCounters.segmentsCleaned, 0)
        check(h, 1, live, "live, snapshot kept")
        check(h, 300, snapshot, "snapshot")
        checkPoolSpace(h, array.space, array.layout)
        // The snapshot goes: what only it held dies, what the live LUN shared becomes its own and moves.
        let owned = array.space.owned(by: 0).count
        XCTAssertTrue(h.deleteVersion(300))
        XCTAssertGreaterThan(cleanAll(h), 100)
        XCTAssertTrue(h.checkpoint())
        XCTAssertGreaterThan(h.cleanerCounters.segmentsCleaned, 0)
        XCTAssertLessThan(array.space.owned(by: 0).count, owned)
        check(h, 1, live, "live, snapshot deleted")
        checkPoolSpace(h, array.space, array.layout)
    }

    func testMapNodesMove() throws {
        let array = try PoolTestArray(name: "nodes", driveBytes: 32 << 20, segmentBytes: PoolCleanerTests.segmentBytes)
        var h = array.newHome()
        h.createVersion(1, blocks: 60_000)
        h.createVersion(2, blocks: 4000)
        XCTAssertTrue(h.checkpoint())
        // Version 2's data, then one block in each of 60 leaves of version 1, whose nodes the checkpoint writes after
        // them: then version 2 goes, leaving segments of version 1's nodes among dead blocks.
        var oracle: [UInt64: UInt64] = [:]
        for b: UInt64 in 0..<3000 { XCTAssertNil(write(h, 2, b, b)) }
        for leaf: UInt64 in 0..<60 {
            let b = leaf * UInt64(MapNode.fanout) + leaf
            XCTAssertNil(write(h, 1, b, 77 + b))
            oracle[b] = 77 + b
        }
        XCTAssertTrue(h.commit())
        XCTAssertTrue(h.checkpoint())
        // Version 2 again, so the log moves on from the segments holding version 1's nodes.
        for b: UInt64 in 0..<3000 { XCTAssertNil(write(h, 2, b, b)) }
        XCTAssertTrue(h.commit())
        XCTAssertTrue(h.deleteVersion(2))
        XCTAssertTrue(h.checkpoint())
        _ = cleanAll(h)
        XCTAssertTrue(h.checkpoint())
        XCTAssertGreaterThan(h.cleanerCounters.nodesMoved, 0)
        check(h, 1, oracle, "after the nodes moved")
        checkPoolSpace(h, array.space, array.layout)
        XCTAssertTrue(h.commit())
        try array.restart()
        h = try array.recover()
        check(h, 1, oracle, "after a restart")
        XCTAssertTrue(h.checkpoint())
        checkPoolSpace(h, array.space, array.layout)
    }

    /// A segment one home frees (its checkpoint releases it) and another takes: a recovery of the first, in either
    /// order, must not claim it back. Tables once named the segments a checkpoint was about to release; the cleaner
    /// empties segments often enough for that to break mounts (the torture found it).
    func testASegmentFreedByOneHomeAndTakenByAnotherRecoversInEitherOrder() throws {
        let array = try PoolTestArray(name: "handover", driveBytes: 32 << 20, segmentBytes: PoolCleanerTests.segmentBytes)
        let a = array.newHome(0)
        let b = array.newHome(1)
        for h in [a, b] {
            h.createVersion(1, blocks: 4000)
            XCTAssertTrue(h.checkpoint())
        }
        for block: UInt64 in 0..<600 { XCTAssertNil(write(a, 1, block, 1)) }
        XCTAssertTrue(a.commit())
        XCTAssertTrue(a.checkpoint())
        let first = Set(array.space.owned(by: 0))
        // Home a's log moves on, its first segments die, and its last checkpoint gives them back; home b takes them.
        for block: UInt64 in 1000..<1300 { XCTAssertNil(write(a, 1, block, 2)) }
        XCTAssertTrue(a.commit())
        XCTAssertTrue(a.checkpoint())
        XCTAssertNil(a.unmap(1, block: 0, count: 600))
        XCTAssertTrue(a.commit())
        XCTAssertTrue(a.checkpoint())
        var oracle: [UInt64: UInt64] = [:]
        for block: UInt64 in 0..<900 {
            XCTAssertNil(write(b, 1, block, 3))
            oracle[block] = 3
        }
        XCTAssertTrue(b.commit())
        XCTAssertTrue(b.checkpoint())
        XCTAssertFalse(first.isDisjoint(with: array.space.owned(by: 1)), "home b took a segment home a gave back")
        for order in [[0, 1], [1, 0]] {
            try array.restart()
            let homes = try array.recover(homes: order)
            check(homes[1]!, 1, oracle, "home b, recovered in order \(order)")
            XCTAssertEqual(homes[0]!.versions[1]?.mapped, 300)
            for h in order { checkPoolSpace(homes[h]!, array.space, array.layout) }
        }
    }

    /// A recovery's checkpoint may claim segments (its replayed log dirtied many map nodes); a home loaded later
    /// names segments that look free until then. A mount once recovered home 0 whole, checkpoint included, before
    /// loading home 1: home 0's checkpoint took home 1's lowest segment and home 1 could not be mounted ("segment
    /// entry 0 ... (home 0's)": CI's kill -9 test). Now every home is loaded before any writes.
    func testARecoveryCheckpointTakesNoSegmentAnotherHomeNames() throws {
        let array = try PoolTestArray(name: "order", driveBytes: 32 << 20, segmentBytes: PoolCleanerTests.segmentBytes)
        // Frames for every leaf: home a's map nodes stay dirty in memory until the recovery's checkpoint.
        let a = array.newHome(0, frames: 1024)
        let b = array.newHome(1)
        let span = UInt64(MapNode.fanout)
        for h in [a, b] {
            h.createVersion(1, blocks: 200 * span)
            XCTAssertTrue(h.checkpoint())
        }
        // Home b takes the low segments; home a then writes a block in each of 150 leaves, and does not checkpoint.
        var oracleB: [UInt64: UInt64] = [:]
        for block: UInt64 in 0..<300 {
            XCTAssertNil(write(b, 1, block, 7))
            oracleB[block] = 7
        }
        XCTAssertTrue(b.commit())
        XCTAssertTrue(b.checkpoint())
        var oracleA: [UInt64: UInt64] = [:]
        for leaf: UInt64 in 0..<150 {
            XCTAssertNil(write(a, 1, leaf * span, 9))
            oracleA[leaf * span] = 9
        }
        XCTAssertTrue(a.commit())
        let owned = Set(array.space.owned(by: 0))
        try array.restart()
        let homes = try array.recover(homes: [0, 1], frames: 1024)
        XCTAssertFalse(Set(array.space.owned(by: 0)).isSubset(of: owned), "home a's recovery checkpoint claimed segments")
        check(homes[0]!, 1, oracleA, "home a")
        check(homes[1]!, 1, oracleB, "home b")
        for h in [0, 1] { checkPoolSpace(homes[h]!, array.space, array.layout) }
    }

    /// RAID-1 has one data strip: a commit opened in a stripe's last row is its summary alone, with no room for a
    /// block. It used to take one anyway, copied past the end of the stripe buffer (heap corruption: a full thin
    /// LUN on RAID-1 crashed the daemon). Commits of every size, so some open in every row; then a restart.
    func testCommitsOfEverySizeOnOneDataStrip() throws {
        let array = try PoolTestArray(name: "raid1", level: .raid1, drives: 2, driveBytes: 32 << 20, segmentBytes: 8 << 14)
        var h = array.newHome()
        h.createVersion(1, blocks: 4000)
        XCTAssertTrue(h.checkpoint())
        var oracle: [UInt64: UInt64] = [:]
        var rng = SplitMix(seed: 3)
        var stamp: UInt64 = 1
        for _ in 0..<400 {
            for _ in 0..<Int.random(in: 1...6, using: &rng) {
                let b = UInt64.random(in: 0..<4000, using: &rng)
                XCTAssertNil(write(h, 1, b, stamp))
                oracle[b] = stamp
                stamp += 1
            }
            XCTAssertTrue(h.commit())
        }
        check(h, 1, oracle, "written")
        try array.restart()
        h = try array.recover()
        check(h, 1, oracle, "after a restart")
        XCTAssertTrue(h.checkpoint())
        checkPoolSpace(h, array.space, array.layout)
    }
}
