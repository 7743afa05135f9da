// Global memory over the real back end and real drive files: hits, misses, destage, read-ahead, and a seeded random
// workload on every RAID level checked against an oracle, then re-read cold (from the drives) and degraded.
import ArrayModel
import BackEnd
import Buffers
import Drives
import GlobalMemory
import MemoryServices
import Metadata
import XCTest

final class CacheTests: XCTestCase {
    var directory = ""

    override func setUp() {
        directory = NSTemporaryDirectory() + "vsa-unit-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: directory)
    }

    func makeArray(_ level: RAIDLevel, drives: Int, stripUnit: Int = 16384, fresh: Bool = false) throws -> ArrayStore {
        if fresh { try? FileManager.default.removeItem(atPath: directory) }
        return try ArrayStore.create(
            CreateOptions(
                directory: directory, driveCount: drives, driveSizeBytes: 16 << 20, drivePaths: [], raidLevel: level, spareCount: 0,
                stripUnitBytes: stripUnit, cacheBytes: 16 << 20, engineCount: 1, force: false))
    }

    /// A 4 MiB LUN on RAID-5 of 5 drives and a cache of `slots` slots over it.
    func makeFourMiBLUNCache(slots: Int) throws -> (LUNRef, TrackCache, CacheCounters) {
        let store = try makeArray(.raid5, drives: 5)
        let lun = try store.createLUN(name: "l", sizeBytes: 4 << 20)
        let (cache, counters, _) = try makeCache(store, slots: slots)
        return (LUNRef(lunID: lun.lunID, startStripe: lun.startStripe, sizeBytes: lun.sizeBytes), cache, counters)
    }

    func makeCache(_ store: ArrayStore, slots: Int) throws -> (TrackCache, CacheCounters, BackEndMarks) {
        let counters = CacheCounters()
        let marks = BackEndMarks()
        let memory = MemoryServices()
        let backEnd = try RAIDBackEnd(geometry: store.geometry, drives: store.drives, memory: memory, marks: marks)
        return (TrackCache(slotCount: slots, store: backEnd, memory: memory, counters: counters), counters, marks)
    }

    func testHitMissAndDestage() throws {
        let store = try makeArray(.raid5, drives: 4)
        let lun = try store.createLUN(name: "l", sizeBytes: 4 << 20)
        let ref = LUNRef(lunID: lun.lunID, startStripe: lun.startStripe, sizeBytes: lun.sizeBytes)
        let (cache, counters, marks) = try makeCache(store, slots: 64)
        let buffer = alignedBuffer(bytes: 65536)
        memset(buffer.base, 0xAB, 4096)
        XCTAssertTrue(cache.write(lun: ref, offsetBytes: 0, count: 4096, from: buffer.base))
        XCTAssertEqual(cache.writePendingSlots, 1)
        XCTAssertTrue(cache.read(lun: ref, offsetBytes: 0, count: 4096, into: buffer.base + 8192))
        XCTAssertEqual(counters.readHits.load(ordering: .relaxed), 1)
        XCTAssertTrue(cache.read(lun: ref, offsetBytes: 1 << 20, count: 4096, into: buffer.base + 8192))
        XCTAssertEqual(counters.readMisses.load(ordering: .relaxed), 1)
        XCTAssertEqual(cache.destage(stripeBudget: 10), 1)
        XCTAssertEqual(cache.writePendingSlots, 0)
        XCTAssertEqual(marks.reconstructWrites.load(ordering: .relaxed), 1, "a partial stripe reads the rest first")
        // A whole stripe written at once goes down without reads.
        let stripeBytes = Int(store.geometry.stripeDataBytes)
        XCTAssertTrue(cache.write(lun: ref, offsetBytes: UInt64(stripeBytes), count: stripeBytes, from: buffer.base))
        let readsBefore = marks.stripReads.load(ordering: .relaxed)
        XCTAssertTrue(cache.destageAll())
        XCTAssertEqual(marks.fullStripeWrites.load(ordering: .relaxed), 1)
        XCTAssertEqual(marks.stripReads.load(ordering: .relaxed), readsBefore)
    }

    func testSequentialReadAhead() throws {
        let (ref, cache, counters) = try makeFourMiBLUNCache(slots: 64)
        let buffer = alignedBuffer(bytes: 16384)
        for track in 0..<8 {
            XCTAssertTrue(cache.read(lun: ref, offsetBytes: UInt64(track * 16384), count: 16384, into: buffer.base))
        }
        XCTAssertGreaterThan(counters.readAheadTracks.load(ordering: .relaxed), 0)
        XCTAssertLessThan(counters.readMisses.load(ordering: .relaxed), 8)
    }

