// A seeded simulation of the core: one engine (directors 1a and 1b, each with its cache portion, the mirror of its
// partner's write-pending data and its back-end adapter) over an array of drive files on tmpfs, driven by random
// steps — host writes, reads, destage, flush (fsync), director failure and restore (between any two steps: the
// partner replays the mirror and takes the stripes; both out gives EIO), drive failures, replacement and rebuild in
// pieces, drives that start failing every I/O, silent bit flips, power cuts inside a step (a torn write, dropped and
// lost unflushed writes), scrub, and crashes (caches and back ends are dropped without destaging; the array is
// assembled again from its drives alone, resynchronised, and a rebuild in progress resumes from its checkpoint).
// The directors' threads are tasks of a seeded scheduler (SimulationScheduler.swift): real threads run one at a
// time, and at pause points (inside a destage pass between stripes and before its journal commit, between the pieces
// of a request, inside a failover, wherever a thread waits for another) the seed decides who runs next. So the host's
// fsync can overtake a director's idle pass, a crash can land while a pass is half done, and a seed still replays
// exactly. With the durability invariant taken out (TrackCache marking slots clean before their batch commits),
// seed 39596, the sixth of `make test`'s 24, fails: an fsync'd write is gone after the crash.
// Invariants after every step: a read returns the newest data written; after a crash every sector not written since
// the last flush holds what that flush made durable; a redundant array with every member in reads the same with any
// member it can lose left out; scrub finds every stripe consistent after a flush.
//
// A second test runs the same on a thin LUN: the pool's homes (docs/POOL.md) under the directors, with snapshots
// taken, read back and deleted, restores, a linked clone (written, read, relinked, unlinked, deleted:
// SimulationClones.swift), discards of many stripes, cleaner steps and checkpoints among the steps, so crashes and
// power cuts also land mid-commit, mid-checkpoint, mid-cleaning, mid-snapshot and mid-reset; after every crash the
// pool is recovered from the drives as a mount does, every snapshot known taken must read as it was taken (one cut
// short: whole or gone), and the clone as written; cold and degraded reads load the homes from the drives alone;
// bit flips land anywhere in the pool's stripes.
//
// Same seed, same run: a failing seed is printed and replays exactly with VSA_SIM_SEED=N (VSA_SIM_LOG=K prints the
// last K steps; VSA_SIM_NOCRC=1 runs without block checksums, VSA_SIM_LOSS=P loses P% of unflushed writes at a power
// cut). `make test` runs 24 seeds; `make sim SEEDS=N` runs more.
import ArrayModel
import BackEnd
import Buffers
import Directors
import Drives
import GlobalMemory
import MemoryServices
import Metadata
import Pool
import XCTest

@testable import Daemon

final class SimulationTests: XCTestCase {
    static let levels: [(RAIDLevel, Int)] = [(.raid1, 2), (.raid10, 4), (.raid5, 4), (.raid5, 5), (.raid6, 5), (.raid6, 6)]

    func testSeededSimulation() throws { try runSeeds(thin: false, count: 24, spacing: 7919, offset: 1) }

    /// The same on a thin LUN: the pool's homes under the directors (redirect-on-write destage, commits,
    /// checkpoints), with snapshots taken, read back and deleted, restores, a linked clone, discards, and the cleaner
    /// and checkpoints as steps of their own, so crashes and power cuts land mid-destage, mid-commit, mid-checkpoint,
    /// mid-cleaning, mid-snapshot and mid-reset.
    func testSeededSimulationOfAThinLUN() throws { try runSeeds(thin: true, count: 12, spacing: 6007, offset: 3) }

    func runSeeds(thin: Bool, count defaultCount: Int, spacing: UInt64, offset: UInt64) throws {
        let env = ProcessInfo.processInfo.environment
        let seeds: [UInt64]
        if let one = env["VSA_SIM_SEED"].flatMap(UInt64.init) {
            seeds = [one]
        } else {
            let count = env["VSA_SIM_SEEDS"].flatMap(Int.init) ?? defaultCount
            seeds = (0..<UInt64(count)).map { $0 * spacing + offset }
        }
        defer { DriveFaultInjector.active = nil }
        let test = thin ? "testSeededSimulationOfAThinLUN" : "testSeededSimulation"
        for seed in seeds {
            DriveFaultInjector.active = DriveFaultInjector(seed: seed ^ 0xD1CE)
            if let p = ProcessInfo.processInfo.environment["VSA_SIM_LOSS"].flatMap(UInt64.init) { DriveFaultInjector.active!.lossPercent = p }
            var sim = try Simulation(seed: seed, thin: thin)
            defer { sim.cleanUp() }
            if let failure = sim.run(steps: 400) {
                XCTFail("simulation seed \(seed) failed: \(failure) (replay: VSA_SIM_SEED=\(seed) swift test --filter SimulationTests/\(test))")
                return
            }
        }
    }
}

