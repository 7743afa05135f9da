// The status report: one structure for `vsa status` (human and --json) and `vsa lun list`, built from the drives
// when the array is not mounted and from the live daemon when it is. docs/CLI.md documents the JSON.
import ArrayModel
import Drives
import MemoryServices
import Metadata
import Replication

#if canImport(Glibc)
    import Glibc
#endif

public struct StatusReport: Codable, Sendable {
    public struct ArrayInfo: Codable, Sendable {
        public var uuid: String
        public var raidLevel: String
        public var state: String
        public var clean: Bool
        public var stripeUnitBytes: Int
        public var capacityBytes: UInt64
        public var freeBytes: UInt64
        public var memberCount: Int
        public var spareCount: Int
        public var engineCount: Int
        public var directory: String
    }
    public struct DaemonInfo: Codable, Sendable {
        public var pid: Int32
        public var mountpoint: String
        /// The drive deadline (`-o drive_timeout`) and the director deadline (`-o director_timeout`): how long a
        /// drive or a director may keep work waiting before the array fails it (0: never).
        public var driveTimeoutSeconds: Double? = nil
        public var directorTimeoutSeconds: Double? = nil
        /// The service processor's addresses (`-o metrics=`, `-o dashboard`); the dashboard's carries its token.
        public var metricsURL: String? = nil
        public var dashboardURL: String? = nil
    }
    public struct DriveInfo: Codable, Sendable {
        public var index: Int
        public var path: String
        public var role: String
        public var state: String
        public var sizeBytes: UInt64
        public var directIO: Bool
        public var errors: UInt64
        /// Operations that outlived the drive deadline (`-o drive_timeout=`); the first one failed the drive.
        public var timeouts: UInt64 = 0
        /// Reads that failed without failing the drive: served from redundancy and rewritten (md's corrected read
        /// errors). Past 20 in about an hour the drive is failed. Always present (0 when not mounted).
        public var readErrors: UInt64 = 0
        /// Mounted: how long the batches of I/O this drive took part in took (the back end's view).
        public var latency: LatencyInfo? = nil
        /// A remote drive (NBD): what it is and how its link is.
        public var remote: RemoteInfo? = nil
    }
    /// A drive on another machine: its URI, its link (connected, reconnecting within the drive deadline, lost), the
    /// round trip of its commands (smoothed, microseconds), connections made again, and what its server offers.
    public struct RemoteInfo: Codable, Sendable {
        public var uri: String
        public var link: String
        public var roundTripMicros: UInt64
        public var reconnects: UInt64
        public var multiConn: Bool
        public var fua: Bool
        /// New connections that found another disk behind the URI (blank, or not this array's): each failed the drive.
        public var identityMismatches: UInt64 = 0
    }
    /// Latency summaries (LatencyHistogram.swift) of reads, writes and flushes, in microseconds.
    public struct LatencyInfo: Codable, Sendable {
        public var read: LatencySummary
        public var write: LatencySummary
        public var flush: LatencySummary

        public init(_ l: IOLatency) {
            read = l.reads.summary
            write = l.writes.summary
            flush = l.flushes.summary
        }

