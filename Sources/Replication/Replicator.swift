// The replica groups of one mounted array: made, suspended, resumed and deleted while it runs (`vsa replica`), each
// with a thread that sends changed tracks and watches a partitioned link. What survives an unmount is in the array
// folder's replicas.json: the groups, and at a clean stop each LUN's changed tracks. After a stop that was not clean
// the writes that were in flight may have reached one side only, so every track of every group is sent again.
import ArrayModel
import Foundation
import SysNBD
import SysPosix

#if canImport(Glibc)
    import Glibc
#endif

/// One group as replicas.json keeps it.
public struct ReplicaConfig: Codable, Sendable {
    public struct Member: Codable, Sendable {
        public var lun: String
        public var uri: String
    }
    public var name: String
    public var mode: String
    public var cycleSeconds: Double
    public var members: [Member]
    public var suspended: Bool
    /// `vsa replica failover` was run and no failback has finished: R2 is the one written to.
    public var failedOver: Bool?
    /// Changed tracks per LUN name at a clean stop (words of `TrackBitmap`); nil: unknown (send everything).
    public var invalid: [String: [UInt64]]?
    /// Asynchronous groups: the journal export on R2's side, and the bytes of delta sets kept here (`--cache`).
    public var journal: String?
    public var cacheBytes: UInt64?
    /// Asynchronous groups: "r2" when a receiver on R2's side (`vsa replica receive`) applies the sets; nil or "r1":
    /// R1 writes them to the images itself.
    public var apply: String?
}

struct ReplicasFile: Codable {
    var version = 1
    var groups: [ReplicaConfig]
}

/// A group as status shows it.
public struct ReplicaReport: Codable, Sendable {
    public struct Member: Codable, Sendable {
        public var lun: String
        public var uri: String
        public var invalidTracks: Int
    }
    public var name: String
    public var mode: String
    public var state: String
    public var members: [Member]
    /// Bytes of changed tracks not yet on the remote, and for how long the group has not been synchronized.
    public var lagBytes: UInt64
    public var lagSeconds: Double
    public var writesSent: UInt64
    public var bytesSent: UInt64
    public var resyncedBytes: UInt64
    public var partitions: UInt64
    /// Failback: tracks of R2 compared with the ones here, and bytes copied back (the tracks that differed).
    public var failbackComparedTracks: UInt64 = 0
    public var failbackCopiedBytes: UInt64 = 0
    /// Asynchronous groups: the journal, the delta set cache, the cycle being captured and the one R2 is at, the
    /// bytes in the capture and transmit sets (and in the transmit set alone), and times the capture set filled.
    public var journal: String?
    public var cacheBytes: UInt64?
    public var cycle: UInt64?
    public var r2Cycle: UInt64?
    public var deltaSetBytes: UInt64?
    public var transmitBytes: UInt64?
    public var overflows: UInt64?
    /// Asynchronous groups: who applies the sets (r1 or r2), and how long R2's receiver has said nothing while the
    /// group waits for it (absent when it is not waiting).
    public var apply: String?
    public var receiverSilentSeconds: Double?
}

public final class Replicator: @unchecked Sendable {
    public let port: ReplicationPort
    private let path: String
    private let deadlineSeconds: Double
    private let groups = Locked<[(config: ReplicaConfig, group: ReplicaGroup, thread: Thread)]>([])

    public static func filePath(directory: String) -> String { "\(directory)/replicas.json" }

    public init(port: ReplicationPort, directory: String, deadlineSeconds: Double) {
        self.port = port
        self.path = Replicator.filePath(directory: directory)
        self.deadlineSeconds = deadlineSeconds > 0 ? deadlineSeconds : 30
    }

    // MARK: Mount and unmount

