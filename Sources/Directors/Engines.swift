// Engines: all the array's directors, and the `HostIOPort` the front end talks to. A host I/O is cut at stripe
// boundaries; each piece goes to the front-end queue of the director acting for that (LUN, stripe)'s home; the
// calling thread waits until the last piece completes. Homes spread a LUN's consecutive stripes round the
// directors, so sequential I/O keeps every director busy.
//
// Front-end adapters: each front-end thread belongs to one director's front end (assigned round-robin the first
// time it issues I/O; while that director is failed its partner's front end takes the thread's work). A piece whose
// stripe another director acts for is a message over the virtual switch: the sending director counts it sent, the
// acting director received; its data moves by the acting director's memory services (the DMA into or out of its
// slots), never by a copy here.
//
// Each front-end thread has its own RequestContext (completion group and sub-request records), created the first
// time that thread issues I/O and reused for its lifetime: no allocation and no shared lock per I/O.
import ArrayModel
import BackEnd
import Drives
import Foundation
import GlobalMemory
import MemoryServices
import Pool
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The port the front end uses. Thread: any front-end thread; calls block until the array answered.
/// Preconditions: the range lies inside the LUN (the front end checks sizes). Returns 0 or an errno.
public protocol HostIOPort: AnyObject, Sendable {
    func read(lun: LUNRef, offsetBytes: UInt64, count: Int, into target: UnsafeMutableRawPointer) -> Int32
    func write(lun: LUNRef, offsetBytes: UInt64, count: Int, from source: UnsafeRawPointer) -> Int32
    func zero(lun: LUNRef, offsetBytes: UInt64, count: UInt64) -> Int32
    /// Destages the LUN's write-pending data (every LUN's for nil) and flushes the drives.
    func flush(lun: LUNRef?) -> Int32
}

final class RequestContext: @unchecked Sendable {
    let group = CompletionGroup()
    let pieces: [SubRequest]
    /// The director whose front-end adapter this thread is.
    let frontEnd: Int
    /// Where the context goes when its thread ends (the next new thread takes it).
    let pool: ContextPool
    init(capacity: Int, frontEnd: Int, pool: ContextPool) {
        self.frontEnd = frontEnd
        self.pool = pool
        var pieces: [SubRequest] = []
        for _ in 0..<capacity { pieces.append(SubRequest(group: group)) }
        self.pieces = pieces
    }
}

/// Request contexts of threads that ended, kept for the next threads (control-socket clients come and go). A context
/// is never deallocated when its thread ends: that would run Swift deinits inside a pthread key destructor, which
/// ThreadSanitizer cannot follow (it kills the process: "thread finished with ignores enabled").
final class ContextPool: @unchecked Sendable {
    private let free = Locked<[UnsafeMutableRawPointer]>([])
    init() { free.withLock { $0.reserveCapacity(1024) } }
    /// A retained context, or nil.
    func take() -> UnsafeMutableRawPointer? { free.withLock { $0.popLast() } }
    /// Keeps a retained context (from a thread's key destructor).
    func give(_ raw: UnsafeMutableRawPointer) { free.withLock { $0.append(raw) } }
    /// Releases every kept context (the engines are going away).
    func drain() {
        let all = free.withLock { list -> [UnsafeMutableRawPointer] in
            defer { list.removeAll() }
            return list
        }
        for raw in all { Unmanaged<RequestContext>.fromOpaque(raw).release() }
    }
}