    func testARandomReadThatSpansTwoTracksFetchesBothTogetherAndNothingMore() throws {
        // 8 KiB across the boundary of tracks 0 and 1 (16 KiB tracks): one miss fetches both tracks in one batch (over a
        // network, one round trip, not two), and nothing past the read's last track.
        let (ref, cache, counters) = try makeFourMiBLUNCache(slots: 64)
        let buffer = alignedBuffer(bytes: 8192)
        XCTAssertTrue(cache.read(lun: ref, offsetBytes: 12288, count: 8192, into: buffer.base))
        XCTAssertEqual(counters.readMisses.load(ordering: .relaxed), 1)
        XCTAssertEqual(counters.readHits.load(ordering: .relaxed), 1, "the second track was fetched with the first")
        XCTAssertEqual(counters.readAheadTracks.load(ordering: .relaxed), 0)
        XCTAssertEqual(counters.usedSlots.load(ordering: .relaxed), 2)
    }

    func testRandomReadsDoNotReadAhead() throws {
        // Random 4 KiB reads over a warm cache: neighbours are often cached, but no read continues another, so none
        // may fetch the rest of a stripe.
        let (ref, cache, counters) = try makeFourMiBLUNCache(slots: 512)
        let buffer = alignedBuffer(bytes: 4096)
        var rng = SplitMix(seed: 42)
        var recentEnds = [UInt64](repeating: .max, count: 32)
        for i in 0..<2000 {
            var page = rng.next() % UInt64((4 << 20) / 4096)
            while recentEnds.contains(page) { page = rng.next() % UInt64((4 << 20) / 4096) }
            recentEnds[i % recentEnds.count] = page + 1
            XCTAssertTrue(cache.read(lun: ref, offsetBytes: page * 4096, count: 4096, into: buffer.base))
        }
        XCTAssertEqual(counters.readAheadTracks.load(ordering: .relaxed), 0)
    }

    func testRandomReadsThatHappenToFollowAnotherDoNotReadAhead() throws {
        // fio's random map picks a free neighbour when its pick was read: random reads then continue another read one
        // time in a few hundred. Such a pair (or a short run) is not a stream: no read-ahead (nor, on a thin LUN, read
        // reallocation of the stripe). A stream is once it has read 64 KiB.
        let (ref, cache, counters) = try makeFourMiBLUNCache(slots: 512)
        let buffer = alignedBuffer(bytes: 4096)
        var rng = SplitMix(seed: 7)
        for _ in 0..<300 {
            let page = rng.next() % UInt64((4 << 20) / 4096 - 4)
            for k in 0..<UInt64(1 + rng.next() % 4) {
                XCTAssertTrue(cache.read(lun: ref, offsetBytes: (page + k) * 4096, count: 4096, into: buffer.base))
            }
        }
        XCTAssertEqual(counters.readAheadTracks.load(ordering: .relaxed), 0)
        for page in 0..<UInt64(24) { XCTAssertTrue(cache.read(lun: ref, offsetBytes: (512 + page) * 4096, count: 4096, into: buffer.base)) }
        XCTAssertGreaterThan(counters.readAheadTracks.load(ordering: .relaxed), 0, "a stream of 4 KiB reads reads ahead past 64 KiB")
    }

    func testFlushLeavesNoStaleQueueEntries() throws {
        // write + fsync in a loop (fio --fsync=1): each fsync must cost what is dirty, so destaged slots may not pile
        // up in the dirty queue for later fsyncs to walk.
        let store = try makeArray(.raid5, drives: 4)
        let lun = try store.createLUN(name: "l", sizeBytes: 4 << 20)
        let ref = LUNRef(lunID: lun.lunID, startStripe: lun.startStripe, sizeBytes: lun.sizeBytes)
        let (cache, _, _) = try makeCache(store, slots: 256)
        let buffer = alignedBuffer(bytes: 4096)
        for i in 0..<200 {
            XCTAssertTrue(cache.write(lun: ref, offsetBytes: UInt64(i % 64) * 65536, count: 4096, from: buffer.base))
            XCTAssertTrue(cache.destageAll(lunID: lun.lunID))
            XCTAssertEqual(cache.dirtyQueueLength, 0)
        }
        // Another LUN's write-pending slots stay queued through this LUN's flush.
        let other = try store.createLUN(name: "m", sizeBytes: 1 << 20)
        let otherRef = LUNRef(lunID: other.lunID, startStripe: other.startStripe, sizeBytes: other.sizeBytes)
        XCTAssertTrue(cache.write(lun: otherRef, offsetBytes: 0, count: 4096, from: buffer.base))
        XCTAssertTrue(cache.write(lun: ref, offsetBytes: 0, count: 4096, from: buffer.base))
        XCTAssertTrue(cache.destageAll(lunID: lun.lunID))
        XCTAssertEqual(cache.dirtyQueueLength, 1)
        XCTAssertEqual(cache.writePendingSlots, 1)
    }

    /// A seeded random workload against an oracle, on every level: small cache (eviction and forced destage),
    /// unaligned offsets, zero ranges; then everything is re-read cold, and for redundant levels with a drive failed.
    func testRandomWorkloadEveryLevel() throws { try randomWorkloadEveryLevel() }

