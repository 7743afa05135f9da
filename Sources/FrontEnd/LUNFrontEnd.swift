// FrontEnd: the virtual front-end adapter. The mount's root holds one regular file per LUN, exactly the LUN's size.
// Reads, writes, fsync and fallocate become director I/O through the `HostIOPort`; everything that would change the
// namespace or a LUN's size answers EPERM (LUNs change through `vsa lun`).
//
// Threads: libfuse's workers call in concurrently. The LUN set is read through a lock (control plane: lookup,
// open, readdir); an open file's handle is its LUN's id in a table that open files pin, so read and write take no
// lock and allocate nothing (each worker has its own page-aligned read buffer, made the first time it reads).
import ArrayModel
import Directors
import GlobalMemory
import Synchronization
import SysFuse
import SysPosix

#if canImport(Glibc)
    import Glibc
#endif

/// One LUN as the front end shows it.
public final class LUNFile: Sendable {
    public let name: String
    public let ref: LUNRef
    public let openCount = Atomic<Int>(0)
    /// A thin LUN's blocks in the pool, in bytes, as the daemon last counted them (about once a second; UInt64.max:
    /// not yet): the file's st_blocks, so `du` and `ls -s` show what it takes. A thick LUN takes its size.
    public let allocatedBytes = Atomic<UInt64>(UInt64.max)
    /// The host's latency of this LUN's reads, writes (and zeroed ranges) and fsyncs, from the request's arrival in
    /// the front end to its answer (LatencyHistogram.swift).
    public let latency = IOLatency()
    /// Reads, writes, zeroes and fsyncs answered with an error (what the host saw fail).
    public let hostErrors = Atomic<UInt64>(0)
    /// Bytes read and written (zeroed ranges included) by requests answered without an error.
    public let readBytes = Atomic<UInt64>(0)
    public let writtenBytes = Atomic<UInt64>(0)
    /// Writes in flight, plus `held` while a snapshot is being taken: new writes wait then, so that every home's
    /// part of the snapshot is the same point in time (one acknowledged write in it means every earlier one is).
    private let writeGate = Atomic<Int>(0)
    private static let held = 1 << 40
    public var inode: UInt64 { UInt64(ref.lunID) + 1 }
    public init(name: String, ref: LUNRef) {
        self.name = name
        self.ref = ref
    }

    /// A write or zero enters (waiting while the LUN's writes are held; that lasts a snapshot's checkpoints).
    @inline(__always) func enterWrite() {
        while true {
            let gate = writeGate.load(ordering: .acquiring)
            if gate >= LUNFile.held {
                usleep(100)
                continue
            }
            if writeGate.compareExchange(expected: gate, desired: gate + 1, ordering: .acquiringAndReleasing).exchanged { return }
        }
    }

    @inline(__always) func leaveWrite() { writeGate.subtract(1, ordering: .releasing) }

    /// A request that began at `began` is answered with `rc`: its latency goes to `histogram`, an error is counted.
    @inline(__always) func answered(_ histogram: LatencyHistogram, began: UInt64, rc: Int32) {
        histogram.record(nanoseconds: Posix.monotonicNanoseconds() &- began)
        if rc != 0 { hostErrors.add(1, ordering: .relaxed) }
    }

    /// Holds new writes and waits for those in flight (one holder at a time: the daemon's command lock).
    public func holdWrites() {
        writeGate.add(LUNFile.held, ordering: .acquiringAndReleasing)
        while writeGate.load(ordering: .acquiring) % LUNFile.held != 0 { usleep(100) }
    }

    public func releaseWrites() { writeGate.subtract(LUNFile.held, ordering: .releasing) }
}