public final class Engines: HostIOPort, @unchecked Sendable {
    public let directors: [Director]
    public let geometry: ArrayGeometry
    public let engineCount: Int
    private let piecesPerContext = 64
    private var contextKey = pthread_key_t()
    private let contextPool = ContextPool()
    /// Called after every successful flush, before the host hears back: the composition root records failed drives in the
    /// superblocks there, so what an fsync acknowledged never depends on a drive the array has stopped trusting.
    public var afterFlush: (@Sendable () -> Int32)?
    let routing: RoutingTable
    /// Serialises failover changes (`vsa director fail|restore`); never taken on the I/O path.
    let administration = Locked<Void>(())
    /// Whether write-pending data is mirrored in the partner (VSA_UNSAFE_NO_MIRROR=1 turns it off, to measure it).
    public let mirroring: Bool
    /// VSA_DIRECT_ROUTING=1: each piece runs on the calling thread, straight into its home portion and back end
    /// (no front-end queue hand-off, no switch, no mirror). Kept to measure what the director architecture costs.
    public let directRouting: Bool
    private let frontEndCursor = Atomic<Int>(0)
    /// Called after each piece is sent (tests only: the simulation fails or restores a director there, in the middle
    /// of a request). Set before any I/O; nil in the daemon.
    public var afterEachPiece: (() -> Void)?
    /// A request of several pieces hands all but its last to the directors' own threads instead of running each in
    /// turn on the caller's: set at mount for an array with remote drives, where a piece's miss waits a network round
    /// trip and pieces on different directors should wait at the same time. Local drives answer faster than a thread
    /// hand-off, so the caller runs them all there.
    public var handOffPieces = false
    /// Called inside a failover with every executor role held, after the quiesce and again after the new routes are
    /// in place (tests only: the simulation's scheduler may switch threads there). Nil in the daemon.
    public var duringFailover: (() -> Void)?

    public init(directors: [Director], geometry: ArrayGeometry, engineCount: Int, mirroring: Bool = true, directRouting: Bool = false) {
        precondition(directors.count == engineCount * 2, "an engine is two directors")
        self.directors = directors
        self.geometry = geometry
        self.engineCount = engineCount
        self.directRouting = directRouting
        self.mirroring = mirroring && !directRouting
        routing = RoutingTable(directors: directors)
        for director in directors {
            director.partner = directors[director.id.index ^ 1]
            director.routing = routing
        }
        for director in directors where self.mirroring { director.cache.setMirror(director.partner.mirrorForPartner) }
        let rc = pthread_key_create(&contextKey) { raw in
            // The thread ends: its context goes back to the pool, still retained (see ContextPool).
            if let raw { Unmanaged<RequestContext>.fromOpaque(raw).takeUnretainedValue().pool.give(raw) }
        }
        precondition(rc == 0, "pthread_key_create failed")
    }

    deinit {
        // The calling thread's context goes with the key, and so do those of threads that ended.
        if let raw = pthread_getspecific(contextKey) {
            pthread_setspecific(contextKey, nil)
            Unmanaged<RequestContext>.fromOpaque(raw).release()
        }
        pthread_key_delete(contextKey)
        contextPool.drain()
    }

    /// The home director of stripe `lunStripe` (counted from the LUN's start) of `lunID`.
    @inline(__always)
    public func home(lunID: UInt32, lunStripe: UInt64) -> Int { Int((lunStripe &+ UInt64(lunID)) % UInt64(directors.count)) }

    /// The director acting now for stripe `lunStripe` of `lunID` (nil: none can).
    @inline(__always)
    public func owner(lunID: UInt32, lunStripe: UInt64) -> Director? { routing.acting(home(lunID: lunID, lunStripe: lunStripe)) }

    private func context() -> RequestContext {
        if let raw = pthread_getspecific(contextKey) { return Unmanaged<RequestContext>.fromOpaque(raw).takeUnretainedValue() }
        if let raw = contextPool.take() {
            pthread_setspecific(contextKey, raw)
            return Unmanaged<RequestContext>.fromOpaque(raw).takeUnretainedValue()
        }
        let ctx = RequestContext(
            capacity: piecesPerContext, frontEnd: frontEndCursor.add(1, ordering: .relaxed).oldValue % directors.count, pool: contextPool)
        pthread_setspecific(contextKey, Unmanaged.passRetained(ctx).toOpaque())
        return ctx
    }

