// A drive image is hostile input. These tests hand assembly metadata that a vsa never wrote but whose CRCs hold: fields
// out of range, LUN tables that overlap or leave the array, members that disagree, superblocks destroyed on one member.
// The only outcomes allowed are a mount (degraded where a member had to be left out) or a one-line refusal that wrote
// nothing; never a trap, a hang or memory corruption.
//
// `testStructureAwareFuzz` mutates fields (not only bytes) of the superblocks, LUN tables, journal epoch blocks and
// record headers of real arrays, fixes the CRCs most of the time, and assembles; an assembly that succeeds is then
// mounted as the daemon would (journal recovery, directors, every LUN read, a write and a flush). `make test` runs a
// short form; `make fuzz` runs VSA_FUZZ_ITERATIONS under AddressSanitizer. A trap prints the seed and the mutation
// (VSA_FUZZ_SEED=S replays the run).
import ArrayModel
import BackEnd
import Buffers
import Directors
import Drives
import Foundation
import GlobalMemory
import MemoryServices
import Metadata
import XCTest

@testable import Daemon

final class HostileMetadataTests: XCTestCase {
    // MARK: Records checked field by field

    func testLUNTablesThatDoNotDescribeTheArrayAreRefused() throws {
        let geometry = ArrayGeometry(raidLevel: .raid5, memberCount: 4, stripUnitBytes: 4096, stripeCount: 1000, dataOffsetBytes: 0)
        let stripe = geometry.stripeDataBytes
        func table(_ entries: [LUNEntry]) -> LUNTable { LUNTable(generation: 1, arrayUUID: UUID128(high: 1, low: 2), entries: entries) }
        func entry(_ id: UInt32, _ name: String, size: UInt64, start: UInt64, count: UInt64? = nil) -> LUNEntry {
            LUNEntry(lunID: id, name: name, sizeBytes: size, startStripe: start, stripeCount: count ?? geometry.stripesFor(sizeBytes: size))
        }
        XCTAssertNoThrow(try table([entry(1, "a", size: 10 * stripe, start: 0), entry(2, "b", size: 512, start: 10)]).validate(geometry: geometry))
        let bad: [(String, [LUNEntry])] = [
            ("id 0", [entry(0, "a", size: stripe, start: 0)]),
            ("id beyond the handle table", [entry(5000, "a", size: stripe, start: 0)]),
            ("duplicate id", [entry(1, "a", size: stripe, start: 0), entry(1, "b", size: stripe, start: 1)]),
            ("duplicate name", [entry(1, "a", size: stripe, start: 0), entry(2, "a", size: stripe, start: 1)]),
            ("overlap", [entry(1, "a", size: 10 * stripe, start: 0), entry(2, "b", size: stripe, start: 5)]),
            ("beyond the array", [entry(1, "a", size: 10 * stripe, start: 995)]),
            ("start past the end", [entry(1, "a", size: stripe, start: UInt64.max)]),
            ("run wraps 2^64", [entry(1, "a", size: stripe, start: UInt64.max - 1, count: 5)]),
            ("size and stripes disagree", [entry(1, "a", size: 100 * stripe, start: 0, count: 1)]),
            ("size 0", [entry(1, "a", size: 0, start: 0, count: 0)]),
            ("size not whole sectors", [entry(1, "a", size: 1000, start: 0)]),
            ("size near 2^64", [entry(1, "a", size: UInt64.max - 511, start: 0, count: 1)]),
        ]
        for (what, entries) in bad {
            XCTAssertThrowsError(try table(entries).validate(geometry: geometry), what)
        }
        // The generation is bounded at decode (a later write adds one to it).
        var high = table([]).encode()
        withUnsafeBytes(of: UInt64.max.littleEndian) { for i in 0..<8 { high[24 + i] = $0[i] } }
        Fuzz.fixCRC(&high, at: 16, count: high.count)
        XCTAssertThrowsError(try LUNTable.decode(high))
    }

