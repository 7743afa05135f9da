// Directors: an engine is a pair of directors (1a, 1b) in a failover relationship; an array has one or more engines.
// Each director owns a portion of global memory (its TrackCache), a back-end adapter (its RAIDBackEnd with its own
// io_uring), a front-end queue (a lock-free ring on the virtual switch) and a channel adapter. Every (LUN, stripe) has
// one acting director at a time (Failover.swift), and a director's work runs on one executor at a time, the holder of
// its executor role: the front-end thread that finds the director idle runs the queue itself (no hand-off), else the
// running executor or the director's own thread does. So a director's cache portion and its stripes' parity need no
// lock at all.
//
// Director states (transition(to:) asserts the edge):
//   online -> stopping -> stopped      (unmount)
//   online -> failed -> online         (`vsa director fail` / `restore`: Engines.reconfigure, see Failover.swift)
//   failed -> stopping -> stopped      (unmount with a director failed)
// A failed director is fenced: its thread does no work for it, its cache portion was dropped, and a request that still reaches
// it is bounced back to the front end, which sends it to the director now acting for its stripes.
import ArrayModel
import BackEnd
import Drives
import Foundation
import GlobalMemory
import MemoryServices
import Pool
import Synchronization

public enum DirectorState: UInt8, Sendable, CustomStringConvertible {
    case online = 0, stopping = 1, stopped = 2, failed = 3
    public var description: String {
        switch self {
        case .online: return "online"
        case .stopping: return "stopping"
        case .stopped: return "stopped"
        case .failed: return "failed"
        }
    }
}

/// Bytes [offsetBytes, offsetBytes + count) of a LUN (offsets from the LUN's start), all inside one stripe.
public struct LUNRange: Sendable {
    public var lun: LUNRef
    public var offsetBytes: UInt64
    public var count: Int
}

/// Where an array stripe lies when a LUN holds it: the LUN's id and first array stripe.
public struct StripeHolder: Sendable, Equatable {
    public var lunID: UInt32
    public var startStripe: UInt64
    /// A pool stripe's home (a checkpoint slot's, or the owner of its segment): stripe work on it runs on the
    /// director acting for that home, the one thread that writes it.
    public var poolHome: Int?
    public init(lunID: UInt32, startStripe: UInt64) {
        self.lunID = lunID
        self.startStripe = startStripe
    }
    public init(poolHome: Int) {
        lunID = 0
        startStripe = 0
        self.poolHome = poolHome
    }
}

/// What a request asks of the director that runs it, each kind with its own operands: a field cannot mean one thing
/// for one kind and another for the next. Payloads are stored inline in the preallocated SubRequest (no allocation).
public enum Work {
    /// Host I/O on one stripe's part of a LUN, straight into or out of the host's buffer.
    case read(LUNRange, into: UnsafeMutableRawPointer)
    case write(LUNRange, from: UnsafeMutableRawPointer)
    case zero(LUNRange)
    /// Destage every write-pending slot of one LUN (nil: of every LUN).
    case destage(lunID: UInt32?)
    /// Flush the drives (once per host flush, after every director destaged).
    case flushDrives
    /// Forget the LUN's slots (the LUN is being deleted).
    case discard(lunID: UInt32)
    /// Rebuild member `member`'s strip of array stripe `stripe` (run by the stripe's owner).
    case rebuild(stripe: UInt64, member: Int)
    /// Put `drive` in member position `member` of this director's back-end adapter.
    case attachMember(member: Int, drive: Drive)
    /// Check or repair array stripe `stripe` (held by `holder`, if a LUN holds it); the outcome goes in `outcome`.
    case scrub(stripe: UInt64, repair: Bool, holder: StripeHolder?)
    /// End the back end's journal epoch: checksum pages written back, drives flushed (a clean stop).
    case endEpoch
    /// Set the checksums of a deleted LUN's stripes to none (one director, after every director's discard).
    case clearChecksums(LUNRef)
    /// Give the cache portion its port to the pool (the array's first thin LUN, or the mount).
    case setPool(PoolPort)
    /// Work on one pool home, run by the director acting for it.
    case pool(PoolWork)