struct Simulation {
    let seed: UInt64
    var rng: SplitMix
    /// The LUN is thin: its blocks live in the pool (made again from the drives at every crash).
    let thin: Bool
    var pool: PoolRuntime? = nil
    /// Snapshots of the thin LUN known to be taken, with the contents they must keep, and those a power cut or a
    /// failure left half taken or half deleted: the next mount keeps them whole (with those contents) or drops them.
    var snapshots: [UInt32: [UInt8]] = [:]
    var uncertainSnapshots: [UInt32: [UInt8]] = [:]
    var nextSnapshot: UInt32 = 1000
    /// A clone linked to one of those snapshots (as `vsa snap link` makes it), written and read as a LUN of its own.
    var clone: SimulatedClone? = nil
    let snapshotIO = alignedBuffer(bytes: 1 << 20)
    let directory: String
    let level: RAIDLevel
    var store: ArrayStore
    var lun: LUNRef
    /// Directors 1a and 1b (one engine); their threads are not running.
    var engines: Engines
    /// Fails or restores a director between two pieces of a request, now and then.
    var midRequest: MidRequestFailover
    /// Which thread runs when: the host (this thread) and the directors' threads, one at a time, switched at pause
    /// points by the seed (SimulationScheduler.swift).
    let scheduler: SimulationScheduler
    let slotsPerDirector: Int
    /// A tiny checksum page cache (1 to 8 pages), so pages are evicted and read back all the time.
    var checksums: BlockChecksums
    let memory = MemoryServices()
    let lunSize = 1 << 20
    /// What the last flush made durable, what the host wrote since, and which sectors were written since.
    var durable: [UInt8]
    var latest: [UInt8]
    var writtenSinceFlush: [Bool]
    /// Sectors a failed write may or may not have changed (its pieces either ran or got EIO, the host cannot tell
    /// which): the next read of them, or the next flush, takes what the array holds.
    var unknown: [Bool]
    let io = alignedBuffer(bytes: 1 << 20)
    var rebuildingMember: Int? = nil
    var newDrives = 0
    var log: [String] = []

    init(seed: UInt64, thin: Bool = false) throws {
        self.seed = seed
        self.thin = thin
        rng = SplitMix(seed: seed)
        let (level, drives) = SimulationTests.levels[Int(rng.next() % UInt64(SimulationTests.levels.count))]
        self.level = level
        directory = "/dev/shm/vsa-sim-\(getpid())-\(seed)"
        try? FileManager.default.removeItem(atPath: directory)
        store = try ArrayStore.create(
            CreateOptions(
                directory: directory, driveCount: drives, driveSizeBytes: thin ? 24 << 20 : 8 << 20, drivePaths: [], raidLevel: level,
                spareCount: 0, stripUnitBytes: Simulation.stripUnit(rng.next(), level: level, thin: thin), cacheBytes: 16 << 20, engineCount: 1, force: false))
        if thin {
            let entry = try ArrayDaemon.createThinLUNOffline(store: store, name: "l", sizeBytes: UInt64(lunSize))
            lun = LUNRef(lunID: entry.lunID, startStripe: 0, sizeBytes: entry.sizeBytes, thin: true)
        } else {
            let entry = try store.createLUN(name: "l", sizeBytes: UInt64(lunSize))
            lun = LUNRef(lunID: entry.lunID, startStripe: entry.startStripe, sizeBytes: entry.sizeBytes)
        }
        checksums = BlockChecksums(geometry: store.geometry, cacheBytes: 4096 * Int(1 + rng.next() % 8))
        let recovery = try JournalRecovery.recover(
            geometry: store.geometry, drives: store.drives, arrayUUID: store.superblock.arrayUUID, unclean: false,
            checksums: ProcessInfo.processInfo.environment["VSA_SIM_NOCRC"] == nil ? checksums : nil)
        try store.writeSuperblocks(clean: false)  // mounted
        let d = store.geometry.dataStripsPerStripe
        slotsPerDirector = 2 * d + 2 + Int(rng.next() % 24)
        engines = try Simulation.makeEngines(store: store, epochs: recovery.epochs, slots: slotsPerDirector, checksums: checksums)
        scheduler = SimulationScheduler(seed: seed ^ 0x5C4E_D01E)
        scheduler.adopt(engines)
        midRequest = MidRequestFailover(seed: seed ^ 0xFA11, scheduler: scheduler)
        // The mount's part for a pool: its homes made (or recovered) on the directors' back ends, then attached.
        if thin { pool = try ArrayDaemon.openPool(store: store, engines: engines, cacheBytes: 16 << 20, log: { _ in }) }
        // The whole LUN is written once, so every block of its stripes has a checksum (a flip is then always seen).
        for i in 0..<lunSize { io.base.storeBytes(of: UInt8(truncatingIfNeeded: rng.next()), toByteOffset: i, as: UInt8.self) }
        guard engines.write(lun: lun, offsetBytes: 0, count: lunSize, from: io.base) == 0, engines.flush(lun: lun) == 0 else {
            throw VSAError(
                "first write failed: capacity \(pool?.space.capacityBlocks ?? -1) live \(pool?.space.liveBlocksTotal ?? -1) segments \(pool?.space.poolSegments ?? -1) held \(pool?.space.heldBackSegments.load(ordering: .relaxed) ?? -1) bps \(pool?.layout.blocksPerSegment ?? -1) promisable \(pool?.space.promisableBlocksPerSegment ?? -1) homes \(pool?.layout.homes ?? -1)"
            )
        }
        midRequest.attach(to: engines)
        let written = io.base
        durable = (0..<(1 << 20)).map { written.load(fromByteOffset: $0, as: UInt8.self) }
        latest = durable
        writtenSinceFlush = [Bool](repeating: false, count: lunSize / 512)
        unknown = writtenSinceFlush
    }

    /// 4, 8 or 16 KiB; a pool (thin) needs stripes of two blocks at least, so RAID-1 then takes 8 KiB for 4.
    static func stripUnit(_ roll: UInt64, level: RAIDLevel, thin: Bool) -> Int {
        let unit = [4096, 8192, 16384][Int(roll % 3)]
        return thin && level == .raid1 && unit == 4096 ? 8192 : unit
    }