    /// Cuts [offset, offset+count) at stripe boundaries and runs the pieces on their owners, a batch at a time.
    /// `work` makes each piece's request from its range and where its data starts in the host buffer.
    @inline(__always)
    private func run(lun: LUNRef, offsetBytes: UInt64, count: UInt64, work: (LUNRange, Int) -> Work) -> Int32 {
        let ctx = context()
        let stripeBytes = geometry.stripeDataBytes
        var position = offsetBytes
        let end = offsetBytes + count
        while position < end {
            var n = 0
            var cursor = position
            while cursor < end && n < piecesPerContext {
                let lunStripe = cursor / stripeBytes
                let pieceEnd = min(end, (lunStripe + 1) * stripeBytes)
                let piece = ctx.pieces[n]
                piece.work = work(LUNRange(lun: lun, offsetBytes: cursor, count: Int(pieceEnd - cursor)), Int(cursor - offsetBytes))
                piece.home = home(lunID: lun.lunID, lunStripe: lunStripe)
                n += 1
                cursor = pieceEnd
            }
            let error = directRouting ? runDirect(ctx, n) : send(ctx, n)
            if error != 0 { return error }
            position = cursor
        }
        return 0
    }

    /// Sends pieces 0..<n of `ctx` over the virtual switch and waits: stripe work to the director acting for its
    /// home, control requests to the director they name. Sends again what a director bounced (failover moved it
    /// meanwhile, or the director failed), now to whoever acts for its home. Returns 0 or the first errno.
    private func send(_ ctx: RequestContext, _ n: Int) -> Int32 {
        var frontEnd = routing.acting(ctx.frontEnd)
        ctx.group.arm(n)
        for i in 0..<n {
            let piece = ctx.pieces[i]
            piece.bounced = false
            deliver(
                piece, to: piece.work.isRoutedByHome ? routing.acting(piece.home) : directors[piece.home], from: frontEnd,
                handOff: handOffPieces && i < n - 1)
            afterEachPiece?()
        }
        var error = ctx.group.wait()
        var rounds = 0
        while error == 0 && ctx.group.bounced.load(ordering: .acquiring) > 0 {
            // Bounced again and again: a failover is changing routes; let it run.
            rounds += 1
            if rounds > 1 {
                if rounds < 16 { sched_yield() } else { usleep(100) }
            }
            frontEnd = routing.acting(ctx.frontEnd)
            var again = 0
            for i in 0..<n where ctx.pieces[i].bounced { again += 1 }
            ctx.group.arm(again)
            for i in 0..<n where ctx.pieces[i].bounced {
                let piece = ctx.pieces[i]
                piece.bounced = false
                deliver(piece, to: routing.acting(piece.home), from: frontEnd)
            }
            error = ctx.group.wait()
        }
        return error
    }

    /// One piece to `target`: a local enqueue when that is the front end's own director, else a message over the
    /// switch. No director to take it: EIO.
    @inline(__always)
    private func deliver(_ piece: SubRequest, to target: Director?, from frontEnd: Director?, handOff: Bool = false) {
        guard let target else {
            piece.group.complete(error: EIO)
            return
        }
        if let frontEnd, frontEnd !== target {
            frontEnd.channel.send(piece, to: target, handOff: handOff)
        } else {
            target.submit(piece, handOff: handOff)
        }
    }

    /// VSA_DIRECT_ROUTING: pieces 0..<n run here, one after another, each on its home director's portion (holding
    /// its executor role, so nothing else touches that portion meanwhile).
    private func runDirect(_ ctx: RequestContext, _ n: Int) -> Int32 {
        for i in 0..<n {
            let piece = ctx.pieces[i]
            ctx.group.arm(1)
            directors[piece.home].runInline(piece)
            let error = ctx.group.wait()
            if error != 0 { return error }
        }
        return 0
    }

    public func read(lun: LUNRef, offsetBytes: UInt64, count: Int, into target: UnsafeMutableRawPointer) -> Int32 {
        run(lun: lun, offsetBytes: offsetBytes, count: UInt64(count)) { .read($0, into: target + $1) }
    }

    public func write(lun: LUNRef, offsetBytes: UInt64, count: Int, from source: UnsafeRawPointer) -> Int32 {
        let source = UnsafeMutableRawPointer(mutating: source)
        return run(lun: lun, offsetBytes: offsetBytes, count: UInt64(count)) { .write($0, from: source + $1) }
    }