    /// Starts the groups replicas.json holds. A group whose LUN is gone is dropped, one whose remote does not answer
    /// starts partitioned; returns a line for each.
    public func load(luns: [String: LUNRef], arrayWasClean: Bool) -> [String] {
        guard let data = FileManager.default.contents(atPath: path) else { return [] }
        guard let file = try? JSONDecoder().decode(ReplicasFile.self, from: data), file.version == 1 else {
            return ["\(path) cannot be read; its replica groups are not started (delete the file to drop them)"]
        }
        var notes: [String] = []
        for config in file.groups {
            // The file is input like any other: a group it describes wrongly is dropped with a line, never guessed at.
            if let problem = Replicator.problem(with: config) {
                notes.append("replicas.json: \(problem); the group is dropped")
                continue
            }
            let (names, lunsTaken) = groups.withLock { list in (Set(list.map(\.config.name)), Set(list.flatMap { $0.config.members.map(\.lun) })) }
            if names.contains(config.name) || config.members.contains(where: { lunsTaken.contains($0.lun) })
                || Set(config.members.map(\.lun)).count != config.members.count
            {
                notes.append("replicas.json: group \(config.name) repeats a group or a LUN another group has; the group is dropped")
                continue
            }
            var members: [ReplicaLUN] = []
            var bitmaps: [UInt32: TrackBitmap] = [:]
            var reachable = true
            var journal: RemoteImage?
            if let uri = config.journal {
                let needed = JournalHeader.bytes(slotCount: Replicator.deltaSetBytes(config) / UInt64(DeltaSets.blockBytes))
                do throws(VSAError) {
                    journal = try RemoteImage(uri: uri, deadlineSeconds: deadlineSeconds, connectSeconds: Replicator.mountConnectSeconds)
                    if journal!.sizeBytes < needed {
                        throw VSAError("it is \(journal!.sizeBytes) bytes, and the group's cache needs \(needed)")
                    }
                } catch {
                    // Partitioned until an export that is large enough answers there.
                    journal = RemoteImage(unreachable: uri, sizeBytes: needed, deadlineSeconds: deadlineSeconds, atLeast: true)
                    reachable = false
                    notes.append("replica group \(config.name): its journal \(uri) cannot be used (\(error.message)); partitioned")
                }
            }
            for m in config.members {
                guard let lun = luns[m.lun], config.journal == nil || lun.sizeBytes % 4096 == 0 else {
                    notes.append("replica group \(config.name): LUN \(m.lun) is gone (or not whole 4 KiB blocks); the group is dropped")
                    members = []
                    break
                }
                // The mount waits for a target a few seconds at most, and for none once one of the group's did not
                // answer: the group starts partitioned and its thread waits for the link.
                var image = RemoteImage(unreachable: m.uri, sizeBytes: lun.sizeBytes, deadlineSeconds: deadlineSeconds)
                if reachable {
                    do { image = try RemoteImage(uri: m.uri, deadlineSeconds: deadlineSeconds, connectSeconds: Replicator.mountConnectSeconds) } catch {
                        reachable = false
                        notes.append("replica group \(config.name): \(m.uri) does not answer (\(error.message)); partitioned")
                    }
                }
                members.append(ReplicaLUN(name: m.lun, lun: lun, image: image))
                let saved = arrayWasClean ? config.invalid?[m.lun].flatMap { TrackBitmap(sizeBytes: lun.sizeBytes, words: $0) } : nil
                bitmaps[lun.lunID] = saved ?? TrackBitmap(sizeBytes: lun.sizeBytes, allSet: true)
            }
            guard members.count == config.members.count else { continue }
            let state: ReplicaState =
                config.failedOver == true ? .failedOver : config.suspended ? .suspended : (reachable ? .syncing : .partitioned)
            let async = journal.map { Replicator.asyncCycle(config, members: members, journal: $0) }
            start(config, ReplicaGroup(name: config.name, mode: config.mode, luns: members, bitmaps: bitmaps, state: state, async: async))
        }
        save(withBitmaps: false)
        return notes
    }

    /// Stops every group's thread; `clean`: the changed tracks are saved, so the next mount sends only those.
    public func stop(clean: Bool) {
        let all = groups.withLock { $0 }
        for entry in all {
            entry.group.stopping.store(true, ordering: .releasing)
            port.deactivate(entry.group)
        }
        for entry in all { while !entry.thread.isFinished { usleep(1000) } }
        // Delta sets not on R2 yet are kept as changed tracks: the next mount resyncs them.
        for entry in all { entry.group.tracks.withLock { t in entry.group.dropDeltaSets(keep: false, &t) } }
        save(withBitmaps: clean)
    }

    // MARK: Commands