    /// Work routed by home: it runs on the director acting for the home (a stripe's, or a pool home's), whoever that
    /// is when it runs; one that reaches another director is bounced and sent again. A pool home's state is touched
    /// by one thread only because of this: a request queued on a director that a failover or a restore has since
    /// relieved of the home never runs there.
    var isRoutedByHome: Bool {
        switch self {
        case .read, .write, .zero, .rebuild, .scrub, .pool: return true
        case .destage, .flushDrives, .discard, .attachMember, .endEpoch, .clearChecksums, .setPool: return false
        }
    }
}

/// Control work on a pool home (docs/POOL.md), run on the director acting for the home.
public enum PoolWork {
    /// A new thin LUN's share of the home: an empty version, made durable.
    case createVersion(home: Int, lunID: UInt32, blocks: UInt64)
    /// A version gone (a deleted thin LUN, a snapshot, a failed create): its own blocks freed, made durable.
    case deleteVersion(home: Int, lunID: UInt32)
    /// Everything the home holds in memory made durable (a clean stop: the next mount replays nothing).
    case checkpoint(home: Int)
    /// The home's counters, copied where the control plane can read them.
    case stats(home: Int, into: PoolHomeStats)
    /// A thin LUN's whole stripes zeroed: the director's cached tracks of them dropped, the home's share unmapped and
    /// committed (durable before the host hears of it).
    case unmapStripes(home: Int, lun: LUNRef, stripes: Range<UInt64>)
    /// A change of the home's versions (a snapshot, link, restore or delete), after the director's pages are
    /// committed; false if it failed.
    case change(home: Int, body: (PoolHome) -> Bool)
    /// One step of the home's cleaner: up to `stripes` stripes of its victim, a victim needing `minimumDead` dead
    /// blocks; `step` says whether there was one.
    case clean(home: Int, stripes: Int, minimumDead: Int, step: CleanStep)
}

/// What a cleaner step found (written on the director, read after the request completes).
public final class CleanStep: @unchecked Sendable {
    /// No victim in progress, and no segment worth cleaning.
    public var idle = false
    public init() {}
}

/// Where the seeded simulation's scheduler (Tests/UnitTests/SimulationScheduler.swift) takes over a thread that would
/// wait for another: it runs the simulation's tasks one at a time on real threads, and a thread that cannot go on
/// hands the turn to another task instead of spinning or sleeping. Nil in the daemon (one load and a branch per wait).
public enum ScheduleHooks {
    /// Called by a thread about to wait until `ready()` holds (a completion group, an executor role, room in a
    /// ring); returns once it does.
    nonisolated(unsafe) public static var block: ((() -> Bool) -> Void)? = nil
}

/// Completion of one host I/O that may span several directors: the last sub-request to finish wakes the waiter.
public final class CompletionGroup: @unchecked Sendable {
    let remaining = Atomic<Int>(0)
    let firstError = Atomic<Int32>(0)
    /// Pieces that reached a director no longer acting for them (failover moved their stripes meanwhile).
    let bounced = Atomic<Int>(0)
    let done = DispatchSemaphore(value: 0)

    public init() {}

    func arm(_ count: Int) {
        firstError.store(0, ordering: .relaxed)
        bounced.store(0, ordering: .relaxed)
        remaining.store(count, ordering: .releasing)
    }

    /// A piece went back to the front end to be sent again (it counts as finished for this round).
    func bounce() {
        bounced.add(1, ordering: .relaxed)
        if remaining.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { done.signal() }
    }

    func complete(error: Int32) {
        if error != 0 { _ = firstError.compareExchange(expected: 0, desired: error, ordering: .relaxed) }
        if remaining.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { done.signal() }
    }