    func cleanUp() {
        scheduler.stop(drives: store.drives)
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Two directors as the daemon builds them (each its own back end and journal slice), their own threads not started
    /// (the simulation runs them as scheduler tasks; other tests run every request on the calling thread).
    static func makeEngines(store: ArrayStore, epochs: [UInt64], slots: Int, checksums: BlockChecksums) throws -> Engines {
        var spec = EngineSpec(geometry: store.geometry, drives: store.drives, engineCount: 1, slotsPerDirector: slots)
        spec.queueCapacity = 64
        spec.journal = (store.superblock.arrayUUID, epochs)
        spec.checksums = ProcessInfo.processInfo.environment["VSA_SIM_NOCRC"] == nil ? checksums : nil
        // VSA_UNSAFE_NO_MIRROR=1 shows what the mirror is for: the simulation fails.
        spec.mirroring = ProcessInfo.processInfo.environment["VSA_UNSAFE_NO_MIRROR"] == nil
        return try Engines.build(spec)
    }

    var anyDirectorOnline: Bool { engines.directors.contains { $0.state == .online } }

    /// Whether some piece of this step found no director online (both out, perhaps only for a moment): the step's
    /// request may have failed with EIO, rightly.
    var directorsWereOut: Bool { !anyDirectorOnline || midRequest.sawNoDirector }

    /// Where array stripes lie (for rebuild and scrub requests): the LUN's, else none.
    var placement: Engines.Placement {
        if thin {
            let (luns, pool) = (store.lunTable.entries, pool)
            return { s in ArrayDaemon.placement(of: s, luns: luns, pool: pool) }
        }
        let lun = lun
        let stripes = store.geometry.stripesFor(sizeBytes: lun.sizeBytes)
        return { s in s >= lun.startStripe && s < lun.startStripe + stripes ? StripeHolder(lunID: lun.lunID, startStripe: lun.startStripe) : nil }
    }

    /// A back end for cold reads that bypass the directors (any director's: they share the drives).
    var anyBackEnd: RAIDBackEnd { engines.directors[0].backEnd }

    var membersOut: UInt64 { store.membersOut }

    /// Runs `steps` random steps; returns the first broken invariant, with the steps that led there.
    mutating func run(steps: Int) -> String? {
        log.append("\(level) x\(store.memberCount), strip \(store.geometry.stripUnitBytes), \(slotsPerDirector) slots per director")
        for step in 0..<steps {
            if let problem = noticeIOErrors() { return "step \(step): \(problem)" }
            midRequest.sawNoDirector = false
            let roll = rng.next() % 100
            let problem: String?
            // A thin LUN's pool has steps of its own, taken now and then instead of the usual ones.
            if thin && rng.next() % 100 < 12 {
                problem = poolStep()
            } else {
                switch roll {
                case 0..<40: problem = write(zero: roll < 4)
                case 40..<56: problem = read()
                case 56..<60: problem = failOrRestoreDirector()
                case 60..<68: problem = destageSome()
                case 68..<78: problem = flush()
                case 78..<82: problem = failDrive()
                case 82..<88: problem = replaceOrRebuild()
                case 88..<92: problem = scrubAll()
                case 92..<94: problem = crash()
                case 94..<96: problem = powerCut()
                case 96..<98: problem = flush() ?? crash()
                case 98: problem = flipBits()
                case 99: problem = armIOError()
                default: problem = readAllDegraded()
                }
            }
            log += midRequest.events
            midRequest.events.removeAll()
            log += scheduler.events.map { "  (scheduler) " + $0 }
            scheduler.clearEvents()
            if let problem {
                return "step \(step): \(problem)\n  " + log[0] + "\n  "
                    + log.suffix(ProcessInfo.processInfo.environment["VSA_SIM_LOG"].flatMap(Int.init) ?? 12).joined(separator: "\n  ")
            }
        }
        return crash() ?? readAllDegraded()
    }

    mutating func write(zero: Bool, countMax: Int = 40000) -> String? {
        let count = Int(rng.next() % UInt64(countMax)) + 1
        let offset = Int(rng.next() % UInt64(lunSize - count))
        for i in 0..<count { io.base.storeBytes(of: zero ? 0 : UInt8(truncatingIfNeeded: rng.next()), toByteOffset: i, as: UInt8.self) }
        log.append("write \(offset)+\(count)\(zero ? " zeroes" : "")")
        let rc =
            zero
            ? engines.zero(lun: lun, offsetBytes: UInt64(offset), count: UInt64(count))
            : engines.write(lun: lun, offsetBytes: UInt64(offset), count: count, from: io.base)
        guard rc == 0 else {
            // A failed write may have landed in part: those sectors are in flight (old or new after a crash).
            for s in (offset / 512)...((offset + count - 1) / 512) {
                writtenSinceFlush[s] = true
                unknown[s] = true
            }
            // After a power cut the process runs on (a real one would be dead): reads see what never got written.
            if directorsWereOut { return nil }  // EIO is the answer with every director out
            return membersOutTolerated && !injector.cut ? "write failed with the array within its tolerance (errno \(rc))" : nil
        }
        for i in 0..<count { latest[offset + i] = io.base.load(fromByteOffset: i, as: UInt8.self) }
        for s in (offset / 512)...((offset + count - 1) / 512) {
            writtenSinceFlush[s] = true
            // A sector this write covered whole is known again.
            if s * 512 >= offset && s * 512 + 512 <= offset + count { unknown[s] = false }
        }
        return nil
    }

    var membersOutTolerated: Bool { level.survives(outMask: store.currentFailedMask, memberCount: store.memberCount) }

    mutating func read() -> String? {
        let count = Int(rng.next() % 70000) + 1
        let offset = Int(rng.next() % UInt64(lunSize - count))
        log.append("read \(offset)+\(count)")
        let n = count
        guard engines.read(lun: lun, offsetBytes: UInt64(offset), count: n, into: io.base) == 0 else {
            return directorsWereOut ? nil : "read \(offset)+\(n) failed"
        }
        for i in 0..<n where io.base.load(fromByteOffset: i, as: UInt8.self) != latest[offset + i] {
            if unknown[(offset + i) / 512] { continue }
            return "read: byte \(offset + i) is \(io.base.load(fromByteOffset: i, as: UInt8.self)), newest written \(latest[offset + i])"
        }
        learnUnknown(offset: offset, count: n)
        return nil
    }

    /// What the array returned for sectors of [offset, offset+count) (in `io`) that a failed write left unknown is
    /// what they hold from now on.
    mutating func learnUnknown(offset: Int, count: Int) {
        for s in (offset / 512)...((offset + count - 1) / 512) where unknown[s] && s * 512 >= offset && s * 512 + 512 <= offset + count {
            for i in (s * 512)..<(s * 512 + 512) { latest[i] = io.base.load(fromByteOffset: i - offset, as: UInt8.self) }
            unknown[s] = false
        }
    }

    /// Reads every unknown sector back (before a flush makes `latest` durable).
    mutating func resolveUnknown() -> String? {
        var s = 0
        while s < unknown.count {
            guard unknown[s] else {
                s += 1
                continue
            }
            var e = s
            while e + 1 < unknown.count && unknown[e + 1] && (e + 1 - s) * 512 < (1 << 20) { e += 1 }
            guard engines.read(lun: lun, offsetBytes: UInt64(s * 512), count: (e - s + 1) * 512, into: io.base) == 0 else {
                return directorsWereOut ? nil : "reading back what a failed write left failed"
            }
            learnUnknown(offset: s * 512, count: (e - s + 1) * 512)
            s = e + 1
        }
        return nil
    }

    /// The directors' threads get a turn: each runs what waits in its queue or an idle destage pass, and may be
    /// paused inside it (the scheduler decides) while the host goes on.
    mutating func destageSome() -> String? {
        log.append("directors run")
        for _ in 0..<(1 + rng.next() % 2) { scheduler.letDirectorsRun() }
        return nil
    }

    /// A director fails (its partner replays its mirrored write-pending data and takes its stripes), or a failed
    /// one comes back. With both out, I/O fails with EIO until one is restored.
    mutating func failOrRestoreDirector() -> String? {
        let director = engines.directors[Int(rng.next() % 2)]
        if ProcessInfo.processInfo.environment["VSA_SIM_NOFAILOVER"] != nil { return nil }
        do {
            if director.state == .online {
                log.append("fail director \(director.id)")
                _ = try engines.failDirector(director.id)
            } else {
                log.append("restore director \(director.id)")
                _ = try engines.restoreDirector(director.id)
            }
        } catch { return "director \(director.id): \(error)" }
        for d in engines.directors where d.state == .online && d.partner.state == .online {
            guard d.cache.mirror === d.partner.mirrorForPartner else { return "director \(d.id) does not mirror to its partner" }
        }
        return nil
    }

    /// fsync: destage everything, flush the drives, record failures; what was written is durable now.
    mutating func flush() -> String? {
        log.append("flush")
        guard engines.flush(lun: nil) == 0 else {
            return injector.cut || directorsWereOut ? nil : "flush failed"
        }
        do { _ = try store.recordFailures() } catch { return "recording failures: \(error)" }
        // The power went off during it: the flush was never acknowledged.
        if injector.cut { return nil }
        if let problem = resolveUnknown() { return problem }
        if unknown.contains(true) { return nil }  // both directors out meanwhile: nothing is known to be durable
        durable = latest
        for i in writtenSinceFlush.indices { writtenSinceFlush[i] = false }
        return nil
    }

    mutating func failDrive() -> String? {
        let member = Int(rng.next() % UInt64(store.memberCount))
        let out = membersLost | (1 << UInt64(member))
        guard store.drives[member].state != .failed, level.survives(outMask: out, memberCount: store.memberCount) else { return nil }
        log.append("fail member \(member)")
        store.drives[member].transition(to: .failed)
        if rebuildingMember == member { rebuildingMember = nil }
        // The daemon records a failure at once (health thread, or the next flush before it answers).
        do { _ = try store.recordFailures() } catch { return "recording the failure: \(error)" }
        return nil
    }

    /// Starts a replacement of a failed member, or rebuilds a few stripes of the one in progress.
    mutating func replaceOrRebuild() -> String? {
        if let member = rebuildingMember {
            let drive = store.drives[member]
            let total = store.geometry.stripeCount
            var next = drive.rebuiltStripes.load(ordering: .relaxed)
            let end = min(total, next + 1 + rng.next() % 200)
            log.append("rebuild member \(member) stripes \(next)..<\(end)")
            guard anyDirectorOnline else { return nil }
            while next < end {
                // As the daemon's walk does: the stripe's segment keeps its owner while its home runs the rebuild.
                pool?.space.holdForMaintenance(next..<(next + 1))
                let rc = engines.rebuild(member: member, stripes: next..<(next + 1), placement: placement)
                pool?.space.releaseFromMaintenance(next..<(next + 1))
                guard rc == 0 else {
                    // The new drive itself died: the rebuild stops (the daemon's would too), the member is failed.
                    if drive.state == .failed { return noticeIOErrors() }
                    if directorsWereOut { return nil }  // both directors went out in the middle: EIO, resumed later
                    return "rebuild of stripe \(next) failed"
                }
                next += 1
                drive.rebuiltStripes.store(next, ordering: .releasing)
            }
            do {
                if next == total {
                    // As the daemon does: an epoch end puts the rebuilt strips' checksums on the drives first.
                    guard engines.endEpochs() == 0 else { return "epoch end after the rebuild failed" }
                    drive.transition(to: .online)
                    try store.writeSuperblocks(clean: false)
                    rebuildingMember = nil
                    log.append("rebuild of member \(member) complete")
                } else if rng.next() % 2 == 0 {
                    guard engines.flush(lun: nil) == 0, engines.endEpochs() == 0 else {
                        return directorsWereOut ? nil : "flush before the checkpoint failed"
                    }
                    try store.recordRebuildProgress(stripes: next)
                }
            } catch { return "recording the rebuild: \(error)" }
            return nil
        }
        guard store.superblock.rebuildMember == nil,
            let member = (0..<store.memberCount).first(where: { store.drives[$0].state == .failed })
        else { return nil }
        newDrives += 1
        log.append("replace member \(member)")
        do {
            let replacement = try store.prepareReplacement(member: member, path: "\(directory)/new-\(newDrives)", force: false)
            try store.attach(member: member, drive: replacement.drive, path: replacement.entry)
            engines.attach(member: member, drive: replacement.drive)
        } catch { return "replace: \(error)" }
        rebuildingMember = member
        return nil
    }

    /// After a flush, with every member in, scrub must find every stripe of the LUN consistent.
    mutating func scrubAll() -> String? {
        guard membersLost == 0, anyDirectorOnline else { return nil }
        if let problem = flush() { return problem }
        log.append("scrub")
        var outcomes: [(UInt64, ScrubOutcome)] = []
        for run in lunStripeRuns {
            pool?.space.holdForMaintenance(run)
            engines.scrub(stripes: run, repair: false, placement: placement) { outcomes.append(($0, $1)) }
            pool?.space.releaseFromMaintenance(run)
        }
        if directorsWereOut { return nil }  // both directors went out during it: stripes not run report unreadable
        for (s, outcome) in outcomes {
            if outcome != .consistent {
                var detail = ""
                let g = store.geometry
                let buffer = alignedBuffer(bytes: g.stripUnitBytes)
                for member in 0..<store.memberCount {
                    let fd = open(store.drivePaths[member], O_RDONLY)
                    _ = pread(fd, buffer.base, g.stripUnitBytes, off_t(g.driveOffset(stripe: s)))
                    close(fd)
                    let dio = try! DriveIO(drives: store.drives)
                    if let bad = checksums.verify(
                        member: member, driveOffset: g.driveOffset(stripe: s), count: g.stripUnitBytes, data: buffer.base, io: dio, memory: memory)
                    {
                        detail += " member \(member) block \(bad) bad;"
                    }
                }
                return "scrub: stripe \(s) \(outcome):\(detail) P=\(g.parityDrive(stripe: s))"
            }
        }
        return nil
    }

    var injector: DriveFaultInjector { DriveFaultInjector.active! }

    /// Members that are out, or about to be (a drive armed to fail counts as lost already).
    var membersLost: UInt64 {
        var mask = membersOut
        if let path = injector.failingPath, let member = (0..<store.memberCount).first(where: { store.drives[$0].path == path }) {
            mask |= 1 << UInt64(member)
        }
        return mask
    }

    /// A member's drive starts failing every I/O; DriveIO fails the member at its next read or write.
    mutating func armIOError() -> String? {
        guard injector.failingPath == nil else { return nil }
        let member = Int(rng.next() % UInt64(store.memberCount))
        guard store.drives[member].state != .failed, level.survives(outMask: membersLost | (1 << UInt64(member)), memberCount: store.memberCount) else {
            return nil
        }
        log.append("member \(member) starts failing I/O")
        injector.failingPath = store.drives[member].path
        return nil
    }

    /// The daemon's health thread: a member failed by an I/O error is recorded; its drive is never used again.
    mutating func noticeIOErrors() -> String? {
        guard let path = injector.failingPath else { return nil }
        guard let member = (0..<store.memberCount).first(where: { store.drives[$0].path == path }) else {
            injector.failingPath = nil
            return nil
        }
        guard store.drives[member].state == .failed else { return nil }
        log.append("member \(member) failed by an I/O error")
        if rebuildingMember == member { rebuildingMember = nil }
        do { _ = try store.recordFailures() } catch { return "recording the failure: \(error)" }
        injector.failingPath = nil
        return nil
    }

    /// Silent corruption: a byte of one 4 KiB block of a member, in the LUN's stripes, changes behind the array's
    /// back (after a flush, so the drives hold the newest data). A scrub of that stripe must find it by its checksum
    /// and repair it, and a read from the drives must give the newest data.
    mutating func flipBits() -> String? {
        let tolerance = level == .raid6 ? 2 : 1
        guard injector.failingPath == nil, membersLost.nonzeroBitCount + 1 <= tolerance, anyDirectorOnline else { return nil }
        if let problem = flush() { return problem }
        if injector.cut { return crash() }
        // The cold read below uses a director's back end: no director thread may be inside a step meanwhile.
        scheduler.settle()
        let member = Int(rng.next() % UInt64(store.memberCount))
        guard store.drives[member].state == .online else { return nil }
        let g = store.geometry
        let runs = lunStripeRuns
        var pick = rng.next() % UInt64(max(1, runs.reduce(0) { $0 + $1.count }))
        var stripe = runs.first?.lowerBound ?? 0
        for run in runs {
            if pick < UInt64(run.count) {
                stripe = run.lowerBound + pick
                break
            }
            pick -= UInt64(run.count)
        }
        let block = UInt64(rng.next() % UInt64(g.stripUnitBytes / 4096))
        let at = g.driveOffset(stripe: stripe) + block * 4096 + rng.next() % 4096
        log.append("flip a byte of member \(member) at \(at) (stripe \(stripe))")
        let fd = open(store.drivePaths[member], O_RDWR)
        guard fd >= 0 else { return "open \(store.drivePaths[member])" }
        var byte: UInt8 = 0
        guard pread(fd, &byte, 1, off_t(at)) == 1 else { return "pread" }
        byte ^= UInt8(1 << (rng.next() % 8))
        guard pwrite(fd, &byte, 1, off_t(at)) == 1 else { return "pwrite" }
        close(fd)
        var outcome = ScrubOutcome.consistent
        pool?.space.holdForMaintenance(stripe..<(stripe + 1))
        engines.scrub(stripes: stripe..<(stripe + 1), repair: true, placement: placement) { outcome = $1 }
        pool?.space.releaseFromMaintenance(stripe..<(stripe + 1))
        // (With both directors gone out during it, the scrub did not run: the read below still finds the damage.)
        // A pool stripe may hold blocks never written since it was made (past a log's head: no checksum, and no
        // one reads them); a flip there is a parity mismatch at most. Whatever it hit, the LUN must read right.
        guard thin || outcome == .repaired || outcome == .repairedData || directorsWereOut else { return "scrub after a bit flip: \(outcome)" }
        guard coldRead(from: anyBackEnd) else { return "read after the repair failed" }
        for i in 0..<lunSize where io.base.load(fromByteOffset: i, as: UInt8.self) != latest[i] {
            return "after the repair: byte \(i) is \(io.base.load(fromByteOffset: i, as: UInt8.self)), newest \(latest[i])"
        }
        return nil
    }

    /// The power fails after a few more drive writes, in the middle of destaging (the write it falls on is torn, the
    /// rest are dropped), and writes no flush covered may be lost; then the crash and recovery.
    mutating func powerCut() -> String? {
        injector.writesBeforeCut = Int(rng.next() % 40) + 1
        log.append("power cut after \(injector.writesBeforeCut) writes")
        for _ in 0..<3 where !injector.cut {
            if let problem = write(zero: false) { return problem }
        }
        if !injector.cut {
            if rng.next() % 2 == 0 {
                if let problem = flush() { return problem }
            } else {
                _ = destageSome()
            }
        }
        return crash()
    }

    /// The process dies: write-pending data is gone, and so may be drive writes no flush covered; the array is
    /// assembled again from its drives, its journal recovered (it was not stopped cleanly), and a rebuild resumes
    /// from its last recorded checkpoint.
    mutating func crash() -> String? {
        // The process dies: the directors' threads with it, wherever they were (a pass half done, say).
        scheduler.abandon(drives: store.drives)
        let lost = injector.losePower()
        log.append("crash (\(lost) unflushed writes lost)")
        do {
            store = try ArrayStore.assemble(directory: directory)
            guard !store.wasClean else { return "the array came back clean after a crash" }
            checksums = BlockChecksums(geometry: store.geometry, cacheBytes: 4096 * Int(1 + rng.next() % 8))
            let recovery = try JournalRecovery.recover(
                geometry: store.geometry, drives: store.drives, arrayUUID: store.superblock.arrayUUID, unclean: true,
                checksums: ProcessInfo.processInfo.environment["VSA_SIM_NOCRC"] == nil ? checksums : nil)
            log.append(
                "recovery: \(recovery.replayedBatches) batches replayed, \(recovery.droppedBatches) dropped, \(recovery.resyncedRegions) regions resynced")
            try store.writeSuperblocks(clean: false)
            // Director failures do not outlive the process: both directors start again.
            engines = try Simulation.makeEngines(store: store, epochs: recovery.epochs, slots: slotsPerDirector, checksums: checksums)
            scheduler.adopt(engines)
            if thin { pool = try ArrayDaemon.openPool(store: store, engines: engines, cacheBytes: 16 << 20, log: { log.append("  (mount) " + $0) }) }
        } catch { return "recovery: \(error)" }
        rebuildingMember = store.superblock.rebuildMember
        // Every sector not written since the last flush must hold what that flush made durable.
        guard engines.read(lun: lun, offsetBytes: 0, count: lunSize, into: io.base) == 0 else { return "read after recovery failed" }
        for i in 0..<lunSize where !writtenSinceFlush[i / 512] && io.base.load(fromByteOffset: i, as: UInt8.self) != durable[i] {
            return "after recovery: byte \(i) is \(io.base.load(fromByteOffset: i, as: UInt8.self)), flushed \(durable[i])"
        }
        if thin, let problem = checkSnapshotsAfterCrash() { return problem }
        midRequest.attach(to: engines)
        // What was written but not flushed may be old or new: from here on the drives are the truth.
        for i in 0..<lunSize { latest[i] = io.base.load(fromByteOffset: i, as: UInt8.self) }
        durable = latest
        for i in writtenSinceFlush.indices {
            writtenSinceFlush[i] = false
            unknown[i] = false
        }
        // Last: it reads the clone into `io`, which held the LUN until here.
        return thin ? checkCloneAfterCrash() : nil
    }

    /// With every member in and nothing write-pending, leave out each member the level can lose in turn: the
    /// rest must give back exactly the newest data.
    mutating func readAllDegraded() -> String? {
        guard membersLost == 0, level != .raid0, anyDirectorOnline else { return nil }
        if let problem = flush() { return problem }
        scheduler.settle()
        log.append("degraded reads")
        for member in 0..<store.memberCount {
            var drives = store.drives
            let path = store.drivePaths[member]
            guard let stand = try? Drive(path: path) else { return "cannot open \(path)" }
            stand.transition(to: .failed)
            drives[member] = stand
            guard
                let degraded = try? RAIDBackEnd(
                    geometry: store.geometry, drives: drives, memory: memory, marks: BackEndMarks(),
                    checksums: ProcessInfo.processInfo.environment["VSA_SIM_NOCRC"] == nil ? checksums : nil)
            else {
                return "back end"
            }
            guard coldRead(from: degraded) else { return "degraded read without member \(member) failed" }
            for i in 0..<lunSize where io.base.load(fromByteOffset: i, as: UInt8.self) != latest[i] {
                return "without member \(member): byte \(i) is \(io.base.load(fromByteOffset: i, as: UInt8.self)), newest \(latest[i])"
            }
        }
        return nil
    }
}

extension Simulation {
    /// The stripes that hold the LUN's data: its own run (thick), or the pool's (its checkpoint slots and every
    /// segment a home owns), as runs.
    var lunStripeRuns: [Range<UInt64>] {
        guard thin else { return [lun.startStripe..<(lun.startStripe + store.geometry.stripesFor(sizeBytes: UInt64(lunSize)))] }
        let where_ = placement
        var runs: [Range<UInt64>] = []
        var s: UInt64 = 0
        let total = store.geometry.stripeCount
        while s < total {
            guard where_(s) != nil else {
                s += 1
                continue
            }
            var e = s + 1
            while e < total && where_(e) != nil { e += 1 }
            runs.append(s..<e)
            s = e
        }
        return runs
    }