public final class LUNFrontEnd: FuseHandler, @unchecked Sendable {
    public static let requestBytesMax = 1 << 20
    private let port: HostIOPort
    private let luns = Locked<[UInt32: LUNFile]>([:])
    /// Open handles, indexed by LUN id: immutable once pinned by an open (the LUN cannot be deleted while open).
    private let handles: UnsafeMutablePointer<Unmanaged<LUNFile>?>
    private let handleCapacity = 4096
    private let mountSeconds: Int
    private let userID: UInt32
    private let groupID: UInt32
    private let capacity: @Sendable () -> (totalBytes: UInt64, freeBytes: UInt64)
    private var bufferKey = pthread_key_t()
    private let attributeTimeoutSeconds = 1.0

    public init(
        port: HostIOPort, luns initial: [LUNFile], userID: UInt32, groupID: UInt32,
        capacity: @escaping @Sendable () -> (totalBytes: UInt64, freeBytes: UInt64)
    ) {
        self.port = port
        self.userID = userID
        self.groupID = groupID
        self.capacity = capacity
        self.mountSeconds = Int(time(nil))
        handles = .allocate(capacity: handleCapacity)
        handles.initialize(repeating: nil, count: handleCapacity)
        let rc = pthread_key_create(&bufferKey) { raw in if let raw { free(raw) } }
        precondition(rc == 0)
        // Every LUN goes through `add` and its bound (the LUN table was validated at assembly: ids are 1...256).
        for l in initial { add(l) }
    }

    // MARK: The LUN set (control plane)

    public func add(_ lun: LUNFile) {
        precondition(lun.ref.lunID >= 1 && Int(lun.ref.lunID) < handleCapacity, "LUN id \(lun.ref.lunID) outside the handle table")
        luns.withLock { $0[lun.ref.lunID] = lun }
    }

    /// Removes a LUN unless it is open; returns false when it is busy.
    public func remove(lunID: UInt32) -> Bool {
        luns.withLock { table in
            guard let l = table[lunID] else { return true }
            if l.openCount.load(ordering: .acquiring) > 0 { return false }
            table[lunID] = nil
            return true
        }
    }

    /// Every LUN file the mount shows.
    public var files: [LUNFile] { luns.withLock { Array($0.values) } }

    /// The LUN's file, if the mount shows it.
    public func file(lunID: UInt32) -> LUNFile? { luns.withLock { $0[lunID] } }

    public func isOpen(lunID: UInt32) -> Bool {
        luns.withLock { $0[lunID]?.openCount.load(ordering: .acquiring) ?? 0 > 0 }
    }

    private func lun(inode: UInt64) -> LUNFile? {
        guard inode >= 2 else { return nil }
        return luns.withLock { $0[UInt32(truncatingIfNeeded: inode - 1)] }
    }

    private func attributes(_ l: LUNFile) -> FileAttributes {
        FileAttributes(
            inode: l.inode, isDirectory: false, permissions: 0o600, sizeBytes: l.ref.sizeBytes, userID: userID,
            groupID: groupID, modifiedSeconds: mountSeconds, allocatedBytes: allocatedBytes(l))
    }

    private func allocatedBytes(_ l: LUNFile) -> UInt64? {
        guard l.ref.thin else { return nil }
        let counted = l.allocatedBytes.load(ordering: .relaxed)
        return counted == UInt64.max ? nil : min(counted, l.ref.sizeBytes)
    }

    private var rootAttributes: FileAttributes {
        FileAttributes(
            inode: 1, isDirectory: true, permissions: 0o755, sizeBytes: 0, userID: userID, groupID: groupID,
            modifiedSeconds: mountSeconds)
    }

    @inline(__always)
    private func file(handle: UInt64) -> LUNFile {
        precondition(handle < UInt64(handleCapacity), "bad file handle \(handle)")
        return handles[Int(handle)]!.takeUnretainedValue()
    }

    private func readBuffer() -> UnsafeMutableRawPointer {
        if let p = pthread_getspecific(bufferKey) { return p }
        var p: UnsafeMutableRawPointer? = nil
        precondition(posix_memalign(&p, 4096, LUNFrontEnd.requestBytesMax) == 0)
        pthread_setspecific(bufferKey, p)
        return p!
    }

    // MARK: FuseHandler