        /// Indented lines, one per kind that saw any operation.
        public var lines: [String] {
            [("read", read), ("write", write), ("flush", flush)].filter { $0.1.count > 0 }.map { "       \($0.0) \($0.1.count): \($0.1.line)" }
        }
    }
    public struct LUNInfo: Codable, Sendable {
        public var name: String
        public var sizeBytes: UInt64
        public var id: UInt32
        public var startStripe: UInt64
        public var stripeCount: UInt64
        /// Thin: blocks from the pool. Mounted, it shows what is allocated (mapped) and unique (shared with no snapshot).
        public var thin: Bool = false
        public var allocatedBytes: UInt64? = nil
        public var uniqueBytes: UInt64? = nil
        /// A linked clone: the LUN and snapshot it was linked to ("LUN@snapshot").
        public var linkedTo: String? = nil
        /// Mounted: the host's latency of this LUN's reads, writes and fsyncs (front end to answer), and how many of
        /// them were answered with an error.
        public var latency: LatencyInfo? = nil
        public var hostErrors: UInt64? = nil
        /// Mounted: bytes the host read and wrote (zeroed ranges count as written) since the mount.
        public var readBytes: UInt64? = nil
        public var writtenBytes: UInt64? = nil
    }
    /// A snapshot of a thin LUN (docs/POOL.md, "Snapshots, clones, restore").
    public struct SnapshotInfo: Codable, Sendable {
        public var lun: String
        public var name: String
        public var id: UInt32
        public var createdSeconds: UInt64
        /// A secure snapshot cannot be deleted before this time (seconds since the epoch); it is deleted after it.
        public var secureUntilSeconds: UInt64?
        /// What the snapshot maps, and what only it holds (deleting it frees that).
        public var allocatedBytes: UInt64
        public var uniqueBytes: UInt64
        /// The clones linked to it.
        public var linked: [String]
    }
    /// The pool thin LUNs take their blocks from (docs/POOL.md).
    public struct PoolInfo: Codable, Sendable {
        public var sizeBytes: UInt64
        /// Blocks mapped by some version or holding the map, as bytes.
        public var allocatedBytes: UInt64
        /// What the pool can hold (the segments host data may use less the cleaner's spare ones, less each segment's
        /// share for summaries) and what of it is neither live nor promised: dead blocks not yet cleaned count as free.
        public var freeBytes: UInt64
        public var usedPercent: Double
        /// Segments host data may use (the pool's less those held back for checkpoints and open logs), and how many
        /// of them are wholly free now.
        public var segments: Int
        public var freeSegments: Int
        public var segmentBytes: UInt64
        public var checkpoints: UInt64
        public var commits: UInt64
        public var paddingBytes: UInt64
        public var damagedMapNodes: UInt64
        /// Blocks promised to thin LUNs' write-pending pages in the cache (0 once everything is destaged).
        public var promisedBytes: UInt64 = 0
        /// Set at 80, 90 and 95% used.
        public var warning: String?
        /// Dead blocks in partly used segments, as bytes: what the cleaner can give back.
        public var reclaimableBytes: UInt64 = 0
        /// Segments kept out of the size for the cleaner (as an SSD keeps spare area), as bytes.
        public var spareBytes: UInt64 = 0
        /// Read reallocation: bytes of thin LUN pages that sequential reads found scattered and wrote again in order
        /// (docs/POOL.md, "Read reallocation"; `-o read_realloc`), and whether it is on.
        public var reallocatedBytes: UInt64 = 0
        public var readReallocation = true
        public var cleaner: CleanerInfo? = nil
    }
    /// The pool's cleaner (docs/POOL.md, "The cleaner").
    public struct CleanerInfo: Codable, Sendable {
        /// idle (enough free space), cleaning (at most `rateBytesPerSecond`), urgent (pool nearly full: full speed),
        /// off (`-o cleaner_rate=0`: only writes that would get ENOSPC clean).
        public var state: String
        public var rateBytesPerSecond: UInt64
        public var segmentsCleaned: UInt64
        public var movedBytes: UInt64
        public var nodesMoved: UInt64
        public var readBytes: UInt64
        /// Blocks left in victims because snapshots or clones share them, as bytes.
        public var pinnedBytes: UInt64
        /// The segments being cleaned now: home, segment, percent of its stripes done.
        public var victims: [Victim]
        public struct Victim: Codable, Sendable {
            public var home: Int
            public var segment: Int
            public var percentDone: Int
        }
    }
    public struct CacheInfo: Codable, Sendable {
        public var sizeBytes: UInt64
        public var slotBytes: Int
        public var slotCount: Int
        public var usedSlots: Int
        public var writePendingSlots: Int
        public var dirtyBytes: UInt64
        public var hitRatio: Double
        public var readHits: UInt64
        public var readMisses: UInt64
        public var writeHits: UInt64
        public var writeMisses: UInt64
        public var destagedStripes: UInt64
        public var readAheadTracks: UInt64
        /// Read misses fetched together with others of a director's batch (one submit for all); absent from a daemon
        /// older than the count.
        public var batchedMisses: UInt64?
        public var writeThroughStripes: UInt64
        /// Write-through stripes of thin LUNs cached instead (no pool segment at hand: the cleaners were behind).
        public var writeThroughDeferred: UInt64 = 0
    }
    public struct DirectorInfo: Codable, Sendable {
        public var id: String
        public var engine: Int
        public var state: String
        public var cacheSlots: Int
        public var writePendingSlots: Int
        public var requests: UInt64
        /// Whose stripes this director acts for now ("1a", or "1a 1b" after a takeover).
        public var actingFor: [String] = []
        /// Members whose primary back-end path is this director (the partner is the alternate path).
        public var primaryDrives: [Int] = []
        public var queueDepth: Int = 0
        public var usedSlots: Int = 0
        /// The partner's write-pending slots mirrored in this director's memory portion now.
        public var mirroredSlots: Int = 0
        /// Where this director's write-pending data is mirrored: "1b", or "none" (each write destaged first).
        public var mirrorTo: String = "none"
        public var messagesSent: UInt64 = 0
        public var messagesReceived: UInt64 = 0
        public var bounced: UInt64 = 0
        public var unmirroredWrites: UInt64 = 0
        public var takeovers: UInt64 = 0
        public var replayedBytes: UInt64 = 0
        public var services: MemoryServicesInfo? = nil
    }
    public struct MemoryServicesInfo: Codable, Sendable {
        public var copies: UInt64
        public var copyBytes: UInt64
        public var xorOps: UInt64
        public var pqOps: UInt64
        public var parityBytes: UInt64
        public var crcOps: UInt64 = 0
        public var crcBytes: UInt64 = 0
        public var zeroOps: UInt64 = 0
        public var zeroBytes: UInt64 = 0

