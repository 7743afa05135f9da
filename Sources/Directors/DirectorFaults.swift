// Faults injected into a director (`vsa inject TARGET director ID slow MS|hang`; docs/FAULTS.md). A slow director
// takes that much longer over every request it executes. A hung one stops before its next request and takes no
// more, holding its executor role, so its queue fills and its hosts wait, as when a director's processor stops. It
// is stopped at its safe point (between requests, nothing half done), so a failover can fence it there: the fault
// lets go when the failover asks (`releaseForFailover`), the director ends its batch and gives its role up, and the
// failover goes on as for any director. The array finds a hung director by itself (`DirectorWatchdog` below, on the
// daemon's director deadline) and fails it over. A director with no fault costs one relaxed load per request.
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

public final class DirectorFaults: Sendable {
    private let armed = Atomic<Bool>(false)
    private let slowMicrosValue = Atomic<UInt64>(0)
    private let hungValue = Atomic<Bool>(false)
    /// Set by a failover of this director: a hung executor lets go so the failover can take its role.
    let releaseForFailover = Atomic<Bool>(false)
    /// Requests slowed or held so far.
    public let hits = Atomic<UInt64>(0)

    public init() {}

    @inline(__always) var isArmed: Bool { armed.load(ordering: .relaxed) }
    public var slowMicros: UInt64 { slowMicrosValue.load(ordering: .relaxed) }
    public var isHung: Bool { hungValue.load(ordering: .acquiring) }

    /// Each request this director executes takes `micros` longer (0: no longer), at most 60 s.
    public func setSlow(micros: UInt64) {
        slowMicrosValue.store(min(micros, 60_000_000), ordering: .relaxed)
        publish()
    }

    public func setHung(_ hung: Bool) {
        hungValue.store(hung, ordering: .releasing)
        publish()
    }

    private func publish() { armed.store(slowMicros > 0 || isHung, ordering: .releasing) }

    /// Runs at the director's safe point, before a request: sleeps a slow director's delay; holds a hung one until
    /// the fault is cleared, a failover asks for it, or the director leaves `online` (an unmount).
    func hold(while online: () -> Bool) {
        let slow = slowMicros
        if slow > 0 {
            hits.add(1, ordering: .relaxed)
            usleep(UInt32(slow))
        }
        guard isHung else { return }
        hits.add(1, ordering: .relaxed)
        while isHung && !releaseForFailover.load(ordering: .acquiring) && online() { usleep(1000) }
    }
}

/// Finds directors that stopped working (the array's own failure detection, as a real array's directors watch each
/// other's heartbeats): online, with work waiting (requests queued, or a thread inside its work) and no request
/// finished for the deadline. Owned by one thread (the daemon's director watch); the time comes from the caller.
public final class DirectorWatchdog {
    private var served: [UInt64]
    private var since: [Double]

    public init(directorCount: Int) {
        served = Array(repeating: 0, count: directorCount)
        since = Array(repeating: 0, count: directorCount)
    }

    /// The directors stalled for `deadlineSeconds` as of `now` (seconds on any monotonic clock).
    public func stalled(_ directors: [Director], now: Double, deadlineSeconds: Double) -> [Director] {
        precondition(directors.count == served.count, "one watch per director")
        var result: [Director] = []
        for (i, d) in directors.enumerated() {
            let count = d.requestsServed.load(ordering: .relaxed)
            let waiting = d.state == .online && (d.queueDepth > 0 || d.isExecuting)
            if count != served[i] || !waiting {
                served[i] = count
                since[i] = now
                continue
            }
            if now - since[i] >= deadlineSeconds {
                result.append(d)
                since[i] = now  // looked at again only after another deadline
            }
        }
        return result
    }
}