    public func connectionLimits() -> (maxWriteBytes: UInt32, maxReadaheadBytes: UInt32) {
        (UInt32(LUNFrontEnd.requestBytesMax), UInt32(LUNFrontEnd.requestBytesMax))
    }

    public func lookup(_ reply: consuming FuseReply, parent: UInt64, name: String) {
        guard parent == 1 else { return reply.error(ENOENT) }
        let found = luns.withLock { $0.values.first { $0.name == name } }
        guard let found else { return reply.error(ENOENT) }
        reply.entry(attributes(found), timeoutSeconds: attributeTimeoutSeconds)
    }

    public func getattr(_ reply: consuming FuseReply, inode: UInt64) {
        if inode == 1 { return reply.attributes(rootAttributes, timeoutSeconds: attributeTimeoutSeconds) }
        guard let l = lun(inode: inode) else { return reply.error(ENOENT) }
        reply.attributes(attributes(l), timeoutSeconds: attributeTimeoutSeconds)
    }

    public func setattr(_ reply: consuming FuseReply, inode: UInt64, change: AttributeChange) {
        let current: FileAttributes
        if inode == 1 {
            current = rootAttributes
        } else {
            guard let l = lun(inode: inode) else { return reply.error(ENOENT) }
            current = attributes(l)
        }
        // A LUN's size is fixed; its mode and owner are the array's. Touching times is harmless and allowed.
        if let size = change.sizeBytes, size != current.sizeBytes { return reply.error(EPERM) }
        if let mode = change.permissions, mode != current.permissions { return reply.error(EPERM) }
        if change.ownerChange { return reply.error(EPERM) }
        reply.attributes(current, timeoutSeconds: attributeTimeoutSeconds)
    }

    public func readdir(_ reply: consuming FuseReply, inode: UInt64, sizeMax: Int, offset: Int) {
        guard inode == 1 else { return reply.error(ENOTDIR) }
        var entries = [DirectoryEntry(name: ".", attributes: rootAttributes), DirectoryEntry(name: "..", attributes: rootAttributes)]
        let files = luns.withLock { Array($0.values) }.sorted { $0.name < $1.name }
        for f in files { entries.append(DirectoryEntry(name: f.name, attributes: attributes(f))) }
        reply.directory(entries, offset: offset, sizeMax: sizeMax)
    }

    public func open(_ reply: consuming FuseReply, inode: UInt64, flags: Int32) {
        if inode == 1 { return reply.error(EISDIR) }
        if flags & O_TRUNC != 0 { return reply.error(EPERM) }
        let pinned: LUNFile? = luns.withLock { table in
            guard let l = table[UInt32(truncatingIfNeeded: inode - 1)] else { return nil }
            l.openCount.add(1, ordering: .acquiringAndReleasing)
            if handles[Int(l.ref.lunID)] == nil { handles[Int(l.ref.lunID)] = Unmanaged.passRetained(l) }
            return l
        }
        guard let pinned else { return reply.error(ENOENT) }
        reply.open(handle: UInt64(pinned.ref.lunID), directIO: flags & openDirectFlag != 0)
    }

    public func release(_ reply: consuming FuseReply, inode: UInt64, handle: UInt64) {
        luns.withLock { _ in
            let l = file(handle: handle)
            if l.openCount.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 {
                handles[Int(handle)]!.release()
                handles[Int(handle)] = nil
            }
        }
        reply.ok()
    }

    public func read(_ reply: consuming FuseReply, handle: UInt64, count: Int, offsetBytes: Int64) {
        let l = file(handle: handle)
        let size = l.ref.sizeBytes
        guard offsetBytes >= 0 else { return reply.error(EINVAL) }
        let offset = UInt64(offsetBytes)
        if offset >= size || count == 0 { return reply.data(readBuffer(), count: 0) }
        let length = Int(min(UInt64(min(count, LUNFrontEnd.requestBytesMax)), size - offset))
        let buffer = readBuffer()
        let began = Posix.monotonicNanoseconds()
        let rc = port.read(lun: l.ref, offsetBytes: offset, count: length, into: buffer)
        l.answered(l.latency.reads, began: began, rc: rc)
        if rc != 0 { return reply.error(rc) }
        l.readBytes.add(UInt64(length), ordering: .relaxed)
        reply.data(buffer, count: length)
    }

