// Drive failure and rebuild, the control-plane half. A member fails (an I/O error, its file vanished, or
// `vsa drive fail`); the array runs degraded; a hot spare, or the drive given to `vsa drive replace`, takes the
// failed member's place in state rebuilding; the rebuild thread then walks the array's stripes in order and has each
// stripe's owning director rewrite the member's strip from the others (BackEnd `rebuild(stripe:member:)`), so no
// destage of that stripe interleaves with it. Host writes reach the new drive from the moment it is attached; reads
// use it below the rebuild's progress. Progress is recorded in the superblocks about once a second, so a rebuild
// stopped by an unmount or a kill resumes where it was; a rate limit keeps host I/O served meanwhile.
import ArrayModel
import Directors
import Drives
import Foundation
import Metadata
import Synchronization
import SysPosix

#if canImport(Glibc)
    import Glibc
#endif

/// What `vsa status` shows of the current or last rebuild. Guarded by its own lock; progress is atomic.
final class RebuildTracker: @unchecked Sendable {
    struct Snapshot {
        var member: Int
        var drivePath: String
        var state: String  // running, complete, failed, stopped
        var totalStripes: UInt64
        var startStripe: UInt64
        var startedAt: Double
        var finishedAt: Double?
        var rateLimit: UInt64
        var detail: String?
    }
    private let lock = Locked<Snapshot?>(nil)
    let doneStripes = Atomic<UInt64>(0)
    let stopRequested = Atomic<Bool>(false)

    var snapshot: Snapshot? { lock.withLock { $0 } }
    var isRunning: Bool { lock.withLock { $0?.state == "running" } }
    func update(_ body: (inout Snapshot?) -> Void) { lock.withLock { body(&$0) } }
}

/// The default rebuild rate limit per drive (bytes per second): enough to finish a 1 TiB drive in about 1.5 hours,
/// while host I/O keeps most of the machine.
let defaultRebuildRate: UInt64 = 200 << 20

extension ArrayDaemon {
    /// The member that `name` names: its index, its path or the name of its entry in the array folder. Holds: controlLock.
    func resolveMember(_ name: String) throws(VSAError) -> Int {
        let members = store.superblock.memberCount
        if let i = Int(name) {
            guard i >= 0 && i < members else { throw VSAError("drive \(i) is not a member (members are 0 to \(members - 1)); see `vsa status`") }
            return i
        }
        for i in 0..<members {
            let path = store.drivePaths[i]
            if path == name || (path as NSString).lastPathComponent == name || store.drives[i].path == name { return i }
        }
        throw VSAError("no member drive named \(name); give its index or path as `vsa status` shows them")
    }

    /// `vsa drive fail`: takes a member out as if it was pulled. Refused when the array could not survive it
    /// (unless forced), so a typo does not take the data offline.
    func failMember(_ member: Int, force: Bool) throws(VSAError) {
        try controlLock.withLock { _ throws(VSAError) in
            let drive = store.drives[member]
            guard drive.state != .failed else { throw VSAError("member \(member) has already failed; replace it with vsa drive replace") }
            // The members out besides this one (failed, or rebuilding and so not yet readable everywhere).
            let out = store.membersOut | (1 << UInt64(member))
            if !store.superblock.raidLevel.survives(outMask: out, memberCount: store.superblock.memberCount) && !force {
                throw VSAError(
                    "failing member \(member) would leave \(store.superblock.raidLevel) with \(out.nonzeroBitCount) members out, more than it survives; nothing was changed (use --force to do it anyway)"
                )
            }
            drive.transition(to: .failed)
            _ = try store.recordFailures()
            daemonLog("member \(member) (\(store.drivePaths[member])) failed by request")
        }
        startRebuildOntoSpare()
    }

