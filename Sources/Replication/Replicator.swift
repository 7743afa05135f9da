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
            for m in config.members {
                guard let lun = luns[m.lun] else {
                    notes.append("replica group \(config.name): LUN \(m.lun) is gone; the group is dropped")
                    members = []
                    break
                }
                let image: RemoteImage
                do { image = try RemoteImage(uri: m.uri, deadlineSeconds: deadlineSeconds) } catch {
                    // Unreachable now: the group starts partitioned and the link monitor waits for it.
                    image = RemoteImage(unreachable: m.uri, sizeBytes: lun.sizeBytes, deadlineSeconds: deadlineSeconds)
                    reachable = false
                    notes.append("replica group \(config.name): \(m.uri) does not answer (\(error.message)); partitioned")
                }
                members.append(ReplicaLUN(name: m.lun, lun: lun, image: image))
                let saved = arrayWasClean ? config.invalid?[m.lun].flatMap { TrackBitmap(sizeBytes: lun.sizeBytes, words: $0) } : nil
                bitmaps[lun.lunID] = saved ?? TrackBitmap(sizeBytes: lun.sizeBytes, allSet: true)
            }
            guard members.count == config.members.count else { continue }
            let state: ReplicaState =
                config.failedOver == true ? .failedOver : config.suspended ? .suspended : (reachable ? .syncing : .partitioned)
            start(config, ReplicaGroup(name: config.name, mode: config.mode, luns: members, bitmaps: bitmaps, state: state))
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
        save(withBitmaps: clean)
    }

    // MARK: Commands

    /// `vsa replica create`: every check first (names, LUNs, URIs, sizes, a URI in use, a LUN copied onto
    /// itself), then the group starts syncing all its tracks.
    public func create(
        name: String, luns: [(name: String, ref: LUNRef)], uris: [String], mode: String, cycleSeconds: Double, urisInUse: Set<String>
    ) throws(VSAError) {
        guard mode == "sync" else {
            throw VSAError("--mode \(mode): only sync is built so far (async delta sets are next: docs/ROADMAP.md, issue 15)")
        }
        try Replicator.validateName(name)
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
        for (i, uri) in uris.enumerated() {
            if uris[..<i].contains(uri) { throw VSAError("\(uri) is named twice") }
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
        let config = ReplicaConfig(
            name: name, mode: mode, cycleSeconds: cycleSeconds, members: zip(luns, uris).map { .init(lun: $0.name, uri: $1) }, suspended: false,
            failedOver: nil, invalid: nil)
        start(config, ReplicaGroup(name: name, mode: mode, luns: members, bitmaps: bitmaps, state: .syncing))
        save(withBitmaps: false)
    }

    /// `vsa replica failover`: R2 becomes the one written to (a second vsa mounts it); the LUNs here refuse writes
    /// until a failback has brought R2's changes back.
    public func failover(name: String) throws(VSAError) {
        let group = try find(name)
        guard !group.state.writesRefused else { throw VSAError("replica group \(name) is already failed over; `vsa replica failback` brings it back") }
        group.tracks.withLock { _ in group.moveState(to: .failedOver) }
        update(name) { $0.failedOver = true }
    }

    /// `vsa replica failback`: every track of R2 is compared with the one here and the ones that differ are copied
    /// back (the group's thread does it; status shows the progress); then the group is synchronized and the LUNs
    /// here take writes again.
    public func failback(name: String) throws(VSAError) {
        let group = try find(name)
        guard group.state == .failedOver else {
            throw VSAError("replica group \(name) is \(group.state), not failed over; `vsa replica failover` comes first")
        }
        guard group.luns.allSatisfy({ $0.image.answers() }) else {
            throw VSAError("a target of replica group \(name) does not answer; failback needs R2 (nothing was changed)")
        }
        group.tracks.withLock { _ in group.moveState(to: .failingBack) }
    }

    public func suspend(name: String) throws(VSAError) {
        let group = try find(name)
        guard !group.state.writesRefused else { throw VSAError("replica group \(name) is failed over; fail it back first") }
        group.tracks.withLock { _ in group.moveState(to: .suspended) }
        setSuspended(name, true)
    }

    public func resume(name: String) throws(VSAError) {
        let group = try find(name)
        guard !group.state.writesRefused else { throw VSAError("replica group \(name) is failed over; `vsa replica failback` brings it back") }
        group.tracks.withLock { _ in if group.state == .suspended { group.moveState(to: .syncing) } }
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
            return ReplicaReport(
                name: g.name, mode: g.mode, state: g.state.description,
                members: zip(g.luns, perLUN).map { .init(lun: $0.name, uri: $0.image.uri, invalidTracks: $1) },
                lagBytes: UInt64(invalid) * TrackBitmap.trackBytes,
                lagSeconds: g.lagSeconds,
                writesSent: g.writesSent.load(ordering: .relaxed), bytesSent: g.bytesSent.load(ordering: .relaxed),
                resyncedBytes: g.resyncedBytes.load(ordering: .relaxed), partitions: g.partitions.load(ordering: .relaxed),
                failbackComparedTracks: g.failbackComparedTracks.load(ordering: .relaxed),
                failbackCopiedBytes: g.failbackCopiedBytes.load(ordering: .relaxed))
        }
    }

    // MARK: Inside

    /// What is wrong with a group read from replicas.json, if anything.
    static func problem(with config: ReplicaConfig) -> String? {
        do { try validateName(config.name) } catch { return error.message }
        guard config.mode == "sync" else { return "group \(config.name): mode '\(config.mode.prefix(16))' is not one this vsa runs" }
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
        defer {
            Posix.free(buffer)
            Posix.free(other)
        }
        var cursor = 0
        var pause = 0.2
        while !group.stopping.load(ordering: .acquiring) {
            switch group.state {
            case .syncing:
                if !port.resyncOne(group, buffer: buffer, cursor: &cursor) {
                    if port.finishResync(group) { pause = 0.2 } else if group.state == .syncing { usleep(10_000) }
                }
            case .partitioned:
                usleep(UInt32(pause * 1_000_000))
                pause = min(2, pause * 2)
                if group.luns.allSatisfy({ $0.image.answers() }) {
                    group.tracks.withLock { _ in if group.state == .partitioned { group.moveState(to: .syncing) } }
                }
            case .synchronized, .suspended, .failedOver:
                usleep(50_000)
            case .failingBack:
                if failBack(group, port: port, remote: buffer, here: other) { failedBack() }
            }
        }
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
            group.moveState(to: .synchronized)
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