    public func zero(lun: LUNRef, offsetBytes: UInt64, count: UInt64) -> Int32 {
        let stripeBytes = geometry.stripeDataBytes
        let firstWhole = (offsetBytes + stripeBytes - 1) / stripeBytes
        let endWhole = (offsetBytes + count) / stripeBytes
        guard lun.thin, firstWhole < endWhole else { return run(lun: lun, offsetBytes: offsetBytes, count: count) { range, _ in .zero(range) } }
        // A thin LUN's whole stripes are unmapped in the pool, each home its own run at once (a discard of terabytes,
        // as mkfs and fstrim send, costs what they map, not a write per page); the partial stripes at either end
        // are zeroed through the cache.
        let head = firstWhole * stripeBytes - offsetBytes
        var rc = head == 0 ? 0 : run(lun: lun, offsetBytes: offsetBytes, count: head) { range, _ in .zero(range) }
        if rc == 0 { rc = poolEach { .unmapStripes(home: $0, lun: lun, stripes: firstWhole..<endWhole) } }
        let tail = offsetBytes + count - endWhole * stripeBytes
        if rc == 0 && tail > 0 { rc = run(lun: lun, offsetBytes: endWhole * stripeBytes, count: tail) { range, _ in .zero(range) } }
        return rc
    }

    /// Sends one control request to each director in `targets` for which `needed` holds, and waits for them all.
    private func control(_ work: Work, to targets: ArraySlice<Director>, where needed: (Director) -> Bool = { _ in true }) -> Int32 {
        let ctx = context()
        // Decide once which directors get a request: `needed` may change its mind meanwhile (a host write makes a
        // director dirty), and the group must be armed with exactly what is submitted.
        var chosen: UInt64 = 0
        for (i, director) in targets.enumerated() where needed(director) { chosen |= 1 << UInt64(i) }
        let n = chosen.nonzeroBitCount
        if n == 0 { return 0 }
        for i in 0..<n { ctx.pieces[i].work = work }
        var next = 0
        for (i, director) in targets.enumerated() where chosen & (1 << UInt64(i)) != 0 {
            ctx.pieces[next].home = director.id.index
            next += 1
        }
        return send(ctx, n)
    }

    public func flush(lun: LUNRef?) -> Int32 {
        // Every director with write-pending slots destages its part, then one flush of the drives covers them all.
        // A director with none is skipped, and that is safe only because of the durability invariant
        // (docs/ARCHITECTURE.md, "Durability contract"): a slot counts as write-pending from before the host hears of
        // its write until the journal record or in-place write holding its data is on the drives. A destage pass in
        // flight keeps its slots counted until its batch commits (TrackCache.finishPass), so this flush queues behind
        // that pass instead of overtaking it. Drives whose writes are in memory (tmpfs) need no flush.
        var rc = control(.destage(lunID: lun?.lunID), to: directors[...]) { $0.counters.dirtySlots.load(ordering: .acquiring) > 0 }
        if rc != 0 { return rc }
        rc = control(.flushDrives, to: directors.prefix(1)) { $0.backEnd.needsFlush }
        if rc != 0 { return rc }
        return afterFlush?() ?? 0
    }

    /// Drops every cached track of a LUN on every director (before the LUN's stripes are zeroed and reused).
    public func discard(lun: LUNRef) {
        _ = control(.discard(lunID: lun.lunID), to: directors[...])
        // Only once no director writes the LUN any more: its checksums go (one director does it for all).
        _ = control(.clearChecksums(lun), to: directors.prefix(1))
    }

    /// Gives every director's cache portion its port to the pool's homes (each on its own executor).
    public func attachPool(layout: PoolLayout, homes: [PoolHome]) -> Int32 {
        for director in directors {
            let rc = control(.setPool(PoolPort(layout: layout, homes: homes, backEnd: director.backEnd)), to: directors[director.id.index...director.id.index])
            if rc != 0 { return rc }
        }
        return 0
    }

