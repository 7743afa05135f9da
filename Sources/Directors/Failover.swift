// Failover: which director acts for which stripes, and how that changes when a director fails or comes back.
//
// Every (LUN, stripe) has a home director (Engines.home). The routing table says which director acts for each home
// now: the home itself while it is online, else its partner (the other director of its engine), else a director of
// another engine, else nobody (the host gets EIO). Invariants, asserted in `reconfigure`:
//   - a director caches only stripes it acts for, so an owner change never meets stale slots;
//   - write-pending data is in two memory portions (the owner's slot and the mirror in its partner), or, while the
//     partner is out, it is destaged before the write is acknowledged;
//   - a director that stops acting for stripes has ended its journal epoch, so recovery never replays one of its
//     records over a newer write by the next owner.
//
// A change runs with every director quiesced (the reconfiguring thread holds every executor role), so no request
// executes meanwhile; requests queue up, and those that reach a director no longer acting for them are bounced to
// the front end, which routes them again.
import ArrayModel
import BackEnd
import Drives
import Foundation
import GlobalMemory
import Pool
import Synchronization

/// Home director -> acting director. Read on every request (one atomic load); written only by `reconfigure`.
final class RoutingTable: @unchecked Sendable {
    let directors: [Director]
    private let entries: [Entry]

    final class Entry: Sendable {
        let acting: Atomic<Int>
        init(_ index: Int) { acting = Atomic(index) }
    }

    init(directors: [Director]) {
        self.directors = directors
        entries = directors.indices.map { Entry($0) }
    }

    /// The director acting for `home` now; nil when no director can.
    @inline(__always)
    func acting(_ home: Int) -> Director? {
        let index = entries[home].acting.load(ordering: .acquiring)
        return index < 0 ? nil : directors[index]
    }

    func actingIndex(_ home: Int) -> Int { entries[home].acting.load(ordering: .acquiring) }

    func store(_ plan: [Int]) {
        for (home, index) in plan.enumerated() { entries[home].acting.store(index, ordering: .releasing) }
    }

    /// Who should act for each home given which directors are online: the home, its partner, else the nearest
    /// other engine's directors (same side first). -1: nobody.
    static func plan(online: [Bool]) -> [Int] {
        let count = online.count
        let engines = count / 2
        return (0..<count).map { home in
            if online[home] { return home }
            if online[home ^ 1] { return home ^ 1 }
            for k in 1..<max(engines, 1) {
                let engine = (home / 2 + k) % engines
                for side in [home % 2, 1 - home % 2] where online[engine * 2 + side] { return engine * 2 + side }
            }
            return -1
        }
    }
}

extension Engines {
    /// How long a failover waits for each director's executor to give up its role: three drive deadlines and 10 s.
    var quiesceTimeoutSeconds: Double { DriveIO.deadlineSeconds > 0 ? 3 * DriveIO.deadlineSeconds + 10 : 0 }

    /// Fails director `id`: it is fenced, and the directors that take its stripes replay its mirrored write-pending
    /// data. Returns what happened, one line per note.
    public func failDirector(_ id: DirectorID) throws(VSAError) -> [String] {
        let director = try self.director(id)
        guard !directRouting else { throw VSAError("VSA_DIRECT_ROUTING is set: this mount routes around the directors, so it has no failover") }
        // A director held by an injected hang lets go at once, so the failover can take its role.
        director.faults.releaseForFailover.store(true, ordering: .releasing)
        defer { director.faults.releaseForFailover.store(false, ordering: .releasing) }
        return try administration.withLock { _ throws(VSAError) in
            guard director.state == .online else { throw VSAError("director \(id) is \(director.state), not online") }
            return try reconfigure(failing: director, restoring: nil)
        }
    }

    /// Brings failed director `id` back: the directors acting for its stripes hand them back.
    public func restoreDirector(_ id: DirectorID) throws(VSAError) -> [String] {
        let director = try self.director(id)
        return try administration.withLock { _ throws(VSAError) in
            guard director.state == .failed else { throw VSAError("director \(id) is \(director.state), not failed") }
            return try reconfigure(failing: nil, restoring: director)
        }
    }

    /// Director `id` of this array, or the one-line error that names the ones it has.
    private func director(_ id: DirectorID) throws(VSAError) -> Director {
        guard id.index >= 0 && id.index < directors.count, id.engine >= 1 else {
            throw VSAError("no director \(id) (this array has \(directors.map(\.id.description).joined(separator: ", ")))")
        }
        return directors[id.index]
    }

    /// Restores every failed director (a clean stop). Returns the notes.
    public func restoreAll() -> [String] {
        administration.withLock { _ in
            var notes: [String] = []
            for director in directors where director.state == .failed {
                do throws(VSAError) { notes += try reconfigure(failing: nil, restoring: director) } catch { notes.append(error.message) }
            }
            return notes
        }
    }

    /// The homes director `index` acts for now.
    public func actingHomes(of index: Int) -> [Int] { directors.indices.filter { routing.actingIndex($0) == index } }

