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
import XCTest

@testable import Daemon

final class SimulationTests: XCTestCase {
    static let levels: [(RAIDLevel, Int)] = [(.raid1, 2), (.raid10, 4), (.raid5, 4), (.raid5, 5), (.raid6, 5), (.raid6, 6)]

    func testSeededSimulation() throws {
        let env = ProcessInfo.processInfo.environment
        let seeds: [UInt64]
        if let one = env["VSA_SIM_SEED"].flatMap(UInt64.init) {
            seeds = [one]
        } else {
            let count = env["VSA_SIM_SEEDS"].flatMap(Int.init) ?? 24
            seeds = (0..<UInt64(count)).map { $0 * 7919 + 1 }
        }
        defer { DriveFaultInjector.active = nil }
        for seed in seeds {
            DriveFaultInjector.active = DriveFaultInjector(seed: seed ^ 0xD1CE)
            if let p = ProcessInfo.processInfo.environment["VSA_SIM_LOSS"].flatMap(UInt64.init) { DriveFaultInjector.active!.lossPercent = p }
            var sim = try Simulation(seed: seed)
            defer { sim.cleanUp() }
            if let failure = sim.run(steps: 400) {
                XCTFail("simulation seed \(seed) failed: \(failure) (replay: VSA_SIM_SEED=\(seed) swift test --filter SimulationTests)")
                return
            }
        }
    }
}

struct Simulation {
    let seed: UInt64
    var rng: SplitMix
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

    init(seed: UInt64) throws {
        self.seed = seed
        rng = SplitMix(seed: seed)
        let (level, drives) = SimulationTests.levels[Int(rng.next() % UInt64(SimulationTests.levels.count))]
        self.level = level
        directory = "/dev/shm/vsa-sim-\(getpid())-\(seed)"
        try? FileManager.default.removeItem(atPath: directory)
        store = try ArrayStore.create(
            CreateOptions(
                directory: directory, driveCount: drives, driveSizeBytes: 8 << 20, drivePaths: [], raidLevel: level, spareCount: 0,
                stripUnitBytes: [4096, 8192, 16384][Int(rng.next() % 3)], cacheBytes: 16 << 20, engineCount: 1, force: false))
        let entry = try store.createLUN(name: "l", sizeBytes: UInt64(lunSize))
        lun = LUNRef(lunID: entry.lunID, startStripe: entry.startStripe, sizeBytes: entry.sizeBytes)
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
        // The whole LUN is written once, so every block of its stripes has a checksum (a flip is then always seen).
        for i in 0..<lunSize { io.base.storeBytes(of: UInt8(truncatingIfNeeded: rng.next()), toByteOffset: i, as: UInt8.self) }
        guard engines.write(lun: lun, offsetBytes: 0, count: lunSize, from: io.base) == 0, engines.flush(lun: lun) == 0 else {
            throw VSAError("first write failed")
        }
        midRequest.attach(to: engines)
        let written = io.base
        durable = (0..<(1 << 20)).map { written.load(fromByteOffset: $0, as: UInt8.self) }
        latest = durable
        writtenSinceFlush = [Bool](repeating: false, count: lunSize / 512)
        unknown = writtenSinceFlush
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

    mutating func write(zero: Bool) -> String? {
        let count = Int(rng.next() % 40000) + 1
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
            return membersOutTolerated && !injector.cut ? "write failed with the array within its tolerance" : nil
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
                guard engines.rebuild(member: member, stripes: next..<(next + 1), placement: placement) == 0 else {
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
        let stripes = store.geometry.stripesFor(sizeBytes: UInt64(lunSize))
        var outcomes: [(UInt64, ScrubOutcome)] = []
        engines.scrub(stripes: lun.startStripe..<(lun.startStripe + stripes), repair: false, placement: placement) { outcomes.append(($0, $1)) }
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
        let stripes = g.stripesFor(sizeBytes: UInt64(lunSize))
        let stripe = lun.startStripe + rng.next() % stripes
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
        engines.scrub(stripes: stripe..<(stripe + 1), repair: true, placement: placement) { outcome = $1 }
        // (With both directors gone out during it, the scrub did not run: the read below still finds the damage.)
        guard outcome == .repaired || outcome == .repairedData || directorsWereOut else { return "scrub after a bit flip: \(outcome)" }
        let cold = TrackCache(slotCount: slotsPerDirector, store: anyBackEnd, memory: memory, counters: CacheCounters())
        guard cold.read(lun: lun, offsetBytes: 0, count: lunSize, into: io.base) else { return "read after the repair failed" }
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
        } catch { return "recovery: \(error)" }
        rebuildingMember = store.superblock.rebuildMember
        // Every sector not written since the last flush must hold what that flush made durable.
        guard engines.read(lun: lun, offsetBytes: 0, count: lunSize, into: io.base) == 0 else { return "read after recovery failed" }
        for i in 0..<lunSize where !writtenSinceFlush[i / 512] && io.base.load(fromByteOffset: i, as: UInt8.self) != durable[i] {
            return "after recovery: byte \(i) is \(io.base.load(fromByteOffset: i, as: UInt8.self)), flushed \(durable[i])"
        }
        midRequest.attach(to: engines)
        // What was written but not flushed may be old or new: from here on the drives are the truth.
        for i in 0..<lunSize { latest[i] = io.base.load(fromByteOffset: i, as: UInt8.self) }
        durable = latest
        for i in writtenSinceFlush.indices {
            writtenSinceFlush[i] = false
            unknown[i] = false
        }
        return nil
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
            let cold = TrackCache(slotCount: slotsPerDirector, store: degraded, memory: memory, counters: CacheCounters())
            guard cold.read(lun: lun, offsetBytes: 0, count: lunSize, into: io.base) else { return "degraded read without member \(member) failed" }
            for i in 0..<lunSize where io.base.load(fromByteOffset: i, as: UInt8.self) != latest[i] {
                return "without member \(member): byte \(i) is \(io.base.load(fromByteOffset: i, as: UInt8.self)), newest \(latest[i])"
            }
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