    /// The same on tmpfs, where DriveIO copies synchronously instead of going through io_uring.
    func testRandomWorkloadEveryLevelOnTmpfs() throws {
        guard FileManager.default.fileExists(atPath: "/dev/shm") else { throw XCTSkip("no /dev/shm") }
        directory = "/dev/shm/vsa-unit-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try randomWorkloadEveryLevel()
        XCTAssertTrue(try makeArray(.raid0, drives: 1, fresh: true).drives.allSatisfy { !$0.usesDirectIO }, "tmpfs drives must take the page-cache path")
    }

    func randomWorkloadEveryLevel() throws {
        let cases: [(RAIDLevel, Int)] = [(.raid0, 3), (.raid1, 2), (.raid10, 4), (.raid5, 4), (.raid5, 6), (.raid6, 5), (.raid6, 7)]
        for (level, drives) in cases {
            try? FileManager.default.removeItem(atPath: directory)
            let seed = UInt64(level.rawValue) * 7919 + UInt64(drives)
            var rng = SplitMix(seed: seed)
            let store = try makeArray(level, drives: drives, stripUnit: 8192)
            let lunSize = 1 << 20
            let lun = try store.createLUN(name: "l", sizeBytes: UInt64(lunSize))
            let ref = LUNRef(lunID: lun.lunID, startStripe: lun.startStripe, sizeBytes: lun.sizeBytes)
            let (cache, _, marks) = try makeCache(store, slots: 2 * level.dataStripsPerStripe(memberCount: drives) + 6)
            var oracle = [UInt8](repeating: 0, count: lunSize)
            let io = alignedBuffer(bytes: 65536)
            for step in 0..<600 {
                let count = Int(rng.next() % 20000) + 1
                let offset = Int(rng.next() % UInt64(lunSize - count))
                switch rng.next() % 10 {
                case 0..<5:
                    for i in 0..<count { io.base.storeBytes(of: UInt8(truncatingIfNeeded: rng.next()), toByteOffset: i, as: UInt8.self) }
                    XCTAssertTrue(cache.write(lun: ref, offsetBytes: UInt64(offset), count: count, from: io.base))
                    for i in 0..<count { oracle[offset + i] = io.base.load(fromByteOffset: i, as: UInt8.self) }
                case 5:
                    XCTAssertTrue(cache.write(lun: ref, offsetBytes: UInt64(offset), count: count, from: nil))
                    for i in 0..<count { oracle[offset + i] = 0 }
                case 6 where rng.next() % 2 == 0:
                    cache.destage(stripeBudget: 2)
                case 6:
                    // A whole stripe straight from the host buffer to the drives, over whatever the cache holds of it.
                    let stripeBytes = Int(store.geometry.stripeDataBytes)
                    let at = Int(rng.next() % UInt64(lunSize / stripeBytes)) * stripeBytes
                    for i in 0..<stripeBytes { io.base.storeBytes(of: UInt8(truncatingIfNeeded: rng.next()), toByteOffset: i, as: UInt8.self) }
                    XCTAssertTrue(cache.canWriteThrough(offsetBytes: UInt64(at), count: stripeBytes, from: io.base))
                    XCTAssertEqual(cache.writeThrough(lun: ref, offsetBytes: UInt64(at), from: io.base), 0)
                    for i in 0..<stripeBytes { oracle[at + i] = io.base.load(fromByteOffset: i, as: UInt8.self) }
                default:
                    XCTAssertTrue(cache.read(lun: ref, offsetBytes: UInt64(offset), count: count, into: io.base))
                    for i in 0..<count where io.base.load(fromByteOffset: i, as: UInt8.self) != oracle[offset + i] {
                        XCTFail("\(level) seed \(seed) step \(step): byte \(offset + i) differs")
                        return
                    }
                }
            }
            XCTAssertTrue(cache.destageAll())
            // Rare paths carry marks: the workload must have taken them.
            if level == .raid5 || level == .raid6 {
                XCTAssertGreaterThan(marks.reconstructWrites.load(ordering: .relaxed), 0, "\(level)×\(drives): no reconstruct-write")
                if drives >= 6 { XCTAssertGreaterThan(marks.readModifyWrites.load(ordering: .relaxed), 0, "\(level)×\(drives): no read-modify-write") }
            }
            func verifyCold(_ label: String) throws {
                let (cold, _, _) = try makeCache(store, slots: 64)
                let chunk = 65536
                for offset in stride(from: 0, to: lunSize, by: chunk) {
                    XCTAssertTrue(cold.read(lun: ref, offsetBytes: UInt64(offset), count: chunk, into: io.base), "\(label) read")
                    for i in 0..<chunk where io.base.load(fromByteOffset: i, as: UInt8.self) != oracle[offset + i] {
                        XCTFail("\(level) \(label) seed \(seed): byte \(offset + i) differs")
                        return
                    }
                }
            }
            try verifyCold("cold")
            if level.faultTolerance(memberCount: drives) > 0 {
                store.drives[1].transition(to: .failed)
                try verifyCold("degraded")
            }
            if level.faultTolerance(memberCount: drives) > 1 {
                store.drives[drives - 1].transition(to: .failed)
                try verifyCold("two members lost")
            }
        }
    }
}

/// A tiny seeded generator (SplitMix64): the same seed gives the same workload.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
