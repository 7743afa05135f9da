// ArrayStore: the array's metadata on its drives. It formats new arrays, assembles an array from its drives alone
// (the folder only says where the drives are: entries named drive-N, files or symlinks to block devices), and
// updates superblocks and the LUN table. Updates are ordered so that a crash leaves a readable state: copy A on every
// drive, flush, then copy B, flush; the reader takes the valid copy with the highest generation.
//
// Control plane only: callers serialise access (the daemon holds a lock around it).
import ArrayModel
import Buffers
import Drives
import Foundation
import SysPosix

#if canImport(Glibc)
    import Glibc
#endif

public struct CreateOptions: Sendable {
    public var directory: String
    public var driveCount: Int?
    public var driveSizeBytes: UInt64?
    public var drivePaths: [String]
    public var raidLevel: RAIDLevel
    public var spareCount: Int
    public var stripUnitBytes: Int
    public var cacheBytes: UInt64
    public var engineCount: Int
    public var force: Bool
    public init(
        directory: String, driveCount: Int?, driveSizeBytes: UInt64?, drivePaths: [String], raidLevel: RAIDLevel,
        spareCount: Int, stripUnitBytes: Int, cacheBytes: UInt64, engineCount: Int, force: Bool
    ) {
        self.directory = directory
        self.driveCount = driveCount
        self.driveSizeBytes = driveSizeBytes
        self.drivePaths = drivePaths
        self.raidLevel = raidLevel
        self.spareCount = spareCount
        self.stripUnitBytes = stripUnitBytes
        self.cacheBytes = cacheBytes
        self.engineCount = engineCount
        self.force = force
    }
}

public final class ArrayStore: @unchecked Sendable {
    public let directory: String
    /// Members in member order, then spares. A member missing from the folder is a placeholder (failed).
    public private(set) var drives: [Drive]
    /// Whether a drive is an NBD export elsewhere (latency-bound: the mount keeps more requests in flight).
    public var hasRemoteDrive: Bool { drives.contains { $0.remoteURI != nil } }
    public private(set) var drivePaths: [String]
    /// What assembly noticed and the mount should say: missing members, stale drives left alone.
    public private(set) var assemblyWarnings: [String] = []
    public private(set) var superblock: Superblock
    public private(set) var lunTable: LUNTable
    public let geometry: ArrayGeometry
    /// Whether the superblocks said "clean" when the array was assembled.
    public let wasClean: Bool
    private var io: DriveIO
    private let recordBuffer: Arena

    public var memberCount: Int { superblock.memberCount }

    init(directory: String, drives: [Drive], drivePaths: [String], superblock: Superblock, lunTable: LUNTable) throws(SysError) {
        self.directory = directory
        self.drives = drives
        self.drivePaths = drivePaths
        self.superblock = superblock
        self.lunTable = lunTable
        self.wasClean = superblock.clean
        self.geometry = ArrayGeometry(
            raidLevel: superblock.raidLevel, memberCount: superblock.memberCount,
            stripUnitBytes: superblock.stripUnitBytes,
            stripeCount: superblock.dataBytesPerDrive / UInt64(superblock.stripUnitBytes),
            dataOffsetBytes: superblock.dataOffsetBytes, layout: superblock.layout)
        self.io = try DriveIO(drives: drives, capacity: 4 * drives.count + 8)
        self.recordBuffer = Arena(sliceBytes: Layout.lunTableBytes, sliceCount: drives.count)
    }

    // MARK: Paths

    public static func drivePath(directory: String, index: Int) -> String { "\(directory)/drive-\(index)" }
    public static func lockPath(directory: String) -> String { "\(directory)/array.lock" }
    /// The largest N of a `drive-N` entry (each replacement takes the next number; 64 drives leave room for thousands).
    public static let driveEntryMax = 1 << 20
    public static let socketName = "control.sock"
    public static func socketPath(directory: String) -> String { "\(directory)/\(socketName)" }
    public static func logPath(directory: String) -> String { "\(directory)/vsa.log" }