    /// `vsa replica create`: every check first (names, LUNs, URIs, sizes, a URI in use, a LUN copied onto
    /// itself), then the group starts syncing all its tracks.
    public func create(
        name: String, luns: [(name: String, ref: LUNRef)], uris: [String], mode: String, cycleSeconds: Double, urisInUse: Set<String>,
        journal journalURI: String? = nil, cacheBytes: UInt64 = Replicator.cacheBytesDefault, apply: String = "r1"
    ) throws(VSAError) {
        guard mode == "sync" || mode == "async" else { throw VSAError("--mode must be sync or async (got '\(mode.prefix(40))')") }
        try Replicator.validateName(name)
        guard apply == "r1" || apply == "r2" else { throw VSAError("--apply must be r1 or r2 (got '\(apply.prefix(40))')") }
        guard apply == "r1" || mode == "async" else {
            throw VSAError("--apply is for --mode async (a synchronous group writes R2 as the host writes)")
        }
        if mode == "async" {
            guard cacheBytes >= Replicator.cacheBytesMin, cacheBytes <= Replicator.cacheBytesMax, cacheBytes % 4096 == 0 else {
                throw VSAError("--cache must be 1 MiB to 4 GiB in whole 4 KiB blocks (got \(cacheBytes) bytes)")
            }
            guard let journalURI, !journalURI.isEmpty else {
                throw VSAError(
                    "--mode async needs --journal URI: an NBD export on R2's side of at least \(JournalHeader.bytes(slotCount: cacheBytes / 4096)) bytes, where each delta set lands whole before it is applied"
                )
            }
            if let odd = luns.first(where: { $0.ref.sizeBytes % 4096 != 0 }) {
                throw VSAError("LUN \(odd.name) is \(odd.ref.sizeBytes) bytes; an asynchronous group's LUNs are whole 4 KiB blocks")
            }
        } else if journalURI != nil {
            throw VSAError("--journal is for --mode async (a synchronous group writes R2 as the host writes)")
        }
        guard !luns.isEmpty, luns.count == uris.count else {
            throw VSAError("give one --to URI per LUN (\(luns.count) LUN\(luns.count == 1 ? "" : "s"), \(uris.count) URI\(uris.count == 1 ? "" : "s"))")
        }
        let existing = groups.withLock { $0.map(\.config) }
        if existing.contains(where: { $0.name == name }) { throw VSAError("a replica group named \(name) exists; delete it first or pick another name") }
        for (i, l) in luns.enumerated() {
            if luns[..<i].contains(where: { $0.name == l.name }) { throw VSAError("LUN \(l.name) is named twice") }
            if let other = existing.first(where: { $0.members.contains { $0.lun == l.name } }) {
                throw VSAError("LUN \(l.name) is already replicated by group \(other.name)")
            }
        }
        for (i, uri) in (uris + (journalURI.map { [$0] } ?? [])).enumerated() {
            if uris[..<min(i, uris.count)].contains(uri) { throw VSAError("\(uri) is named twice") }
            if existing.contains(where: { $0.journal == uri }) { throw VSAError("\(uri) is already the journal of another replica group") }
            if urisInUse.contains(uri) { throw VSAError("\(uri) is a drive of this array; a replica needs an export of its own") }
            if let other = existing.first(where: { $0.members.contains { $0.uri == uri } }) {
                throw VSAError("\(uri) is already the target of replica group \(other.name)")
            }
        }
        var members: [ReplicaLUN] = []
        for (l, uri) in zip(luns, uris) {
            // NBDConnection refuses a URI that is not NBD's, in its own words.
            let image = try RemoteImage(uri: uri, deadlineSeconds: deadlineSeconds)
            guard image.sizeBytes == l.ref.sizeBytes else {
                throw VSAError("\(uri) is \(image.sizeBytes) bytes; LUN \(l.name) is \(l.ref.sizeBytes): a replica's target must be the same size")
            }
            try refuseSelf(l, image)
            members.append(ReplicaLUN(name: l.name, lun: l.ref, image: image))
        }
        var bitmaps: [UInt32: TrackBitmap] = [:]
        for m in members { bitmaps[m.lun.lunID] = TrackBitmap(sizeBytes: m.lun.sizeBytes, allSet: true) }
        var config = ReplicaConfig(
            name: name, mode: mode, cycleSeconds: cycleSeconds, members: zip(luns, uris).map { .init(lun: $0.name, uri: $1) }, suspended: false,
            failedOver: nil, invalid: nil)
        var async: AsyncCycle?
        if let journalURI, mode == "async" {
            let journal = try RemoteImage(uri: journalURI, deadlineSeconds: deadlineSeconds)
            let needed = JournalHeader.bytes(slotCount: cacheBytes / 4096)
            guard journal.sizeBytes >= needed else {
                throw VSAError("journal \(journalURI) is \(journal.sizeBytes) bytes; a --cache of \(cacheBytes) bytes needs at least \(needed)")
            }
            config.journal = journalURI
            config.cacheBytes = cacheBytes
            config.apply = apply == "r2" ? "r2" : nil
            async = Replicator.asyncCycle(config, members: members, journal: journal)
            // R2 is about to be a mix (the first sync): its journal says so before any track goes.
            guard async!.journal.mark(.resyncing, cycle: 0, slotCount: async!.sets.slotCount) != nil else {
                throw VSAError("journal \(journalURI) did not take a write within \(Int(deadlineSeconds)) s; nothing was changed")
            }
        }
        start(config, ReplicaGroup(name: name, mode: mode, luns: members, bitmaps: bitmaps, state: .syncing, async: async))
        save(withBitmaps: false)
    }

    /// How long a mount waits for a replica target to answer.
    static let mountConnectSeconds = 3.0

    public static let cacheBytesDefault: UInt64 = 64 << 20
    public static let cacheBytesMin: UInt64 = 1 << 20
    public static let cacheBytesMax: UInt64 = 4 << 30

