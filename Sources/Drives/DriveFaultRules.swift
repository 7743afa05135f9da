// Faults injected into a live drive (`vsa inject TARGET drive ...`), as nbdkit's delay, error and pause filters are
// stacked under a real plugin: the drive is real, and DriveIO asks its rules about every read and write before doing
// it. A rule adds latency (fixed, jitter, spikes at a rate), fails operations (reads, writes or both; on a byte range
// of the drive or anywhere; every one or at a rate), or makes the drive stop answering until the rule is cleared or
// the drive deadline fails the drive. Every random choice comes from the rule's own seed (SplitMix64), so a run can be
// replayed. A drive with no rule costs one relaxed atomic load per operation.
import ArrayModel
import Synchronization

public struct DriveFaultRule: Sendable, Equatable {
    public enum Effect: Sendable, Equatable {
        /// Each operation completes `fixedMicros` plus up to `jitterMicros` (uniform) later; one in a million times
        /// `spikePerMillion`, `spikeMicros` more.
        case latency(fixedMicros: UInt64, jitterMicros: UInt64, spikeMicros: UInt64, spikePerMillion: UInt32)
        /// Reads and/or writes that touch `range` (nil: anywhere) fail with an I/O error, `perMillion` of them.
        case errors(reads: Bool, writes: Bool, range: Range<UInt64>?, perMillion: UInt32)
        /// Nothing completes: operations wait until the rule is cleared, or the drive deadline fails the drive.
        case hang
    }

    public let id: Int
    public let effect: Effect
    public let seed: UInt64

    public init(id: Int, effect: Effect, seed: UInt64) {
        self.id = id
        self.effect = effect
        self.seed = seed
    }

    /// Bounds a user's numbers before any arithmetic: latencies up to 60 s, rates up to a million per million.
    public static let maxMicros: UInt64 = 60_000_000
    public var isValid: Bool {
        switch effect {
        case .latency(let fixed, let jitter, let spike, let rate):
            fixed <= Self.maxMicros && jitter <= Self.maxMicros && spike <= Self.maxMicros && rate <= 1_000_000
        case .errors(let reads, let writes, let range, let rate): (reads || writes) && rate <= 1_000_000 && (range.map { !$0.isEmpty } ?? true)
        case .hang: true
        }
    }
}

/// What DriveIO does with one operation.
public enum DriveFaultDecision: Equatable {
    case proceed(delayMicros: UInt64)
    case fail
    case hang
}

public final class DriveFaults: Sendable {
    private struct Active {
        var rule: DriveFaultRule
        var random: UInt64
        var hits: UInt64 = 0
    }

    private let armed = Atomic<Bool>(false)
    private let hung = Atomic<Bool>(false)
    private let rules = Locked<[Active]>([])

    public init() {}

    /// Whether any rule is in force: the only cost on a drive without faults.
    @inline(__always) public var isArmed: Bool { armed.load(ordering: .relaxed) }
    /// Whether a `hang` rule is in force (DriveIO polls it while it holds a hung drive's operations).
    public var isHung: Bool { hung.load(ordering: .acquiring) }

    public func add(_ rule: DriveFaultRule) {
        precondition(rule.isValid, "a fault rule is checked before it is added")
        rules.withLock { list in
            list.append(Active(rule: rule, random: rule.seed))
            publish(list)
        }
    }

    /// Removes rule `id`; whether it was there.
    @discardableResult
    public func remove(id: Int) -> Bool {
        rules.withLock { list in
            guard let i = list.firstIndex(where: { $0.rule.id == id }) else { return false }
            list.remove(at: i)
            publish(list)
            return true
        }
    }

    public func removeAll() {
        rules.withLock { list in
            list.removeAll()
            publish(list)
        }
    }

    /// The rules in force and how many operations each has delayed, failed or held.
    public var snapshot: [(rule: DriveFaultRule, hits: UInt64)] { rules.withLock { list in list.map { ($0.rule, $0.hits) } } }

    private func publish(_ list: [Active]) {
        hung.store(list.contains { $0.rule.effect == .hang }, ordering: .releasing)
        armed.store(!list.isEmpty, ordering: .releasing)
    }

    /// The rules' verdict on one operation: a read or a write (`write`) of `count` bytes at `offset`; a flush is
    /// `count` 0 (delayed and held like the rest, never failed: a failed flush is an error rule's write side).
    public func decide(write: Bool, offset: UInt64, count: Int) -> DriveFaultDecision {
        rules.withLock { list in
            var delay: UInt64 = 0
            for i in list.indices {
                switch list[i].rule.effect {
                case .hang:
                    list[i].hits += 1
                    return .hang
                case .errors(let reads, let writes, let range, let rate):
                    guard count > 0, write ? writes : reads else { continue }
                    if let range, !(offset < range.upperBound && range.lowerBound < offset &+ UInt64(count)) { continue }
                    guard rate >= 1_000_000 || Self.nextRandom(&list[i].random) % 1_000_000 < UInt64(rate) else { continue }
                    list[i].hits += 1
                    return .fail
                case .latency(let fixed, let jitter, let spike, let rate):
                    var d = fixed
                    if jitter > 0 { d += Self.nextRandom(&list[i].random) % (jitter + 1) }
                    if rate > 0 && Self.nextRandom(&list[i].random) % 1_000_000 < UInt64(rate) { d += spike }
                    list[i].hits += 1
                    delay = max(delay, d)
                }
            }
            return .proceed(delayMicros: delay)
        }
    }

    /// SplitMix64 (ArrayModel).
    @inline(__always)
    public static func nextRandom(_ state: inout UInt64) -> UInt64 { SplitMix64.next(&state) }
}
