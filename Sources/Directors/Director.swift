// Directors: an engine is a pair of directors (1a, 1b) in a failover relationship; an array has one or more engines.
// Each director owns a portion of global memory (its TrackCache), a back-end adapter (its RAIDBackEnd with its own
// io_uring), and a front-end queue. Every (LUN, stripe) has one owning director, and a director's work runs on one
// executor at a time: the front-end thread that finds the director idle runs the queue itself (no hand-off), else the
// running executor or the director's own thread does. So a director's cache portion and its stripes' parity need no
// lock beyond the queue's.
//
// Director states (transition(to:) asserts the edge):
//   online -> stopping -> stopped      (unmount)
// Failover (online -> failed, partner takes over, mirrored write-pending) comes with the failover issue; the
// ownership function and the front-end queue are built so a partner can take a failed director's work.
import ArrayModel
import BackEnd
import Drives
import Foundation
import GlobalMemory
import MemoryServices
import Synchronization

public enum DirectorState: UInt8, Sendable, CustomStringConvertible {
    case online = 0, stopping = 1, stopped = 2
    public var description: String {
        switch self {
        case .online: return "online"
        case .stopping: return "stopping"
        case .stopped: return "stopped"
        }
    }
}

/// What a request asks of its owning director.
public enum RequestKind: UInt8, Sendable {
    case read, write, zero
    /// Destage every write-pending slot of `lun` (or every LUN when lunID == 0).
    case destage
    /// Flush the drives (once per host flush, after every director destaged).
    case flushDrives
    /// Forget the LUN's slots (the LUN is being deleted).
    case discard
    /// Rebuild member `count`'s strip of array stripe `offsetBytes` (run by the stripe's owner).
    case rebuild
    /// Put `drive` in member position `count` of this director's back-end adapter.
    case attachMember
    /// Check (count 0) or repair (count 1) array stripe `offsetBytes`; the outcome goes in `outcome`.
    case scrub
    /// End the back end's journal epoch: checksum pages written back, drives flushed (a clean stop).
    case endEpoch
    /// Set the checksums of a deleted LUN's stripes to none (one director, after every director's discard).
    case clearChecksums
}

/// Completion of one host I/O that may span several directors: the last sub-request to finish wakes the waiter.
public final class CompletionGroup: @unchecked Sendable {
    let remaining = Atomic<Int>(0)
    let firstError = Atomic<Int32>(0)
    let done = DispatchSemaphore(value: 0)

    public init() {}

    func arm(_ count: Int) {
        firstError.store(0, ordering: .relaxed)
        remaining.store(count, ordering: .releasing)
    }

    func complete(error: Int32) {
        if error != 0 { _ = firstError.compareExchange(expected: 0, desired: error, ordering: .relaxed) }
        if remaining.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { done.signal() }
    }

    /// Blocks until every sub-request completed; returns 0 or the first errno. Another thread's executor usually
    /// finishes a queued piece within microseconds, so the waiter spins briefly before it sleeps: a futex sleep and
    /// wake-up cost more than the wait. The semaphore is still consumed, so its count stays balanced.
    func wait() -> Int32 {
        var spins = 0
        while remaining.load(ordering: .acquiring) != 0 && spins < CompletionGroup.spinLimit {
            spins += 1
            // On 2 cores the executor may want this very core: let it run now and then.
            if spins & 63 == 0 { sched_yield() }
        }
        done.wait()
        return firstError.load(ordering: .acquiring)
    }

    static let spinLimit = 2000  // measured: +8-10% 4k random reads at QD16 over no spinning
}

/// One piece of a host request that lies in a single stripe: what the owning director executes.
public final class SubRequest: @unchecked Sendable {
    public var kind: RequestKind = .read
    public var lun = LUNRef(lunID: 0, startStripe: 0, sizeBytes: 0)
    public var offsetBytes: UInt64 = 0
    public var count = 0
    public var data: UnsafeMutableRawPointer? = nil
    /// The drive of an attachMember request.
    public var drive: Drive? = nil
    /// What a scrub request found (a ScrubOutcome).
    public var outcome: ScrubOutcome = .consistent
    public unowned(unsafe) var group: CompletionGroup
    init(group: CompletionGroup) { self.group = group }
}