    /// Blocks until every sub-request completed; returns 0 or the first errno. Another thread's executor usually
    /// finishes a queued piece within microseconds, so the waiter spins briefly before it sleeps: a futex sleep and
    /// wake-up cost more than the wait. The semaphore is still consumed, so its count stays balanced.
    func wait() -> Int32 {
        if let block = ScheduleHooks.block { block { self.remaining.load(ordering: .acquiring) == 0 } }
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
    public var work: Work = .flushDrives
    /// What a scrub request found (a ScrubOutcome).
    public var outcome: ScrubOutcome = .consistent
    /// Whose work this is: the home director of its stripe (stripe work) or the director it was sent to (control).
    public var home = 0
    /// Set when a director bounced it (it is not acting for `home`): the front end sends it again.
    public var bounced = false
    public unowned(unsafe) var group: CompletionGroup
    init(group: CompletionGroup) { self.group = group }
}

/// A director's channel adapter: its port on the virtual switch. The send side is run by the threads working for
/// this director's front end (they carry each piece to the director acting for it); the receive side is the
/// director's MessageRing, drained by whoever holds its executor role. There are no dedicated send or receive
/// threads: on two cores a thread hand-off per piece costs more than the piece (the executor design measured that).
/// Counters are relaxed atomics, read by `vsa status`.
public final class ChannelAdapter: Sendable {
    /// Puts `piece` on `target`'s ring over the switch (a message: the request and its data descriptor; the data
    /// moves later by the target's memory services, straight between the host buffer and its slots).
    @inline(__always)
    func send(_ piece: SubRequest, to target: Director, handOff: Bool = false) {
        messagesSent.add(1, ordering: .relaxed)
        target.channel.messagesReceived.add(1, ordering: .relaxed)
        target.submit(piece, handOff: handOff)
    }

    /// Pieces this director's front-end adapter received from the host and sent over the virtual switch to another.
    public let messagesSent = Atomic<UInt64>(0)
    /// Pieces other directors' front ends sent here.
    public let messagesReceived = Atomic<UInt64>(0)
    /// Requests bounced back because this director no longer acts for their stripes (failover moved them).
    public let bounced = Atomic<UInt64>(0)
    /// Writes destaged before acknowledging because the partner was out (nothing to mirror to).
    public let unmirroredWrites = Atomic<UInt64>(0)
    /// Takeovers this director ran for a failed partner, and the write-pending bytes it replayed from the mirror.
    public let takeovers = Atomic<UInt64>(0)
    public let replayedBytes = Atomic<UInt64>(0)
    public init() {}
}

public final class Director: @unchecked Sendable {
    public let id: DirectorID
    public let cache: TrackCache
    public let backEnd: RAIDBackEnd
    public let memory: MemoryServices
    public let counters: CacheCounters
    public let marks: BackEndMarks
    public let channel = ChannelAdapter()
    /// The other director of this engine (1a <-> 1b); set once by Engines before any I/O.
    public internal(set) unowned(unsafe) var partner: Director! = nil
    /// This director's share of global memory that holds the partner's mirrored write-pending data.
    public let mirrorForPartner: WritePendingMirror
    /// Who acts for which home now; set once by Engines before any I/O.
    unowned(unsafe) var routing: RoutingTable! = nil
    /// The partner is out: each write is destaged before it is acknowledged (changed only with the role held).
    public var partnerOut: Bool { partnerOutFlag.load(ordering: .relaxed) }
    let partnerOutFlag = Atomic<Bool>(false)
    private let stateRaw = Atomic<UInt8>(DirectorState.online.rawValue)
    public let requestsServed = Atomic<UInt64>(0)
    /// Faults injected into this director (`vsa inject`; DirectorFaults.swift); none normally.
    public let faults = DirectorFaults()
    /// A batch's random read misses are fetched together before it runs (`TrackCache.prefetchMisses`): set for
    /// arrays with a remote drive, where a director would otherwise wait a round trip per miss.
    public var batchesMisses = false