    /// `vsa drive replace`: puts a spare (or the drive at `path`) in member `member`'s place and starts the rebuild
    /// (or queues it behind the running one). A healthy member is failed first (if the array survives that). Returns
    /// the new drive's entry and whether its rebuild is queued.
    func replaceMember(_ member: Int, with path: String?, force: Bool, rate: UInt64) throws(VSAError) -> (entry: String, queued: Bool) {
        let (path, queued) = try controlLock.withLock { _ throws(VSAError) -> (String, Bool) in
            guard !shuttingDown.load(ordering: .relaxed) else { throw VSAError("the array is being unmounted") }
            let sb = store.superblock
            let old = store.drives[member]
            // A failed member replaced while another member's rebuild runs waits for it (md queues the same way):
            // its drive is attached now and takes every write, and its rebuild starts when the running one ends.
            var queued = false
            if rebuildTracker.isRunning, let s = rebuildTracker.snapshot {
                guard member != s.member else { throw VSAError("member \(member) is being rebuilt now (vsa status shows its progress)") }
                if let waiting = sb.queuedRebuildMember {
                    throw VSAError(
                        "a rebuild of member \(s.member) is running and one of member \(waiting) waits for it; wait for them (vsa status shows both)")
                }
                guard old.state == .failed else {
                    throw VSAError("a rebuild of member \(s.member) is running; a healthy member is replaced after it ends (vsa status shows its progress)")
                }
                queued = true
            } else if let busy = sb.rebuildMember {
                throw VSAError("member \(busy) is being rebuilt but its rebuild stopped (see vsa status); unmount and mount again to resume it")
            }
            if old.state == .online {
                guard sb.raidLevel.survives(outMask: store.membersOut | (1 << UInt64(member)), memberCount: sb.memberCount) else {
                    throw VSAError("replacing healthy member \(member) would leave \(sb.raidLevel) without enough members meanwhile; nothing was changed")
                }
            }
            if path == nil && store.spares.isEmpty {
                throw VSAError("the array has no hot spare left; give a new file or device with --with PATH")
            }
            // From here on the folder may change (a new file, a drive-N entry): undone if attaching fails.
            var prepared: ArrayStore.Replacement? = nil
            if let path { prepared = try store.prepareReplacement(member: member, path: path, force: force) }
            let oldEntry = store.drivePaths[member]
            let replacement: ArrayStore.Replacement
            do throws(VSAError) {
                if old.state == .online {
                    old.transition(to: .failed)
                    _ = try store.recordFailures()
                }
                // A spare is picked only now: writing the superblocks above may have failed one.
                if let prepared {
                    replacement = prepared
                } else if let spare = store.spares.first {
                    replacement = ArrayStore.Replacement(drive: spare.drive, entry: spare.path, createdFile: nil, createdEntry: false)
                } else {
                    throw VSAError("the array has no working hot spare left; give a new file or device with --with PATH")
                }
                try store.attach(member: member, drive: replacement.drive, path: replacement.entry, queued: queued)
            } catch {
                if let prepared { store.undo(prepared) }
                throw error
            }
            engines.attach(member: member, drive: replacement.drive)
            store.retire(entry: oldEntry, keeping: replacement.entry)
            if queued {
                queuedRebuildRate.store(rate, ordering: .relaxed)
                daemonLog("member \(member): \(replacement.entry) takes the place of \(oldEntry); its rebuild waits for the running one")
            } else {
                daemonLog("member \(member): \(replacement.entry) takes the place of \(oldEntry); rebuilding")
            }
            return (replacement.entry, queued)
        }
        if !queued { startRebuildThread(rate: rate) }
        return (path, queued)
    }