    private func reconfigure(failing: Director?, restoring: Director?) throws(VSAError) -> [String] {
        var notes: [String] = []
        // 1. Quiesce: hold every director's executor role (in index order; an executor never waits for another). An
        // executor finishes its batch within a few drive deadlines; one that does not is stuck, and the change is
        // refused rather than waited for.
        var held: [Director] = []
        defer { for director in held { director.releaseRole() } }
        for director in directors {
            guard director.acquireRole(timeoutSeconds: quiesceTimeoutSeconds) else {
                throw VSAError(
                    "director \(director.id) did not finish its work within \(Int(quiesceTimeoutSeconds)) s (a drive may be stuck); nothing was changed, try again"
                )
            }
            held.append(director)
        }
        duringFailover?()
        let before = directors.indices.map { routing.actingIndex($0) }
        var online = directors.map { $0.state == .online }
        if let failing { online[failing.id.index] = false }
        if let restoring { online[restoring.id.index] = true }
        let after = RoutingTable.plan(online: online)
        // 2. Directors (still online, not the one failing: its memory is lost, not destaged) that will stop acting for
        // homes put their write-pending data down first; if one cannot (too many drives out), nothing changes.
        var losses: [(Director, UInt64)] = []
        for director in directors where director.state == .online && director !== failing {
            let index = director.id.index
            var lost: UInt64 = 0
            for home in directors.indices where before[home] == index && after[home] != index { lost |= 1 << UInt64(home) }
            guard lost != 0 else { continue }
            // Its epoch ends too, so none of its records of those stripes is replayed over the new owner's writes.
            guard director.cache.destageAll(), director.backEnd.advanceEpoch() else {
                throw VSAError(
                    "director \(director.id) cannot hand its stripes over: its write-pending data could not be destaged (too many drives out); nothing was changed"
                )
            }
            losses.append((director, lost))
        }
        // 3. A restored director is online before the routes point at it (it runs nothing until the roles go back);
        // then the new routes, so that what a fenced director bounces goes straight to its new owner.
        if let restoring {
            precondition(
                restoring.cache.writePendingSlots == 0 && restoring.counters.usedSlots.load(ordering: .relaxed) == 0,
                "a restored director starts empty")
            restoring.revive()
        }
        routing.store(after)
        duringFailover?()

        // Pool homes whose state was in a failed director's memory (the one failing now, or the last to act for a
        // home nobody could take): the director taking one over loads it from the drives, before the mirror's
        // write-pending pages are replayed into it below.
        failing?.cache.pool?.forgetUncommitted()
        for home in directors.indices where after[home] >= 0 && (before[home] < 0 || before[home] == failing?.id.index) {
            guard let port = directors[after[home]].cache.pool else { continue }
            do throws(VSAError) {
                try port.reload(home: home)
            } catch {
                notes.append("pool home \(home) could not be loaded from the drives (\(error.message)); its thin LUN stripes answer EIO until the next mount")
            }
        }

        if let failing {
            failing.fence()
            // Its journal slice: end the epoch so no record of it is replayed over what the new owners write.
            if !failing.backEnd.advanceEpoch() {
                notes.append("director \(failing.id): its journal epoch could not be ended (drives failing)")
            }
            // Its write-pending data: the copy in its own portion is gone (fenced); the partner's mirror holds it.
            let mirror = failing.partner.mirrorForPartner
            if failing.partner.state == .online && !mirror.isEmpty {
                var replayed: UInt64 = 0
                var lost = false
                mirror.forEachRun { lun, offsetBytes, count, data in
                    let home = self.home(lunID: lun.lunID, lunStripe: offsetBytes / geometry.stripeDataBytes)
                    guard let target = routing.acting(home),
                        target.cache.writeBack(lun: lun, offsetBytes: offsetBytes, count: count, from: data, replaying: true) == 0
                    else {
                        lost = true
                        return
                    }
                    target.channel.replayedBytes.add(UInt64(count), ordering: .relaxed)
                    replayed += UInt64(count)
                }
                mirror.reset()
                failing.partner.channel.takeovers.add(1, ordering: .relaxed)
                notes.append("director \(failing.partner.id) replayed \(replayed) bytes of write-pending data mirrored from \(failing.id)")
                if lost { notes.append("some mirrored write-pending data of \(failing.id) could not be replayed (no director can take it)") }
            } else if failing.cache.writePendingSlots > 0 {
                notes.append("director \(failing.id) lost \(failing.cache.writePendingSlots) write-pending slots that had no mirror")
            }
            failing.cache.reset()
            failing.mirrorForPartner.reset()
        }

        // 4. Directors that stopped acting for homes (destaged, epoch ended above): forget those slots.
        for (director, lost) in losses {
            director.cache.forget { lunID, lunStripe in lost & (1 << UInt64(self.home(lunID: lunID, lunStripe: lunStripe))) != 0 }
        }

        // 5. Pairs: mirror to the partner when it is online, else destage every write before acknowledging it.
        for director in directors where director.state == .online {
            let partnerOut = director.partner.state != .online
            let wanted: WritePendingMirror? = partnerOut || !mirroring ? nil : director.partner.mirrorForPartner
            if director.cache.mirror !== wanted || partnerOut {
                // Write-pending data mirrored in a fenced portion, or not yet mirrored in the new one: down it goes.
                if !director.cache.destageAll() { notes.append("director \(director.id): write-pending data could not be destaged") }
                if director.cache.writePendingSlots == 0 { director.cache.setMirror(wanted) }
            }
            director.partnerOutFlag.store(partnerOut, ordering: .relaxed)
        }
        for home in directors.indices where after[home] < 0 {
            notes.append("no director can act for \(directors[home].id)'s stripes: their I/O fails with EIO")
        }
        for home in directors.indices where after[home] >= 0 && after[home] != before[home] {
            notes.append(
                "\(directors[home].id)'s stripes: \(before[home] < 0 ? "none" : directors[before[home]].id.description) -> \(directors[after[home]].id)")
        }
        return notes
    }
}