    func testSuperblockFieldsOutOfRangeAreRefused() throws {
        let directory = "/dev/shm/vsa-sbfields-\(getpid())"
        try? FileManager.default.removeItem(atPath: directory)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try ArrayStore.create(
            CreateOptions(
                directory: directory, driveCount: 4, driveSizeBytes: 8 << 20, drivePaths: [], raidLevel: .raid10, spareCount: 0,
                stripUnitBytes: 4096, cacheBytes: 16 << 20, engineCount: 1, force: false))
        let good = store.superblock.encode()
        XCTAssertNoThrow(try Superblock.decode(good))
        let cases: [(String, Int, Int, UInt64)] = [
            ("odd RAID-10 member count", 68, 4, 5), ("spares past 64 drives", 72, 4, 0xFFFF_FFFF), ("generation near 2^64", 24, 8, UInt64.max),
            ("cache 0", 104, 8, 0), ("cache 2^64-1", 104, 8, UInt64.max), ("no data area", 96, 8, 0),
            ("data area of 2^59 bytes", 96, 8, 1 << 59), ("reserved byte set", 300, 1, 1),
        ]
        for (what, offset, width, value) in cases {
            var bytes = good
            Fuzz.put(&bytes, offset, width, value)
            Fuzz.fixCRC(&bytes, at: 16, count: Layout.superblockRecordBytes)
            XCTAssertThrowsError(try Superblock.decode(bytes), what)
        }
    }

    // MARK: Assembly with one member's metadata gone or wrong

    /// A RAID-5 member whose superblocks are both destroyed is left out: the array assembles degraded with a
    /// warning, serves its data, and never writes that drive. RAID-0 cannot: the refusal writes nothing.
    func testMemberWithDestroyedSuperblocksIsLeftOut() throws {
        for (level, drives) in [(RAIDLevel.raid5, 4), (.raid0, 3)] {
            let base = try Fuzz.Base(level: level, drives: drives, spares: 0, tag: "destroyed")
            defer { base.remove() }
            let victim = base.directory + "/drive-1"
            let fd = open(victim, O_WRONLY)
            let junk = [UInt8](repeating: 0xEE, count: 8192)
            XCTAssertEqual(pwrite(fd, junk, junk.count, 0), 8192)
            close(fd)
            let before = Fuzz.contents(of: base.directory, drives: drives)
            if level == .raid0 {
                XCTAssertThrowsError(try ArrayStore.assemble(directory: base.directory)) { error in
                    let message = (error as? VSAError)?.message ?? ""
                    XCTAssertTrue(message.contains("drive-1") && !message.contains("\n"), message)
                }
                XCTAssertEqual(Fuzz.contents(of: base.directory, drives: drives), before, "a refused assembly wrote")
                continue
            }
            let store = try ArrayStore.assemble(directory: base.directory)
            XCTAssertEqual(store.drives[1].state, .failed)
            XCTAssertTrue(store.assemblyWarnings.contains { $0.contains("drive-1") && $0.contains("never written") }, "\(store.assemblyWarnings)")
            try Fuzz.mountCore(store: store, verify: base)
            XCTAssertEqual(Fuzz.contents(of: base.directory, drives: drives)[1], before[1], "the drive left out was written")
        }
    }

    /// A member whose superblock (CRC intact) disagrees on the geometry, or that missed updates, is left out too.
    func testMembersThatDisagreeOrLagAreLeftOut() throws {
        let base = try Fuzz.Base(level: .raid6, drives: 5, spares: 0, tag: "disagree")
        defer { base.remove() }
        var sb = try Superblock.decode(Fuzz.read(base.directory + "/drive-2", at: 0, count: Layout.superblockRecordBytes))
        sb.stripUnitBytes *= 2
        Fuzz.writeSuperblock(sb, to: base.directory + "/drive-2")
        var lagging = try Superblock.decode(Fuzz.read(base.directory + "/drive-4", at: 0, count: Layout.superblockRecordBytes))
        lagging.generation -= 2
        Fuzz.writeSuperblock(lagging, to: base.directory + "/drive-4")
        let before = Fuzz.contents(of: base.directory, drives: 5)
        let store = try ArrayStore.assemble(directory: base.directory)
        XCTAssertEqual(store.drives[2].state, .failed)
        XCTAssertEqual(store.drives[4].state, .failed)
        XCTAssertTrue(store.assemblyWarnings.contains { $0.contains("stripe unit") }, "\(store.assemblyWarnings)")
        XCTAssertTrue(store.assemblyWarnings.contains { $0.contains("missed updates") }, "\(store.assemblyWarnings)")
        try Fuzz.mountCore(store: store, verify: base)
        let after = Fuzz.contents(of: base.directory, drives: 5)
        XCTAssertEqual(after[2], before[2])
        XCTAssertEqual(after[4], before[4])
    }

