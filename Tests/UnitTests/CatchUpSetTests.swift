// The resync's catch-up set of an asynchronous replica group (Replication/ReplicaGroup.swift, `captureOrRemember`):
// while a resync runs, a write's part on tracks already sent is captured, its part on tracks still to send only
// marks them, and the delta sets never hold a block of a marked track (applied after the resync, such a block would
// put older data over the newer copy the resync sent). R2's image and journal are nbdkit memory exports; nothing is
// sent to them here.
import ArrayModel
import XCTest

@testable import Replication

final class CatchUpSetTests: XCTestCase {
    let track = TrackBitmap.trackBytes

    /// A syncing asynchronous group of one 1 MiB LUN whose tracks in `marked` are still to send, its sets open for
    /// the resync.
    func makeResyncingGroup(marked: [Int], servers: inout [NBDKitServer]) throws -> (ReplicaGroup, DeltaSets) {
        let image = try NBDKitServer(size: "1M")
        let journalServer = try NBDKitServer(size: "8M")
        servers = [image, journalServer]
        let remote = try RemoteImage(uri: image.uri, deadlineSeconds: 5, connectionCount: 1)
        let journalImage = try RemoteImage(uri: journalServer.uri, deadlineSeconds: 5, connectionCount: 1)
        let lun = LUNRef(lunID: 1, startStripe: 0, sizeBytes: 1 << 20)
        let sets = DeltaSets(bytes: 1 << 20)
        let cycle = AsyncCycle(sets: sets, journal: Journal(journal: journalImage, images: [remote], group: "g"), cycleSeconds: 1)
        var bitmap = TrackBitmap(sizeBytes: lun.sizeBytes)
        for t in marked { bitmap.mark(offsetBytes: UInt64(t) * track, count: 1) }
        let group = ReplicaGroup(
            name: "g", mode: "async", luns: [ReplicaLUN(name: "a", lun: lun, image: remote)], bitmaps: [1: bitmap], state: .syncing, async: cycle)
        sets.openForResync()
        return (group, sets)
    }

    /// Every block the sets hold (dropping them) is on a track the resync has nothing left to send of.
    func assertNoSetBlockOnAMarkedTrack(_ group: ReplicaGroup, _ sets: DeltaSets, file: StaticString = #filePath, line: UInt = #line) -> Int {
        var blocks = 0
        group.tracks.withLock { t in
            sets.close(drop: true) { _, block in
                blocks += 1
                let onTrack = Int(block * UInt64(DeltaSets.blockBytes) / track)
                XCTAssertFalse(t.bitmaps[1]!.isSet(onTrack), "the sets hold block \(block) of track \(onTrack), still to send", file: file, line: line)
            }
        }
        return blocks
    }

    func testAWriteAcrossASentAndAnUnsentTrackCapturesOnlyItsPartOnTheSentOne() throws {
        var servers: [NBDKitServer] = []
        let (group, sets) = try makeResyncingGroup(marked: [1], servers: &servers)
        var captures: [(UInt64, UInt64)] = []
        func write(_ offset: UInt64, _ count: UInt64) {
            group.captureOrRemember(lun: 1, offsetBytes: offset, count: count, wrote: true) { at, bytes in
                captures.append((at, bytes))
                return sets.capture(member: 0, firstBlock: at / 4096, count: Int(bytes / 4096)) { _ in DeltaSets.zeroBlock }
            }
        }
        // Track 0 is sent: a write there is captured whole.
        write(4096, 4096)
        XCTAssertEqual(captures.count, 1)
        // 128 KiB from the middle of track 0 into track 1 (still to send) and track 2 (sent): the parts on tracks 0 and
        // 2 are captured, track 1 only stays marked; tracks 0 and 2 are not marked.
        write(track / 2, 2 * track)
        XCTAssertEqual(captures.count, 3)
        XCTAssertEqual(captures[1].0, track / 2)
        XCTAssertEqual(captures[1].1, track / 2)
        XCTAssertEqual(captures[2].0, 2 * track)
        XCTAssertEqual(captures[2].1, track / 2)
        group.tracks.withLock { t in
            XCTAssertTrue(t.bitmaps[1]!.isSet(1))
            XCTAssertEqual(t.bitmaps[1]!.setCount, 1, "a track the resync had sent was marked again")
        }
        XCTAssertEqual(assertNoSetBlockOnAMarkedTrack(group, sets), 1 + 8 + 8)
    }

    func testACaptureThatDoesNotTakeDropsTheSetsWithTheTrackItMarks() throws {
        var servers: [NBDKitServer] = []
        let (group, sets) = try makeResyncingGroup(marked: [3], servers: &servers)
        // A block of track 0 captured, then a write to track 0 whose capture does not take (an edge block that could
        // not be read back): track 0 is marked, and the older block must not stay in the sets.
        group.captureOrRemember(lun: 1, offsetBytes: 0, count: 4096, wrote: true) { at, bytes in
            sets.capture(member: 0, firstBlock: at / 4096, count: Int(bytes / 4096)) { _ in DeltaSets.zeroBlock }
        }
        XCTAssertFalse(sets.isEmpty)
        group.captureOrRemember(lun: 1, offsetBytes: 0, count: 4096, wrote: true) { _, _ in .closed }
        group.tracks.withLock { t in XCTAssertTrue(t.bitmaps[1]!.isSet(0)) }
        XCTAssertTrue(sets.isEmpty, "the sets kept a block of a track marked again")
        // A write that failed here, on a sent track, does the same.
        sets.openForResync()
        group.captureOrRemember(lun: 1, offsetBytes: 2 * track, count: 4096, wrote: true) { at, bytes in
            sets.capture(member: 0, firstBlock: at / 4096, count: Int(bytes / 4096)) { _ in DeltaSets.zeroBlock }
        }
        group.captureOrRemember(lun: 1, offsetBytes: 2 * track, count: 4096, wrote: false) { _, _ in .captured }
        XCTAssertTrue(sets.isEmpty)
        _ = assertNoSetBlockOnAMarkedTrack(group, sets)
    }
}