        public init(_ c: MemoryServices.Counters) {
            copies = c.copyCount
            copyBytes = c.copyBytes
            xorOps = c.xorCount
            pqOps = c.pqCount
            parityBytes = c.parityBytes
            crcOps = c.crcCount
            crcBytes = c[.crc].bytes
            zeroOps = c[.zero].requests
            zeroBytes = c[.zero].bytes
        }
    }
    public struct BackEndInfo: Codable, Sendable {
        public var fullStripeWrites: UInt64
        public var reconstructWrites: UInt64
        public var readModifyWrites: UInt64
        public var degradedReads: UInt64
        public var degradedWrites: UInt64
        public var stripReads: UInt64
        public var stripWrites: UInt64
        /// Stripe journal: batches committed, payload bytes journaled, write intents recorded, epochs ended.
        public var journalBatches: UInt64
        public var journalBytes: UInt64
        public var journalIntents: UInt64
        public var journalEpochs: UInt64
        /// Block checksums: blocks read that failed them, rewritten from redundancy, entries found wrong (the data
        /// was right), and reads that failed with EIO because nothing held the right data.
        public var checksumMismatches: UInt64
        public var checksumRepairs: UInt64
        public var checksumEntryRepairs: UInt64
        public var checksumUnrecoverable: UInt64
    }

    /// The current or last rebuild of a member onto a new drive.
    public struct RebuildInfo: Codable, Sendable {
        public var member: Int
        public var drive: String
        /// running, complete, failed, stopped (unmounted before the end: it resumes at the next mount), paused (offline)
        public var state: String
        public var doneStripes: UInt64
        public var totalStripes: UInt64
        public var percent: Double
        public var bytesPerSecond: UInt64
        public var rateLimitBytesPerSecond: UInt64
        public var etaSeconds: Double?
        public var detail: String?
        /// A second member whose rebuild waits for this one (its drive already takes writes).
        public var queued: QueuedRebuild? = nil
    }
    public struct QueuedRebuild: Codable, Sendable {
        public var member: Int
        public var drive: String
    }