public final class Director: @unchecked Sendable {
    public let id: DirectorID
    public let cache: TrackCache
    public let backEnd: RAIDBackEnd
    public let memory: MemoryServices
    public let counters: CacheCounters
    public let marks: BackEndMarks
    private let stateRaw = Atomic<UInt8>(DirectorState.online.rawValue)
    public let requestsServed = Atomic<UInt64>(0)

    // Front-end queue: a bounded ring guarded by this director's own condition (not a global lock).
    private let queueCondition = NSCondition()
    private var queue: [SubRequest?]
    private var queueHead = 0
    private var queueCount = 0
    private var batch: [SubRequest?]
    /// Whether some thread is executing for this director now (guarded by queueCondition).
    private var executorActive = false
    /// Front-end threads blocked on a full queue (guarded by queueCondition).
    private var producersWaiting = 0
    /// Destage starts when this many slots are write-pending, and runs whenever the director is idle.
    private let destageHighWater: Int

    public var state: DirectorState { DirectorState(rawValue: stateRaw.load(ordering: .acquiring))! }

    public func transition(to next: DirectorState) {
        let current = state
        let legal = (current == .online && next == .stopping) || (current == .stopping && next == .stopped)
        precondition(legal, "director \(id): illegal \(current) -> \(next)")
        stateRaw.store(next.rawValue, ordering: .releasing)
    }

    public init(
        id: DirectorID, cacheSlots: Int, queueCapacity: Int, backEnd: RAIDBackEnd, memory: MemoryServices,
        counters: CacheCounters, marks: BackEndMarks
    ) {
        self.id = id
        self.backEnd = backEnd
        self.memory = memory
        self.counters = counters
        self.marks = marks
        self.cache = TrackCache(slotCount: cacheSlots, store: backEnd, memory: memory, counters: counters)
        self.queue = Array(repeating: nil, count: queueCapacity)
        self.batch = Array(repeating: nil, count: 64)
        self.destageHighWater = max(1, cacheSlots / 2)
    }

    /// Called by a front-end thread: hands `request` to this director. The director's work runs on one thread at a
    /// time, its executor. When no thread is executing for the director, the caller becomes the executor and runs
    /// the queue itself (no thread hand-off at low load); otherwise the request waits in the front-end queue for the
    /// running executor. Blocks while the queue is full (backpressure).
    public func submit(_ request: SubRequest) {
        queueCondition.lock()
        while queueCount == queue.count {
            producersWaiting += 1
            queueCondition.wait()
            producersWaiting -= 1
        }
        queue[(queueHead + queueCount) % queue.count] = request
        queueCount += 1
        if executorActive {
            queueCondition.unlock()
            return
        }
        executorActive = true
        queueCondition.unlock()
        drain(batchesMax: 4)
    }

    /// Runs queued requests as the executor (the caller holds the role), at most `batchesMax` batches, then gives
    /// the role up; what is left is the director thread's to run.
    private func drain(batchesMax: Int) {
        var batches = 0
        while true {
            queueCondition.lock()
            if queueCount == 0 || batches == batchesMax {
                executorActive = false
                // Wake the director thread: leftover requests, blocked producers, or a pending stop.
                if queueCount > 0 || state != .online { queueCondition.broadcast() }
                queueCondition.unlock()
                return
            }
            var taken = 0
            while queueCount > 0 && taken < batch.count {
                batch[taken] = queue[queueHead]
                queue[queueHead] = nil
                queueHead = (queueHead + 1) % queue.count
                queueCount -= 1
                taken += 1
            }
            // Wake only when someone waits for room: a wake-up per request costs more than the request.
            if producersWaiting > 0 { queueCondition.broadcast() }
            queueCondition.unlock()
            for i in 0..<taken {
                let request = batch[i]!
                batch[i] = nil
                execute(request)
            }
            // A few stripes a pass (one journal batch), so host requests wait little behind destage.
            if cache.writePendingSlots > destageHighWater { cache.destage(stripeBudget: 8) }
            batches += 1
        }
    }