    // Channel adapter, receive side: this director's front-end queue is a lock-free ring on the virtual switch.
    private let ring: MessageRing
    private var batch: [SubRequest?]
    /// Whether some thread holds the executor role (runs this director's work) now. Taken with a compare-exchange,
    /// given up with a store; whoever gives it up looks at the ring once more (see `drain`).
    private let executorActive = Atomic<Bool>(false)
    /// Wakes the director's thread: work left behind, a stop, a failover that changed something.
    private let wake = DispatchSemaphore(value: 0)
    /// Failover threads waiting for the role: an executor gives it up after its current batch.
    private let roleWanted = Atomic<Int>(0)
    /// Requests in the front-end queue now.
    public var queueDepth: Int { ring.depth }
    /// Whether some thread runs this director's work now.
    public var isExecuting: Bool { executorActive.load(ordering: .relaxed) }
    /// Destage starts when this many slots are write-pending, and runs whenever the director is idle.
    private let destageHighWater: Int
    /// How long the director waits, idle with write-pending data, before it destages some (VSA_IDLE_DESTAGE_MS;
    /// tests stretch it to keep data write-pending).
    public var idleDestageDelay: TimeInterval = 0.02

    public var state: DirectorState { DirectorState(rawValue: stateRaw.load(ordering: .acquiring))! }

    public func transition(to next: DirectorState) {
        let current = state
        let legal =
            (current == .online && (next == .stopping || next == .failed)) || (current == .failed && (next == .online || next == .stopping))
            || (current == .stopping && next == .stopped)
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
        // The partner's portion has as many slots as this one (every director gets the same share).
        self.mirrorForPartner = WritePendingMirror(slotCount: cacheSlots, trackBytes: backEnd.geometry.stripUnitBytes)
        self.ring = MessageRing(capacity: queueCapacity)
        self.batch = Array(repeating: nil, count: 64)
        self.destageHighWater = max(1, cacheSlots / 2)
    }

    /// Called by a front-end thread (the send side of its channel adapter): hands `request` to this director. The
    /// director's work runs on one thread at a time, the holder of its executor role. When nobody holds it, the
    /// caller takes it and runs the queue itself (no thread hand-off at low load); otherwise the request waits in
    /// the ring for the holder. Spins, then sleeps briefly, while the ring is full (backpressure). A failed
    /// director bounces the request.
    /// `handOff`: the request is left on the ring for the director's thread (woken for it), so the caller can go on
    /// to its other pieces (Engines.handOffPieces).
    public func submit(_ request: SubRequest, handOff: Bool = false) {
        if state == .failed {
            bounce(request, roleHeld: false)
            return
        }
        var spins = 0
        while !ring.send(request) {
            // Full: run some of it if nobody does, else let the holder run.
            if tryAcquireRole() {
                drain(batchesMax: 1)
                continue
            }
            if let block = ScheduleHooks.block {
                block { !self.executorActive.load(ordering: .sequentiallyConsistent) || !self.ring.isFull }
                continue
            }
            spins += 1
            if spins < 64 { sched_yield() } else { usleep(50) }
        }
        if handOff {
            // Whoever holds the role drains the ring to the end, and the thread takes the role when nobody does.
            wake.signal()
            return
        }
        // A director fenced meanwhile still drains its ring once more: the request comes back bounced. Over a network
        // one batch only: every further batch is a round trip the caller's own host request would wait through before
        // its answer goes back (4k random reads at QD16 with 1 ms per read: 7,700 IOPS with 4, 9,300 with 1).
        if tryAcquireRole() { drain(batchesMax: batchesMisses ? 1 : 4) }
    }

    @inline(__always)
    private func tryAcquireRole() -> Bool {
        executorActive.compareExchange(expected: false, desired: true, ordering: .sequentiallyConsistent).exchanged
    }

    /// Gives the role up. A message sent while the role was held, by a sender that then failed to take the role,
    /// must not be stranded: so after the store, look at the ring again, and take the role back if it holds work.
    /// Returns true when the caller holds the role again.
    @inline(__always)
    private func releaseRoleAndRecheck() -> Bool {
        executorActive.store(false, ordering: .sequentiallyConsistent)
        return ring.hasMessage && tryAcquireRole()
    }