    /// The current or last scrub.
    public struct ScrubInfo: Codable, Sendable {
        public var repair: Bool
        /// running, complete, stopped (unmounted before the end)
        public var state: String
        public var doneStripes: UInt64
        public var totalStripes: UInt64
        public var percent: Double
        /// Stripes whose redundancy was compared with their data.
        public var checkedStripes: UInt64
        /// Checked stripes where the redundancy disagreed with the data (repaired or not).
        public var mismatches: UInt64
        public var repaired: UInt64
        /// Mismatches no single bad strip explains (RAID-6), left as they are.
        public var unrecoverable: UInt64
        /// Stripes with a member out (failed or still being rebuilt): not checked.
        public var skippedStripes: UInt64
        /// Stripes where a drive failed while reading.
        public var unreadableStripes: UInt64
        public var bytesPerSecond: UInt64
        public var etaSeconds: Double?

        /// One line: what was checked and found.
        public var summary: String {
            "\(checkedStripes) stripes checked, \(mismatches) mismatches, \(repaired) repaired, \(unrecoverable) unrecoverable"
                + (skippedStripes > 0 ? ", \(skippedStripes) skipped (a member out)" : "")
                + (unreadableStripes > 0 ? ", \(unreadableStripes) unreadable" : "")
        }
    }

    public var array: ArrayInfo
    public var daemon: DaemonInfo?
    public var drives: [DriveInfo]
    public var luns: [LUNInfo]
    public var cache: CacheInfo
    public var directors: [DirectorInfo]
    public var memoryServices: MemoryServicesInfo?
    public var backEnd: BackEndInfo?
    public var messages: [String]
    public var rebuild: RebuildInfo?
    public var scrub: ScrubInfo?
    public var pool: PoolInfo? = nil
    public var snapshots: [SnapshotInfo]? = nil
    /// Faults injected with `vsa inject` (mounted arrays only).
    public var faults: [FaultInfo]? = nil
    /// Mounted with `-o powercut`: the host's volatile write cache and the power cuts so far.
    public var powerCut: PowerCutInfo? = nil
    /// Replica groups (`vsa replica`), mounted arrays only: state, lag, what went across.
    public var replicas: [ReplicaReport]? = nil

    /// The host's view with a volatile write cache (FrontEnd/VolatileWriteCache.swift, `vsa powercut`).
    public struct PowerCutInfo: Codable, Sendable {
        public var capacityBytes: UInt64
        /// Written since their LUN's last flush: what a power cut now would drop.
        public var unsyncedBytes: UInt64
        /// Taken as written back because the cache was full (the oldest first), since the mount.
        public var writtenBackBytes: UInt64
        public var cuts: [Cut]
        public struct Cut: Codable, Sendable {
            /// Seconds since the epoch.
            public var atSeconds: UInt64
            public var torn: Bool
            public var seed: UInt64
            /// 4 KiB blocks rolled back to their last flushed contents, and (torn) those that kept their newest.
            public var droppedBlocks: Int
            public var keptBlocks: Int
            public var luns: [String]
            public var line: String {
                "power cut\(torn ? " (torn, seed \(seed))" : ""): \(droppedBlocks) blocks of 4 KiB written since their LUN's last flush dropped"
                    + (torn ? ", \(keptBlocks) kept" : "") + (luns.isEmpty ? "" : " (LUNs \(luns.joined(separator: ", ")))")
            }
        }
    }