    /// A folder entry named drive-9223372036854775807 is no drive entry: assembly ignores it, and a replacement's new
    /// entry number (the next after the highest) does not overflow (it trapped).
    func testAbsurdDriveEntryNumberIsIgnored() throws {
        let array = try CoreTestArray(name: "absurd-entry")
        defer { array.remove() }
        FileManager.default.createFile(atPath: array.directory + "/drive-9223372036854775807", contents: Data(count: 4096))
        let store = try ArrayStore.assemble(directory: array.directory)
        XCTAssertEqual(store.drives.count, 4)
        store.drives[1].transition(to: .failed)
        let replacement = try store.prepareReplacement(member: 1, path: array.directory + "-new1", force: false)
        defer { try? FileManager.default.removeItem(atPath: array.directory + "-new1") }
        XCTAssertTrue(replacement.entry.hasSuffix("/drive-4"), replacement.entry)
    }

    // MARK: The fuzzer

    func testStructureAwareFuzz() throws {
        let env = ProcessInfo.processInfo.environment
        let iterations = env["VSA_FUZZ_ITERATIONS"].flatMap(Int.init) ?? 240
        let seed = env["VSA_FUZZ_SEED"].flatMap(UInt64.init) ?? 0xF022
        var rng = SplitMix(seed: seed)
        let bases = [
            try Fuzz.Base(level: .raid5, drives: 4, spares: 1, tag: "r5"), try Fuzz.Base(level: .raid6, drives: 5, spares: 0, tag: "r6"),
            try Fuzz.Base(level: .raid10, drives: 4, spares: 0, tag: "r10"), try Fuzz.Base(level: .raid1, drives: 2, spares: 1, tag: "r1"),
            try Fuzz.Base(level: .raid0, drives: 3, spares: 0, tag: "r0"),
        ]
        defer { for b in bases { b.remove() } }
        Fuzz.installCrashReporter()
        let watchdog = Fuzz.Watchdog(limitSeconds: 60)
        var outcomes: [String: Int] = [:]
        let started = Date()
        for iteration in 0..<iterations {
            let base = bases[Int(rng.next() % UInt64(bases.count))]
            base.restore()
            let mutations = (0..<Int(1 + rng.next() % 3)).map { _ in Fuzz.mutate(base, &rng) }
            Fuzz.note("vsa fuzz: seed \(seed) iteration \(iteration) on \(base.tag): \(mutations.joined(separator: "; "))")
            watchdog.arm()
            let before = Fuzz.contents(of: base.directory, drives: base.total)
            do {
                let store = try ArrayStore.assemble(directory: base.directory)
                let degraded = store.drives.prefix(store.memberCount).contains { $0.state != .online }
                do {
                    try Fuzz.mountCore(store: store, verify: nil)
                    outcomes[degraded ? "mounted degraded" : "mounted", default: 0] += 1
                } catch {
                    XCTAssertFalse("\(error)".contains("\n"), "a mount error of more than one line: \(error)")
                    outcomes["mount refused", default: 0] += 1
                }
            } catch {
                let message = error.message
                XCTAssertFalse(message.contains("\n"), "a refusal of more than one line: \(message)")
                XCTAssertEqual(Fuzz.contents(of: base.directory, drives: base.total), before, "a refused assembly wrote to the drives: \(mutations)")
                outcomes["refused", default: 0] += 1
            }
            watchdog.disarm()
        }
        watchdog.stop()
        let summary = outcomes.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        print("vsa fuzz: \(iterations) executions from seed \(seed) in \(Int(Date().timeIntervalSince(started))) s: \(summary)")
    }
}

/// The fuzzer's parts: base arrays, field tables, mutations, the mount it runs, and its crash reporting.
enum Fuzz {
    /// A small array (8 MiB drives, 4 KiB strips, two LUNs with data) left unclean with journal records, kept as a
    /// snapshot that each iteration starts from.
    final class Base {
        let tag: String
        let directory: String
        let total: Int
        let snapshot: [[UInt8]]
        let geometry: ArrayGeometry
        let sliceOffsets: [UInt64]
        let checksumOffset: UInt64
        /// What the LUNs hold (for tests that read them back).
        let lunData: [String: [UInt8]]