    /// Runs `work(home)` for every pool home (one per director), each on the director acting for the home now, all
    /// sent before any is waited for: homes on two directors work side by side (a snapshot's checkpoints, the
    /// cleaner's steps), and a director busy with a long destage delays only the homes it acts for. Every home gets
    /// its request whatever another's answer; callers undo what a failure leaves half done (a version dropped, a
    /// reset finished at the next mount). Returns 0, or the first errno.
    public func poolEach(_ work: (Int) -> PoolWork) -> Int32 {
        let ctx = context()
        // Routed by the home (not to the director acting now): if a failover or restore moves a home before its
        // request runs, it is bounced and sent to whoever acts then.
        for home in 0..<directors.count {
            ctx.pieces[home].work = .pool(work(home))
            ctx.pieces[home].home = home
        }
        return send(ctx, directors.count)
    }

    /// Every director ends its journal epoch: what it wrote is flushed and its checksum pages written back (a clean
    /// stop, so the next mount recomputes nothing).
    public func endEpochs() -> Int32 { control(.endEpoch, to: directors[...]) }

    /// Stops every director's thread (after the last flush); no failover runs meanwhile, and none after.
    public func stopAll() { administration.withLock { _ in for d in directors { d.stop() } } }

    // MARK: Rebuild

    /// Puts `drive` in member position `member` of every director's back-end adapter (each between its requests).
    public func attach(member: Int, drive: Drive) {
        // Cannot fail, so nothing to undo after the superblocks named the drive: each director is addressed by index,
        // not through the routes, and runs the attach online or failed (a fenced director's bounce attaches too);
        // the request completes with 0 either way.
        let rc = control(.attachMember(member: member, drive: drive), to: directors[...])
        assert(rc == 0, "attaching a drive completes with 0")
        let ctx = context()
        for piece in ctx.pieces { piece.work = .flushDrives }  // the record does not keep the drive alive
    }

    /// Where an array stripe lies: its LUN's id and first stripe; nil for stripes no LUN holds.
    public typealias Placement = (UInt64) -> StripeHolder?

    /// Runs one `work` request per stripe of `stripes` on the stripe's owning director (director 1a for stripes no
    /// LUN holds), so nothing else touches that stripe meanwhile; a context's worth at a time. `finished` sees each
    /// stripe's request once its batch completed. Returns 0 or the first errno.
    private func perStripe(
        _ stripes: Range<UInt64>, placement: Placement, work: (UInt64, StripeHolder?) -> Work,
        finished: (UInt64, SubRequest) -> Void = { _, _ in }
    ) -> Int32 {
        let ctx = context()
        var stripe = stripes.lowerBound
        while stripe < stripes.upperBound {
            let n = min(piecesPerContext, Int(stripes.upperBound - stripe))
            for i in 0..<n {
                let piece = ctx.pieces[i]
                let s = stripe + UInt64(i)
                let place = placement(s)
                piece.work = work(s, place)
                // What a stripe that could not be run (EIO: no director acting) reports.
                piece.outcome = .unreadable
                // Stripes no LUN holds are director 1a's (or whoever acts for it).
                piece.home = place.map { $0.poolHome ?? home(lunID: $0.lunID, lunStripe: s - $0.startStripe) } ?? 0
            }
            let rc = send(ctx, n)
            for i in 0..<n { finished(stripe + UInt64(i), ctx.pieces[i]) }
            if rc != 0 { return rc }
            stripe += UInt64(n)
        }
        return 0
    }

    /// Scrubs `stripes` (check, or repair), each on its owning director; `tally` hears each stripe and its outcome.
    public func scrub(stripes: Range<UInt64>, repair: Bool, placement: Placement, tally: (UInt64, ScrubOutcome) -> Void) {
        _ = perStripe(stripes, placement: placement) {
            .scrub(stripe: $0, repair: repair, holder: $1)
        } finished: {
            tally($0, $1.outcome)
        }
    }

    /// Rebuilds member `member` over array stripes `stripes`, each stripe on its owning director, so no destage of
    /// it interleaves. Returns 0 or the first errno.
    public func rebuild(member: Int, stripes: Range<UInt64>, placement: Placement) -> Int32 {
        perStripe(stripes, placement: placement) { stripe, _ in .rebuild(stripe: stripe, member: member) }
    }
}