    /// Reads the whole LUN into `io` from the drives alone, through `backEnd` (cold: no director's cache). A thin
    /// LUN's map comes from the drives too: every home loaded as a mount would (nothing written), on its own space.
    func coldRead(from backEnd: any StripeStore) -> Bool {
        let cold = TrackCache(slotCount: slotsPerDirector, store: backEnd, memory: memory, counters: CacheCounters())
        if thin {
            guard let layout = pool?.layout else { return false }
            let space = PoolSpace(layout: layout, reservedStripes: store.lunTable.reservedRuns)
            // A look at the drives, nothing written: these homes are not the live ones, and a commit of theirs would
            // land where the live homes' log goes.
            space.readReallocation.store(false, ordering: .relaxed)
            var homes: [PoolHome] = []
            for h in 0..<layout.homes {
                guard
                    let home = try? PoolHome.load(
                        home: h, layout: layout, space: space, poolTag: ArrayDaemon.poolTag(store), store: backEnd, memory: memory, mapFrames: 256)
                else { return false }
                homes.append(home)
            }
            cold.pool = PoolPort(layout: layout, homes: homes, backEnd: backEnd)
        }
        return cold.read(lun: lun, offsetBytes: 0, count: lunSize, into: io.base)
    }

    /// A step of the pool's own: a snapshot taken, read back or deleted; cleaner steps; a checkpoint; a discard of
    /// many stripes (unmapped in the pool); a restore; a clone linked, written, read, unlinked, relinked or deleted.
    mutating func poolStep() -> String? {
        switch rng.next() % 12 {
        case 0, 1: return takeSnapshot()
        case 2: return verifySnapshot()
        case 3: return deleteSnapshot()
        case 4, 5:
            let steps = 1 + Int(rng.next() % 6)
            let stripes = 1 + Int(rng.next() % 4)
            // Now and then a victim with a single dead block: the cleaner moves nearly everything it finds.
            let minimumDead = rng.next() % 3 == 0 ? 1 : max(1, pool!.layout.blocksPerSegment / 4)
            log.append("cleaner: \(steps) steps of \(stripes) stripes (victims \(minimumDead)+ dead)")
            for _ in 0..<steps { _ = engines.poolEach { .clean(home: $0, stripes: stripes, minimumDead: minimumDead, step: CleanStep()) } }
            return nil
        case 6:
            // As fstrim or a punch-hole: whole stripes leave the map, the ends are zeroed through the cache.
            return write(zero: true, countMax: lunSize / 2)
        case 7: return restoreSnapshot()
        case 8, 9, 10: return cloneStep()
        default:
            log.append("pool checkpoint")
            _ = engines.poolEach { .checkpoint(home: $0) }
            return nil
        }
    }

