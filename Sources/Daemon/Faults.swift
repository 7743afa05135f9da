// Injected faults (`vsa inject`; docs/FAULTS.md): named, listed and cleared. Drive faults are rules on the live
// `Drive` (DriveFaultRules.swift), which every DriveIO consults per operation: latency, I/O errors, a drive that
// stops answering. Bit rot is done once, here: one bit flipped in each of N random written blocks of the drive's data
// area, on the drive itself, under the array, for reads and scrub to find. Every fault has a seed: its random choices
// come from it, and it is reported, so a run can be replayed.
import ArrayModel
import Buffers
import Control
import Directors
import Drives
import SysPosix

final class FaultRegistry: Sendable {
    struct Entry {
        var id: Int
        var spec: FaultSpec
        var seed: UInt64
        /// A drive fault: the member, and the drive the rule is on (a member replaced since takes its rules with it).
        var member: Int? = nil
        var drive: Drive? = nil
        /// A director fault: the director.
        var director: Director? = nil
        var detail: String
        /// Rot: the blocks flipped (it is done once; hits are those).
        var rotted: UInt64 = 0
    }
    struct State {
        var nextID = 1
        var entries: [Entry] = []
    }
    let state = Locked(State())
}

extension ArrayDaemon {
    /// `inject`: checks the fault, puts it in force (or, for rot, does it), and lists it.
    func injectFault(_ spec: FaultSpec, seed: UInt64?) throws(VSAError) -> FaultAdded {
        let seed = seed ?? UInt64.random(in: 0...UInt64(Int64.max))
        var entry = FaultRegistry.Entry(id: 0, spec: spec, seed: seed, detail: "")
        if spec.target == "director" {
            let director = try faultyDirector(spec)
            entry.director = director
            entry.id = nextFaultID()
            switch spec {
            case .directorSlow(_, let micros):
                director.faults.setSlow(micros: micros)
                entry.detail = "\(milliseconds(micros)) more over every request"
            default:
                director.faults.setHung(true)
                let deadline = options.directorDeadlineSeconds
                entry.detail =
                    engines.directRouting
                    ? "stops taking requests (VSA_DIRECT_ROUTING: nothing routes through it)"
                    : deadline > 0
                        ? "stops taking requests: failed over by the array after the \(deadline) s director deadline"
                        : "stops taking requests (no director deadline: until cleared)"
            }
        } else {
            let member = try controlLock.withLock { _ throws(VSAError) in try resolveMember(spec.name) }
            let drive = store.drives[member]
            guard !drive.isMissing, drive.state != .failed else {
                throw VSAError("member \(member) has failed; faults go on drives still in the array (see vsa status)")
            }
            entry.member = member
            entry.drive = drive
            if case .driveRot(_, let blocks) = spec {
                let flipped = try rot(drive, member: member, blocks: Int(blocks), seed: seed)
                entry.rotted = UInt64(flipped)
                entry.detail =
                    "one bit flipped in \(flipped) written block\(flipped == 1 ? "" : "s") of the data area"
                    + (flipped < blocks ? " (only \(flipped) written blocks found)" : "")
            }
            entry.id = nextFaultID()
            switch spec {
            case .driveLatency(_, let fixed, let jitter, let spike, let rate):
                drive.faults.add(
                    DriveFaultRule(
                        id: entry.id, effect: .latency(fixedMicros: fixed, jitterMicros: jitter, spikeMicros: spike, spikePerMillion: rate), seed: seed))
                entry.detail =
                    "latency \(milliseconds(fixed))" + (jitter > 0 ? " + up to \(milliseconds(jitter)) jitter" : "")
                    + (rate > 0 && spike > 0 ? ", spikes of \(milliseconds(spike)) on \(percent(rate)) of operations" : "")
            case .driveErrors(_, let reads, let writes, let from, let length, let rate):
                let range = from.map { $0..<($0 + length!) }
                drive.faults.add(DriveFaultRule(id: entry.id, effect: .errors(reads: reads, writes: writes, range: range, perMillion: rate), seed: seed))
                entry.detail =
                    "I/O errors on \(reads && writes ? "reads and writes" : reads ? "reads" : "writes")"
                    + (range.map { " touching bytes \($0.lowerBound) to \($0.upperBound)" } ?? "") + (rate < 1_000_000 ? ", \(percent(rate)) of them" : "")
            case .driveHang:
                drive.faults.add(DriveFaultRule(id: entry.id, effect: .hang, seed: seed))
                entry.detail =
                    DriveIO.deadlineSeconds > 0
                    ? "not answering: failed by the \(DriveIO.deadlineSeconds) s drive deadline unless cleared first"
                    : "not answering (no drive deadline: until cleared)"
            default:
                break
            }
        }
        faults.state.withLock { s in s.entries.append(entry) }
        let on = entry.member.map { "member \($0) (\(store.drives[$0].path))" } ?? "director \(spec.name)"
        let line = "fault \(entry.id) injected into \(on): \(entry.detail); seed \(seed)"
        controlLock.withLock { _ in messages.append(line) }
        daemonLog(line)
        return FaultAdded(id: entry.id, seed: seed, detail: entry.detail)
    }

    private func nextFaultID() -> Int {
        faults.state.withLock { s in
            defer { s.nextID += 1 }
            return s.nextID
        }
    }