    /// The bytes of an asynchronous group's delta sets, as its configuration says (kept within the bounds).
    static func deltaSetBytes(_ config: ReplicaConfig) -> UInt64 {
        min(max(config.cacheBytes ?? cacheBytesDefault, cacheBytesMin), cacheBytesMax)
    }

    /// An asynchronous group's delta sets (the arena preallocated now) and journal.
    static func asyncCycle(_ config: ReplicaConfig, members: [ReplicaLUN], journal: RemoteImage) -> AsyncCycle {
        AsyncCycle(
            sets: DeltaSets(bytes: deltaSetBytes(config)),
            journal: Journal(journal: journal, images: members.map(\.image), group: config.name, applier: config.apply == "r2" ? .r2 : .r1),
            cycleSeconds: config.cycleSeconds)
    }

    /// `vsa replica failover`: R2 becomes the one written to (a second vsa mounts it); the LUNs here refuse writes
    /// until a failback has brought R2's changes back.
    /// An asynchronous group that was consistent sends its delta sets first (waited for up to the deadline): R2
    /// then equals R1. Returns a line saying where R2 is.
    public func failover(name: String) throws(VSAError) -> String {
        let group = try find(name)
        guard !group.state.writesRefused else { throw VSAError("replica group \(name) is already failed over; `vsa replica failback` brings it back") }
        let (was, drops) = group.tracks.withLock { t in
            let before = (group.state, group.async?.sets.drops ?? 0)
            group.moveState(to: .failedOver, &t)
            return before
        }
        update(name) { $0.failedOver = true }
        // Writes that read the state before it changed are done (sent, captured, or their tracks remembered), and
        // the group's thread has looked at the state since: what it was writing to R2 (a resync's batch, or a
        // catch-up set, which can be large) is there, and it writes nothing more but the sets below ...
        port.quiesce(group)
        let passes = group.threadPasses.load(ordering: .acquiring)
        while group.threadPasses.load(ordering: .acquiring) < passes + 2 && !group.stopping.load(ordering: .acquiring) { usleep(2_000) }
        guard let sets = group.async?.sets else { return "" }
        guard was == .synchronized else {
            return "R2 was \(was.description), not at a cycle boundary: run `vsa replica recover` on its side to see what it is"
        }
        // ... and the group's thread sends the sets left, as long as the link takes them (each command under the
        // drive deadline); a link that fails turns them into changed tracks. Nothing is sent after this returns.
        while !sets.isEmpty && !group.stopping.load(ordering: .acquiring) { usleep(20_000) }
        let changed = group.tracks.withLock { t in t.bitmaps.values.reduce(0) { $0 + $1.setCount } }
        let (_, applied) = sets.cycles
        return sets.isEmpty && sets.drops == drops && changed == 0
            ? "every delta set is on R2: it equals the LUNs here (cycle \(applied))"
            : "not every write here reached R2 (\(changed) changed tracks): run `vsa replica recover` on its side; it says which cycle boundary R2 is at, or that it is a mix"
    }

    /// `vsa replica failback`: every track of R2 is compared with the one here and the ones that differ are copied
    /// back (the group's thread does it; status shows the progress); then the group is synchronized and the LUNs
    /// here take writes again.
    public func failback(name: String) throws(VSAError) {
        let group = try find(name)
        guard group.state == .failedOver else {
            throw VSAError("replica group \(name) is \(group.state), not failed over; `vsa replica failover` comes first")
        }
        guard group.async?.sets.isEmpty != false else {
            throw VSAError("replica group \(name) is still sending its last delta sets to R2; fail back once `vsa replica failover` returns")
        }
        guard group.luns.allSatisfy({ $0.image.answers() }) else {
            throw VSAError("a target of replica group \(name) does not answer; failback needs R2 (nothing was changed)")
        }
        group.tracks.withLock { t in group.moveState(to: .failingBack, &t) }
    }

    /// `vsa replica recover`: on R2's side, R1 gone. A set pending in the journal is applied (every record and the
    /// set's checksum checked first); a resync that was under way means the images are a mix, said as an error.
    public static func recover(journal journalURI: String, images uris: [String]) throws(VSAError) -> String {
        let journalImage = try RemoteImage(uri: journalURI, deadlineSeconds: 30)
        let images = try uris.map { u throws(VSAError) in try RemoteImage(uri: u, deadlineSeconds: 30) }
        let journal = Journal(journal: journalImage, images: images, group: "")
        defer { journal.release() }
        let (header, applied) = try journal.replay()
        switch header.state {
        case .resyncing:
            throw VSAError(
                "group \(header.group)'s images were being resynced when R1 stopped sending: they are a mix of two points in time, not a cycle boundary (cycle \(header.cycle) was the last whole one)"
            )
        case .pending:
            throw VSAError("\(journalURI) still holds a pending set")
        case .consistent:
            return applied > 0
                ? "group \(header.group): applied the pending delta set of cycle \(header.cycle) (\(applied) blocks); R2 is the source as of that cycle's boundary"
                : "group \(header.group): nothing pending; R2 is the source as of the boundary of cycle \(header.cycle)"
        }
    }