        init(level: RAIDLevel, drives: Int, spares: Int, tag: String) throws {
            self.tag = tag
            directory = "/dev/shm/vsa-fuzz-\(getpid())-\(tag)"
            total = drives + spares
            try? FileManager.default.removeItem(atPath: directory)
            let store = try ArrayStore.create(
                CreateOptions(
                    directory: directory, driveCount: total, driveSizeBytes: 8 << 20, drivePaths: [], raidLevel: level, spareCount: spares,
                    stripUnitBytes: 4096, cacheBytes: 16 << 20, engineCount: 1, force: false))
            geometry = store.geometry
            let layout = store.geometry.layout!
            sliceOffsets = (0..<layout.directorCount).map { layout.journalSliceOffset(director: $0) }
            checksumOffset = layout.checksumOffsetBytes
            var data: [String: [UInt8]] = [:]
            var rng = SplitMix(seed: UInt64(drives * 131 + spares))
            _ = try store.createLUN(name: "a", sizeBytes: 256 << 10)
            _ = try store.createLUN(name: "b", sizeBytes: 96 << 10)
            let checksums = BlockChecksums(geometry: store.geometry)
            let recovery = try JournalRecovery.recover(
                geometry: store.geometry, drives: store.drives, arrayUUID: store.superblock.arrayUUID, unclean: false, checksums: checksums)
            try store.writeSuperblocks(clean: false)
            var spec = EngineSpec(geometry: store.geometry, drives: store.drives, engineCount: 1, slotsPerDirector: 64)
            spec.journal = (store.superblock.arrayUUID, recovery.epochs)
            spec.checksums = checksums
            let engines = try Engines.build(spec)
            let buffer = alignedBuffer(bytes: 256 << 10)
            for entry in store.lunTable.entries {
                var bytes = [UInt8](repeating: 0, count: Int(entry.sizeBytes))
                for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: rng.next()) }
                bytes.withUnsafeBytes { buffer.base.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                let ref = LUNRef(lunID: entry.lunID, startStripe: entry.startStripe, sizeBytes: entry.sizeBytes)
                // Partial-stripe pieces, so parity levels journal them.
                var offset = 0
                while offset < bytes.count {
                    let n = min(bytes.count - offset, 4096 * Int(1 + rng.next() % 2))
                    guard engines.write(lun: ref, offsetBytes: UInt64(offset), count: n, from: buffer.base + offset) == 0 else {
                        throw VSAError("base write failed")
                    }
                    offset += n
                }
                data[entry.name] = bytes
            }
            guard engines.flush(lun: nil) == 0 else { throw VSAError("base flush failed") }
            lunData = data
            // Left unclean, journal records in place: an assembly from here runs recovery as after a crash.
            snapshot = Fuzz.contents(of: directory, drives: total)
        }