    /// One injected fault (docs/FAULTS.md).
    public struct FaultInfo: Codable, Sendable {
        public var id: Int
        /// "drive" or "director".
        public var target: String
        /// A drive fault: the member and its drive's path; a director fault: the director.
        public var member: Int? = nil
        public var path: String? = nil
        public var director: String? = nil
        /// latency, errors, hang or rot.
        public var kind: String
        public var detail: String
        public var seed: UInt64
        /// Operations it delayed, failed or held so far (rot: the blocks it flipped).
        public var hits: UInt64
        /// active, "active (drive failed)", "active (director failed)", done (rot), "gone (member replaced)".
        public var state: String

        /// One line for `vsa status` and `vsa inject list`.
        public var line: String {
            "\(id)  \(member.map { "member \($0)" } ?? "director \(director ?? "?")")  \(kind)  \(state)  \(hits) hits  seed \(seed)  \(detail)"
        }
    }

    /// The parts that come from the drives alone.
    public static func offline(store: ArrayStore, cacheBytes: UInt64) -> StatusReport {
        let sb = store.superblock
        let failed = store.currentFailedMask
        let rebuilding = store.drives.prefix(sb.memberCount).contains { $0.state == .rebuilding }
        let state =
            !sb.raidLevel.survives(outMask: failed, memberCount: sb.memberCount)
            ? "failed" : (failed != 0 ? "degraded" : (rebuilding ? "rebuilding" : "optimal"))
        let array = ArrayInfo(
            uuid: sb.arrayUUID.description, raidLevel: sb.raidLevel.description, state: state, clean: sb.clean,
            stripeUnitBytes: sb.stripUnitBytes, capacityBytes: store.geometry.capacityBytes, freeBytes: store.freeBytes,
            memberCount: sb.memberCount, spareCount: sb.spareCount, engineCount: sb.engineCount,
            directory: store.directory)
        let drives = store.drives.enumerated().map { i, d in
            DriveInfo(
                index: i, path: store.drivePaths[i], role: i < sb.memberCount ? "member" : "spare", state: d.state.description,
                sizeBytes: d.sizeBytes, directIO: d.usesDirectIO, errors: d.errorCount.load(ordering: .relaxed),
                timeouts: d.timeouts.load(ordering: .relaxed), readErrors: d.readErrors.load(ordering: .relaxed),
                remote: d.remoteURI.map { uri in
                    RemoteInfo(
                        uri: uri, link: d.state == .failed ? "lost" : (d.link ?? .connected).description,
                        roundTripMicros: d.roundTripMicros.load(ordering: .relaxed), reconnects: d.reconnects.load(ordering: .relaxed),
                        multiConn: d.serverMultiConn, fua: d.serverFUA, identityMismatches: d.identityMismatches.load(ordering: .relaxed))
                })
        }
        let luns = store.lunTable.entries.sorted { $0.name < $1.name }.map {
            LUNInfo(name: $0.name, sizeBytes: $0.sizeBytes, id: $0.lunID, startStripe: $0.startStripe, stripeCount: $0.stripeCount, thin: $0.thin)
        }
        let slotCount = Int(Layout.slotBytes(ofCache: cacheBytes) / UInt64(sb.stripUnitBytes))
        let cache = CacheInfo(
            sizeBytes: cacheBytes, slotBytes: sb.stripUnitBytes, slotCount: slotCount, usedSlots: 0, writePendingSlots: 0,
            dirtyBytes: 0, hitRatio: 0, readHits: 0, readMisses: 0, writeHits: 0, writeMisses: 0, destagedStripes: 0,
            readAheadTracks: 0, writeThroughStripes: 0)
        let directors = (0..<(sb.engineCount * 2)).map { i in
            let id = DirectorID(index: i)
            return DirectorInfo(
                id: id.description, engine: id.engine, state: "offline", cacheSlots: slotCount / (sb.engineCount * 2),
                writePendingSlots: 0, requests: 0)
        }
        var report = StatusReport(
            array: array, daemon: nil, drives: drives, luns: luns, cache: cache, directors: directors,
            memoryServices: nil, backEnd: nil, messages: [], rebuild: nil, scrub: nil)
        if let member = sb.rebuildMember {
            let total = store.geometry.stripeCount
            report.rebuild = RebuildInfo(
                member: member, drive: store.drivePaths[member], state: "paused", doneStripes: sb.rebuildCheckpoint, totalStripes: total,
                percent: Double(sb.rebuildCheckpoint) * 100 / Double(max(total, 1)), bytesPerSecond: 0, rateLimitBytesPerSecond: 0,
                etaSeconds: nil, detail: "resumes at the next mount")
            report.rebuild?.queued = sb.queuedRebuildMember.map { QueuedRebuild(member: $0, drive: store.drivePaths[$0]) }
        }
        return report
    }