    /// After a failure: a spare takes the first failed member's place, if there is a spare and no rebuild runs.
    func startRebuildOntoSpare() {
        let member: Int? = controlLock.withLock { _ in
            guard !shuttingDown.load(ordering: .relaxed), !rebuildTracker.isRunning, !store.spares.isEmpty else { return nil }
            guard store.superblock.rebuildMember == nil else { return nil }  // one rebuild at a time
            return store.drives.prefix(store.superblock.memberCount).firstIndex { $0.state == .failed }
        }
        guard let member else { return }
        do {
            let failed = controlLock.withLock { _ in store.drives[member] }
            let path = try replaceMember(member, with: nil, force: false, rate: defaultRebuildRate).entry
            let why = ArrayDaemon.failureCounts(failed)
            controlLock.withLock { _ in messages.append("member \(member) failed\(why); hot spare \(path) took its place") }
            daemonLog("member \(member) failed\(why); hot spare \(path) took its place")
        } catch { daemonLog("automatic rebuild onto a spare did not start: \(error)") }
    }

    /// What a failed drive's counters say about why: " (N I/O errors, M operations past the 2 s drive deadline)".
    static func failureCounts(_ drive: Drive) -> String {
        let errors = drive.errorCount.load(ordering: .relaxed)
        let timeouts = drive.timeouts.load(ordering: .relaxed)
        var parts: [String] = []
        if timeouts > 0 { parts.append("\(timeouts) operation(s) past the \(DriveIO.deadlineSeconds) s drive deadline") }
        if errors > timeouts { parts.append("\(errors - timeouts) I/O error(s)") }
        return parts.isEmpty ? "" : " (" + parts.joined(separator: ", ") + ")"
    }

    /// Starts (or resumes) the rebuild of the member the superblocks name.
    func startRebuildThread(rate: UInt64) {
        let start: (member: Int, drive: Drive, from: UInt64)? = controlLock.withLock { _ in
            guard !shuttingDown.load(ordering: .relaxed), let member = store.superblock.rebuildMember, store.drives[member].state == .rebuilding
            else { return nil }
            let drive = store.drives[member]
            return (member, drive, drive.rebuiltStripes.load(ordering: .acquiring))
        }
        guard let start else { return }
        let total = store.geometry.stripeCount
        rebuildTracker.stopRequested.store(false, ordering: .relaxed)
        rebuildTracker.doneStripes.store(start.from, ordering: .relaxed)
        rebuildTracker.update {
            $0 = .init(
                member: start.member, drivePath: store.drivePaths[start.member], state: "running", totalStripes: total, startStripe: start.from,
                startedAt: Date().timeIntervalSince1970, finishedAt: nil, rateLimit: rate, detail: nil)
        }
        if start.from > 0 { daemonLog("resuming the rebuild of member \(start.member) at stripe \(start.from) of \(total)") }
        let thread = Thread { [self] in runRebuild(member: start.member, drive: start.drive, from: start.from, rate: rate) }
        thread.name = "rebuild"
        thread.start()
    }