    /// The drive entries in `directory`, in index order.
    static func driveEntries(directory: String) -> [String] {
        guard let dir = opendir(directory) else { return [] }
        defer { closedir(dir) }
        var names: [(Int, String)] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            // The number is ours to count up from (`prepareReplacement` takes the next one): anything outside
            // 0...driveEntryMax is not a drive entry of an array (and `n + 1` could overflow).
            if name.hasPrefix("drive-"), let n = Int(name.dropFirst(6)), n >= 0, n <= driveEntryMax { names.append((n, name)) }
        }
        return names.sorted { $0.0 < $1.0 }.map { "\(directory)/\($0.1)" }
    }

    public static func holdsArray(directory: String) -> Bool { !driveEntries(directory: directory).isEmpty }

    // MARK: Reading records

    /// What a drive-N entry names: the NBD URI a symlink to one holds (a remote drive's entry is a symlink whose
    /// target is its URI, so `ls -l` shows it), or else the entry itself (a file, or a symlink to a file or device).
    public static func locator(ofEntry entry: String) -> String {
        var target = [CChar](repeating: 0, count: 4097)
        let n = readlink(entry, &target, 4096)
        guard n > 0 else { return entry }
        let text = String(decoding: target[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return Drive.isURI(text) ? text : entry
    }

    /// An entry as messages name it: its path, and the URI of a remote drive.
    static func describe(entry: String) -> String {
        let locator = locator(ofEntry: entry)
        return locator == entry ? entry : "\(entry) (\(locator))"
    }

    /// Whether two drive locators name the same drive: the same URI, or the same file or device.
    static func sameDrive(_ a: String, _ b: String) -> Bool {
        if Drive.isURI(a) || Drive.isURI(b) { return a == b }
        guard let x = identity(a), let y = identity(b) else { return false }
        return x == y
    }

    /// Reads both superblock copies of one drive (a path or a URI) with plain reads (used for probing foreign devices
    /// too).
    static func readSuperblockCopies(path locator: String) -> (valid: Superblock?, sawMagic: Bool, firstBytesNonZero: Bool, problem: String?) {
        let block: [UInt8]
        do { block = try Drive.readHead(locator, count: 64 << 10) } catch { return (nil, false, false, error.description) }
        var best: Superblock? = nil
        var sawMagic = false
        var problem: String? = nil
        let nonZero = block.contains { $0 != 0 }
        for offset in Layout.superblockCopyOffsets where Int(offset) + Layout.superblockRecordBytes <= block.count {
            let bytes = Array(block[Int(offset)..<(Int(offset) + Layout.superblockRecordBytes)])
            if Superblock.hasMagic(bytes) { sawMagic = true }
            do {
                let sb = try Superblock.decode(bytes)
                if best == nil || sb.generation > best!.generation { best = sb }
            } catch { problem = error.reason }
        }
        return (best, sawMagic, nonZero, problem)
    }

    /// The newest LUN table copy that decodes and describes this array's geometry, and why the last copy that did
    /// not was refused.
    private func readLUNTables() -> (LUNTable?, String?) {
        var best: LUNTable? = nil
        var rejection: String? = nil
        for copy in Layout.lunTableCopyOffsets {
            for i in 0..<drives.count where drives[i].isWritable {
                io.queueRead(drive: i, into: recordBuffer.slice(i), count: Layout.lunTableBytes, offsetBytes: copy)
            }
            io.submit()
            for i in 0..<drives.count where drives[i].isWritable {
                let bytes = Array(UnsafeRawBufferPointer(start: recordBuffer.slice(i), count: Layout.lunTableBytes))
                let table: LUNTable
                do {
                    table = try LUNTable.decode(bytes)
                    guard table.arrayUUID == superblock.arrayUUID else { continue }
                    try table.validate(geometry: geometry)
                } catch {
                    if LUNTable.hasMagic(bytes) { rejection = error.reason }
                    continue
                }
                if best == nil || table.generation > best!.generation { best = table }
            }
        }
        return (best, rejection)
    }

    /// The first field on which `sb` describes another array than `reference` does (nil: they agree).
    static func disagreement(_ sb: Superblock, _ reference: Superblock) -> String? {
        if sb.raidLevel != reference.raidLevel { return "the RAID level" }
        if sb.memberCount != reference.memberCount { return "the member count" }
        if sb.stripUnitBytes != reference.stripUnitBytes { return "the stripe unit" }
        if sb.engineCount != reference.engineCount { return "the engine count" }
        if sb.dataOffsetBytes != reference.dataOffsetBytes || sb.dataBytesPerDrive != reference.dataBytesPerDrive { return "the data area" }
        if sb.journalSliceBytes != reference.journalSliceBytes || sb.checksumBytes != reference.checksumBytes { return "the journal and checksum areas" }
        if sb.createdUnixSeconds != reference.createdUnixSeconds { return "its creation time" }
        if sb.driveUUID != driveUUID(array: sb.arrayUUID, index: sb.driveIndex) { return "its drive identity" }
        return nil
    }

    // MARK: Assembly

    /// Assembles the array in `directory` from its drives alone. Nothing is written.
    ///
    /// Every drive is input, not truth. A drive whose superblocks are both damaged (or that holds no vsa superblock),
    /// or whose superblock disagrees with the array on its geometry or identity, or that missed superblock updates
    /// (its generation is older than the newest but one, and the failed-member mask does not say why), is left out:
    /// on a level that survives without it the array assembles degraded with a warning (as md does), and `vsa drive
    /// replace` rebuilds the member; otherwise assembly is refused with one line. A drive left out is never written.
    public static func assemble(directory: String) throws(VSAError) -> ArrayStore {
        let entries = driveEntries(directory: directory)
        guard !entries.isEmpty else {
            throw VSAError("\(directory) holds no vsa array (no drive-N entries); create one with `vsa create \(directory) --drives 4 --drive-size 1G`")
        }
        var found: [(path: String, sb: Superblock)] = []
        // Entries not used, and why (one line each): a refusal names the first, a degraded assembly warns of each.
        var leftOut: [(path: String, reason: String)] = []
        for path in entries {
            let locator = locator(ofEntry: path)
            let probe = readSuperblockCopies(path: locator)
            guard let sb = probe.valid else {
                if locator != path && !probe.sawMagic && !probe.firstBytesNonZero {
                    // A remote drive that does not answer (or answers with nothing): out, as a missing member is.
                    leftOut.append((path, "\(path) (\(locator)): \(probe.problem ?? "no vsa superblock")"))
                    continue
                }
                leftOut.append(
                    probe.sawMagic
                        ? (path, "\(path): vsa superblock damaged in both copies (\(probe.problem ?? "unreadable"))")
                        : (
                            path,
                            "\(path): not a vsa drive (\(probe.problem ?? "no superblock")) (an entry left by an interrupted vsa drive replace can be removed)"
                        ))
                continue
            }
            found.append((path, sb))
        }
        guard let reference = found.max(by: { $0.sb.generation < $1.sb.generation })?.sb else {
            throw VSAError("\(leftOut.first?.reason ?? directory): refusing to assemble, nothing was written")
        }
        for f in found where f.sb.arrayUUID != reference.arrayUUID {
            throw VSAError("\(f.path) belongs to another vsa array (uuid \(f.sb.arrayUUID), expected \(reference.arrayUUID)); remove it from \(directory)")
        }
        // Members agree on what the array is (md's and ZFS's labels carry the same), and on how current they are.
        found = found.filter { f in
            let member = f.sb.driveIndex < reference.memberCount
            if member && reference.failedMemberMask & (1 << UInt64(f.sb.driveIndex)) != 0 { return true }  // failed: not used anyway
            if let field = disagreement(f.sb, reference) {
                leftOut.append((f.path, "\(f.path): its superblock disagrees with the array's on \(field)"))
                return false
            }
            if f.sb.generation + 1 < reference.generation {
                leftOut.append(
                    (f.path, "\(f.path): its superblock (generation \(f.sb.generation)) missed updates the others have (\(reference.generation)): stale"))
                return false
            }
            return true
        }
        let total = reference.memberCount + reference.spareCount
        var ordered = [(path: String, sb: Superblock)?](repeating: nil, count: total)
        var warnings: [String] = []
        for f in found {
            guard f.sb.driveIndex < total else {
                // A drive whose place was taken (a spare consumed by a rebuild renumbers the rest) and which no
                // newer superblock counts any more: stale, left alone.
                warnings.append("\(f.path) is a stale drive of this array (generation \(f.sb.generation)); not used")
                continue
            }
            if let other = ordered[f.sb.driveIndex] {
                if other.sb.generation == f.sb.generation {
                    throw VSAError("\(f.path) and \(other.path) both claim drive index \(f.sb.driveIndex); remove the duplicate from \(directory)")
                }
                // A failed member replaced by a rebuild keeps its old superblock: the newer claim wins.
                let (newer, stale) = other.sb.generation > f.sb.generation ? (other, f) : (f, other)
                warnings.append("\(stale.path) is a stale copy of drive index \(f.sb.driveIndex) (replaced); not used")
                ordered[f.sb.driveIndex] = newer
                continue
            }
            ordered[f.sb.driveIndex] = f
        }
        var missingMembers: UInt64 = 0
        for i in 0..<reference.memberCount where ordered[i] == nil { missingMembers |= 1 << UInt64(i) }
        let lost = reference.failedMemberMask | missingMembers
        if missingMembers != 0 && !reference.raidLevel.survives(outMask: lost, memberCount: reference.memberCount) {
            let first = missingMembers.trailingZeroBitCount
            let why = leftOut.first.map { " (left out: \($0.reason))" } ?? ""
            throw VSAError(
                "drive index \(first) of array \(reference.arrayUUID) is missing from \(directory)\(why) and \(reference.raidLevel) cannot run without it; restore it: refusing to assemble, nothing was written"
            )
        }
        for entry in leftOut { warnings.append("\(entry.reason); not used, and never written") }
        var drives: [Drive] = []
        var paths: [String] = []
        for (i, entry) in ordered.enumerated() {
            guard let entry else {
                if i < reference.memberCount {
                    let path = drivePath(directory: directory, index: i)
                    warnings.append("member \(i) is missing; the array runs degraded until it is replaced (vsa drive replace)")
                    drives.append(Drive(missingPath: path))
                    paths.append("(missing)")
                } else {
                    warnings.append("spare drive index \(i) is missing; dropped")
                }
                continue
            }
            do { drives.append(try Drive.open(locator(ofEntry: entry.path))) } catch {
                throw VSAError("cannot open drive \(describe(entry: entry.path)): \(error); check its permissions or its server")
            }
            paths.append(entry.path)
        }
        // Members the array stopped using stay out, whatever their own superblock says: their data is stale.
        for i in 0..<reference.memberCount where reference.failedMemberMask & (1 << UInt64(i)) != 0 {
            drives[i].transition(to: .failed)
        }
        if let member = reference.rebuildMember, drives[member].state == .online {
            drives[member].rebuiltStripes.store(reference.rebuildCheckpoint, ordering: .releasing)
            drives[member].transition(to: .rebuilding)
        }
        if let member = reference.queuedRebuildMember, drives[member].state == .online {
            drives[member].rebuiltStripes.store(0, ordering: .releasing)
            drives[member].transition(to: .rebuilding)
        }
        let failedMask = memberMask(drives, memberCount: reference.memberCount) { $0.state == .failed }
        if !reference.raidLevel.survives(outMask: failedMask, memberCount: reference.memberCount) {
            throw VSAError(
                "array \(reference.arrayUUID) has \(failedMask.nonzeroBitCount) failed members, more than \(reference.raidLevel) survives; its data cannot be served"
            )
        }
        let expectedSize = reference.driveBytesRequired
        for d in drives where !d.isMissing && d.sizeBytes < expectedSize {
            throw VSAError("\(d.path) is \(d.sizeBytes) bytes, smaller than the array's \(expectedSize); it was truncated or replaced")
        }
        var sb = reference
        // A failed member's own superblock is stale: cleanliness is the surviving members' word.
        sb.clean = ordered.enumerated().allSatisfy { i, entry in
            guard let entry else { return true }
            return reference.failedMemberMask & (1 << UInt64(i)) != 0 || entry.sb.clean
        }
        let store: ArrayStore
        do {
            store = try ArrayStore(
                directory: directory, drives: drives, drivePaths: paths, superblock: sb,
                lunTable: LUNTable(generation: 0, arrayUUID: sb.arrayUUID, entries: []))
        } catch { throw VSAError("cannot set up io_uring for metadata I/O: \(error)") }
        let (best, rejection) = store.readLUNTables()
        guard let table = best else {
            throw VSAError("array \(sb.arrayUUID): no readable LUN table on any drive\(rejection.map { " (\($0))" } ?? ""); refusing to mount")
        }
        store.lunTable = table
        store.assemblyWarnings = warnings
        store.expectIdentities()
        return store
    }

    // MARK: Writing records

    /// Tells each remote drive what a new connection must find on it: this array's UUID in a superblock copy (the
    /// array's superblocks are on it by now). A server that comes back blank or with another disk is then failed,
    /// never written (DriveIO).
    func expectIdentities() {
        let at = Superblock.arrayUUIDOffset
        let uuid = Array(superblock.encode()[at..<(at + 16)])
        let identity = Drive.Identity(offsets: Layout.superblockCopyOffsets.map { $0 + UInt64(at) }, bytes: uuid)
        for drive in drives where drive.remoteURI != nil { drive.expect(identity) }
    }

    private func writeCopies(offsets: [UInt64], record: (Int) -> [UInt8]) throws(VSAError) {
        for copy in offsets {
            for i in 0..<drives.count where drives[i].isWritable {
                let bytes = record(i)
                let padded = (bytes.count + 4095) & ~4095
                let slice = recordBuffer.slice(i)
                slice.initializeMemory(as: UInt8.self, repeating: 0, count: padded)
                bytes.withUnsafeBytes { slice.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
                io.queueWrite(drive: i, from: slice, count: padded, offsetBytes: copy)
            }
            io.submit()
            for i in 0..<drives.count where drives[i].isWritable { io.queueFlush(drive: i) }
            let failed = io.submit()
            if failed != 0 && drives.allSatisfy({ $0.state == .failed }) {
                throw VSAError("metadata write failed on every drive")
            }
        }
    }

    /// Writes the superblocks with a new generation and the given clean flag.
    public func writeSuperblocks(clean: Bool) throws(VSAError) {
        superblock.clean = clean
        superblock.failedMemberMask = currentFailedMask
        superblock.spareCount = drives.count - superblock.memberCount
        if let member = superblock.queuedRebuildMember, drives[member].state != .rebuilding {
            superblock.queuedRebuildMember = nil  // its drive failed while it waited
        }
        if let member = superblock.rebuildMember, drives[member].state != .rebuilding {
            // The rebuild finished (online) or its drive failed: either way nothing to resume.
            superblock.rebuildMember = nil
            superblock.rebuildCheckpoint = 0
        }
        if superblock.rebuildMember == nil, let queued = superblock.queuedRebuildMember {
            // The queued rebuild is next, from its first stripe.
            superblock.rebuildMember = queued
            superblock.rebuildCheckpoint = 0
            superblock.queuedRebuildMember = nil
        }
        superblock.generation += 1
        let base = superblock
        try writeCopies(offsets: Layout.superblockCopyOffsets) { i in
            var sb = base
            sb.driveIndex = i
            sb.role = i < base.memberCount ? .member : .spare
            sb.driveUUID = ArrayStore.driveUUID(array: base.arrayUUID, index: i)
            return sb.encode()
        }
        expectIdentities()
    }

    public func writeLUNTable(_ table: LUNTable) throws(VSAError) {
        var next = table
        next.generation = lunTable.generation + 1
        next.arrayUUID = superblock.arrayUUID
        let bytes = next.encode()
        try writeCopies(offsets: Layout.lunTableCopyOffsets) { _ in bytes }
        lunTable = next
    }

    // MARK: Replacing members

    /// Member `member`'s place goes to `drive` (a spare of this array, or a new drive at `path`): it becomes that
    /// member, in state rebuilding from stripe 0, and the superblocks say so; a consumed spare leaves the spare list.
    /// The caller has the directors attach the same drive before any write reaches it.
    /// With `queued`, a rebuild of another member runs: this one waits for it (`queuedRebuildMember`), its drive
    /// already taking writes.
    public func attach(member: Int, drive: Drive, path: String, queued: Bool = false) throws(VSAError) {
        precondition(member < superblock.memberCount && drives[member].state == .failed, "attaching over a member that has not failed")
        precondition(!queued || (superblock.rebuildMember != nil && superblock.queuedRebuildMember == nil), "queueing a rebuild with none running")
        // Everything that can fail first; the array's state changes only once nothing can.
        var nextDrives = drives
        var nextPaths = drivePaths
        if let spare = drives.indices.first(where: { $0 >= superblock.memberCount && drives[$0] === drive }) {
            nextDrives.remove(at: spare)
            nextPaths.remove(at: spare)
        }
        nextDrives[member] = drive
        nextPaths[member] = path
        let nextIO: DriveIO
        do { nextIO = try DriveIO(drives: nextDrives, capacity: 4 * nextDrives.count + 8) } catch {
            throw VSAError("cannot set up io_uring for metadata I/O (\(error)); nothing was changed, try again")
        }
        drive.rebuiltStripes.store(0, ordering: .releasing)
        guard drive.transition(from: .online, to: .rebuilding) else {
            throw VSAError("\(path) failed before the rebuild could start; give another drive with --with PATH")
        }
        drives = nextDrives
        drivePaths = nextPaths
        io = nextIO
        if queued {
            superblock.queuedRebuildMember = member
        } else {
            superblock.rebuildMember = member
            superblock.rebuildCheckpoint = 0
        }
        try writeLUNTable(lunTable)
        try writeSuperblocks(clean: superblock.clean)
    }

    /// The file or device behind `path`: (device, inode) of a file, (rdev, 0) of a block device; nil if absent.
    static func identity(_ path: String) -> (UInt64, UInt64)? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        if (st.st_mode & S_IFMT) == S_IFBLK { return (UInt64(st.st_rdev), 0) }
        return (UInt64(st.st_dev), UInt64(st.st_ino))
    }

    /// Checks and opens the drive that is to take failed member `member`'s place: `path` is created as a sparse file
    /// if absent; an existing file or device must be big enough and hold nothing we would destroy (another array's
    /// drive, a live drive of this one, or foreign data without `force`). Returns the drive and its entry in the
    /// array folder (a `drive-N` symlink is made for a path outside it). Changes nothing if it throws.
    /// A drive about to take a member's place, and what preparing it added to the folder (undone if attaching fails).
    public struct Replacement {
        public let drive: Drive
        public let entry: String
        public let createdFile: String?
        public let createdEntry: Bool
        public init(drive: Drive, entry: String, createdFile: String?, createdEntry: Bool) {
            self.drive = drive
            self.entry = entry
            self.createdFile = createdFile
            self.createdEntry = createdEntry
        }
    }

    /// Removes what `prepareReplacement` added (attaching failed).
    public func undo(_ replacement: Replacement) {
        if replacement.createdEntry { unlink(replacement.entry) }
        if let file = replacement.createdFile { unlink(file) }
    }

    public func prepareReplacement(member: Int, path: String, force: Bool) throws(VSAError) -> Replacement {
        let required = superblock.driveBytesRequired
        let remote = Drive.isURI(path)
        let absolute = remote || path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        var created = false
        if remote || ArrayStore.identity(absolute) != nil {
            // Only the member's own drive may be given back; any other drive of the array (even a failed one, whose
            // entry a later replace would retire) is refused.
            for (i, d) in drives.enumerated() where i != member && !d.isMissing && ArrayStore.sameDrive(d.remoteURI ?? drivePaths[i], absolute) {
                throw VSAError("\(path) is already drive \(i) of this array; give a new file or device")
            }
            let probe = ArrayStore.readSuperblockCopies(path: absolute)
            if let sb = probe.valid, sb.arrayUUID != superblock.arrayUUID, !force {
                throw VSAError("\(path) belongs to vsa array \(sb.arrayUUID); use --force to overwrite it")
            }
            if probe.valid == nil && probe.sawMagic && !force {
                throw VSAError("\(path) holds a damaged vsa superblock; use --force to overwrite it")
            }
            if probe.valid == nil && !probe.sawMagic && probe.firstBytesNonZero && !force {
                throw VSAError("\(path) holds data that is not a vsa superblock; refusing to overwrite it (use --force if you are sure)")
            }
        } else {
            do { try Drive.createFile(path: absolute, sizeBytes: required) } catch { throw VSAError("cannot create \(path): \(error)") }
            created = true
        }
        let drive: Drive
        do { drive = try Drive.open(absolute) } catch {
            if created { unlink(absolute) }
            throw VSAError("cannot open \(path): \(error)")
        }
        guard drive.sizeBytes >= required else {
            if created { unlink(absolute) }
            throw VSAError("\(path) is \(formatSize(drive.sizeBytes)); this array needs at least \(formatSize(required)) per drive")
        }
        // Its journal slices and checksum area start empty: nothing from the drive's earlier life (an older epoch's
        // records, checksums of other contents) may be taken for this array's.
        guard ArrayStore.zeroRange(drive, offsetBytes: DriveLayout.journalOffsetBytes, count: superblock.dataOffsetBytes - DriveLayout.journalOffsetBytes)
        else {
            if created { unlink(absolute) }
            throw VSAError("cannot clear the journal and checksum areas of \(path)")
        }
        // The folder is how the array finds its drives: a path outside it gets a drive-N entry.
        let entries = ArrayStore.driveEntries(directory: directory)
        let file = created ? absolute : nil
        if entries.contains(absolute) { return Replacement(drive: drive, entry: absolute, createdFile: file, createdEntry: false) }
        // The same file or device behind an existing entry (a failed member given back): that entry serves.
        if let existing = entries.first(where: { ArrayStore.sameDrive(ArrayStore.locator(ofEntry: $0), absolute) }) {
            return Replacement(drive: drive, entry: existing, createdFile: file, createdEntry: false)
        }
        var next = 0
        for e in entries { if let n = Int(e.split(separator: "/").last!.dropFirst(6)), n >= next { next = n + 1 } }
        var st = stat()
        while lstat(ArrayStore.drivePath(directory: directory, index: next), &st) == 0 { next += 1 }
        let entry = ArrayStore.drivePath(directory: directory, index: next)
        guard symlink(absolute, entry) == 0 else {
            if created { unlink(absolute) }
            throw VSAError("cannot make \(entry) point at \(path): \(Posix.errnoDescription(errno))")
        }
        return Replacement(drive: drive, entry: entry, createdFile: file, createdEntry: true)
    }

    /// Makes a byte range of one drive read as zeroes (hole punch, BLKZEROOUT, or zero writes), flushed.
    public static func zeroRange(_ drive: Drive, offsetBytes: UInt64, count: UInt64) -> Bool {
        if drive.isBlockDevice && Posix.zeroOut(fd: drive.fd, offsetBytes: offsetBytes, count: count) { return true }
        guard let io = try? DriveIO(drives: [drive], capacity: 4) else { return false }
        var punched = false
        if !drive.isBlockDevice {
            io.queueZeroRange(drive: 0, offsetBytes: offsetBytes, count: Int(count))
            punched = io.submit() == 0 && io.zeroUnsupportedDrives == 0
        }
        if !punched {
            let zeroes = Arena(sliceBytes: 1 << 20, sliceCount: 1)
            var done: UInt64 = 0
            while done < count {
                let step = Int(min(UInt64(1 << 20), count - done))
                io.queueWrite(drive: 0, from: zeroes.base, count: step, offsetBytes: offsetBytes + done)
                guard io.submit() == 0 else { return false }
                done += UInt64(step)
            }
        }
        io.queueFlush(drive: 0)
        return io.submit() == 0
    }

    /// Takes a replaced member's entry out of the folder's drive list (renamed to `drive-N.failed`), unless it is
    /// the replacement itself (the same file given back with --with).
    public func retire(entry: String, keeping replacement: String) {
        var st = stat()
        guard entry.hasPrefix(directory + "/drive-"), !drivePaths.contains(entry), lstat(entry, &st) == 0,
            !ArrayStore.sameDrive(ArrayStore.locator(ofEntry: entry), ArrayStore.locator(ofEntry: replacement))
        else {
            return
        }
        rename(entry, entry + ".failed")
    }

    /// Flushes every drive that takes writes; false if one failed doing it.
    public func flushDrives() -> Bool {
        for i in 0..<drives.count where drives[i].isWritable { io.queueFlush(drive: i) }
        return io.submit() == 0
    }

    /// Records how far the rebuild got, so a restart resumes there.
    public func recordRebuildProgress(stripes: UInt64) throws(VSAError) {
        guard superblock.rebuildMember != nil else { return }
        // What the checkpoint claims must be on the drives before the checkpoint is.
        _ = flushDrives()
        superblock.rebuildCheckpoint = stripes
        try writeSuperblocks(clean: superblock.clean)
    }

    /// The spares that are ready to take a failed member's place.
    public var spares: [(index: Int, drive: Drive, path: String)] {
        drives.indices.filter { $0 >= superblock.memberCount && drives[$0].state == .online }.map { ($0, drives[$0], drivePaths[$0]) }
    }

    /// The members among the first `memberCount` of `drives` for which `test` holds (bit i = member i).
    static func memberMask(_ drives: [Drive], memberCount: Int, _ test: (Drive) -> Bool) -> UInt64 {
        var mask: UInt64 = 0
        for i in 0..<memberCount where test(drives[i]) { mask |= 1 << UInt64(i) }
        return mask
    }

    /// The members that are failed now (bit i = member i).
    public var currentFailedMask: UInt64 { ArrayStore.memberMask(drives, memberCount: superblock.memberCount) { $0.state == .failed } }

    /// Records newly failed members in the superblocks of the rest, so a failed drive is never trusted again.
    /// Returns false when the array has lost more members than its level survives.
    public func recordFailures() throws(VSAError) -> Bool {
        let mask = currentFailedMask
        if mask != superblock.failedMemberMask { try writeSuperblocks(clean: superblock.clean) }
        return superblock.raidLevel.survives(outMask: mask, memberCount: superblock.memberCount)
    }

    /// Members being rebuilt (they take writes).
    public var rebuildingMask: UInt64 { ArrayStore.memberMask(drives, memberCount: superblock.memberCount) { $0.state == .rebuilding } }

    /// The members that are out now, failed or still being rebuilt (bit i = member i).
    public var membersOut: UInt64 { ArrayStore.memberMask(drives, memberCount: superblock.memberCount) { $0.state != .online } }

    static func driveUUID(array: UUID128, index: Int) -> UUID128 {
        UUID128(high: array.bytes.0 ^ 0x5A5A_0000_0000_0000, low: array.bytes.1 &+ UInt64(index + 1))
    }

    // MARK: LUNs

    /// Checks a new LUN's name, size and count; answers the id it will get (the smallest free one: ids stay at or
    /// below lunCountMax, so the front end's handle table is fixed-size).
    /// With `idGroup` (r, m), the id is one with id % m == r: a linked clone's id shares its origin's homes.
    public func checkNewLUN(name: String, sizeBytes: UInt64, thin: Bool, idGroup: (residue: UInt32, modulus: UInt32)? = nil) throws(VSAError) -> UInt32 {
        if let problem = validateLUNName(name) { throw VSAError("\(problem): \(name)") }
        guard lunTable.entries.first(where: { $0.name == name }) == nil else {
            throw VSAError("a LUN named \(name) already exists; pick another name or delete it first")
        }
        guard sizeBytes > 0, sizeBytes % UInt64(sectorBytes) == 0 else {
            throw VSAError("LUN size must be a positive multiple of 512 bytes (got \(sizeBytes))")
        }
        guard lunTable.entries.count < Layout.lunCountMax else { throw VSAError("the array already holds \(Layout.lunCountMax) LUNs; delete one first") }
        if thin {
            guard sizeBytes <= LUNEntry.thinBytesMax else {
                throw VSAError("a thin LUN provisions at most \(formatSize(LUNEntry.thinBytesMax)) (asked for \(formatSize(sizeBytes)))")
            }
        } else {
            guard sizeBytes <= geometry.capacityBytes else {
                throw VSAError("a LUN of \(formatSize(sizeBytes)) does not fit in this array (capacity \(formatSize(geometry.capacityBytes)))")
            }
        }
        let taken = Set(lunTable.entries.map(\.lunID))
        guard let lunID = (1...UInt32(Layout.lunCountMax)).first(where: { id in !taken.contains(id) && idGroup.map { id % $0.modulus == $0.residue } ?? true })
        else { throw VSAError("no LUN id is left that shares the origin's director homes; delete a LUN first") }
        return lunID
    }

    /// Writes a changed entry of LUN `entry.lunID` (a clone linked or unlinked, a restore begun or finished).
    public func updateLUN(_ entry: LUNEntry) throws(VSAError) {
        guard let i = lunTable.entries.firstIndex(where: { $0.lunID == entry.lunID }) else { throw VSAError("LUN \(entry.name) no longer exists") }
        var table = lunTable
        table.entries[i] = entry
        try writeLUNTable(table)
        _ = try recordFailures()
    }

    /// The first run of `needed` stripes that no thick LUN, the pool area or a run in `avoiding` (the pool's
    /// segments) touches; nil when there is none.
    public func freeRun(stripes needed: UInt64, avoiding: [Range<UInt64>] = []) -> UInt64? {
        var cursor: UInt64 = 0
        for run in (lunTable.reservedRuns + avoiding).sorted(by: { $0.lowerBound < $1.lowerBound }) where !run.isEmpty {
            if run.lowerBound > cursor && run.lowerBound - cursor >= needed { return cursor }
            cursor = max(cursor, run.upperBound)
        }
        return geometry.stripeCount > cursor && geometry.stripeCount - cursor >= needed ? cursor : nil
    }

    /// Creates a thick LUN: a run of its own stripes, the first free one big enough (first fit) outside `avoiding`
    /// (the pool's segments), and writes the LUN table.
    public func createLUN(name: String, sizeBytes: UInt64, avoiding: [Range<UInt64>] = []) throws(VSAError) -> LUNEntry {
        let lunID = try checkNewLUN(name: name, sizeBytes: sizeBytes, thin: false)
        let needed = geometry.stripesFor(sizeBytes: sizeBytes)
        guard let placed = freeRun(stripes: needed, avoiding: avoiding) else {
            throw VSAError(
                "not enough free space for \(formatSize(sizeBytes)): \(formatSize(freeBytes)) free in the largest runs; delete a LUN or use a smaller size")
        }
        let entry = LUNEntry(lunID: lunID, name: name, sizeBytes: sizeBytes, startStripe: placed, stripeCount: needed)
        var table = lunTable
        table.entries.append(entry)
        try writeLUNTable(table)
        _ = try recordFailures()
        return entry
    }

    /// Records a thin LUN (its versions are already in the pool's homes) and, with the first, the pool area.
    public func recordThinLUN(_ entry: LUNEntry, pool: PoolArea) throws(VSAError) {
        precondition(entry.thin && entry.stripeCount == 0)
        var table = lunTable
        table.entries.append(entry)
        table.pool = pool
        try writeLUNTable(table)
        _ = try recordFailures()
    }

    /// Removes a LUN from the table, then zeroes its stripes on every drive so a later LUN reads zeroes there
    /// (zeroed data has zero parity, so parity stays consistent).
    public func deleteLUN(name: String) throws(VSAError) -> LUNEntry {
        guard let entry = lunTable.entries.first(where: { $0.name == name }) else {
            throw VSAError("no LUN named \(name); `vsa lun list` shows the LUNs")
        }
        var table = lunTable
        table.entries.removeAll { $0.name == name }
        try writeLUNTable(table)
        if !entry.thin { zeroStripes(start: entry.startStripe, count: entry.stripeCount) }
        _ = try recordFailures()
        return entry
    }

    /// Zeroes whole stripes on every drive: punch holes in drive files, BLKZEROOUT on block devices, and plain zero
    /// writes where neither works. Zeroed data has zero parity, so parity stays consistent.
    public func zeroStripes(start: UInt64, count: UInt64) {
        let offset = geometry.driveOffset(stripe: start)
        let length = count * UInt64(geometry.stripUnitBytes)
        var writeZeroes: UInt64 = 0
        for i in 0..<drives.count where drives[i].isWritable && drives[i].isBlockDevice {
            if !Posix.zeroOut(fd: drives[i].fd, offsetBytes: offset, count: length) { writeZeroes |= 1 << UInt64(i) }
        }
        var punched: UInt64 = 0
        while punched < length {
            // One batch per GiB: a batch holds one operation per drive.
            let step = min(length - punched, 1 << 30)
            for i in 0..<drives.count where drives[i].isWritable && !drives[i].isBlockDevice {
                io.queueZeroRange(drive: i, offsetBytes: offset + punched, count: Int(step))
            }
            io.submit()
            writeZeroes |= io.zeroUnsupportedDrives
            punched += step
        }
        if writeZeroes != 0 {
            let chunk = 1 << 20
            let zeroes = Arena(sliceBytes: chunk, sliceCount: 1)
            var done: UInt64 = 0
            while done < length {
                let step = Int(min(UInt64(chunk), length - done))
                for i in 0..<drives.count where writeZeroes & (1 << UInt64(i)) != 0 && drives[i].isWritable {
                    io.queueWrite(drive: i, from: zeroes.base, count: step, offsetBytes: offset + done)
                }
                io.submit()
                done += UInt64(step)
            }
        }
        for i in 0..<drives.count where drives[i].isWritable { io.queueFlush(drive: i) }
        io.submit()
    }

    /// Stripes no thick LUN and no pool area holds, as bytes of data (the pool's segments are counted as free here;
    /// the daemon's status subtracts them).
    public var freeBytes: UInt64 {
        let used = lunTable.entries.reduce(UInt64(0)) { $0 + $1.stripeCount } + (lunTable.pool?.stripeCount ?? 0)
        return (geometry.stripeCount - min(used, geometry.stripeCount)) * geometry.stripeDataBytes
    }
}