    public func suspend(name: String) throws(VSAError) {
        let group = try find(name)
        guard !group.state.writesRefused else { throw VSAError("replica group \(name) is failed over; fail it back first") }
        group.tracks.withLock { t in group.moveState(to: .suspended, &t) }
        setSuspended(name, true)
    }

    public func resume(name: String) throws(VSAError) {
        let group = try find(name)
        guard !group.state.writesRefused else { throw VSAError("replica group \(name) is failed over; `vsa replica failback` brings it back") }
        group.tracks.withLock { t in if group.state == .suspended { group.moveState(to: .syncing, &t) } }
        setSuspended(name, false)
    }

    /// Stops replicating; the remote keeps what it has.
    public func delete(name: String) throws(VSAError) {
        let group = try find(name)
        group.stopping.store(true, ordering: .releasing)
        port.deactivate(group)
        let thread = groups.withLock { list -> Thread? in
            defer { list.removeAll { $0.group === group } }
            return list.first { $0.group === group }?.thread
        }
        while thread?.isFinished == false { usleep(1000) }
        save(withBitmaps: false)
    }

    /// The group replicating `lunID`, if any (a LUN being deleted or restored must leave its group first).
    public func group(replicating lunID: UInt32) -> String? {
        groups.withLock { list in list.first { $0.group.luns.contains { $0.lun.lunID == lunID } }?.config.name }
    }

    public func reports() -> [ReplicaReport] {
        return groups.withLock { $0 }.map { entry in
            let g = entry.group
            let perLUN = g.tracks.withLock { t in
                g.luns.map { l in t.bitmaps[l.lun.lunID]?.setCount ?? 0 }
            }
            let invalid = perLUN.reduce(0, +)
            let waiting = g.async?.sets.lag.bytes ?? 0
            var report = ReplicaReport(
                name: g.name, mode: g.mode, state: g.stateName,
                members: zip(g.luns, perLUN).map { .init(lun: $0.name, uri: $0.image.uri, invalidTracks: $1) },
                lagBytes: UInt64(invalid) * TrackBitmap.trackBytes + waiting,
                lagSeconds: g.lagSeconds,
                writesSent: g.writesSent.load(ordering: .relaxed), bytesSent: g.bytesSent.load(ordering: .relaxed),
                resyncedBytes: g.resyncedBytes.load(ordering: .relaxed), partitions: g.partitions.load(ordering: .relaxed),
                failbackComparedTracks: g.failbackComparedTracks.load(ordering: .relaxed),
                failbackCopiedBytes: g.failbackCopiedBytes.load(ordering: .relaxed))
            if let a = g.async {
                let (capture, applied) = a.sets.cycles
                report.journal = a.journal.journal.uri
                report.cacheBytes = UInt64(a.sets.slotCount * DeltaSets.blockBytes)
                report.cycle = capture
                report.r2Cycle = applied
                report.deltaSetBytes = waiting
                report.transmitBytes = a.sets.transmitBytes
                report.overflows = g.deltaSetOverflows.load(ordering: .relaxed)
                report.apply = a.journal.applier == .r2 ? "r2" : "r1"
                report.receiverSilentSeconds = a.receiverSilentSeconds
            }
            return report
        }
    }

    // MARK: Inside

    /// What is wrong with a group read from replicas.json, if anything.
    static func problem(with config: ReplicaConfig) -> String? {
        do { try validateName(config.name) } catch { return error.message }
        guard config.mode == "sync" || config.mode == "async" else {
            return "group \(config.name): mode '\(config.mode.prefix(16))' is not one this vsa runs"
        }
        guard config.cycleSeconds >= 1, config.cycleSeconds <= 86_400 else { return "group \(config.name): a cycle of \(config.cycleSeconds) s" }
        if config.mode == "async" {
            guard let journal = config.journal, NBDConnection.isNBDURI(journal), journal.utf8.count <= 4096 else {
                return "group \(config.name): an asynchronous group without an NBD journal"
            }
            guard let cache = config.cacheBytes, cache >= cacheBytesMin, cache <= cacheBytesMax else {
                return "group \(config.name): a delta set cache of \(config.cacheBytes ?? 0) bytes"
            }
            guard config.apply == nil || config.apply == "r1" || config.apply == "r2" else {
                return "group \(config.name): sets applied by '\(config.apply!.prefix(16))' (r1 or r2)"
            }
        } else if config.journal != nil || config.apply != nil {
            return "group \(config.name): a synchronous group with a journal"
        }
        guard !config.members.isEmpty, config.members.count <= 256 else { return "group \(config.name): \(config.members.count) LUNs" }
        for m in config.members where !NBDConnection.isNBDURI(m.uri) || m.uri.utf8.count > 4096 {
            return "group \(config.name): \(m.uri.prefix(64)) is not an NBD URI"
        }
        return nil
    }

