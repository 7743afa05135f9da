// The Prometheus endpoint's content: the array's state and counters as Prometheus metrics (docs/METRICS.md), held
// in a swift-prometheus registry and rendered by it. Names follow node_exporter's md collector (a state label with
// one series per possible state, set to 1 for the current one) and Ceph's exporter (a subsystem prefix, counters
// ending in _total, sizes in _bytes, times in _seconds).
//
// The array keeps its own counters and histograms on the hot path (an atomic add each); nothing there knows about
// this file. A collection reads them from the daemon (its status report and its histograms' bucket counts) and
// moves the registry's metrics to match: gauges are set, counters advanced by what changed since the last
// collection, and histogram buckets replayed into the registry's histograms. A collection runs once a second on the
// service processor's collector thread, and on every scrape, so what a scrape replays is at most a second of I/O.
import ArrayModel
import Control
import Daemon
import Prometheus
import Synchronization

public final class MetricsExporter: Sendable {
    public let registry = PrometheusCollectorRegistry()
    private let array: any ManagedArray
    private let state = Mutex(CollectorState())

    /// Prometheus buckets of the latency histograms, in seconds: a sample lands in the first bucket whose bound is
    /// at least the middle of the array's own (log-linear, 12.5% wide) bucket it was counted in.
    static let latencyBuckets: [Duration] = [
        .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .microseconds(2500),
        .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
        .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30),
    ]

    /// The middle of each of the array's latency buckets, in nanoseconds: the value a count of it is replayed as.
    static let bucketMiddles: [Int64] = (0..<LatencyHistogram.bucketCount).map { index in
        let upper = LatencyHistogram.upperBound(index)
        let lower = index == 0 ? 0 : LatencyHistogram.upperBound(index - 1)
        return Int64(lower / 2 + upper / 2)
    }

    public init(array: any ManagedArray) {
        self.array = array
    }

    /// Collects, then renders every metric in the Prometheus text format.
    public func scrape() -> [UInt8] {
        collect()
        return registry.emitToBuffer()
    }

    /// Moves every metric to the array's state now.
    public func collect() {
        // One collection at a time, its readings taken inside it: a later reading is never applied before an earlier one
        // (a counter would seem to go back, a histogram replay twice).
        state.withLock { state in
            let report = array.statusReport()
            let counts = array.latencyCounts()
            var c = Collection(registry: registry, state: state)
            c.record(report, counts)
            state = c.finish()
        }
    }

    /// The metrics already made (by name and labels) and the last values counters and histograms were moved to.
    struct CollectorState {
        var gauges: [String: Gauge] = [:]
        var counters: [String: (Counter, UInt64)] = [:]
        var histograms: [String: (DurationHistogram, [UInt64])] = [:]
    }

    /// One collection: what it touched, so that series of LUNs, drives and faults that went away are dropped.
    struct Collection {
        let registry: PrometheusCollectorRegistry
        var state: CollectorState
        var touched = Set<String>()

        init(registry: PrometheusCollectorRegistry, state: CollectorState) {
            self.registry = registry
            self.state = state
        }

        /// `vsa_NAME`, its unit in the name already.
        static func descriptor(_ name: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(namespace: "vsa", metricName: name, unitName: "", helpText: help)
        }

        static func key(_ name: String, _ labels: [(String, String)]) -> String {
            name + "{" + labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",") + "}"
        }

        mutating func gauge(_ name: String, _ help: String, _ labels: [(String, String)] = [], _ value: Double) {
            let key = Self.key(name, labels)
            touched.insert(key)
            let gauge =
                state.gauges[key]
                ?? registry.makeGauge(descriptor: Self.descriptor(name, help), labels: labels)
            state.gauges[key] = gauge
            gauge.set(value)
        }

        mutating func gauge(_ name: String, _ help: String, _ labels: [(String, String)] = [], _ value: some BinaryInteger) {
            gauge(name, help, labels, Double(value))
        }

        /// One series per possible state, 1 for the one it is in (node_exporter's `node_md_state`).
        mutating func stateSet(_ name: String, _ help: String, _ labels: [(String, String)], states: [String], current: String) {
            for s in states { gauge(name, help, labels + [("state", s)], s == current ? 1 : 0) }
        }

        /// A counter moved to `value` (the array's own count): advanced by the difference; a count that went back
        /// (a LUN deleted and made again under its name) starts the counter again.
        mutating func counter(_ name: String, _ help: String, _ labels: [(String, String)] = [], _ value: UInt64) {
            let key = Self.key(name, labels)
            touched.insert(key)
            let (counter, last) =
                state.counters[key]
                ?? (registry.makeCounter(descriptor: Self.descriptor(name, help), labels: labels), 0)
            if value >= last {
                if value > last { counter.increment(by: Int64(clamping: value - last)) }
            } else {
                counter.reset()
                counter.increment(by: Int64(clamping: value))
            }
            state.counters[key] = (counter, value)
        }

        /// A histogram moved to the array's bucket counts (sparse pairs): each new count replayed at its bucket's middle.
        mutating func histogram(_ name: String, _ help: String, _ labels: [(String, String)], _ pairs: [[UInt64]]) {
            let key = Self.key(name, labels)
            touched.insert(key)
            let (histogram, last) =
                state.histograms[key]
                ?? (
                    registry.makeDurationHistogram(
                        descriptor: Self.descriptor(name, help), labels: labels,
                        buckets: MetricsExporter.latencyBuckets),
                    [UInt64](repeating: 0, count: LatencyHistogram.bucketCount)
                )
            let now = LatencyCounts.dense(pairs)
            for i in now.indices where now[i] > last[i] {
                let middle = MetricsExporter.bucketMiddles[i]
                for _ in 0..<(now[i] - last[i]) { histogram.recordNanoseconds(middle) }
            }
            // A count that went back (the series' LUN made again) is taken as the new start.
            state.histograms[key] = (histogram, now)
        }

        mutating func latency(_ name: String, _ help: String, _ labels: [(String, String)], _ counts: LatencyCounts.LUN) {
            histogram(name, help, labels + [("op", "read")], counts.read)
            histogram(name, help, labels + [("op", "write")], counts.write)
            histogram(name, help, labels + [("op", "flush")], counts.flush)
        }

        mutating func record(_ report: StatusReport, _ counts: LatencyCounts) {
            let a = report.array
            gauge(
                "array_info", "The array: its RAID level, UUID and folder (always 1).", [("raid", a.raidLevel), ("uuid", a.uuid), ("directory", a.directory)], 1
            )
            stateSet(
                "array_state", "The array's state: 1 for the one it is in.", [], states: ["optimal", "rebuilding", "degraded", "failed"], current: a.state)
            gauge("array_capacity_bytes", "Bytes the array holds for LUNs.", [], a.capacityBytes)
            gauge("array_free_bytes", "Bytes of the array not given to LUNs.", [], a.freeBytes)
            gauge("array_members", "Member drives.", [], a.memberCount)
            gauge("array_spares", "Hot spares.", [], a.spareCount)
            gauge("array_members_out", "Members failed or still being rebuilt.", [], report.drives.filter { $0.role == "member" && $0.state != "online" }.count)

            for g in report.replicas ?? [] {
                let labels = [("group", g.name), ("mode", g.mode)]
                stateSet(
                    "replica_state", "Each replica group's state: 1 for the one it is in.", labels,
                    states: ["synchronized", "consistent", "syncing", "partitioned", "suspended", "failed-over", "failing-back"], current: g.state)
                gauge("replica_lag_bytes", "Changed tracks not yet on the remote (64 KiB each).", labels, g.lagBytes)
                gauge("replica_lag_seconds", "How long the group has not been synchronized (0 when it is).", labels, g.lagSeconds)
                counter("replica_sent_bytes_total", "Bytes of host writes sent to the remote as they happened.", labels, g.bytesSent)
                counter("replica_resynced_bytes_total", "Bytes of changed tracks sent by resyncs.", labels, g.resyncedBytes)
                counter("replica_partitions_total", "Times the group's link was found down.", labels, g.partitions)
                if let cycle = g.cycle, let r2Cycle = g.r2Cycle {
                    gauge("replica_cycle", "Asynchronous groups: the delta set cycle being captured.", labels, cycle)
                    gauge("replica_r2_cycle", "Asynchronous groups: the cycle whose boundary R2 is at.", labels, r2Cycle)
                    gauge("replica_delta_set_bytes", "Asynchronous groups: bytes in the capture and transmit sets.", labels, g.deltaSetBytes ?? 0)
                    counter(
                        "replica_delta_set_overflows_total", "Asynchronous groups: times the capture set filled (the group dropped to tracks).", labels,
                        g.overflows ?? 0)
                    gauge(
                        "replica_receiver_silent_seconds",
                        "Asynchronous groups applied on R2's side: how long the receiver has said nothing while the group waits for it (0: not waiting).",
                        labels, g.receiverSilentSeconds ?? 0)
                }
            }
            for d in report.drives {
                let labels = [("drive", String(d.index)), ("path", d.path), ("role", d.role)]
                stateSet(
                    "drive_state", "Each drive's state: 1 for the one it is in.", labels, states: ["online", "rebuilding", "failed", "missing"],
                    current: d.state)
                gauge("drive_size_bytes", "Each drive's size.", labels, d.sizeBytes)
                counter("drive_io_errors_total", "I/O errors each drive returned (the first one fails it).", labels, d.errors)
                counter("drive_timeouts_total", "Operations that outlived the drive deadline.", labels, d.timeouts)
                counter(
                    "drive_read_errors_total",
                    "Read errors that did not fail the drive: served from redundancy and rewritten (past 20 in about an hour, it is failed).",
                    labels, d.readErrors)
                if let r = d.remote {
                    let remote = labels + [("uri", r.uri)]
                    stateSet(
                        "drive_link_state", "A remote drive's link: 1 for the state it is in.", remote, states: ["connected", "reconnecting", "lost"],
                        current: r.link)
                    counter("drive_reconnects_total", "Connections to a remote drive made again after one was lost.", remote, r.reconnects)
                    gauge(
                        "drive_round_trip_seconds", "A remote drive's round trip: its commands in a batch sent to answered, smoothed.", remote,
                        Double(r.roundTripMicros) / 1_000_000)
                }
            }
            for (member, c) in counts.drives ?? [:] {
                latency(
                    "drive_latency_seconds", "How long the back end's batches of I/O took on each member, by operation.",
                    [("drive", member)], c)
            }

            for l in report.luns {
                let labels = [("lun", l.name)]
                gauge("lun_size_bytes", "Each LUN's size.", labels, l.sizeBytes)
                if let bytes = l.allocatedBytes { gauge("lun_allocated_bytes", "A thin LUN's blocks in the pool.", labels, bytes) }
                counter("lun_read_bytes_total", "Bytes the host read from each LUN.", labels, l.readBytes ?? 0)
                counter("lun_written_bytes_total", "Bytes the host wrote to each LUN (zeroed ranges included).", labels, l.writtenBytes ?? 0)
                counter("lun_errors_total", "Host requests answered with an error.", labels, l.hostErrors ?? 0)
                if let c = counts.luns[l.name] {
                    let reads = LatencyCounts.dense(c.read).reduce(0, +)
                    let writes = LatencyCounts.dense(c.write).reduce(0, +)
                    let flushes = LatencyCounts.dense(c.flush).reduce(0, +)
                    counter("lun_reads_total", "Read requests the host made of each LUN.", labels, reads)
                    counter("lun_writes_total", "Write and zero requests the host made of each LUN.", labels, writes)
                    counter("lun_flushes_total", "fsync requests the host made of each LUN.", labels, flushes)
                    latency("lun_latency_seconds", "Host request latency of each LUN, from arrival in the front end to the answer.", labels, c)
                }
            }

            let cache = report.cache
            gauge("cache_slots", "Global memory slots (all directors).", [], cache.slotCount)
            gauge("cache_slots_used", "Slots holding a track.", [], cache.usedSlots)
            gauge("cache_write_pending_slots", "Slots write-pending (dirty, not yet destaged).", [], cache.writePendingSlots)
            gauge("cache_write_pending_bytes", "Write-pending bytes in global memory.", [], cache.dirtyBytes)
            gauge("cache_hit_ratio", "Hits over lookups since the mount, reads and writes.", [], cache.hitRatio)
            counter("cache_read_hits_total", "Reads found in global memory.", [], cache.readHits)
            counter("cache_read_misses_total", "Reads staged from the drives.", [], cache.readMisses)
            counter("cache_write_hits_total", "Writes to a slot already holding the track.", [], cache.writeHits)
            counter("cache_write_misses_total", "Writes that took a new slot.", [], cache.writeMisses)
            counter("cache_destaged_stripes_total", "Stripes destaged from global memory to the drives.", [], cache.destagedStripes)
            counter("cache_read_ahead_tracks_total", "Tracks staged ahead of sequential reads.", [], cache.readAheadTracks)
            counter("cache_batched_misses_total", "Random read misses fetched together with others of a director's batch.", [], cache.batchedMisses ?? 0)
            counter("cache_write_through_stripes_total", "Stripes written straight through (large writes).", [], cache.writeThroughStripes)

            for d in report.directors {
                let labels = [("director", d.id), ("engine", String(d.engine))]
                stateSet(
                    "director_state", "Each director's state: 1 for the one it is in.", labels, states: ["online", "stopping", "stopped", "failed"],
                    current: d.state)
                gauge("director_queue_depth", "Requests waiting in each director's front-end queue.", labels, d.queueDepth)
                gauge("director_write_pending_slots", "Each director's write-pending slots.", labels, d.writePendingSlots)
                gauge("director_mirrored_slots", "The partner's write-pending slots mirrored in each director's memory.", labels, d.mirroredSlots)
                gauge("director_acting_for", "Directors whose stripes each director serves (2 after a takeover).", labels, d.actingFor.count)
                counter("director_requests_total", "Requests each director finished.", labels, d.requests)
                counter("director_messages_sent_total", "Messages each director sent on the virtual switch.", labels, d.messagesSent)
                counter("director_messages_received_total", "Messages each director received.", labels, d.messagesReceived)
                counter("director_takeovers_total", "Partners each director took over (failovers).", labels, d.takeovers)
                counter("director_replayed_bytes_total", "Mirrored write-pending bytes replayed in takeovers.", labels, d.replayedBytes)
                if let s = d.services {
                    counter("memory_copy_bytes_total", "Bytes the memory services copied, by director.", labels, s.copyBytes)
                    counter("memory_parity_bytes_total", "Bytes the memory services computed XOR or P+Q parity over.", labels, s.parityBytes)
                    counter("memory_crc_bytes_total", "Bytes the memory services checksummed.", labels, s.crcBytes)
                }
            }

            if let b = report.backEnd {
                counter("backend_full_stripe_writes_total", "Stripes written whole (parity from the new data alone).", [], b.fullStripeWrites)
                counter("backend_read_modify_writes_total", "Partial stripe writes by read-modify-write.", [], b.readModifyWrites)
                counter("backend_reconstruct_writes_total", "Partial stripe writes by reconstruct-write.", [], b.reconstructWrites)
                counter("backend_degraded_reads_total", "Reads rebuilt from redundancy (a member out).", [], b.degradedReads)
                counter("backend_degraded_writes_total", "Writes with a member out.", [], b.degradedWrites)
                counter("journal_batches_total", "Stripe journal batches committed.", [], b.journalBatches)
                counter("journal_bytes_total", "Payload bytes written to the stripe journal.", [], b.journalBytes)
                counter("checksum_mismatches_total", "Blocks read that failed their checksum.", [], b.checksumMismatches)
                counter("checksum_repairs_total", "Blocks that failed their checksum, rewritten from redundancy.", [], b.checksumRepairs)
                counter("checksum_unrecoverable_total", "Reads failed because no copy held the right data.", [], b.checksumUnrecoverable)
            }

            let rebuild = report.rebuild
            gauge("rebuild_running", "1 while a member is being rebuilt.", [], rebuild?.state == "running" ? 1 : 0)
            gauge("rebuild_progress_ratio", "The current or last rebuild's stripes done over its stripes.", [], (rebuild?.percent ?? 0) / 100)
            gauge("rebuild_bytes_per_second", "The running rebuild's rate.", [], rebuild?.state == "running" ? rebuild?.bytesPerSecond ?? 0 : 0)
            let scrub = report.scrub
            gauge("scrub_running", "1 while a scrub runs.", [], scrub?.state == "running" ? 1 : 0)
            gauge("scrub_progress_ratio", "The current or last scrub's stripes done over its stripes.", [], (scrub?.percent ?? 0) / 100)
            gauge("scrub_mismatches", "Stripes the current or last scrub found disagreeing with their redundancy.", [], scrub?.mismatches ?? 0)
            gauge("scrub_repaired", "Of those, the ones it repaired.", [], scrub?.repaired ?? 0)

            if let p = report.pool {
                gauge("pool_size_bytes", "The thin pool's size.", [], p.sizeBytes)
                gauge("pool_allocated_bytes", "Pool blocks mapped by a version or holding the map.", [], p.allocatedBytes)
                gauge("pool_free_bytes", "Pool bytes neither live nor promised.", [], p.freeBytes)
                gauge("pool_reclaimable_bytes", "Dead blocks the cleaner can give back.", [], p.reclaimableBytes)
                counter("pool_reallocated_bytes_total", "Scattered thin LUN pages written again in order by read reallocation.", [], p.reallocatedBytes)
                if let cl = p.cleaner { counter("pool_cleaner_moved_bytes_total", "Live bytes the cleaner moved.", [], cl.movedBytes) }
            }

            if let p = report.powerCut {
                gauge("powercut_cache_bytes", "The host's volatile write cache (-o powercut).", [], p.capacityBytes)
                gauge("powercut_unsynced_bytes", "Bytes written since their LUN's last flush: what a power cut now would drop.", [], p.unsyncedBytes)
                counter("power_cuts_total", "Power cuts of the host's view (vsa powercut).", [], UInt64(p.cuts.count))
                counter(
                    "powercut_dropped_blocks_total", "4 KiB blocks power cuts rolled back to their last flushed contents.", [],
                    p.cuts.reduce(0) { $0 + UInt64($1.droppedBlocks) })
            }

            let faults = report.faults ?? []
            for kind in ["latency", "errors", "hang", "rot", "slow"] {
                for target in ["drive", "director"] where target == "drive" || kind == "slow" || kind == "hang" {
                    gauge(
                        "faults_active", "Injected faults in force (vsa inject), by target and kind.", [("target", target), ("kind", kind)],
                        faults.filter { $0.target == target && $0.kind == kind && $0.state.hasPrefix("active") }.count)
                }
            }
            for f in faults {
                let where_ = f.member.map { "member \($0)" } ?? "director \(f.director ?? "?")"
                counter(
                    "fault_hits_total", "Operations each injected fault delayed, failed or held (rot: blocks flipped).",
                    [("fault", String(f.id)), ("target", where_), ("kind", f.kind)], f.hits)
            }
        }

        /// The state after this collection, series nobody touched unregistered.
        mutating func finish() -> CollectorState {
            for (key, gauge) in state.gauges where !touched.contains(key) {
                registry.unregisterGauge(gauge)
                state.gauges[key] = nil
            }
            for (key, entry) in state.counters where !touched.contains(key) {
                registry.unregisterCounter(entry.0)
                state.counters[key] = nil
            }
            for (key, entry) in state.histograms where !touched.contains(key) {
                registry.unregisterDurationHistogram(entry.0)
                state.histograms[key] = nil
            }
            return state
        }
    }
}
