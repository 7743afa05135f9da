// Latency histograms (issue 14): per LUN (the host's view, in the front end) and per drive (the back end's view, in
// DriveIO), for reads, writes and flushes, shown as p50, p99, p99.9 and max in `vsa status`, `vsa top` and the
// metrics. Log-linear buckets, as HdrHistogram's: each power of two from 1 us to 2^36 ns (about 69 s) is cut into 8,
// so a percentile is off by at most 12.5% (it is reported as its bucket's upper bound, never below the truth). A
// record is one relaxed atomic add to its bucket (and, rarely, a compare-exchange of the maximum): no lock, no
// allocation, nothing shared but the bucket's cache line.
import Synchronization

public final class LatencyHistogram: @unchecked Sendable {
    /// Sub-buckets per power of two, and the powers of two kept: below 2^10 ns everything goes to bucket 0.
    static let subBits = 3
    static let firstPower = 10
    static let lastPower = 36
    public static let bucketCount = 1 + (lastPower - firstPower) * (1 << subBits)

    /// Atomics in memory of its own (an Atomic cannot sit in an array); only ever touched through their atomic
    /// operations, which is what makes the class Sendable.
    private let buckets: UnsafeMutablePointer<Atomic<UInt64>>
    private let maximum = Atomic<UInt64>(0)

    public init() {
        buckets = .allocate(capacity: Self.bucketCount)
        for i in 0..<Self.bucketCount { (buckets + i).initialize(to: Atomic(0)) }
    }

    deinit {
        buckets.deinitialize(count: Self.bucketCount)
        buckets.deallocate()
    }

    /// The bucket of a latency of `ns` nanoseconds.
    @inline(__always)
    static func bucket(_ ns: UInt64) -> Int {
        guard ns >= 1 << firstPower else { return 0 }
        let power = 63 - ns.leadingZeroBitCount
        guard power < lastPower else { return bucketCount - 1 }
        let sub = Int((ns >> UInt64(power - subBits)) & ((1 << UInt64(subBits)) - 1))
        return 1 + (power - firstPower) * (1 << subBits) + sub
    }

    /// The largest latency bucket `index` holds, in nanoseconds.
    public static func upperBound(_ index: Int) -> UInt64 {
        guard index > 0 else { return 1 << UInt64(firstPower) }
        let power = (index - 1) / (1 << subBits) + firstPower
        let sub = UInt64((index - 1) % (1 << subBits))
        return (1 << UInt64(power)) + (sub + 1) * (1 << UInt64(power - subBits))
    }

    @inline(__always)
    public func record(nanoseconds ns: UInt64) {
        buckets[Self.bucket(ns)].add(1, ordering: .relaxed)
        var seen = maximum.load(ordering: .relaxed)
        while ns > seen {
            let (exchanged, original) = maximum.compareExchange(expected: seen, desired: ns, ordering: .relaxed)
            if exchanged { break }
            seen = original
        }
    }

    /// Each bucket's count as of now: two of them a while apart give that while's own percentiles
    /// (`LatencySummary(counts:)`).
    public var counts: [UInt64] { (0..<Self.bucketCount).map { buckets[$0].load(ordering: .relaxed) } }

    /// Counts and percentiles as of now (operations still recording may or may not be in it).
    public var summary: LatencySummary { LatencySummary(counts: counts, maxNanoseconds: maximum.load(ordering: .relaxed)) }
}

extension LatencySummary {
    /// The summary of bucket counts (a histogram's, or the difference of two): `maxNanoseconds` nil takes the
    /// largest non-empty bucket's upper bound as the maximum.
    public init(counts: [UInt64], maxNanoseconds known: UInt64? = nil) {
        precondition(counts.count == LatencyHistogram.bucketCount, "one count per bucket")
        var total: UInt64 = 0
        for c in counts { total &+= c }
        var maxNanoseconds: UInt64 = 0
        if let known {
            maxNanoseconds = known
        } else if let last = counts.lastIndex(where: { $0 > 0 }) {
            maxNanoseconds = LatencyHistogram.upperBound(last)
        }
        func percentile(_ p: Double) -> Double {
            guard total > 0 else { return 0 }
            let rank = UInt64((Double(total) * p).rounded(.up))
            var seen: UInt64 = 0
            for i in 0..<LatencyHistogram.bucketCount {
                seen &+= counts[i]
                if seen >= max(rank, 1) { return Double(min(LatencyHistogram.upperBound(i), max(maxNanoseconds, 1))) / 1000 }
            }
            return Double(maxNanoseconds) / 1000
        }
        self.init(
            count: total, p50Micros: percentile(0.50), p99Micros: percentile(0.99), p999Micros: percentile(0.999), maxMicros: Double(maxNanoseconds) / 1000)
    }
}

/// A histogram's summary, in microseconds.
public struct LatencySummary: Codable, Sendable, Equatable {
    public var count: UInt64
    public var p50Micros: Double
    public var p99Micros: Double
    public var p999Micros: Double
    public var maxMicros: Double

    public init(count: UInt64, p50Micros: Double, p99Micros: Double, p999Micros: Double, maxMicros: Double) {
        self.count = count
        self.p50Micros = p50Micros
        self.p99Micros = p99Micros
        self.p999Micros = p999Micros
        self.maxMicros = maxMicros
    }

    /// "p50 41 us  p99 1.2 ms  p99.9 20.5 ms  max 31.0 ms"
    public var line: String {
        "p50 \(Self.format(p50Micros))  p99 \(Self.format(p99Micros))  p99.9 \(Self.format(p999Micros))  max \(Self.format(maxMicros))"
    }

    public static func format(_ micros: Double) -> String {
        if micros < 1000 { return "\(Int(micros.rounded())) us" }
        if micros < 1_000_000 { return "\((micros / 100).rounded() / 10) ms" }
        return "\((micros / 100_000).rounded() / 10) s"
    }
}

/// Reads, writes and flushes of one LUN or one drive.
public final class IOLatency: Sendable {
    public let reads = LatencyHistogram()
    public let writes = LatencyHistogram()
    public let flushes = LatencyHistogram()
    public init() {}
}