    private func runRebuild(member: Int, drive: Drive, from: UInt64, rate: UInt64) {
        let stripBytes = UInt64(store.geometry.stripUnitBytes)
        let total = store.geometry.stripeCount
        let began = Date().timeIntervalSince1970
        var lastRecord = began
        var outcome = "complete"
        var detail: String? = nil
        let next = walkStripes(from: from, rate: rate) { range, luns in
            if rebuildTracker.stopRequested.load(ordering: .relaxed) {
                outcome = "stopped"
                return false
            }
            guard drive.state == .rebuilding else {
                outcome = "failed"
                detail = "the new drive failed"
                return false
            }
            let rc = engines.rebuild(member: member, stripes: range) { placement(of: $0, luns: luns) }
            if rc != 0 {
                outcome = "failed"
                detail =
                    drive.state == .failed
                    ? "the new drive failed" : "stripes \(range) could not be read from the other members (\(Posix.errnoDescription(rc)))"
                return false
            }
            drive.rebuiltStripes.store(range.upperBound, ordering: .releasing)
            return true
        } after: { next, now in
            rebuildTracker.doneStripes.store(next, ordering: .relaxed)
            if now - lastRecord >= 1 && next < total {
                lastRecord = now
                // The rebuilt strips' checksums go down with the checkpoint (an epoch end writes them back and
                // flushes); else a crash would leave those strips with no checksum until rewritten.
                _ = engines.endEpochs()
                controlLock.withLock { _ in
                    do { try store.recordRebuildProgress(stripes: next) } catch { daemonLog("recording rebuild progress failed: \(error)") }
                }
            }
        }
        let finished = Date().timeIntervalSince1970
        if outcome == "complete" { _ = engines.endEpochs() }
        controlLock.withLock { _ in
            if outcome == "complete" {
                // The rebuilt strips must be on the drive before the superblocks call it a member like the others.
                if !store.flushDrives() || !drive.transition(from: .rebuilding, to: .online) {
                    outcome = "failed"
                    detail = "the new drive failed at the end"
                    _ = try? store.recordFailures()
                    daemonLog("rebuild of member \(member) failed: \(detail ?? "")")
                    return
                }
                do { try store.writeSuperblocks(clean: store.superblock.clean) } catch { daemonLog("recording the finished rebuild failed: \(error)") }
                let mib = Double((total - from) * stripBytes) / 1_048_576
                let seconds = max(finished - began, 0.001)
                daemonLog(String(format: "rebuild of member %d complete: %.0f MiB in %.1f s (%.0f MiB/s)", member, mib, seconds, mib / seconds))
            } else if outcome == "stopped" {
                do { try store.recordRebuildProgress(stripes: next) } catch { daemonLog("recording rebuild progress failed: \(error)") }
                daemonLog("rebuild of member \(member) paused at stripe \(next) of \(total); it resumes at the next mount")
            } else if drive.state == .failed {
                // The new drive itself failed: the member is failed again; another spare may take over.
                _ = try? store.recordFailures()
                daemonLog("rebuild of member \(member) failed: \(detail ?? "")")
            } else {
                // The other members could not supply the data: keep what is rebuilt; the next mount tries again.
                do { try store.recordRebuildProgress(stripes: next) } catch { daemonLog("recording rebuild progress failed: \(error)") }
                daemonLog("rebuild of member \(member) stopped at stripe \(next): \(detail ?? "")")
            }
        }
        rebuildTracker.update {
            $0?.state = outcome
            $0?.finishedAt = finished
            $0?.detail = detail
        }
        // A queued rebuild is next (the superblocks made it the current one when this one ended or its drive failed).
        if outcome != "stopped" && controlLock.withLock({ _ in store.superblock.rebuildMember != nil }) {
            startRebuildThread(rate: queuedRebuildRate.load(ordering: .relaxed))
            return
        }
        if outcome == "failed" && drive.state == .failed { startRebuildOntoSpare() }
    }

    /// The LUN that holds array stripe `stripe`, if any.
    static func lun(holding stripe: UInt64, in luns: [LUNEntry]) -> LUNEntry? {
        luns.first { stripe >= $0.startStripe && stripe < $0.startStripe + $0.stripeCount }
    }

    /// Who holds an array stripe for stripe work (rebuild, scrub): a thick LUN (its stripe's home director runs the
    /// work), the pool (the home of its checkpoint slot, or of its segment: the one thread that writes it), or
    /// nobody (director 1a). Pool segments are held for the batch (`walkStripes`), so their owners stay.
    func placement(of stripe: UInt64, luns: [LUNEntry]) -> StripeHolder? { ArrayDaemon.placement(of: stripe, luns: luns, pool: poolRuntime()) }

    static func placement(of stripe: UInt64, luns: [LUNEntry], pool: PoolRuntime?) -> StripeHolder? {
        if let lun = ArrayDaemon.lun(holding: stripe, in: luns) { return StripeHolder(lunID: lun.lunID, startStripe: lun.startStripe) }
        guard let r = pool else { return nil }
        let layout = r.layout
        if stripe >= layout.areaStart && stripe < layout.areaStart + layout.areaStripes {
            return StripeHolder(poolHome: Int((stripe - layout.areaStart) / layout.slotStripes / 2))
        }
        let segment = layout.segment(ofStripe: stripe)
        guard segment < layout.segmentCount else { return nil }
        let owner = r.space.owner(segment)
        return Int(owner) < layout.homes ? StripeHolder(poolHome: Int(owner)) : nil
    }