    /// The director a director fault names: online, with no fault of that kind on it yet.
    private func faultyDirector(_ spec: FaultSpec) throws(VSAError) -> Director {
        guard let id = DirectorID(parsing: spec.name) else {
            throw VSAError("\(spec.name) is not a director id; directors are named 1a, 1b, 2a, ... (see vsa director list)")
        }
        guard id.engine >= 1, id.index < engines.directors.count else {
            throw VSAError("no director \(id) (this array has \(engines.directors.map(\.id.description).joined(separator: ", ")))")
        }
        let director = engines.directors[id.index]
        guard director.state == .online else { throw VSAError("director \(id) is \(director.state); faults go on online directors") }
        if let same = faults.state.withLock({ s in s.entries.first { $0.director === director && $0.spec.kind == spec.kind } }) {
            throw VSAError("director \(id) already has a \(spec.kind) fault (fault \(same.id)); clear it first")
        }
        return director
    }

    /// `inject-clear`: takes fault `id` (nil: every one) out of force; returns how many were cleared. Rotted blocks
    /// stay as they are (reads and scrub repair them); their fault just leaves the list.
    func clearFaults(id: Int?) throws(VSAError) -> Int {
        let cleared = try faults.state.withLock { s throws(VSAError) in
            let picked = s.entries.filter { id == nil || $0.id == id }
            if let id, picked.isEmpty { throw VSAError("no fault with id \(id); `vsa inject list` shows them") }
            s.entries.removeAll { id == nil || $0.id == id }
            return picked
        }
        for e in cleared {
            e.drive?.faults.remove(id: e.id)
            switch e.spec {
            case .directorSlow: e.director?.faults.setSlow(micros: 0)
            case .directorHang: e.director?.faults.setHung(false)
            default: break
            }
        }
        let line = id.map { "fault \($0) cleared" } ?? "\(cleared.count) fault\(cleared.count == 1 ? "" : "s") cleared"
        controlLock.withLock { _ in messages.append(line) }
        daemonLog(line)
        return cleared.count
    }

    /// The faults for status: each with what it has done so far.
    func faultInfos() -> [StatusReport.FaultInfo] {
        let entries = faults.state.withLock { s in s.entries }
        return entries.map { e in
            if let director = e.director {
                return StatusReport.FaultInfo(
                    id: e.id, target: "director", director: director.id.description, kind: e.spec.kind, detail: e.detail, seed: e.seed,
                    hits: director.faults.hits.load(ordering: .relaxed), state: director.state == .online ? "active" : "active (director \(director.state))")
            }
            let drive = e.drive!
            let member = e.member!
            let hits = drive.faults.snapshot.first { $0.rule.id == e.id }?.hits ?? e.rotted
            let state: String
            if case .driveRot = e.spec {
                state = "done"
            } else if store.drives[member] !== drive {
                state = "gone (member replaced)"
            } else {
                state = drive.state == .failed ? "active (drive failed)" : "active"
            }
            return StatusReport.FaultInfo(
                id: e.id, target: "drive", member: member, path: drive.path, kind: e.spec.kind, detail: e.detail, seed: e.seed, hits: hits, state: state)
        }
    }

    /// Flips one random bit in each of `blocks` random written (not all-zero) 4 KiB blocks of `drive`'s data area,
    /// straight on the drive. Returns how many it flipped (fewer when the area holds fewer written blocks than that
    /// within a bounded search).
    private func rot(_ drive: Drive, member: Int, blocks: Int, seed: UInt64) throws(VSAError) -> Int {
        let geometry = store.geometry
        let areaBlocks = geometry.stripeCount * UInt64(geometry.stripUnitBytes) / 4096
        guard areaBlocks > 0 else { return 0 }
        let buffer = Arena(sliceBytes: 4096, sliceCount: 1)
        var random = seed
        var chosen = Set<UInt64>()
        var flipped = 0
        var tries = 0
        // Written blocks are found by sampling: an empty array gives up after a bounded number of looks.
        while flipped < blocks && tries < max(4096, blocks * 64) && UInt64(chosen.count) < areaBlocks {
            tries += 1
            let block = DriveFaults.nextRandom(&random) % areaBlocks
            guard chosen.insert(block).inserted else { continue }
            let offset = geometry.dataOffsetBytes + block * 4096
            guard drive.remoteURI == nil else {
                throw VSAError("rot flips bits in a drive file or device; member \(member) is served over NBD (\(drive.path)): inject errors there instead")
            }
            do throws(SysError) {
                guard try Posix.pread(drive.fd, buffer.base, count: 4096, offset: offset) == 4096 else { continue }
                let words = buffer.base.assumingMemoryBound(to: UInt64.self)
                guard (0..<512).contains(where: { words[$0] != 0 }) else { continue }
                let bit = Int(DriveFaults.nextRandom(&random) % (4096 * 8))
                buffer.base.storeBytes(
                    of: buffer.base.load(fromByteOffset: bit / 8, as: UInt8.self) ^ UInt8(1 << (bit % 8)), toByteOffset: bit / 8, as: UInt8.self)
                try Posix.pwrite(drive.fd, buffer.base, count: 4096, offset: offset)
                flipped += 1
            } catch {
                throw VSAError("rotting member \(member) failed after \(flipped) blocks: \(error)")
            }
        }
        return flipped
    }
}

private func milliseconds(_ micros: UInt64) -> String {
    micros % 1000 == 0 ? "\(micros / 1000) ms" : "\(Double(micros) / 1000) ms"
}

private func percent(_ perMillion: UInt32) -> String {
    perMillion % 10_000 == 0 ? "\(perMillion / 10_000)%" : "\(Double(perMillion) / 10_000)%"
}