    /// As `vsa snap create` does: the LUN flushed (its cached writes destaged), then every home records the
    /// snapshot. Its contents are then the flushed data, never to change.
    mutating func takeSnapshot() -> String? {
        guard snapshots.count + uncertainSnapshots.count < 3 else { return deleteSnapshot() }
        if let problem = flush() { return problem }
        // The flush did not make everything durable (directors out, the power off): the daemon takes no snapshot.
        guard !writtenSinceFlush.contains(true), !injector.cut else { return nil }
        let id = nextSnapshot
        nextSnapshot += 1
        let (lunID, label) = (lun.lunID, VersionLabel(lunID: lun.lunID, name: "s\(id)", createdSeconds: 1))
        log.append("snapshot \(id)")
        if engines.poolEach({ h in .change(home: h) { $0.snapshot(lunID, as: id, label: label) } }) == 0 && !injector.cut {
            snapshots[id] = durable
        } else {
            // As the daemon does: the homes that took their part drop it (or the next mount does).
            _ = engines.poolEach { .deleteVersion(home: $0, lunID: id) }
            uncertainSnapshots[id] = durable
        }
        return nil
    }

    mutating func deleteSnapshot() -> String? {
        // The daemon refuses to delete a snapshot a clone is linked to.
        guard let id = snapshots.keys.sorted().filter({ $0 != clone?.snapshot }).randomElement(using: &rng) else { return nil }
        log.append("delete snapshot \(id)")
        let contents = snapshots.removeValue(forKey: id)!
        if engines.poolEach({ .deleteVersion(home: $0, lunID: id) }) != 0 || injector.cut { uncertainSnapshots[id] = contents }
        return nil
    }