    public func write(_ reply: consuming FuseReply, handle: UInt64, data: UnsafeRawPointer, count: Int, offsetBytes: Int64, flags: Int32) {
        let l = file(handle: handle)
        guard offsetBytes >= 0 else { return reply.error(EINVAL) }
        let offset = UInt64(offsetBytes)
        // A LUN never grows: a write that does not fit changes nothing.
        guard offset <= l.ref.sizeBytes, UInt64(count) <= l.ref.sizeBytes - offset else { return reply.error(EFBIG) }
        if count == 0 { return reply.written(0) }
        let began = Posix.monotonicNanoseconds()
        l.enterWrite()
        var rc = port.write(lun: l.ref, offsetBytes: offset, count: count, from: data)
        // O_SYNC / O_DSYNC (or RWF_DSYNC): durable before the answer.
        if rc == 0 && flags & O_DSYNC != 0 { rc = port.flush(lun: l.ref) }
        l.leaveWrite()
        l.answered(l.latency.writes, began: began, rc: rc)
        if rc != 0 { return reply.error(rc) }
        l.writtenBytes.add(UInt64(count), ordering: .relaxed)
        reply.written(count)
    }

    public func flush(_ reply: consuming FuseReply, handle: UInt64) {
        // close(2): nothing to do; durability is fsync's contract.
        reply.ok()
    }

    public func fsync(_ reply: consuming FuseReply, handle: UInt64, dataOnly: Bool) {
        let l = file(handle: handle)
        let began = Posix.monotonicNanoseconds()
        let rc = port.flush(lun: l.ref)
        l.answered(l.latency.flushes, began: began, rc: rc)
        rc == 0 ? reply.ok() : reply.error(rc)
    }

    public func fallocate(_ reply: consuming FuseReply, handle: UInt64, mode: Int32, offsetBytes: Int64, length: Int64) {
        let l = file(handle: handle)
        guard offsetBytes >= 0, length > 0 else { return reply.error(EINVAL) }
        let size = l.ref.sizeBytes
        let offset = UInt64(offsetBytes)
        let end = offset + UInt64(length)
        let punch: Int32 = 0x02, keepSize: Int32 = 0x01, zeroRange: Int32 = 0x10
        if mode & (punch | zeroRange) != 0 {
            if mode & ~(punch | zeroRange | keepSize) != 0 { return reply.error(EOPNOTSUPP) }
            if mode & zeroRange != 0 && mode & keepSize == 0 && end > size { return reply.error(EFBIG) }
            guard offset < size else { return reply.ok() }
            // Punched and zeroed ranges read back as zeroes: written as zeroes through global memory.
            let began = Posix.monotonicNanoseconds()
            l.enterWrite()
            let rc = port.zero(lun: l.ref, offsetBytes: offset, count: min(end, size) - offset)
            l.leaveWrite()
            l.answered(l.latency.writes, began: began, rc: rc)
            if rc != 0 { return reply.error(rc) }
            l.writtenBytes.add(min(end, size) - offset, ordering: .relaxed)
            return reply.ok()
        }
        if mode & ~keepSize != 0 { return reply.error(EOPNOTSUPP) }
        // Plain allocation: every byte of a LUN is already backed; growing it is not allowed.
        if mode & keepSize == 0 && end > size { return reply.error(EFBIG) }
        reply.ok()
    }

    public func statfs(_ reply: consuming FuseReply) {
        let c = capacity()
        let count = luns.withLock { $0.count }
        reply.statfs(
            FileSystemStats(
                blockBytes: 4096, blocks: c.totalBytes / 4096, freeBlocks: c.freeBytes / 4096,
                files: UInt64(count), nameBytesMax: 64))
    }
}