    /// Walks the array's stripes from `from` in steps of about 4 MiB per drive (short enough for the control lock,
    /// long enough to batch): `step` runs under the control lock with the LUN table and says whether to go on,
    /// `after` runs outside it with the next stripe and the time; sleeps off whatever runs ahead of `rate` bytes per
    /// second per drive (0: no limit). Returns the first stripe not done.
    func walkStripes(
        from: UInt64, rate: UInt64, step: (Range<UInt64>, [LUNEntry]) -> Bool, after: (UInt64, Double) -> Void
    ) -> UInt64 {
        let total = store.geometry.stripeCount
        let stripBytes = UInt64(store.geometry.stripUnitBytes)
        let stride = max(1, (4 << 20) / stripBytes)
        let began = Date().timeIntervalSince1970
        var next = from
        while next < total {
            let end = min(total, next + stride)
            // The pool's segments in the batch keep their owners meanwhile (its stripe work runs on theirs).
            let space = poolRuntime()?.space
            space?.holdForMaintenance(next..<end)
            let goOn = controlLock.withLock { _ in step(next..<end, store.lunTable.entries) }
            space?.releaseFromMaintenance(next..<end)
            guard goOn else { break }
            next = end
            let now = Date().timeIntervalSince1970
            after(next, now)
            if rate > 0 {
                let ahead = Double((next - from) * stripBytes) / Double(rate) - (now - began)
                if ahead > 0 { usleep(UInt32(min(ahead, 1) * 1_000_000)) }
            } else {
                usleep(200)  // let an fsync or a status waiting for the control lock in before the next step
            }
        }
        return next
    }

    /// How far a stripe walk begun at stripe `from` has got: percent of the array, bytes per second per drive since it
    /// began, and the seconds left at that speed while it runs.
    func walkProgress(done: UInt64, from: UInt64, total: UInt64, startedAt: Double, finishedAt: Double?, running: Bool)
        -> (percent: Double, bytesPerSecond: UInt64, etaSeconds: Double?)
    {
        let stripBytes = UInt64(store.geometry.stripUnitBytes)
        let elapsed = max((finishedAt ?? Date().timeIntervalSince1970) - startedAt, 0.001)
        let speed = UInt64(Double((done > from ? done - from : 0) * stripBytes) / elapsed)
        let left = (total > done ? total - done : 0) * stripBytes
        return (total == 0 ? 100 : Double(done) * 100 / Double(total), speed, running && speed > 0 ? Double(left) / Double(speed) : nil)
    }

    /// Asks a background walk to stop (`request`) and waits up to 5 s until `running` says it has.
    func stopAndWait(request: () -> Void, running: () -> Bool) {
        guard running() else { return }
        request()
        for _ in 0..<500 where running() { usleep(10_000) }
    }

    /// The rebuild part of `vsa status`.
    func rebuildInfo() -> StatusReport.RebuildInfo? {
        guard let r = rebuildTracker.snapshot else { return nil }
        let done = rebuildTracker.doneStripes.load(ordering: .relaxed)
        let progress = walkProgress(
            done: done, from: r.startStripe, total: r.totalStripes, startedAt: r.startedAt, finishedAt: r.finishedAt, running: r.state == "running")
        var info = StatusReport.RebuildInfo(
            member: r.member, drive: r.drivePath, state: r.state, doneStripes: done, totalStripes: r.totalStripes, percent: progress.percent,
            bytesPerSecond: progress.bytesPerSecond, rateLimitBytesPerSecond: r.rateLimit, etaSeconds: progress.etaSeconds, detail: r.detail)
        info.queued = controlLock.withLock { _ in
            store.superblock.queuedRebuildMember.map { StatusReport.QueuedRebuild(member: $0, drive: store.drivePaths[$0]) }
        }
        return info
    }