    /// The human form of `vsa status`.
    public var text: String {
        var lines: [String] = []
        lines.append("array \(array.uuid)  \(array.raidLevel)  \(array.state)  \(array.clean ? "clean" : "not clean")")
        lines.append("  folder \(array.directory)")
        lines.append(
            "  capacity \(formatSize(array.capacityBytes)), free \(formatSize(array.freeBytes)), stripe unit \(formatSize(UInt64(array.stripeUnitBytes)))")
        if let d = daemon {
            lines.append("  mounted at \(d.mountpoint) (daemon pid \(d.pid))")
            if let drive = d.driveTimeoutSeconds, let director = d.directorTimeoutSeconds {
                func deadline(_ s: Double) -> String { s == 0 ? "none" : s == s.rounded() ? "\(Int(s)) s" : "\(s) s" }
                lines.append("  deadlines: drive \(deadline(drive)), director \(deadline(director))")
            }
            if let p = powerCut {
                lines.append(
                    "  power-cut tracking (-o powercut): \(formatSize(p.unsyncedBytes)) unsynced of \(formatSize(p.capacityBytes)), \(p.cuts.count) power cut\(p.cuts.count == 1 ? "" : "s")"
                )
                for c in p.cuts.suffix(3) { lines.append("    \(c.line)") }
            }
            for r in replicas ?? [] { lines += r.lines }
            if let url = d.metricsURL { lines.append("  metrics: \(url)") }
            // The dashboard's URL carries its token: `vsa dashboard` prints it.
            if d.dashboardURL != nil { lines.append("  dashboard: served (vsa dashboard TARGET prints its URL)") }
        } else {
            lines.append("  not mounted")
        }
        lines.append("engines: \(array.engineCount)")
        for d in directors {
            lines.append(
                "  director \(d.id)  \(d.state)  acting for \(d.actingFor.isEmpty ? "-" : d.actingFor.joined(separator: " "))  cache slots \(d.cacheSlots) (used \(d.usedSlots), write-pending \(d.writePendingSlots), mirrored from partner \(d.mirroredSlots))  mirror to \(d.mirrorTo)"
            )
            if daemon != nil {
                lines.append(
                    "     requests \(d.requests)  queue \(d.queueDepth)  messages sent \(d.messagesSent) received \(d.messagesReceived) bounced \(d.bounced)  drives \(d.primaryDrives.map(String.init).joined(separator: ","))\(d.takeovers > 0 ? "  takeovers \(d.takeovers)" : "")\(d.unmirroredWrites > 0 ? "  unmirrored writes \(d.unmirroredWrites)" : "")"
                )
            }
        }
        lines.append("drives:")
        for d in drives {
            lines.append(
                "  \(d.index)  \(d.role)  \(d.state)  \(formatSize(d.sizeBytes))  \(d.path)\(d.directIO ? "" : "  (buffered I/O)")\(d.errors > 0 ? "  errors \(d.errors)" : "")\(d.timeouts > 0 ? "  timed out \(d.timeouts)" : "")\(d.readErrors > 0 ? "  read errors \(d.readErrors) (served from redundancy, drive kept)" : "")"
            )
            if let r = d.remote {
                lines.append(
                    "       remote \(r.uri)  \(r.link)\(r.roundTripMicros > 0 ? "  round trip \(LatencySummary.format(Double(r.roundTripMicros)))" : "")  reconnects \(r.reconnects)\(r.multiConn ? "" : "  (no multi-conn: every write durable)")\(r.identityMismatches > 0 ? "  another disk behind the URI (\(r.identityMismatches)): failed, not written" : "")"
                )
            }
            lines += d.latency?.lines ?? []
        }
        lines.append("luns:")
        if luns.isEmpty { lines.append("  (none; create one with `vsa lun create`)") }
        for l in luns {
            var line = "  \(l.name)  \(formatSize(l.sizeBytes))"
            if l.thin {
                line += "  thin"
                if let a = l.allocatedBytes { line += ", allocated \(formatSize(a))" }
                if let u = l.uniqueBytes { line += ", unique \(formatSize(u))" }
                if let origin = l.linkedTo { line += ", clone of \(origin)" }
            }
            lines.append(line)
            lines += l.latency?.lines ?? []
        }
        if let snapshots, !snapshots.isEmpty {
            lines.append("snapshots:")
            for s in snapshots { lines.append("  " + s.line) }
        }
        if let p = pool {
            let tenths = Int((p.usedPercent * 10).rounded())
            lines.append(
                "pool: \(formatSize(p.sizeBytes)) in \(p.segments) segments of \(formatSize(p.segmentBytes)), allocated \(formatSize(p.allocatedBytes)), free \(formatSize(p.freeBytes)) (\(tenths / 10).\(tenths % 10)% used), \(p.checkpoints) checkpoints, \(p.commits) commits"
            )
            if let w = p.warning { lines.append("pool: warning: \(w)") }
            if let c = p.cleaner {
                let rate = c.rateBytesPerSecond == 0 ? "no background rate" : "\(formatSize(c.rateBytesPerSecond))/s"
                var line =
                    "cleaner: \(c.state) (\(rate)), reclaimable \(formatSize(p.reclaimableBytes)), \(c.segmentsCleaned) segments cleaned, \(formatSize(c.movedBytes)) moved, \(formatSize(c.pinnedBytes)) kept for snapshots"
                if !c.victims.isEmpty {
                    line += "; now " + c.victims.map { "segment \($0.segment) of home \($0.home) \($0.percentDone)%" }.joined(separator: ", ")
                }
                lines.append(line)
            }
            lines.append(
                "read reallocation: \(p.readReallocation ? "on" : "off (-o read_realloc=off)"), \(formatSize(p.reallocatedBytes)) of scattered pages written again in order"
            )
        }
        let ratio = String(Int((cache.hitRatio * 1000).rounded()) / 10) + "." + String(Int((cache.hitRatio * 1000).rounded()) % 10) + "%"
        lines.append(
            "cache: \(formatSize(cache.sizeBytes)) in \(cache.slotCount) slots of \(formatSize(UInt64(cache.slotBytes))), used \(cache.usedSlots), dirty \(formatSize(cache.dirtyBytes)), hit ratio \(ratio)"
        )
        if let b = backEnd {
            lines.append(
                "back end: full-stripe writes \(b.fullStripeWrites), reconstruct writes \(b.reconstructWrites), read-modify-writes \(b.readModifyWrites), degraded reads \(b.degradedReads)"
            )
            lines.append(
                "journal: \(b.journalBatches) batches (\(formatSize(b.journalBytes))), \(b.journalIntents) write intents, \(b.journalEpochs) epochs ended")
            lines.append(
                "checksums: \(b.checksumMismatches) mismatches, \(b.checksumRepairs) repaired, \(b.checksumEntryRepairs) entries rewritten, \(b.checksumUnrecoverable) unrecoverable"
            )
        }
        if let m = memoryServices {
            lines.append(
                "memory services: copy \(m.copies) (\(formatSize(m.copyBytes))), zero \(m.zeroOps) (\(formatSize(m.zeroBytes))), xor+p+q \(m.xorOps + m.pqOps) (\(formatSize(m.parityBytes))), crc \(m.crcOps) (\(formatSize(m.crcBytes)))"
            )
        }
        if let r = rebuild {
            let tenths = Int((r.percent * 10).rounded(.down))
            var line = "rebuild: member \(r.member) onto \(r.drive)  \(r.state)  \(tenths / 10).\(tenths % 10)%"
            if r.bytesPerSecond > 0 { line += "  \(formatSize(r.bytesPerSecond))/s" }
            if let eta = r.etaSeconds { line += "  eta \(Int(eta.rounded(.up))) s" }
            if let d = r.detail { line += "  (\(d))" }
            lines.append(line)
            if let q = r.queued { lines.append("rebuild: member \(q.member) onto \(q.drive)  queued (starts when member \(r.member)'s ends)") }
        }
        if let s = scrub {
            let tenths = Int((s.percent * 10).rounded(.down))
            lines.append("scrub (\(s.repair ? "repair" : "check")): \(s.state)  \(tenths / 10).\(tenths % 10)%  \(s.summary)")
        }
        if let faults, !faults.isEmpty {
            lines.append("injected faults (vsa inject list; vsa inject clear):")
            for f in faults { lines.append("  " + f.line) }
        }
        for m in messages { lines.append("note: \(m)") }
        return lines.joined(separator: "\n")
    }
}