    /// Runs queued requests as the executor (the caller holds the role), at most `batchesMax` batches, then gives
    /// the role up; what is left is the director thread's to run.
    private func drain(batchesMax: Int) {
        var batches = 0
        while true {
            var taken = 0
            while taken < batch.count, let request = ring.receive() {
                batch[taken] = request
                taken += 1
            }
            if taken == 0 {
                if releaseRoleAndRecheck() { continue }
                return
            }
            let fenced = state == .failed
            if batchesMisses && taken >= 2 && !fenced && !faults.isArmed { prefetchMisses(taken) }
            for i in 0..<taken {
                let request = batch[i]!
                batch[i] = nil
                if fenced { bounce(request, roleHeld: true) } else { execute(request) }
            }
            // A few stripes a pass (one journal batch), so host requests wait little behind destage.
            if !fenced && cache.writePendingSlots > destageHighWater { cache.destage(stripeBudget: 8) }
            batches += 1
            if batches == batchesMax || roleWanted.load(ordering: .relaxed) > 0 {
                let more = ring.hasMessage
                executorActive.store(false, ordering: .sequentiallyConsistent)
                // Work left: the director's thread takes it (the front-end thread has its own request to wait for).
                if more || ring.hasMessage { wake.signal() }
                return
            }
        }
    }

    /// The director's thread body: runs what front-end executors left, destages when the director is idle, and
    /// bounces what reaches it while it is failed.
    public func run() {
        var idleSince = ring.sent
        while true {
            if runQueued() { continue }
            let current = state
            if current == .stopping {
                if tryAcquireRole() {
                    if ring.hasMessage {
                        drain(batchesMax: Int.max)
                        continue
                    }
                    transition(to: .stopped)
                    // A sender that published just now and lost the role to this thread: its request still runs.
                    if releaseRoleAndRecheck() { drain(batchesMax: Int.max) }
                    return
                }
                _ = wake.wait(timeout: .now() + .milliseconds(1))
                continue
            }
            if current == .online && counters.dirtySlots.load(ordering: .relaxed) > 0 {
                // Idle with write-pending data: when no request arrived for a while, destage a little.
                if wake.wait(timeout: .now() + idleDestageDelay) == .timedOut && ring.sent == idleSince { _ = destageWhileIdle() }
                idleSince = ring.sent
                continue
            }
            _ = wake.wait(timeout: .now() + .milliseconds(100))
            idleSince = ring.sent
        }
    }

    /// Asks the thread to finish: it drains its queue, then returns from `run()`.
    public func stop() {
        if state == .online || state == .failed { transition(to: .stopping) }
        wake.signal()
    }

    /// The director thread's turn at its queue: runs what front-end executors left, if nobody holds the role.
    /// Returns whether it ran anything. (The simulation's scheduler calls it where the thread would run.)
    public func runQueued() -> Bool {
        guard ring.hasMessage && tryAcquireRole() else { return false }
        drain(batchesMax: Int.max)
        return true
    }

    /// The director thread's idle destage: a pass of a few stripes when online, write-pending and nobody holds the
    /// role, then whatever queued meanwhile. Returns whether it ran.
    public func destageWhileIdle() -> Bool {
        guard state == .online && counters.dirtySlots.load(ordering: .relaxed) > 0 && tryAcquireRole() else { return false }
        cache.destage(stripeBudget: 16)
        drain(batchesMax: Int.max)
        return true
    }

    /// VSA_DIRECT_ROUTING: runs `request` on the calling thread, holding the executor role meanwhile (no queue).
    func runInline(_ request: SubRequest) {
        acquireRole()
        execute(request)
        if cache.writePendingSlots > destageHighWater { cache.destage(stripeBudget: 8) }
        releaseRole()
    }

    // MARK: Failover (Engines.reconfigure)

    /// Takes the executor role for the caller: waits until no thread executes for this director, then keeps every
    /// other thread from doing so until `releaseRole`. Requests queue up meanwhile. An executor never waits for
    /// another director, so taking several roles one after another cannot deadlock.
    func acquireRole() {
        let acquired = acquireRole(timeoutSeconds: 0)
        assert(acquired)
    }