    /// The director's thread body: runs what front-end executors left, and destages when the director is idle.
    public func run() {
        queueCondition.lock()
        while true {
            if queueCount > 0 && !executorActive {
                executorActive = true
                queueCondition.unlock()
                drain(batchesMax: Int.max)
                queueCondition.lock()
                continue
            }
            if queueCount == 0 && !executorActive && state != .online {
                transition(to: .stopped)
                queueCondition.unlock()
                return
            }
            if queueCount == 0 && !executorActive && cache.writePendingSlots > 0 {
                // Idle with write-pending data: give new requests 20 ms to arrive, then destage a little.
                if !queueCondition.wait(until: Date(timeIntervalSinceNow: 0.02)) && queueCount == 0 && !executorActive {
                    executorActive = true
                    queueCondition.unlock()
                    cache.destage(stripeBudget: 16)
                    drain(batchesMax: Int.max)
                    queueCondition.lock()
                }
                continue
            }
            queueCondition.wait(until: Date(timeIntervalSinceNow: 0.1))
        }
    }

    /// Asks the thread to finish: it drains its queue, then returns from `run()`.
    public func stop() {
        queueCondition.lock()
        if state == .online { transition(to: .stopping) }
        queueCondition.broadcast()
        queueCondition.unlock()
    }

    private func execute(_ request: SubRequest) {
        var error: Int32 = 0
        switch request.kind {
        case .read:
            if !cache.read(lun: request.lun, offsetBytes: request.offsetBytes, count: request.count, into: request.data!) { error = EIO }
        case .write where cache.canWriteThrough(offsetBytes: request.offsetBytes, count: request.count, from: request.data):
            if !cache.writeThrough(lun: request.lun, offsetBytes: request.offsetBytes, from: request.data!) { error = EIO }
        case .write:
            if !cache.write(lun: request.lun, offsetBytes: request.offsetBytes, count: request.count, from: request.data!) { error = EIO }
        case .zero:
            if !cache.write(lun: request.lun, offsetBytes: request.offsetBytes, count: request.count, from: nil) { error = EIO }
        case .destage:
            let lunID: UInt32? = request.lun.lunID == 0 ? nil : request.lun.lunID
            if !cache.destageAll(lunID: lunID) { error = EIO }
        case .flushDrives:
            if !backEnd.flush() { error = EIO }
        case .discard:
            cache.discard(lunID: request.lun.lunID)
            // The LUN's stripes are about to be zeroed behind the journal's back: records of them must never be
            // replayed, so the epoch ends here (everything is flushed first).
            if !backEnd.advanceEpoch() { error = EIO }
        case .rebuild:
            if !backEnd.rebuild(stripe: request.offsetBytes, member: request.count) { error = EIO }
        case .attachMember:
            backEnd.attach(member: request.count, drive: request.drive!)
        case .endEpoch:
            if !backEnd.advanceEpoch() { error = EIO }
        case .clearChecksums:
            // After every director discarded the LUN (nothing of it is written any more): its stripes are about to
            // read as zeroes, with no checksum until written again.
            backEnd.clearChecksums(firstStripe: request.lun.startStripe, stripeCount: backEnd.geometry.stripesFor(sizeBytes: request.lun.sizeBytes))
            if !backEnd.advanceEpoch() { error = EIO }
        case .scrub:
            request.outcome = backEnd.scrub(stripe: request.offsetBytes, repair: request.count == 1)
            // A rewritten data strip: what the cache read of it before is stale.
            if request.outcome == .repairedData && request.lun.sizeBytes != 0 {
                cache.forgetClean(lunID: request.lun.lunID, lunStripe: request.offsetBytes - request.lun.startStripe)
            }
        }
        requestsServed.add(1, ordering: .relaxed)
        request.group.complete(error: error)
    }
}