    /// A snapshot read from the homes, block by block, into `snapshotIO`: 0, or the errno of a home that does not
    /// hold it or cannot read it.
    func readSnapshot(_ id: UInt32) -> Int32 {
        let (layout, lunID, lunSize) = (pool!.layout, lun.lunID, lunSize)
        let stripeBytes = Int(store.geometry.stripeDataBytes)
        let target = snapshotIO.base
        return engines.poolEach { h in
            .change(home: h) { home in
                guard home.versions[id] != nil else { return false }
                var offset = 0
                while offset < lunSize {
                    let (owner, block) = layout.local(lunStripe: UInt64(offset / stripeBytes), homeOffset: lunID, offsetInStripe: offset % stripeBytes)
                    if owner == h { guard home.read(id, block: block, into: target + offset) else { return false } }
                    offset += PoolLayout.blockBytes
                }
                return true
            }
        }
    }

    mutating func verifySnapshot() -> String? {
        guard let id = snapshots.keys.sorted().randomElement(using: &rng) else { return nil }
        log.append("read snapshot \(id)")
        guard readSnapshot(id) == 0 else { return directorsWereOut ? nil : "snapshot \(id) could not be read" }
        return snapshotDiffers(id)
    }

    /// The first byte of snapshot `id` as read (in `snapshotIO`) that is not what it was taken with, if any.
    func snapshotDiffers(_ id: UInt32) -> String? {
        let expected = snapshots[id]!
        for i in 0..<lunSize where snapshotIO.base.load(fromByteOffset: i, as: UInt8.self) != expected[i] {
            return "snapshot \(id): byte \(i) is \(snapshotIO.base.load(fromByteOffset: i, as: UInt8.self)), taken as \(expected[i])"
        }
        return nil
    }