    /// `acquireRole` that gives up after `timeoutSeconds` (0: never) and returns false: a director whose executor
    /// does not finish its batch in that time (stuck behind a drive past its deadline, say) must not hold a failover
    /// or an unmount forever.
    func acquireRole(timeoutSeconds: Double) -> Bool {
        roleWanted.add(1, ordering: .relaxed)
        defer { roleWanted.subtract(1, ordering: .relaxed) }
        let start = DispatchTime.now().uptimeNanoseconds
        var spins = 0
        while !tryAcquireRole() {
            if let block = ScheduleHooks.block {
                block { !self.executorActive.load(ordering: .sequentiallyConsistent) }
                continue
            }
            spins += 1
            if spins < 64 { sched_yield() } else { usleep(20) }
            if timeoutSeconds > 0 && spins & 1023 == 0 && Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 > timeoutSeconds { return false }
        }
        return true
    }

    /// Gives the role back; the director's thread runs what queued up meanwhile.
    func releaseRole() {
        executorActive.store(false, ordering: .sequentiallyConsistent)
        if ring.hasMessage { wake.signal() }
    }

    /// Fences this director (the caller holds its role): it takes no more work, and what waits in its queue goes
    /// back to the front end, which sends it to the director now acting (the routing table was changed first).
    /// What a sender puts in the ring later is bounced by whoever drains it next.
    func fence() {
        transition(to: .failed)
        while let request = ring.receive() { bounce(request, roleHeld: true) }
    }

    /// Brings a failed director back (the caller holds its role; its cache portion is empty).
    func revive() { transition(to: .online) }

    /// A request this director will not run: it failed, or failover moved the request's stripes elsewhere.
    private func bounce(_ request: SubRequest, roleHeld: Bool) {
        channel.bounced.add(1, ordering: .relaxed)
        switch request.work {
        case .endEpoch:
            // The epoch ended when the director was fenced, and it has written nothing since.
            request.group.complete(error: 0)
        case .attachMember(let member, let drive):
            // Always this back end's (the drive must be in it when the director is back), whatever the state now.
            if !roleHeld { acquireRole() }
            backEnd.attach(member: member, drive: drive)
            if !roleHeld { releaseRole() }
            request.group.complete(error: 0)
        default:
            request.bounced = true
            request.group.bounce()
        }
    }

    /// A host write (nil source: zeroes) into the cache, mirrored; with the partner out, destaged before it returns.
    @inline(__always)
    private func write(_ range: LUNRange, from source: UnsafeRawPointer?) -> Int32 {
        let rc = cache.writeBack(lun: range.lun, offsetBytes: range.offsetBytes, count: range.count, from: source)
        if rc != 0 { return rc }
        if partnerOut {
            // Nowhere to mirror it: the write is on the drives before the host hears of it.
            channel.unmirroredWrites.add(1, ordering: .relaxed)
            if !cache.destageStripe(lunID: range.lun.lunID, offsetBytes: range.offsetBytes) { return EIO }
        }
        return 0
    }

    /// The batch's reads that would miss, fetched together (each then runs in turn and finds its pages). Only reads
    /// this director serves (one it would bounce is left alone).
    private func prefetchMisses(_ taken: Int) {
        cache.prefetchMisses(count: taken) { i in
            guard let request = batch[i], case .read(let range, _) = request.work, routing.acting(request.home) === self else { return nil }
            return (range.lun, range.offsetBytes, range.count)
        }
    }

