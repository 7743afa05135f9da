// Snapshots, clones, restores and deletions of a pool home's versions (Sources/Pool/PoolVersions.swift), driven by a
// seeded random mix and checked after every step against oracles: every version's contents, the live blocks of
// every segment against the blocks and nodes the versions really map (no leak, no double free), and the counters
// (mapped exactly; a snapshot's unique exactly where it has one dependent), across restarts from the drives.
import ArrayModel
import Foundation
import XCTest

@testable import Pool

final class PoolVersionTests: XCTestCase {
    let blocks: UInt64 = 3000

    func contents(_ h: PoolHome, _ id: UInt32) -> [UInt64: UInt64] {
        var out: [UInt64: UInt64] = [:]
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { buffer.deallocate() }
        XCTAssertTrue(
            h.map.walk(id) { block, _ in
                XCTAssertTrue(h.read(id, block: block, into: buffer))
                out[block] = buffer.load(as: UInt64.self)
            })
        return out
    }

    func checkSpace(_ h: PoolHome, _ space: PoolSpace, _ layout: PoolLayout, file: StaticString = #filePath, line: UInt = #line) {
        checkPoolSpace(h, space, layout, file: file, line: line)
    }

    func testRandomSnapshotsClonesRestoresAndDeletesKeepContentsAndSpaceExact() throws {
        // Segments of 8 stripes (96 blocks), so the mix fills and empties many and the cleaner has victims of all kinds.
        let array = try PoolTestArray(name: "versions", driveBytes: 32 << 20, segmentBytes: 8 * 48 << 10)
        var h = array.newHome(frames: 64)
        let live: UInt32 = 1
        h.createVersion(live, blocks: blocks)
        XCTAssertTrue(h.checkpoint())
        var oracle: [UInt32: [UInt64: UInt64]] = [live: [:]]  // version -> block -> the value its page starts with
        var clones: [UInt32] = []
        var nextID: UInt32 = 100
        let seed = UInt64(ProcessInfo.processInfo.environment["VSA_POOL_SEED"] ?? "11") ?? 11
        var rng = SplitMix(seed: seed)
        let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { page.deallocate() }
        var stamp: UInt64 = 1
        var seen: Set<String> = []
        // The cleaner runs between steps on a stream of its own (so the mix of a seed stays what it was): a few
        // steps of it, sometimes right before a restart, so its moves are replayed from the log too.
        var cleanRng = SplitMix(seed: seed &+ 0x5EED)
        var cleaned = PoolCleanerCounters()
        func tally(_ h: PoolHome) {
            cleaned.blocksMoved += h.cleanerCounters.blocksMoved
            cleaned.nodesMoved += h.cleanerCounters.nodesMoved
            cleaned.segmentsCleaned += h.cleanerCounters.segmentsCleaned
        }
        for step in 0..<160 {
            let writable = [live] + clones
            if Int.random(in: 0..<100, using: &cleanRng) < 40 {
                for _ in 0..<Int.random(in: 1...8, using: &cleanRng) {
                    XCTAssertNotNil(h.clean(stripes: Int.random(in: 1...4, using: &cleanRng), minimumDead: 8), "step \(step): a cleaner step")
                }
            }
            let roll = Int.random(in: 0..<100, using: &rng)
            switch roll {
            case 0..<55:
                let id = writable.randomElement(using: &rng)!
                for _ in 0..<Int.random(in: 1...60, using: &rng) {
                    let b = UInt64.random(in: 0..<blocks, using: &rng)
                    page.storeBytes(of: stamp, as: UInt64.self)
                    XCTAssertNil(h.write(id, block: b, from: page))
                    oracle[id]![b] = stamp
                    stamp += 1
                }
                XCTAssertTrue(h.commit())
            case 55..<62:
                let id = writable.randomElement(using: &rng)!
                let b = UInt64.random(in: 0..<blocks - 50, using: &rng)
                XCTAssertNil(h.unmap(id, block: b, count: 50))
                for x in b..<(b + 50) { oracle[id]![x] = nil }
                XCTAssertTrue(h.commit())
            case 62..<75:
                let id = writable.randomElement(using: &rng)!
                XCTAssertTrue(h.snapshot(id, as: nextID))
                oracle[nextID] = oracle[id]
                nextID += 1
            case 75..<83:
                // Delete a snapshot or a clone (a snapshot others depend on turns zombie: its contents stay).
                let candidates = h.versions.values.filter { $0.kind == .snapshot }.map(\.id).sorted() + clones
                guard let id = candidates.randomElement(using: &rng) else { continue }
                let zombie = h.versions[id]!.kind == .snapshot && h.dependents(of: id).count >= 2
                XCTAssertTrue(h.deleteVersion(id))
                seen.insert(zombie ? "zombie" : clones.contains(id) ? "unlink" : "delete")
                if zombie {
                    XCTAssertEqual(h.versions[id]?.kind, .zombie)
                } else {
                    XCTAssertNil(h.versions[id])
                    oracle[id] = nil
                    clones.removeAll { $0 == id }
                }
            case 83..<90:
                // Restore the live version, or relink a clone, to a snapshot.
                guard let snap = h.versions.values.filter({ $0.kind == .snapshot }).map(\.id).sorted().randomElement(using: &rng) else { continue }
                let id = writable.randomElement(using: &rng)!
                XCTAssertTrue(h.reset(id, to: snap))
                oracle[id] = oracle[snap]
                seen.insert(id == live ? "restore" : "relink")
            case 90..<95:
                guard let snap = h.versions.values.filter({ $0.kind == .snapshot }).map(\.id).sorted().randomElement(using: &rng) else { continue }
                h.createVersion(nextID, blocks: blocks)
                XCTAssertTrue(h.reset(nextID, to: snap))
                oracle[nextID] = oracle[snap]
                clones.append(nextID)
                nextID += 1
                seen.insert("link")
            default:
                XCTAssertTrue(h.commit())
                tally(h)
                try array.restart()
                h = try array.recover(frames: 64)
                seen.insert("restart")
            }
            XCTAssertTrue(h.checkpoint())
            if ProcessInfo.processInfo.environment["VSA_POOL_LOG"] != nil {
                print(
                    "step \(step): "
                        + h.versions.values.sorted { $0.id < $1.id }.map {
                            "\($0.id):\($0.kind) o\($0.origin) t\($0.threshold) g\($0.generation) m\($0.mapped) own\($0.own) u\($0.unique) d\($0.dependentCount) root \($0.root.pba)/\($0.root.birth)"
                        }.joined(separator: ", "))
            }
            // A zombie goes by itself once one version depends on it.
            for id in oracle.keys where h.versions[id] == nil { oracle[id] = nil }
            for (id, expected) in oracle where h.versions[id]?.kind != .zombie {
                XCTAssertEqual(contents(h, id), expected, "step \(step): version \(id)")
                XCTAssertEqual(h.versions[id]!.mapped, UInt64(expected.count), "step \(step): version \(id) mapped")
            }
            checkSpace(h, array.space, array.layout)
            // Unique where exact: a snapshot with one dependent.
            for v in h.versions.values where v.kind == .snapshot && v.dependentCount == 1 {
                let d = h.dependents(of: v.id)[0]
                var unique: UInt64 = 0
                XCTAssertTrue(
                    h.map.walk(v.id) { block, e in
                        if e.birth > v.threshold && h.map.lookup(d, block: block) != e { unique += 1 }
                    })
                XCTAssertEqual(v.unique, unique, "step \(step): snapshot \(v.id) unique")
            }
        }
        tally(h)
        if seed == 11 {
            XCTAssertGreaterThan(cleaned.blocksMoved, 0, "the cleaner moved data")
        }
        XCTAssertGreaterThan(nextID, 110, "the mix took snapshots")
        if seed == 11 { XCTAssertEqual(seen, ["zombie", "unlink", "delete", "restore", "relink", "link", "restart"], "every kind of step ran") }
    }
}

/// Every segment's live count against what the versions map: data blocks and map nodes, each counted once.
func checkPoolSpace(_ h: PoolHome, _ space: PoolSpace, _ layout: PoolLayout, file: StaticString = #filePath, line: UInt = #line) {
    var referenced = Set<UInt64>()
    for id in h.versions.keys {
        XCTAssertTrue(h.map.walk(id, node: { _, e in referenced.insert(e.pba) }) { _, e in referenced.insert(e.pba) }, file: file, line: line)
        if let root = h.map.root(of: id), root.isMapped { referenced.insert(root.pba) }
    }
    var perSegment: [Int: UInt32] = [:]
    for pba in referenced { perSegment[layout.segment(ofBlock: pba), default: 0] += 1 }
    for s in space.owned(by: h.home) {
        XCTAssertEqual(space.liveBlocks(s), perSegment[s] ?? 0, "segment \(s)'s live blocks", file: file, line: line)
    }
    for s in perSegment.keys { XCTAssertEqual(Int(space.owner(s)), h.home, "segment \(s) holds mapped blocks", file: file, line: line) }
    XCTAssertEqual(space.inconsistencies.load(ordering: .relaxed), 0, file: file, line: line)
}
