import Foundation
import XCTest

// Latency histograms (LatencyHistogram.swift): every value lands in a bucket whose upper bound is at most 12.5% above
// it; percentiles are never below the truth nor above the maximum; recording from threads loses nothing.
@testable import ArrayModel

final class LatencyHistogramTests: XCTestCase {
    func testBucketsCoverEveryValueWithinAnEighth() {
        var last = -1
        let values: [UInt64] = [0, 1, 999, 1023, 1024, 1025, 1151, 1152, 4095, 4096, 1_000_000, 123_456_789, 1 << 35, (1 << 36) - 1]
        for ns in values {
            let b = LatencyHistogram.bucket(ns)
            XCTAssertGreaterThanOrEqual(b, last, "buckets grow with the value")
            last = b
            XCTAssertLessThan(b, LatencyHistogram.bucketCount)
            XCTAssertGreaterThanOrEqual(LatencyHistogram.upperBound(b), ns, "\(ns) above its bucket's bound")
            if ns >= 1024 { XCTAssertLessThanOrEqual(Double(LatencyHistogram.upperBound(b)), Double(ns) * 1.125 + 1, "\(ns)") }
        }
        XCTAssertEqual(LatencyHistogram.bucket(UInt64.max), LatencyHistogram.bucketCount - 1, "past 69 s: the last bucket")
    }

    func testPercentilesAreBoundedByTheTruthAndTheMaximum() {
        let h = LatencyHistogram()
        XCTAssertEqual(h.summary, LatencySummary(count: 0, p50Micros: 0, p99Micros: 0, p999Micros: 0, maxMicros: 0))
        // 1000 operations: 1..1000 us.
        for us in 1...1000 { h.record(nanoseconds: UInt64(us) * 1000) }
        let s = h.summary
        XCTAssertEqual(s.count, 1000)
        XCTAssertEqual(s.maxMicros, 1000)
        for (p, truth) in [(s.p50Micros, 500.0), (s.p99Micros, 990.0), (s.p999Micros, 999.0)] {
            XCTAssertGreaterThanOrEqual(p, truth)
            XCTAssertLessThanOrEqual(p, min(truth * 1.125 + 1, 1000))
        }
        XCTAssertEqual(LatencySummary.format(41.2), "41 us")
        XCTAssertEqual(LatencySummary.format(20_578), "20.6 ms")
        XCTAssertEqual(LatencySummary.format(2_500_000), "2.5 s")
    }

    func testRecordsFromManyThreadsAreAllCounted() {
        let h = LatencyHistogram()
        DispatchQueue.concurrentPerform(iterations: 8) { t in
            for i in 0..<10_000 { h.record(nanoseconds: UInt64(1000 + (i * 7919 + t) % 5_000_000)) }
        }
        let s = h.summary
        XCTAssertEqual(s.count, 80_000)
        XCTAssertLessThanOrEqual(s.p999Micros, s.maxMicros)
        XCTAssertGreaterThan(s.maxMicros, 4_990)
    }
}
