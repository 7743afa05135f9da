// The thin simulation's restores and linked clones (SimulationTests.swift): each done as the daemon does it
// (Daemon/Snapshots.swift), on the simulation's own array, so crashes, power cuts, failovers and drive failures land
// between and inside their steps, and the mount's own recovery (`ArrayDaemon.openPool`: orphaned versions dropped,
// restores and relinks cut short finished) runs after every crash.
// Invariants: a restored LUN reads as its snapshot was taken; a clone reads as its snapshot overlaid with what was
// written to it (each write flushed at once, so a crash keeps it), through restores of its origin, relinks, unlinks
// and deletes of other snapshots; after a crash the LUN table and the homes agree on the clone.
import ArrayModel
import Directors
import Foundation
import Metadata
import Pool
import XCTest

@testable import Daemon

/// A linked clone the simulation made, and what it must read as.
struct SimulatedClone {
    static let name = "c"
    let ref: LUNRef
    /// The snapshot it is linked to (0: unlinked, a LUN of its own).
    var snapshot: UInt32
    var contents: [UInt8]
    /// Sectors a failed write or flush may or may not have changed: the next full read takes what the array holds.
    var unknown: [Bool]
}

extension Simulation {
    var homeCount: UInt32 { UInt32(engines.directors.count) }

    /// A snapshot known taken, other than `except`, chosen by the seed.
    mutating func anySnapshot(except: UInt32 = 0) -> UInt32? { snapshots.keys.sorted().filter { $0 != except }.randomElement(using: &rng) }

    /// `vsa snap restore`: the LUN's contents become the snapshot's (write-pending data of the LUN dropped).
    mutating func restoreSnapshot() -> String? {
        guard let id = anySnapshot(), let entry = store.lunTable.entries.first(where: { $0.lunID == lun.lunID }) else { return nil }
        log.append("restore from snapshot \(id)")
        // What the LUN held before no longer matters, whatever happens from here: the reset is recorded first.
        let outcome = resetLUN(entry, to: id, relink: false)
        guard outcome != .notStarted else { return nil }
        latest = snapshots[id]!
        durable = latest
        for i in writtenSinceFlush.indices {
            writtenSinceFlush[i] = false
            unknown[i] = false
        }
        // Cut short: the LUN stays off the mount until the next one finishes the reset (a crash, then the check).
        return outcome == .done ? nil : crash()
    }

    enum ResetOutcome { case notStarted, done, cutShort }

    /// As the daemon's restore and relink: the reset recorded in the LUN table, the LUN's cached tracks dropped,
    /// every home reset, the record cleared (a relink's clone then linked to the snapshot).
    mutating func resetLUN(_ original: LUNEntry, to id: UInt32, relink: Bool) -> ResetOutcome {
        var entry = original
        entry.pendingReset = id
        do { try store.updateLUN(entry) } catch {
            log.append("  the reset could not be recorded: \(error)")
            return .notStarted
        }
        engines.discard(lun: entry.ref)
        guard engines.poolEach({ h in .change(home: h) { $0.reset(original.lunID, to: id) } }) == 0 else {
            log.append("  reset cut short")
            return .cutShort
        }
        if relink { entry.linkedSnapshot = id }
        entry.pendingReset = 0
        do { try store.updateLUN(entry) } catch {
            log.append("  the finished reset could not be recorded: \(error)")
            return .cutShort
        }
        return .done
    }

    /// A clone's step: linked when there is none, else written, read, unlinked, relinked or deleted.
    mutating func cloneStep() -> String? {
        guard let c = clone else { return linkClone() }
        switch rng.next() % 8 {
        case 0, 1, 2: return writeClone(c)
        case 3, 4: return readClone(c)
        case 5: return relinkClone(c)
        case 6: return unlinkClone(c)
        default: return deleteClone(c)
        }
    }

    /// `vsa snap link`: versions first (every home), then the LUN table; a crash between leaves an orphan the mount drops.
    mutating func linkClone() -> String? {
        guard let id = anySnapshot(), let area = store.lunTable.pool else { return nil }
        let cloneID: UInt32
        do {
            cloneID = try store.checkNewLUN(name: SimulatedClone.name, sizeBytes: UInt64(lunSize), thin: true, idGroup: (lun.lunID % homeCount, homeCount))
        } catch { return "link: \(error)" }
        log.append("link clone \(cloneID) to snapshot \(id)")
        guard engines.poolEach({ h in .change(home: h) { $0.link(cloneID, to: id) } }) == 0 else {
            _ = engines.poolEach { .deleteVersion(home: $0, lunID: cloneID) }
            log.append("  not linked")
            return nil
        }
        let entry = LUNEntry(
            lunID: cloneID, name: SimulatedClone.name, sizeBytes: UInt64(lunSize), startStripe: 0, stripeCount: 0, thin: true, linkedSnapshot: id)
        do { try store.recordThinLUN(entry, pool: area) } catch {
            _ = engines.poolEach { .deleteVersion(home: $0, lunID: cloneID) }
            log.append("  not recorded: \(error)")
            return nil
        }
        clone = SimulatedClone(ref: entry.ref, snapshot: id, contents: snapshots[id]!, unknown: [Bool](repeating: false, count: lunSize / 512))
        return readClone(clone!)
    }

