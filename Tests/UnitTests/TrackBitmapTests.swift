// The changed-track bitmap of a replica group (Replication/ReplicaGroup.swift): what a resync sends after a partition
// or a suspend, and what a clean stop saves. Marks cover exactly the tracks a byte range touches, counts stay exact
// however often a track is marked, the search wraps around, and a saved bitmap is taken back only for a LUN of the
// size it was saved for.
import Replication
import XCTest

final class TrackBitmapTests: XCTestCase {
    let track = TrackBitmap.trackBytes

    func testMarksCoverExactlyTheTracksARangeTouches() {
        var b = TrackBitmap(sizeBytes: 100 * track + 4096)
        XCTAssertEqual(b.trackCount, 101, "a partial last track is a track")
        b.mark(offsetBytes: 0, count: 1)
        b.mark(offsetBytes: track - 1, count: 2)  // the last byte of track 0, the first of track 1
        b.mark(offsetBytes: 100 * track, count: 4096)
        b.mark(offsetBytes: 5 * track, count: 0)  // nothing
        XCTAssertEqual(b.setCount, 3)
        XCTAssertTrue(b.isSet(0) && b.isSet(1) && b.isSet(100))
        XCTAssertFalse(b.isSet(5) || b.isSet(2))
        b.mark(offsetBytes: 0, count: 3 * track)  // 0 and 1 again, 2 new
        XCTAssertEqual(b.setCount, 4, "marking a set track again does not count it twice")
        b.clear(1)
        b.clear(1)
        XCTAssertEqual(b.setCount, 3)
    }

    func testTheSearchWrapsAroundAndEndsWhenNothingIsSet() {
        var b = TrackBitmap(sizeBytes: 200 * track)
        XCTAssertNil(b.firstSet(from: 0))
        b.set(3)
        b.set(130)
        XCTAssertEqual(b.firstSet(from: 0), 3)
        XCTAssertEqual(b.firstSet(from: 4), 130)
        XCTAssertEqual(b.firstSet(from: 131), 3, "wraps")
        XCTAssertEqual(b.firstSet(from: 999), 3, "a cursor past the end wraps too (999 is track 199)")
        b.clear(3)
        b.clear(130)
        XCTAssertNil(b.firstSet(from: 17))
    }

    func testASavedBitmapFitsOnlyALUNOfItsSize() {
        var b = TrackBitmap(sizeBytes: 1000 * track, allSet: false)
        for t in stride(from: 0, to: 1000, by: 7) { b.set(t) }
        let back = TrackBitmap(sizeBytes: 1000 * track, words: b.words)
        XCTAssertEqual(back?.setCount, b.setCount)
        XCTAssertEqual(back?.words, b.words)
        XCTAssertNil(TrackBitmap(sizeBytes: 2000 * track, words: b.words), "another size: not this LUN's")
        XCTAssertNil(TrackBitmap(sizeBytes: 1000 * track, words: []))
        // Bits past the last track in a saved word are not tracks: never counted, never sent.
        var words = TrackBitmap(sizeBytes: 65 * track).words
        words[1] = ~0
        XCTAssertEqual(TrackBitmap(sizeBytes: 65 * track, words: words)?.setCount, 1)
        XCTAssertEqual(TrackBitmap(sizeBytes: 10 * track, allSet: true).setCount, 10)
    }
}