    private func execute(_ request: SubRequest) {
        if faults.isArmed { faults.hold { self.state == .online } }
        if request.work.isRoutedByHome && routing.acting(request.home) !== self {
            bounce(request, roleHeld: true)
            return
        }
        var error: Int32 = 0
        switch request.work {
        case .read(let range, let target):
            if !cache.read(lun: range.lun, offsetBytes: range.offsetBytes, count: range.count, into: target) { error = EIO }
        case .write(let range, let source) where cache.canWriteThrough(offsetBytes: range.offsetBytes, count: range.count, from: source):
            error = cache.writeThrough(lun: range.lun, offsetBytes: range.offsetBytes, from: source)
            // A thin LUN's pool had the space but no segment at hand (its cleaners behind): the stripe waits in the
            // cache as write-pending data, as any smaller write would, rather than failing a write it has room for.
            if error == EAGAIN {
                cache.counters.writeThroughDeferred.add(1, ordering: .relaxed)
                error = write(range, from: source)
            }
        case .write(let range, let source):
            error = write(range, from: source)
        case .zero(let range):
            error = write(range, from: nil)
        case .destage(let lunID):
            if !cache.destageAll(lunID: lunID) { error = EIO }
        case .flushDrives:
            if !backEnd.flush() { error = EIO }
        case .discard(let lunID):
            cache.discard(lunID: lunID)
            // The LUN's stripes are about to be zeroed behind the journal's back: records of them must never be
            // replayed, so the epoch ends here (everything is flushed first).
            if !backEnd.advanceEpoch() { error = EIO }
        case .rebuild(let stripe, let member):
            if !backEnd.rebuild(stripe: stripe, member: member) { error = EIO }
        case .attachMember(let member, let drive):
            backEnd.attach(member: member, drive: drive)
        case .endEpoch:
            if !backEnd.advanceEpoch() { error = EIO }
        case .clearChecksums(let lun):
            // After every director discarded the LUN (nothing of it is written any more): its stripes are about to
            // read as zeroes, with no checksum until written again. A thin LUN has no stripes of its own.
            if !lun.thin {
                backEnd.clearChecksums(firstStripe: lun.startStripe, stripeCount: backEnd.geometry.stripesFor(sizeBytes: lun.sizeBytes))
            }
            if !backEnd.advanceEpoch() { error = EIO }
        case .setPool(let port):
            cache.pool = port
        case .pool(let work):
            if !runPoolWork(work) { error = EIO }
        case .scrub(let stripe, let repair, let holder):
            request.outcome = backEnd.scrub(stripe: stripe, repair: repair)
            // A rewritten data strip: what the cache read of it before is stale.
            if request.outcome == .repairedData, let holder, holder.poolHome == nil {
                cache.forgetClean(lunID: holder.lunID, lunStripe: stripe - holder.startStripe)
            }
        }
        requestsServed.add(1, ordering: .relaxed)
        request.group.complete(error: error)
    }
}

extension Director {
    /// Pool control work on a home this director acts for (Engines.poolEach picks the director).
    func runPoolWork(_ work: PoolWork) -> Bool {
        guard let pool = cache.pool else { return false }
        switch work {
        case .createVersion(let home, let lunID, let blocks):
            return pool.withHome(home) { h in
                if h.versions[lunID] == nil {
                    guard h.hasVersionRoom else { return false }
                    h.createVersion(lunID, blocks: blocks)
                }
                return h.checkpoint()
            }
        case .deleteVersion(let home, let lunID):
            return pool.withHome(home) { h in h.versions[lunID] == nil || h.deleteVersion(lunID) }
        case .checkpoint(let home):
            return pool.commit() && pool.withHome(home) { $0.checkpoint() }
        case .stats(let home, let stats):
            pool.withHome(home) { stats.capture($0) }
            return true
        case .unmapStripes(let home, let lun, let stripes):
            cache.discard(lunID: lun.lunID, stripes: stripes)
            return pool.unmapStripes(lunID: lun.lunID, stripes: stripes, home: home)
        case .change(let home, let body):
            return pool.commit() && pool.withHome(home, body)
        case .clean(let home, let stripes, let minimumDead, let step):
            return pool.commit()
                && pool.withHome(home) { h in
                    step.idle = !h.startVictim(minimumDead: minimumDead)
                    // Idle: what earlier victims emptied still comes back when that pays (a home with no host
                    // writes takes no commits, and so no checkpoint of its own).
                    guard !step.idle else { return !h.releasePays || h.checkpoint() }
                    return h.clean(stripes: stripes, minimumDead: minimumDead) != nil
                }
        }
    }
}