        func restore() {
            for (i, bytes) in snapshot.enumerated() {
                let fd = open(directory + "/drive-\(i)", O_WRONLY | O_TRUNC)
                precondition(fd >= 0)
                _ = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress!, $0.count, 0) }
                close(fd)
            }
            for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where name.hasPrefix("drive-") {
                if let n = Int(name.dropFirst(6)), n >= total { unlink(directory + "/" + name) }
            }
        }

        func remove() { try? FileManager.default.removeItem(atPath: directory) }
    }

    static func contents(of directory: String, drives: Int) -> [[UInt8]] {
        (0..<drives).map { i in (try? [UInt8](Data(contentsOf: URL(fileURLWithPath: directory + "/drive-\(i)")))) ?? [] }
    }

    static func read(_ path: String, at offset: UInt64, count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let fd = open(path, O_RDONLY)
        _ = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress!, count, off_t(offset)) }
        close(fd)
        return bytes
    }

    static func write(_ path: String, at offset: UInt64, _ bytes: [UInt8]) {
        let fd = open(path, O_WRONLY)
        _ = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress!, $0.count, off_t(offset)) }
        close(fd)
    }

    static func writeSuperblock(_ sb: Superblock, to path: String) {
        for offset in Layout.superblockCopyOffsets { write(path, at: offset, sb.encode()) }
    }

    static func put(_ bytes: inout [UInt8], _ offset: Int, _ width: Int, _ value: UInt64) {
        for i in 0..<width where offset + i < bytes.count { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> UInt64(8 * i)) }
    }

    static func get(_ bytes: [UInt8], _ offset: Int, _ width: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<width where offset + i < bytes.count { v |= UInt64(bytes[offset + i]) << UInt64(8 * i) }
        return v
    }

    /// Every vsa record's CRC: CRC32C of the record with its 4-byte CRC field taken as zero.
    static func fixCRC(_ bytes: inout [UInt8], at crcOffset: Int, count: Int) {
        guard count <= bytes.count else { return }
        var copy = Array(bytes[0..<count])
        for i in 0..<4 { copy[crcOffset + i] = 0 }
        put(&bytes, crcOffset, 4, UInt64(crc32c(copy)))
    }

    /// A record kind: where it sits, how long it is, where its CRC is, and its fields (offset, width).
    struct Record {
        let name: String
        let offsets: (Base) -> [UInt64]
        let length: ([UInt8]) -> Int
        let crcOffset: Int
        let fields: [(Int, Int)]
    }

    nonisolated(unsafe) static let records: [Record] = [
        Record(
            name: "superblock", offsets: { _ in Layout.superblockCopyOffsets }, length: { _ in Layout.superblockRecordBytes }, crcOffset: 16,
            fields: [
                (8, 4), (12, 4), (20, 4), (24, 8), (32, 8), (48, 8), (64, 4), (68, 4), (72, 4), (76, 1), (77, 1), (80, 4), (84, 4), (88, 8), (96, 8),
                (104, 8), (112, 8), (120, 8), (128, 4), (136, 8), (144, 8), (152, 8), (200, 1),
            ]),
        Record(
            name: "LUN table", offsets: { _ in Layout.lunTableCopyOffsets },
            length: { min(Layout.lunTableBytes, Int(Fuzz.get($0, 12, 4))) }, crcOffset: 16,
            fields: [(12, 4), (20, 4), (24, 8), (32, 8)]
                + [0, 1].flatMap { i in
                    let b = Layout.lunHeaderBytes + i * Layout.lunEntryBytes
                    return [(b, 1), (b + 3, 1), (b + 64, 8), (b + 72, 8), (b + 80, 8), (b + 88, 4), (b + 100, 1)]
                }),
        Record(
            name: "journal epoch block", offsets: { $0.sliceOffsets }, length: { _ in 64 }, crcOffset: 12,
            fields: [(8, 4), (16, 8), (32, 4), (40, 8)]),
        Record(
            name: "journal record", offsets: { $0.sliceOffsets.map { $0 + 4096 } }, length: { _ in 4096 }, crcOffset: 16,
            fields: [(12, 4), (20, 4), (24, 8), (48, 4), (52, 4), (56, 8), (64, 8), (72, 4), (128, 8), (136, 4), (140, 4), (144, 8), (152, 8)]),
    ]

    static func interesting(_ old: UInt64, width: Int, _ rng: inout SplitMix) -> UInt64 {
        let max: UInt64 = width == 8 ? .max : (1 << UInt64(8 * width)) - 1
        let choices: [UInt64] = [
            0, 1, 2, max, max - 1, 1 << UInt64(8 * width - 1), old &+ 1, old &- 1, old &* 2, old / 2, rng.next() & max, 64, 65, 255, 256, 4095, 4096,
            1 << 20, 1 << 32 & max, old ^ (1 << (rng.next() % UInt64(8 * width))),
        ]
        return choices[Int(rng.next() % UInt64(choices.count))] & max
    }

    /// One mutation of `base`'s drives; returns what it did.
    static func mutate(_ base: Base, _ rng: inout SplitMix) -> String {
        let kind = rng.next() % 10
        if kind == 9 {
            // Unstructured: random bytes anywhere in the metadata, journal or checksum area of one drive.
            let drive = Int(rng.next() % UInt64(base.total))
            let offset = (rng.next() % base.geometry.dataOffsetBytes) & ~511
            let count = Int(1 + rng.next() % 4096)
            write(base.directory + "/drive-\(drive)", at: offset, (0..<count).map { _ in UInt8(truncatingIfNeeded: rng.next()) })
            return "\(count) random bytes at \(offset) of drive \(drive)"
        }
        let record = records[Int(kind % UInt64(records.count))]
        let (offset, width) = record.fields[Int(rng.next() % UInt64(record.fields.count))]
        let where_ = record.offsets(base)
        let copy = where_[Int(rng.next() % UInt64(where_.count))]
        // One drive, or every drive the same way (so members agree and cross-checks do not simply leave it out).
        let everyDrive = rng.next() % 3 == 0
        let drives = everyDrive ? Array(0..<base.total) : [Int(rng.next() % UInt64(base.total))]
        let fixCRC = rng.next() % 10 != 0
        var value: UInt64 = 0
        var first = true
        for d in drives {
            let path = base.directory + "/drive-\(d)"
            var bytes = read(path, at: copy, count: record.name == "LUN table" ? Layout.lunTableBytes : 4096)
            let length = record.length(bytes)
            if first {
                value = interesting(get(bytes, offset, width), width: width, &rng)
                first = false
            }
            put(&bytes, offset, width, value)
            if fixCRC && length > record.crcOffset + 4 && length <= bytes.count { Fuzz.fixCRC(&bytes, at: record.crcOffset, count: length) }
            write(path, at: copy, bytes)
        }
        return
            "\(record.name) at \(copy) field \(offset)/\(width) = \(value) on \(everyDrive ? "every drive" : "drive \(drives[0])")\(fixCRC ? "" : " (CRC left stale)")"
    }

    /// What the daemon does with an assembled array, without FUSE: journal recovery, failures recorded, directors
    /// built from the superblock, status, every LUN read through the directors, a write and a flush, a clean stop.
    /// With `verify`, every LUN must read back what the base wrote.
    static func mountCore(store: ArrayStore, verify: Base?) throws {
        let sb = store.superblock
        let checksums = BlockChecksums(geometry: store.geometry)
        let recovery = try JournalRecovery.recover(
            geometry: store.geometry, drives: store.drives, arrayUUID: sb.arrayUUID, unclean: !store.wasClean, checksums: checksums)
        _ = try store.recordFailures()
        try store.writeSuperblocks(clean: false)
        _ = StatusReport.offline(store: store, cacheBytes: sb.cacheBytes)
        var spec = EngineSpec(
            geometry: store.geometry, drives: store.drives, engineCount: sb.engineCount,
            slotsPerDirector: max(64, 2 * store.geometry.dataStripsPerStripe + 2))
        spec.journal = (sb.arrayUUID, recovery.epochs)
        spec.checksums = checksums
        spec.queueCapacity = 64
        let engines = try Engines.build(spec)
        let buffer = alignedBuffer(bytes: 64 << 10)
        for entry in store.lunTable.entries {
            let ref = LUNRef(lunID: entry.lunID, startStripe: entry.startStripe, sizeBytes: entry.sizeBytes)
            var offset: UInt64 = 0
            var back: [UInt8] = []
            while offset < min(entry.sizeBytes, 4 << 20) {
                let n = Int(min(64 << 10, entry.sizeBytes - offset))
                let rc = engines.read(lun: ref, offsetBytes: offset, count: n, into: buffer.base)
                if verify != nil {
                    XCTAssertEqual(rc, 0, "read of \(entry.name) at \(offset)")
                    back += [UInt8](UnsafeRawBufferPointer(start: buffer.base, count: n))
                }
                offset += UInt64(n)
            }
            if let expected = verify?.lunData[entry.name] { XCTAssertTrue(back == expected, "LUN \(entry.name) reads back wrong") }
            if verify == nil { _ = engines.write(lun: ref, offsetBytes: 0, count: 4096, from: buffer.base) }
        }
        _ = engines.flush(lun: nil)
        _ = engines.endEpochs()
    }

    // MARK: Crash reporting: a trap kills the process, so the mutation is written out by a signal handler.

    nonisolated(unsafe) static let noteBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: 2048)
    nonisolated(unsafe) static var noteLength = 0

    static func note(_ text: String) {
        let bytes = Array((text + "\n").utf8.prefix(2047))
        for (i, b) in bytes.enumerated() { noteBuffer[i] = CChar(bitPattern: b) }
        noteLength = bytes.count
    }

    static func installCrashReporter() {
        note("vsa fuzz: no iteration yet\n")
        for signal in [SIGILL, SIGTRAP, SIGSEGV, SIGBUS, SIGABRT] {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { sig in
                _ = Glibc.write(2, Fuzz.noteBuffer, Fuzz.noteLength)
                Glibc.signal(sig, SIG_DFL)
                Glibc.raise(sig)
            }
            sigaction(signal, &action, nil)
        }
    }

    /// Aborts (after printing the mutation) when one iteration runs longer than `limitSeconds`: a hang is a failure.
    final class Watchdog: @unchecked Sendable {
        private let lock = NSLock()
        private var armedAt: Date? = nil
        private var stopped = false
        init(limitSeconds: Double) {
            let thread = Thread { [self] in
                while true {
                    sleep(1)
                    lock.lock()
                    let done = stopped
                    let since = armedAt
                    lock.unlock()
                    if done { return }
                    if let since, Date().timeIntervalSince(since) > limitSeconds {
                        _ = Glibc.write(2, "vsa fuzz: iteration hung: ", 26)
                        _ = Glibc.write(2, Fuzz.noteBuffer, Fuzz.noteLength)
                        abort()
                    }
                }
            }
            thread.start()
        }
        func arm() { lock.withLock { armedAt = Date() } }
        func disarm() { lock.withLock { armedAt = nil } }
        func stop() { lock.withLock { stopped = true } }
    }
}