    /// Asks a running rebuild to stop and record where it got (unmount); waits up to a few seconds.
    func pauseRebuild() {
        stopAndWait(request: { rebuildTracker.stopRequested.store(true, ordering: .relaxed) }, running: { rebuildTracker.isRunning })
    }

    /// Applies what the drive probes found (the health thread, every 0.5 s). A member whose drive file vanished (deleted
    /// or its device gone) or was truncated has failed: its data is no longer reachable by path, whatever the open
    /// descriptor still allows. A probe runs on a thread of its own per member and no lock is held while it looks at
    /// the drive: a drive that stops answering (a paused network drive behind FUSE) stalls only its probe, and a probe
    /// still waiting after the drive deadline fails the drive.
    func checkDrivesPresent() {
        let deadline = DriveIO.deadlineSeconds
        controlLock.withLock { _ in
            for (i, probe) in driveProbes.enumerated() where i < store.superblock.memberCount {
                let drive = store.drives[i]
                guard drive.state != .failed, !drive.isMissing else { continue }
                let finding = probe.finding(for: drive, deadlineSeconds: deadline)
                guard let finding else { continue }
                drive.transition(to: .failed)
                daemonLog("member \(i): \(store.drivePaths[i]) \(finding); the drive is failed")
            }
        }
    }

    /// One prober thread per member: every 0.5 s it looks at the member's drive (is its path there, is it as long as
    /// the array needs), holding no lock while it does.
    func startDriveProbes() {
        for i in 0..<store.superblock.memberCount {
            let probe = driveProbes[i]
            let thread = Thread { [self] in
                while true {
                    usleep(500_000)
                    let target = controlLock.withLock { _ in (store.drives[i], store.drivePaths[i], store.superblock.driveBytesRequired) }
                    // A remote drive has no path to look at: its connection's failures and the drive deadline fail it.
                    guard target.0.state != .failed, !target.0.isMissing, target.0.remoteURI == nil else { continue }
                    probe.run(drive: target.0, path: target.1, requiredBytes: target.2)
                }
            }
            thread.name = "probe-\(i)"
            thread.start()
        }
    }
}

/// What one member's prober saw last, and whether it is stuck in a look at the drive right now.
final class DriveProbe: @unchecked Sendable {
    private let lock = NSLock()
    private var probing: Drive? = nil
    private var startedAt: Double = 0
    private var lastFinding: (drive: Drive, text: String)? = nil

    /// Looks at the drive (on the prober's thread; it may block as long as the drive does).
    func run(drive: Drive, path: String, requiredBytes: UInt64) {
        lock.withLock {
            probing = drive
            startedAt = Posix.monotonicSeconds()
        }
        var finding: String? = nil
        if access(path, F_OK) != 0 && errno == ENOENT {
            finding = "vanished"
        } else if !drive.isBlockDevice, let size = try? Posix.fileSize(fd: drive.fd).sizeBytes, size < requiredBytes {
            // A drive file cut short under us would read back zeroes where data was: failed, not trusted.
            finding = "shrank to \(size) bytes (needs \(requiredBytes))"
        }
        lock.withLock {
            probing = nil
            if let finding { lastFinding = (drive, finding) }
        }
    }

    /// Why `drive` must be failed, if it must: its last probe found it gone or short, or a probe of it has been waiting
    /// longer than the drive deadline.
    func finding(for drive: Drive, deadlineSeconds: Double) -> String? {
        lock.withLock {
            if let last = lastFinding, last.drive === drive { return last.text }
            if deadlineSeconds > 0, let stuck = probing, stuck === drive, Posix.monotonicSeconds() - startedAt > deadlineSeconds {
                return "did not answer a look at its file within \(deadlineSeconds) s"
            }
            return nil
        }
    }
}
