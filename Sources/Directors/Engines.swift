// Engines: all the array's directors, and the `HostIOPort` the front end talks to. A host I/O is cut at stripe
// boundaries; each piece goes to the front-end queue of the director that owns that (LUN, stripe); the calling
// thread waits until the last piece completes. Ownership spreads a LUN's consecutive stripes round the directors,
// so sequential I/O keeps every director busy.
//
// Each front-end thread has its own RequestContext (completion group and sub-request records), created the first
// time that thread issues I/O and reused for its lifetime: no allocation and no shared lock per I/O.
import ArrayModel
import BackEnd
import Drives
import Foundation
import GlobalMemory
import MemoryServices

#if canImport(Glibc)
    import Glibc
#endif

/// The port the front end uses. Thread: any front-end thread; calls block until the array answered.
/// Preconditions: the range lies inside the LUN (the front end checks sizes). Returns 0 or an errno.
public protocol HostIOPort: AnyObject, Sendable {
    func read(lun: LUNRef, offsetBytes: UInt64, count: Int, into target: UnsafeMutableRawPointer) -> Int32
    func write(lun: LUNRef, offsetBytes: UInt64, count: Int, from source: UnsafeRawPointer) -> Int32
    func zero(lun: LUNRef, offsetBytes: UInt64, count: UInt64) -> Int32
    /// Destages the LUN's write-pending data (every LUN for lunID 0) and flushes the drives.
    func flush(lun: LUNRef) -> Int32
}

final class RequestContext: @unchecked Sendable {
    let group = CompletionGroup()
    let pieces: [SubRequest]
    init(capacity: Int) {
        var pieces: [SubRequest] = []
        for _ in 0..<capacity { pieces.append(SubRequest(group: group)) }
        self.pieces = pieces
    }
}

public final class Engines: HostIOPort, @unchecked Sendable {
    public let directors: [Director]
    public let geometry: ArrayGeometry
    public let engineCount: Int
    private let piecesPerContext = 64
    private var contextKey = pthread_key_t()
    /// Called after every successful flush, before the host hears back: the composition root records failed drives in the
    /// superblocks there, so what an fsync acknowledged never depends on a drive the array has stopped trusting.
    public var afterFlush: (@Sendable () -> Int32)?

    public init(directors: [Director], geometry: ArrayGeometry, engineCount: Int) {
        precondition(directors.count == engineCount * 2, "an engine is two directors")
        self.directors = directors
        self.geometry = geometry
        self.engineCount = engineCount
        let rc = pthread_key_create(&contextKey) { raw in
            if let raw { Unmanaged<RequestContext>.fromOpaque(raw).release() }
        }
        precondition(rc == 0, "pthread_key_create failed")
    }

    /// The director that owns stripe `lunStripe` (counted from the LUN's start) of `lunID`.
    @inline(__always)
    public func owner(lunID: UInt32, lunStripe: UInt64) -> Director {
        directors[Int((lunStripe &+ UInt64(lunID)) % UInt64(directors.count))]
    }

    private func context() -> RequestContext {
        if let raw = pthread_getspecific(contextKey) { return Unmanaged<RequestContext>.fromOpaque(raw).takeUnretainedValue() }
        let ctx = RequestContext(capacity: piecesPerContext)
        pthread_setspecific(contextKey, Unmanaged.passRetained(ctx).toOpaque())
        return ctx
    }