extension StatusReport.SnapshotInfo {
    /// One line for `vsa status` and `vsa snap list`.
    public var line: String {
        var text = "\(lun)@\(name)  taken \(utcTime(createdSeconds)), allocated \(formatSize(allocatedBytes)), unique \(formatSize(uniqueBytes))"
        if let until = secureUntilSeconds { text += ", secure until \(utcTime(until))" }
        if !linked.isEmpty { text += ", linked to \(linked.joined(separator: ", "))" }
        return text
    }
}

/// A time as `2026-12-03 07:15:02 UTC`.
public func utcTime(_ seconds: UInt64) -> String {
    var t = time_t(truncatingIfNeeded: min(seconds, UInt64(Int32.max) * 64))
    var parts = tm()
    gmtime_r(&t, &parts)
    func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
    return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday)) \(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) UTC"
}

extension ReplicaReport {
    /// The group in `vsa status` and `vsa replica list`.
    public var lines: [String] {
        let lag =
            lagBytes == 0 && (state == "synchronized" || state == "consistent")
            ? "no lag" : "lag \(formatSize(lagBytes)), \((lagSeconds * 10).rounded() / 10) s"
        var out = [
            "  replica group \(name) (\(mode))  \(state)  \(lag)  sent \(writesSent) writes (\(formatSize(bytesSent))), resynced \(formatSize(resyncedBytes))\(partitions > 0 ? ", partitioned \(partitions) time\(partitions == 1 ? "" : "s")" : "")"
        ]
        if let cycle, let r2Cycle, let journal {
            out.append(
                "    cycle \(cycle) capturing, R2 at the boundary of cycle \(r2Cycle); delta sets \(formatSize(deltaSetBytes ?? 0)) of \(formatSize(cacheBytes ?? 0))\((overflows ?? 0) > 0 ? ", filled \(overflows!) time\(overflows == 1 ? "" : "s")" : ""); journal \(journal)\(apply == "r2" ? ", sets applied by R2's receiver" : "")"
            )
        }
        if let silent = receiverSilentSeconds, silent >= 1 {
            out.append("    waiting for R2's receiver (`vsa replica receive` on R2's side): silent for \(Int(silent)) s")
        }
        if failbackComparedTracks > 0 {
            out.append("    failback: \(failbackComparedTracks) tracks compared, \(formatSize(failbackCopiedBytes)) copied back from R2")
        }
        for m in members {
            out.append("    \(m.lun) -> \(m.uri)\(m.invalidTracks > 0 ? "  \(m.invalidTracks) changed track\(m.invalidTracks == 1 ? "" : "s")" : "")")
        }
        return out
    }
}