    /// After a crash: every snapshot known taken is there with its contents; one left uncertain is there whole
    /// (with the contents it was taken with) or gone; no other snapshot is there.
    mutating func checkSnapshotsAfterCrash() -> String? {
        let stats = engines.directors.map { _ in PoolHomeStats() }
        guard engines.poolEach({ .stats(home: $0, into: stats[$0]) }) == 0 else { return "pool stats after the crash" }
        let present = Set(stats.flatMap { $0.records.values.filter { $0.kind == .snapshot }.map(\.id) })
        for id in present where snapshots[id] == nil && uncertainSnapshots[id] == nil { return "after the crash: snapshot \(id) was never taken" }
        for (id, contents) in uncertainSnapshots where present.contains(id) {
            snapshots[id] = contents
            log.append("  snapshot \(id) was kept")
        }
        uncertainSnapshots = [:]
        for id in snapshots.keys.sorted() {
            guard present.contains(id) else { return "after the crash: snapshot \(id) is gone" }
            guard readSnapshot(id) == 0 else { return "after the crash: snapshot \(id) could not be read" }
            if let problem = snapshotDiffers(id) { return "after the crash: " + problem }
        }
        return nil
    }
}

/// Fails or restores a director in the middle of a request (after one of its pieces was sent, before the next), with
/// a small seeded probability per piece: pieces already sent ran on the old owner, the rest are bounced and sent to
/// the new one. A class, so the hook Engines calls can keep its own generator.
final class MidRequestFailover {
    var rng: SplitMix
    var events: [String] = []
    /// Set when a piece was sent while no director was online (the simulation clears it before each step).
    var sawNoDirector = false
    weak var engines: Engines?
    let disabled = ProcessInfo.processInfo.environment["VSA_SIM_NOFAILOVER"] != nil

    let scheduler: SimulationScheduler

    init(seed: UInt64, scheduler: SimulationScheduler) {
        rng = SplitMix(seed: seed)
        self.scheduler = scheduler
    }

    func attach(to engines: Engines) {
        self.engines = engines
        engines.afterEachPiece = { [unowned self] in
            self.scheduler.pause("between pieces")
            self.maybeFail()
        }
    }

    func maybeFail() {
        guard let engines else { return }
        if !engines.directors.contains(where: { $0.state == .online }) { sawNoDirector = true }
        guard !disabled, rng.next() % 400 == 0 else { return }
        let director = engines.directors[Int(rng.next() % 2)]
        if director.state == .online {
            events.append("  (mid-request) fail director \(director.id)")
            _ = try? engines.failDirector(director.id)
        } else {
            events.append("  (mid-request) restore director \(director.id)")
            _ = try? engines.restoreDirector(director.id)
        }
        if !engines.directors.contains(where: { $0.state == .online }) { sawNoDirector = true }
    }
}