    static func validateName(_ name: String) throws(VSAError) {
        guard !name.isEmpty, name.utf8.count <= 64,
            name.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || $0 == 45 || $0 == 95 || $0 == 46 })
        else {
            throw VSAError("replica group name '\(name.prefix(64))': 1 to 64 of letters, digits, '-', '_' and '.'")
        }
    }

    private func find(_ name: String) throws(VSAError) -> ReplicaGroup {
        guard let g = groups.withLock({ $0.first { $0.config.name == name }?.group }) else {
            throw VSAError("no replica group named \(name); `vsa replica list` shows them")
        }
        return g
    }

    /// A target that is this very LUN (its file on our mount, served back by an NBD server) would make every
    /// write come back through us. Found by a probe: a random block written to the target (the full sync
    /// overwrites it anyway) that then reads back from the LUN here. The LUN's own block is put back.
    private func refuseSelf(_ l: (name: String, ref: LUNRef), _ image: RemoteImage) throws(VSAError) {
        let block = 4096
        let saved = Posix.allocateAligned(bytes: block)
        let probe = Posix.allocateAligned(bytes: block)
        let back = Posix.allocateAligned(bytes: block)
        defer {
            Posix.free(saved)
            Posix.free(probe)
            Posix.free(back)
        }
        guard port.local.read(lun: l.ref, offsetBytes: 0, count: block, into: saved) == 0 else {
            throw VSAError("cannot read LUN \(l.name) to check its target; nothing was changed")
        }
        var generator = SystemRandomNumberGenerator()
        for i in stride(from: 0, to: block, by: 8) { probe.storeBytes(of: generator.next() as UInt64, toByteOffset: i, as: UInt64.self) }
        guard image.write(offsetBytes: 0, count: block, from: probe) else {
            throw VSAError("\(image.uri) did not take a write within \(Int(deadlineSeconds)) s; nothing was changed")
        }
        guard port.local.read(lun: l.ref, offsetBytes: 0, count: block, into: back) == 0 else {
            throw VSAError("cannot read LUN \(l.name) to check its target; nothing was changed")
        }
        if memcmp(back, probe, block) == 0 {
            _ = port.local.write(lun: l.ref, offsetBytes: 0, count: block, from: saved)
            _ = port.local.flush(lun: l.ref)
            throw VSAError("\(image.uri) is LUN \(l.name) itself (served back from this mount); a LUN cannot be replicated to itself")
        }
    }

    private func start(_ config: ReplicaConfig, _ group: ReplicaGroup) {
        port.activate(group)
        let thread = Thread { [port, weak self] in
            Replicator.run(group, port: port, failedBack: { self?.update(group.name) { $0.failedOver = nil } })
        }
        thread.name = "replica-\(group.name.prefix(7))"
        groups.withLock { $0.append((config, group, thread)) }
        thread.start()
    }

    /// The group's thread: sends changed tracks while syncing; while partitioned, probes the remote (every 0.2 s,
    /// doubling to 2 s) and starts a resync when it answers; otherwise waits.
    private static func run(_ group: ReplicaGroup, port: ReplicationPort, failedBack: @escaping () -> Void) {
        let buffer = Posix.allocateAligned(bytes: Int(TrackBitmap.trackBytes))
        let other = Posix.allocateAligned(bytes: Int(TrackBitmap.trackBytes))
        let resyncBuffer = Posix.allocateAligned(bytes: ReplicationPort.resyncTracksMax * Int(TrackBitmap.trackBytes))
        defer {
            Posix.free(buffer)
            Posix.free(other)
            Posix.free(resyncBuffer)
        }
        var cursor = 0
        var pause = 0.2
        // What this thread last wrote to an asynchronous group's journal header (nil: unknown, after a failure).
        var journalSays: JournalHeader.State?
        /// The link failed under an asynchronous group's journal or sets: partitioned (its sets become tracks).
        func linkFailed() {
            journalSays = nil
            group.async?.stopWaiting()
            group.tracks.withLock { t in
                if group.state == .failedOver {
                    group.dropDeltaSets(keep: false, &t)
                } else if group.state != .suspended && !group.state.writesRefused {
                    group.moveState(to: .partitioned, &t)
                }
            }
        }
        while !group.stopping.load(ordering: .acquiring) {
            group.threadPasses.add(1, ordering: .releasing)
            switch group.state {
            case .syncing:
                // The resync's catch-up set (below) on its way: R2 plus it is the source at its boundary. Once it is
                // applied the journal says consistent, and the group is, unless tracks were marked meanwhile (a
                // capture set that filled drops the sets into tracks; the header is then made `resyncing` again,
                // after R2's receiver has applied what it was given).
                if let a = group.async, journalSays == .resyncing || journalSays == .pending, a.sets.transmitting != nil {
                    var sent = SetProgress.none
                    guard sendDeltaSet(a, switchAfter: .infinity, progress: &sent) else {
                        linkFailed()
                        continue
                    }
                    if sent == .staged { journalSays = .pending }
                    if sent == .applied {
                        journalSays = .consistent
                        if port.finishResync(group) { pause = 0.2 }
                    }
                    continue
                }
                // R2 is about to be a mix: its journal says so before the first track goes. If R2's receiver applies
                // sets, it first says it stands aside: its stamp names the header as it is (applied, if a pending
                // set's). Until then nothing on R2 changes, so a receiver that is gone leaves R2 recoverable at its
                // last boundary, its pending set still in the journal.
                if let a = group.async, journalSays != .resyncing {
                    if a.journal.applier == .r2 && a.waiting?.forSet != false {
                        a.stopWaiting()
                        switch a.journal.ping(cycle: a.sets.cycles.applied, slotCount: a.sets.slotCount) {
                        case .wait(let nonce, let applied):
                            a.wait(for: nonce, applied: applied, forSet: false)
                        case .nothing:
                            break
                        case .linkFailed:
                            linkFailed()
                            continue
                        }
                    }
                    if a.waiting != nil {
                        switch a.hearReceiver() {
                        case .done?: break
                        case .waiting?:
                            usleep(2000)
                            continue
                        case .silent?, nil:
                            linkFailed()
                            continue
                        }
                    }
                    if a.journal.mark(.resyncing, cycle: a.sets.cycles.applied, slotCount: a.sets.slotCount) != nil {
                        journalSays = .resyncing
                    } else {
                        linkFailed()
                    }
                    continue
                }
                // The journal says resyncing: writes to tracks already sent (or never to be) are captured from now,
                // so writes that never stop cannot outrun the resync (they add no track to what it has left).
                if let a = group.async { group.tracks.withLock { _ in if group.state == .syncing { a.sets.openForResync() } } }
                if !port.resyncSome(group, buffer: resyncBuffer, cursor: &cursor) {
                    if let a = group.async {
                        // Nothing left to send: the catch-up set is switched (it goes above), or if it is empty R2 is
                        // the source as of now.
                        if port.drainedResync(group, switching: a.sets), a.sets.transmitting == nil, port.finishResync(group) {
                            pause = 0.2
                        } else if a.sets.transmitting == nil && group.state == .syncing {
                            usleep(10_000)
                        }
                    } else if port.finishResync(group) {
                        pause = 0.2
                    } else if group.state == .syncing {
                        usleep(10_000)
                    }
                }
            case .partitioned:
                usleep(UInt32(pause * 1_000_000))
                pause = min(2, pause * 2)
                if group.luns.allSatisfy({ $0.image.answers() }) && group.async?.journal.journal.answers() != false {
                    group.tracks.withLock { t in if group.state == .partitioned { group.moveState(to: .syncing, &t) } }
                }
            case .synchronized:
                guard let a = group.async else {
                    usleep(50_000)
                    continue
                }
                // Consistent: R2 at a boundary (said in its journal first), then one set after another.
                if journalSays != .consistent {
                    if a.journal.mark(.consistent, cycle: a.sets.cycles.applied, slotCount: a.sets.slotCount) != nil {
                        journalSays = .consistent
                    } else {
                        linkFailed()
                    }
                } else if !sendDeltaSet(a, switchAfter: a.cycleSeconds) {
                    linkFailed()
                }
            case .failedOver:
                // A planned failover: the delta sets left go across (R2 then equals R1); no new ones come. Sets that
                // cannot go (the link, or a journal in an unknown state) become changed tracks.
                if let a = group.async, !a.sets.isEmpty {
                    if journalSays != .consistent || !sendDeltaSet(a, switchAfter: 0) { linkFailed() }
                } else {
                    usleep(50_000)
                }
            case .suspended:
                group.async?.stopWaiting()
                usleep(50_000)
            case .failingBack:
                journalSays = nil
                group.async?.stopWaiting()
                if failBack(group, port: port, remote: buffer, here: other) { failedBack() }
            }
        }
    }

    /// One step of an asynchronous group's cycle: the transmit set sent whole (journal, then images) if there is
    /// one; else the cycle switched once the capture set is `switchAfter` seconds old; else a short wait. False when
    /// the link failed.
    private static func sendDeltaSet(_ a: AsyncCycle, switchAfter: Double) -> Bool {
        var progress = SetProgress.none
        return sendDeltaSet(a, switchAfter: switchAfter, progress: &progress)
    }

    /// How far a call of `sendDeltaSet` took the transmit set: its journal header made pending, or the set applied
    /// and the header made consistent at its cycle.
    private enum SetProgress { case none, staged, applied }

    private static func sendDeltaSet(_ a: AsyncCycle, switchAfter: Double, progress: inout SetProgress) -> Bool {
        if let set = a.sets.transmitting {
            guard a.journal.applier == .r2 else {
                progress = .staged
                guard a.journal.send(set, from: a.sets) else { return false }
                progress = .applied
                a.sets.transmitted(cycle: set.cycle)
                return true
            }
            // R2's receiver applies it: staged in the journal, then waited for (a poll per call), then the header
            // says consistent before the set's slots are used again.
            if a.waiting == nil {
                progress = .staged
                guard let nonce = a.journal.stage(set, from: a.sets) else { return false }
                a.wait(for: nonce, applied: true, forSet: true)
            }
            switch a.hearReceiver() {
            case .done?:
                guard a.journal.mark(.consistent, cycle: set.cycle, slotCount: a.sets.slotCount) != nil else { return false }
                a.sets.transmitted(cycle: set.cycle)
                progress = .applied
            case .waiting?: usleep(2000)
            case .silent?, nil: return false
            }
        } else if a.sets.captureAge >= switchAfter {
            a.sets.switchCycle()
        } else {
            usleep(UInt32(min(0.01, max(0.001, switchAfter - a.sets.captureAge)) * 1_000_000))
        }
        return true
    }

    /// Every track of every LUN of the group, compared and copied back where it differs; a track that cannot be
    /// done now is tried again after a pause. Then the LUNs here are flushed, nothing is left to send, and the group
    /// is synchronized. False if the group was stopped first.
    private static func failBack(_ group: ReplicaGroup, port: ReplicationPort, remote: UnsafeMutableRawPointer, here: UnsafeMutableRawPointer) -> Bool {
        for l in group.luns {
            let tracks = Int((l.lun.sizeBytes + TrackBitmap.trackBytes - 1) / TrackBitmap.trackBytes)
            var track = 0
            while track < tracks {
                if group.stopping.load(ordering: .acquiring) { return false }
                if port.failBackOne(l, track: track, group: group, remote: remote, here: here) { track += 1 } else { usleep(500_000) }
            }
            guard port.local.flush(lun: l.lun) == 0 else { return false }
        }
        group.tracks.withLock { t in
            for l in group.luns { t.bitmaps[l.lun.lunID] = TrackBitmap(sizeBytes: l.lun.sizeBytes) }
            group.moveState(to: .synchronized, &t)
        }
        return true
    }

    private func setSuspended(_ name: String, _ suspended: Bool) { update(name) { $0.suspended = suspended } }

    /// Changes a group's saved configuration and writes replicas.json.
    private func update(_ name: String, _ change: (inout ReplicaConfig) -> Void) {
        groups.withLock { list in
            for i in list.indices where list[i].config.name == name { change(&list[i].config) }
        }
        save(withBitmaps: false)
    }

    /// Writes replicas.json (a new file renamed over the old, flushed). Without bitmaps, the next mount sends every
    /// track again: what a stop that is not clean must do.
    private func save(withBitmaps: Bool) {
        let file = groups.withLock { list in
            ReplicasFile(
                groups: list.map { entry in
                    var c = entry.config
                    if withBitmaps {
                        let t = entry.group.tracks.withLock { $0 }
                        var invalid: [String: [UInt64]] = [:]
                        for l in entry.group.luns {
                            var b = t.bitmaps[l.lun.lunID] ?? TrackBitmap(sizeBytes: l.lun.sizeBytes, allSet: true)
                            for key in t.inFlight where UInt32(key >> 40) == l.lun.lunID { b.set(Int(key & 0xFF_FFFF_FFFF)) }
                            invalid[l.name] = b.words
                        }
                        c.invalid = invalid
                    } else {
                        c.invalid = nil
                    }
                    return c
                })
        }
        if file.groups.isEmpty {
            unlink(path)
            return
        }
        guard let data = try? JSONEncoder().encode(file) else { return }
        let temporary = path + ".new"
        guard FileManager.default.createFile(atPath: temporary, contents: data) else { return }
        if let fd = try? Posix.open(temporary, flags: O_RDONLY | O_CLOEXEC) {
            fsync(fd)
            Posix.close(fd)
        }
        rename(temporary, path)
    }
}