    /// Cuts [offset, offset+count) at stripe boundaries and runs the pieces on their owners, a batch at a time.
    private func run(kind: RequestKind, lun: LUNRef, offsetBytes: UInt64, count: UInt64, data: UnsafeMutableRawPointer?) -> Int32 {
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
                piece.kind = kind
                piece.lun = lun
                piece.offsetBytes = cursor
                piece.count = Int(pieceEnd - cursor)
                piece.data = data.map { $0 + Int(cursor - offsetBytes) }
                n += 1
                cursor = pieceEnd
            }
            ctx.group.arm(n)
            for i in 0..<n {
                let piece = ctx.pieces[i]
                owner(lunID: lun.lunID, lunStripe: piece.offsetBytes / stripeBytes).submit(piece)
            }
            let error = ctx.group.wait()
            if error != 0 { return error }
            position = cursor
        }
        return 0
    }

    public func read(lun: LUNRef, offsetBytes: UInt64, count: Int, into target: UnsafeMutableRawPointer) -> Int32 {
        run(kind: .read, lun: lun, offsetBytes: offsetBytes, count: UInt64(count), data: target)
    }

    public func write(lun: LUNRef, offsetBytes: UInt64, count: Int, from source: UnsafeRawPointer) -> Int32 {
        run(kind: .write, lun: lun, offsetBytes: offsetBytes, count: UInt64(count), data: UnsafeMutableRawPointer(mutating: source))
    }

    public func zero(lun: LUNRef, offsetBytes: UInt64, count: UInt64) -> Int32 {
        run(kind: .zero, lun: lun, offsetBytes: offsetBytes, count: count, data: nil)
    }

    /// Sends one control request to each director in `targets` for which `needed` holds, and waits for them all.
    private func control(
        kind: RequestKind, lun: LUNRef, to targets: ArraySlice<Director>, count: Int = 0, drive: Drive? = nil,
        where needed: (Director) -> Bool = { _ in true }
    ) -> Int32 {
        let ctx = context()
        // Decide once which directors get a request: `needed` may change its mind meanwhile (a host write makes a
        // director dirty), and the group must be armed with exactly what is submitted.
        var chosen: UInt64 = 0
        for (i, director) in targets.enumerated() where needed(director) { chosen |= 1 << UInt64(i) }
        let n = chosen.nonzeroBitCount
        if n == 0 { return 0 }
        for i in 0..<n {
            let piece = ctx.pieces[i]
            piece.kind = kind
            piece.lun = lun
            piece.offsetBytes = 0
            piece.count = count
            piece.data = nil
            piece.drive = drive
        }
        ctx.group.arm(n)
        var next = 0
        for (i, director) in targets.enumerated() where chosen & (1 << UInt64(i)) != 0 {
            director.submit(ctx.pieces[next])
            next += 1
        }
        return ctx.group.wait()
    }

    public func flush(lun: LUNRef) -> Int32 {
        // Every director with write-pending slots destages its part, then one flush of the drives covers them all.
        // A director with none is skipped: every write the host was told about already counted itself write-pending
        // (the count is published before the write completes), and a destage in flight keeps its slots counted
        // until its drive writes return. Drives whose writes are in memory (tmpfs) need no flush.
        var rc = control(kind: .destage, lun: lun, to: directors[...]) { $0.counters.dirtySlots.load(ordering: .acquiring) > 0 }
        if rc != 0 { return rc }
        rc = control(kind: .flushDrives, lun: lun, to: directors.prefix(1)) { $0.backEnd.needsFlush }
        if rc != 0 { return rc }
        return afterFlush?() ?? 0
    }

    /// Drops every cached track of a LUN on every director (before the LUN's stripes are zeroed and reused).
    public func discard(lun: LUNRef) {
        _ = control(kind: .discard, lun: lun, to: directors[...])
        // Only once no director writes the LUN any more: its checksums go (one director does it for all).
        _ = control(kind: .clearChecksums, lun: lun, to: directors.prefix(1))
    }

    /// Every director ends its journal epoch: what it wrote is flushed and its checksum pages written back (a clean
    /// stop, so the next mount recomputes nothing).
    public func endEpochs() -> Int32 { control(kind: .endEpoch, lun: LUNRef(lunID: 0, startStripe: 0, sizeBytes: 0), to: directors[...]) }

    public func stopAll() { for d in directors { d.stop() } }

    // MARK: Rebuild

    /// Puts `drive` in member position `member` of every director's back-end adapter (each between its requests).
    public func attach(member: Int, drive: Drive) {
        let rc = control(kind: .attachMember, lun: LUNRef(lunID: 0, startStripe: 0, sizeBytes: 0), to: directors[...], count: member, drive: drive)
        precondition(rc == 0, "attaching a drive cannot fail")
        let ctx = context()
        for piece in ctx.pieces { piece.drive = nil }  // the record does not keep the drive alive
    }

    /// Where an array stripe lies: its LUN's id and first stripe; nil for stripes no LUN holds.
    public typealias Placement = (UInt64) -> (lunID: UInt32, startStripe: UInt64)?

    /// Runs one `kind` request per stripe of `stripes` on the stripe's owning director (director 1a for stripes no
    /// LUN holds), so nothing else touches that stripe meanwhile; a context's worth at a time. `finished` sees each
    /// stripe's request once its batch completed. Returns 0 or the first errno.
    private func perStripe(
        _ stripes: Range<UInt64>, kind: RequestKind, count: Int, placement: Placement, finished: (UInt64, SubRequest) -> Void = { _, _ in }
    ) -> Int32 {
        let ctx = context()
        var stripe = stripes.lowerBound
        while stripe < stripes.upperBound {
            let n = min(piecesPerContext, Int(stripes.upperBound - stripe))
            ctx.group.arm(n)
            for i in 0..<n {
                let piece = ctx.pieces[i]
                let s = stripe + UInt64(i)
                let place = placement(s)
                piece.kind = kind
                piece.lun = place.map { LUNRef(lunID: $0.lunID, startStripe: $0.startStripe, sizeBytes: 1) } ?? LUNRef(lunID: 0, startStripe: 0, sizeBytes: 0)
                piece.offsetBytes = s
                piece.count = count
                piece.data = nil
                piece.outcome = .consistent
                let target = place.map { owner(lunID: $0.lunID, lunStripe: s - $0.startStripe) } ?? directors[0]
                target.submit(piece)
            }
            let rc = ctx.group.wait()
            for i in 0..<n { finished(stripe + UInt64(i), ctx.pieces[i]) }
            if rc != 0 { return rc }
            stripe += UInt64(n)
        }
        return 0
    }

    /// Scrubs `stripes` (check, or repair), each on its owning director; `tally` hears each stripe and its outcome.
    public func scrub(stripes: Range<UInt64>, repair: Bool, placement: Placement, tally: (UInt64, ScrubOutcome) -> Void) {
        _ = perStripe(stripes, kind: .scrub, count: repair ? 1 : 0, placement: placement) { tally($0, $1.outcome) }
    }

    /// Rebuilds member `member` over array stripes `stripes`, each stripe on its owning director, so no destage of
    /// it interleaves. Returns 0 or the first errno.
    public func rebuild(member: Int, stripes: Range<UInt64>, placement: Placement) -> Int32 {
        perStripe(stripes, kind: .rebuild, count: member, placement: placement)
    }
}