    /// A write to the clone, flushed at once (so the model keeps one copy of its contents).
    mutating func writeClone(_ c: SimulatedClone) -> String? {
        var c = c
        defer { clone = c }
        let count = Int(rng.next() % 70000) + 1
        let offset = Int(rng.next() % UInt64(lunSize - count))
        let zero = rng.next() % 5 == 0
        for i in 0..<count { io.base.storeBytes(of: zero ? 0 : UInt8(truncatingIfNeeded: rng.next()), toByteOffset: i, as: UInt8.self) }
        log.append("clone write \(offset)+\(count)\(zero ? " zeroes" : "") and flush")
        let rc =
            zero
            ? engines.zero(lun: c.ref, offsetBytes: UInt64(offset), count: UInt64(count))
            : engines.write(lun: c.ref, offsetBytes: UInt64(offset), count: count, from: io.base)
        let flushed = rc == 0 ? engines.flush(lun: c.ref) : rc
        guard flushed == 0, !injector.cut else {
            for s in (offset / 512)...((offset + count - 1) / 512) { c.unknown[s] = true }
            if directorsWereOut || injector.cut { return nil }
            return membersOutTolerated ? "clone write or flush failed with the array within its tolerance (errno \(flushed))" : nil
        }
        for i in 0..<count { c.contents[offset + i] = io.base.load(fromByteOffset: i, as: UInt8.self) }
        for s in (offset / 512)...((offset + count - 1) / 512) where s * 512 >= offset && s * 512 + 512 <= offset + count { c.unknown[s] = false }
        return nil
    }

    /// The whole clone read and compared; sectors left unknown take what it holds.
    mutating func readClone(_ c: SimulatedClone) -> String? {
        log.append("clone read")
        guard engines.read(lun: c.ref, offsetBytes: 0, count: lunSize, into: io.base) == 0 else {
            return directorsWereOut ? nil : "the clone could not be read"
        }
        return compareClone()
    }

    /// The clone as read (in `io`) against the model; unknown sectors learnt.
    mutating func compareClone() -> String? {
        guard var c = clone else { return nil }
        for i in 0..<lunSize where io.base.load(fromByteOffset: i, as: UInt8.self) != c.contents[i] {
            if c.unknown[i / 512] { continue }
            return "clone: byte \(i) is \(io.base.load(fromByteOffset: i, as: UInt8.self)), should be \(c.contents[i])"
        }
        for s in c.unknown.indices where c.unknown[s] {
            for i in (s * 512)..<(s * 512 + 512) { c.contents[i] = io.base.load(fromByteOffset: i, as: UInt8.self) }
            c.unknown[s] = false
        }
        clone = c
        return nil
    }

    /// `vsa snap relink`: the clone's contents become another snapshot's (what was written to it is dropped).
    mutating func relinkClone(_ c: SimulatedClone) -> String? {
        guard c.snapshot != 0, let id = anySnapshot(except: c.snapshot),
            let entry = store.lunTable.entries.first(where: { $0.lunID == c.ref.lunID })
        else { return nil }
        log.append("relink clone to snapshot \(id)")
        let outcome = resetLUN(entry, to: id, relink: true)
        guard outcome != .notStarted else { return nil }
        clone = SimulatedClone(ref: c.ref, snapshot: id, contents: snapshots[id]!, unknown: [Bool](repeating: false, count: lunSize / 512))
        return outcome == .done ? readClone(clone!) : crash()
    }

    /// `vsa snap unlink`: the clone keeps its contents, and its snapshot may be deleted from now on.
    mutating func unlinkClone(_ c: SimulatedClone) -> String? {
        guard c.snapshot != 0, var entry = store.lunTable.entries.first(where: { $0.lunID == c.ref.lunID }) else { return nil }
        log.append("unlink clone")
        entry.linkedSnapshot = 0
        do { try store.updateLUN(entry) } catch { return nil }
        clone!.snapshot = 0
        return nil
    }

    /// `vsa lun delete` of the clone: its cached tracks dropped, the table entry removed, then its versions (a crash
    /// before that leaves an orphan the mount drops).
    mutating func deleteClone(_ c: SimulatedClone) -> String? {
        log.append("delete clone")
        engines.discard(lun: c.ref)
        do { _ = try store.deleteLUN(name: SimulatedClone.name) } catch { return nil }
        clone = nil
        if engines.poolEach({ .deleteVersion(home: $0, lunID: c.ref.lunID) }) != 0 { log.append("  versions left for the mount") }
        return nil
    }

    /// After a crash: the LUN table names the clone exactly when the model has one, linked as the model says, with
    /// no reset pending; its contents are what was written to it.
    mutating func checkCloneAfterCrash() -> String? {
        let entry = store.lunTable.entries.first { $0.name == SimulatedClone.name }
        guard let c = clone else { return entry == nil ? nil : "after the crash: a clone no step kept is in the LUN table" }
        guard let entry, entry.lunID == c.ref.lunID else { return "after the crash: the clone is gone from the LUN table" }
        guard entry.pendingReset == 0 else { return "after the crash: the clone's relink was not finished by the mount" }
        guard entry.linkedSnapshot == c.snapshot else { return "after the crash: the clone is linked to \(entry.linkedSnapshot), not \(c.snapshot)" }
        guard engines.read(lun: c.ref, offsetBytes: 0, count: lunSize, into: io.base) == 0 else {
            // Failed over mid-request (both directors out for a moment): the next read of the clone checks it.
            return directorsWereOut ? nil : "after the crash: the clone could not be read"
        }
        if let problem = compareClone() { return "after the crash: " + problem }
        return nil
    }
}
