// SysFuse: libfuse3's low-level API behind a Swift protocol. The C callbacks live here and only here; they turn the
// request into Swift values and call a `FuseHandler`. Every request is answered exactly once: the handler receives a
// `FuseReply`, a non-copyable token whose answers are `consuming`, so a second answer does not compile and a token
// dropped without an answer traps.
import CFuse3
import SysPosix

#if canImport(Glibc)
    import Glibc
#endif

/// A file's attributes as the front end states them.
public struct FileAttributes: Sendable {
    public var inode: UInt64
    public var isDirectory: Bool
    public var permissions: UInt32
    public var sizeBytes: UInt64
    public var userID: UInt32
    public var groupID: UInt32
    public var modifiedSeconds: Int
    /// Bytes the file takes on the array (st_blocks: what `du` shows); nil: its size (a thick LUN).
    public var allocatedBytes: UInt64?
    public init(
        inode: UInt64, isDirectory: Bool, permissions: UInt32, sizeBytes: UInt64, userID: UInt32, groupID: UInt32,
        modifiedSeconds: Int, allocatedBytes: UInt64? = nil
    ) {
        self.allocatedBytes = allocatedBytes
        self.inode = inode
        self.isDirectory = isDirectory
        self.permissions = permissions
        self.sizeBytes = sizeBytes
        self.userID = userID
        self.groupID = groupID
        self.modifiedSeconds = modifiedSeconds
    }

    var stat: stat {
        var st = Glibc.stat()
        st.st_ino = __ino_t(inode)
        st.st_mode = (isDirectory ? S_IFDIR : S_IFREG) | permissions
        st.st_nlink = isDirectory ? 2 : 1
        st.st_size = off_t(sizeBytes)
        st.st_blocks = blkcnt_t(((allocatedBytes ?? sizeBytes) + 511) / 512)
        st.st_blksize = 4096
        st.st_uid = userID
        st.st_gid = groupID
        st.st_mtim.tv_sec = modifiedSeconds
        st.st_ctim.tv_sec = modifiedSeconds
        st.st_atim.tv_sec = modifiedSeconds
        return st
    }
}

public struct DirectoryEntry: Sendable {
    public var name: String
    public var attributes: FileAttributes
    public init(name: String, attributes: FileAttributes) {
        self.name = name
        self.attributes = attributes
    }
}

public struct FileSystemStats: Sendable {
    public var blockBytes: UInt64
    public var blocks: UInt64
    public var freeBlocks: UInt64
    public var files: UInt64
    public var nameBytesMax: UInt64
    public init(blockBytes: UInt64, blocks: UInt64, freeBlocks: UInt64, files: UInt64, nameBytesMax: UInt64) {
        self.blockBytes = blockBytes
        self.blocks = blocks
        self.freeBlocks = freeBlocks
        self.files = files
        self.nameBytesMax = nameBytesMax
    }
}

/// What an attribute change asks for.
public struct AttributeChange: Sendable {
    public var sizeBytes: UInt64?
    public var permissions: UInt32?
    public var ownerChange: Bool
    public var timesOnly: Bool
}

/// The answer token for one request. Exactly one consuming call answers it.
public struct FuseReply: ~Copyable {
    let request: fuse_req_t
    let fileInfo: UnsafeMutablePointer<fuse_file_info>?

    init(_ request: fuse_req_t, _ fileInfo: UnsafeMutablePointer<fuse_file_info>? = nil) {
        self.request = request
        self.fileInfo = fileInfo
    }

    deinit { preconditionFailure("a FUSE request was dropped without an answer") }

    public consuming func error(_ code: Int32) {
        fuse_reply_err(request, code)
        discard self
    }

    public consuming func ok() {
        fuse_reply_err(request, 0)
        discard self
    }

    public consuming func none() {
        fuse_reply_none(request)
        discard self
    }

    public consuming func entry(_ attributes: FileAttributes, timeoutSeconds: Double) {
        var e = fuse_entry_param()
        e.ino = attributes.inode
        e.attr = attributes.stat
        e.attr_timeout = timeoutSeconds
        e.entry_timeout = timeoutSeconds
        fuse_reply_entry(request, &e)
        discard self
    }

    public consuming func attributes(_ attributes: FileAttributes, timeoutSeconds: Double) {
        var st = attributes.stat
        fuse_reply_attr(request, &st, timeoutSeconds)
        discard self
    }

    /// Opens with `handle`; `directIO` bypasses the kernel page cache for this open file.
    public consuming func open(handle: UInt64, directIO: Bool) {
        if let fi = fileInfo {
            fi.pointee.fh = handle
            fi.pointee.direct_io = directIO ? 1 : 0
            fi.pointee.keep_cache = 0
        }
        fuse_reply_open(request, fileInfo)
        discard self
    }

    public consuming func data(_ pointer: UnsafeRawPointer, count: Int) {
        fuse_reply_buf(request, pointer.assumingMemoryBound(to: CChar.self), count)
        discard self
    }

    public consuming func written(_ count: Int) {
        fuse_reply_write(request, count)
        discard self
    }

    public consuming func statfs(_ s: FileSystemStats) {
        var st = statvfs()
        st.f_bsize = UInt(s.blockBytes)
        st.f_frsize = UInt(s.blockBytes)
        st.f_blocks = fsblkcnt_t(s.blocks)
        st.f_bfree = fsblkcnt_t(s.freeBlocks)
        st.f_bavail = fsblkcnt_t(s.freeBlocks)
        st.f_files = fsfilcnt_t(s.files)
        st.f_ffree = 0
        st.f_namemax = UInt(s.nameBytesMax)
        fuse_reply_statfs(request, &st)
        discard self
    }

    /// Answers readdir with the entries from index `offset` on, as many as fit in `sizeMax` bytes.
    public consuming func directory(_ entries: [DirectoryEntry], offset: Int, sizeMax: Int) {
        var buffer = [CChar](repeating: 0, count: sizeMax)
        var used = 0
        var index = offset
        while index < entries.count {
            var st = entries[index].attributes.stat
            let need = buffer.withUnsafeMutableBufferPointer { b in
                fuse_add_direntry(request, b.baseAddress! + used, sizeMax - used, entries[index].name, &st, off_t(index + 1))
            }
            if need > sizeMax - used { break }
            used += need
            index += 1
        }
        buffer.withUnsafeBufferPointer { fuse_reply_buf(request, $0.baseAddress, used) }
        discard self
    }
}

/// The front end's side of the session: one method per FUSE operation vsa answers. Called on `run`'s worker threads.
public protocol FuseHandler: AnyObject, Sendable {
    func lookup(_ reply: consuming FuseReply, parent: UInt64, name: String)
    func getattr(_ reply: consuming FuseReply, inode: UInt64)
    func setattr(_ reply: consuming FuseReply, inode: UInt64, change: AttributeChange)
    func readdir(_ reply: consuming FuseReply, inode: UInt64, sizeMax: Int, offset: Int)
    func open(_ reply: consuming FuseReply, inode: UInt64, flags: Int32)
    func release(_ reply: consuming FuseReply, inode: UInt64, handle: UInt64)
    func read(_ reply: consuming FuseReply, handle: UInt64, count: Int, offsetBytes: Int64)
    func write(_ reply: consuming FuseReply, handle: UInt64, data: UnsafeRawPointer, count: Int, offsetBytes: Int64, flags: Int32)
    func flush(_ reply: consuming FuseReply, handle: UInt64)
    func fsync(_ reply: consuming FuseReply, handle: UInt64, dataOnly: Bool)
    func fallocate(_ reply: consuming FuseReply, handle: UInt64, mode: Int32, offsetBytes: Int64, length: Int64)
    func statfs(_ reply: consuming FuseReply)
    /// The kernel connection is up: the handler may set limits (returns max write/readahead bytes).
    func connectionLimits() -> (maxWriteBytes: UInt32, maxReadaheadBytes: UInt32)
}

/// Holds the handler for libfuse's userdata pointer: a concrete class, so no dynamic cast per request.
final class HandlerBox {
    let handler: FuseHandler
    init(_ handler: FuseHandler) { self.handler = handler }
}

@inline(__always)
private func handler(_ req: fuse_req_t?) -> FuseHandler {
    Unmanaged<HandlerBox>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue().handler
}

@inline(__always)
private func name(_ p: UnsafePointer<CChar>?) -> String { p.map { String(cString: $0) } ?? "" }

private func makeOperations() -> fuse_lowlevel_ops {
    var ops = fuse_lowlevel_ops()
    ops.`init` = { userdata, conn in
        guard let userdata, let conn else { return }
        let h = Unmanaged<HandlerBox>.fromOpaque(userdata).takeUnretainedValue().handler
        let limits = h.connectionLimits()
        conn.pointee.max_write = limits.maxWriteBytes
        conn.pointee.max_readahead = limits.maxReadaheadBytes
        conn.pointee.max_read = 0
        // Asynchronous direct I/O arrives as background requests; the kernel's default of 12 in flight caps a
        // queue depth of 16 below what the directors can take.
        conn.pointee.max_background = 64
        conn.pointee.congestion_threshold = 48
        // The LUN files never change size, and reads are served from global memory.
        conn.pointee.want &= ~UInt32(FUSE_CAP_ATOMIC_O_TRUNC)
        conn.pointee.want &= ~UInt32(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE)
        if conn.pointee.capable & UInt32(FUSE_CAP_ASYNC_DIO) != 0 { conn.pointee.want |= UInt32(FUSE_CAP_ASYNC_DIO) }
        if conn.pointee.capable & UInt32(FUSE_CAP_PARALLEL_DIROPS) != 0 { conn.pointee.want |= UInt32(FUSE_CAP_PARALLEL_DIROPS) }
    }
    ops.lookup = { req, parent, n in handler(req).lookup(FuseReply(req!), parent: parent, name: name(n)) }
    ops.getattr = { req, ino, _ in handler(req).getattr(FuseReply(req!), inode: ino) }
    ops.setattr = { req, ino, attr, toSet, _ in
        let size: UInt64? = toSet & FUSE_SET_ATTR_SIZE != 0 ? UInt64(attr!.pointee.st_size) : nil
        let mode: UInt32? = toSet & FUSE_SET_ATTR_MODE != 0 ? attr!.pointee.st_mode & 0o7777 : nil
        let owner = toSet & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID) != 0
        let timesMask = FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW | FUSE_SET_ATTR_CTIME
        let timesOnly = toSet & ~timesMask == 0
        handler(req).setattr(
            FuseReply(req!), inode: ino,
            change: AttributeChange(sizeBytes: size, permissions: mode, ownerChange: owner, timesOnly: timesOnly))
    }
    ops.readdir = { req, ino, size, off, _ in handler(req).readdir(FuseReply(req!), inode: ino, sizeMax: size, offset: Int(off)) }
    ops.open = { req, ino, fi in handler(req).open(FuseReply(req!, fi), inode: ino, flags: fi!.pointee.flags) }
    ops.release = { req, ino, fi in handler(req).release(FuseReply(req!), inode: ino, handle: fi!.pointee.fh) }
    ops.read = { req, _, size, off, fi in handler(req).read(FuseReply(req!), handle: fi!.pointee.fh, count: size, offsetBytes: Int64(off)) }
    ops.write = { req, _, buf, size, off, fi in
        handler(req).write(
            FuseReply(req!), handle: fi!.pointee.fh, data: UnsafeRawPointer(buf!), count: size, offsetBytes: Int64(off),
            flags: fi!.pointee.flags)
    }
    ops.flush = { req, _, fi in handler(req).flush(FuseReply(req!), handle: fi!.pointee.fh) }
    ops.fsync = { req, _, datasync, fi in handler(req).fsync(FuseReply(req!), handle: fi!.pointee.fh, dataOnly: datasync != 0) }
    ops.fsyncdir = { req, _, _, _ in fuse_reply_err(req, 0) }
    ops.fallocate = { req, _, mode, off, length, fi in
        handler(req).fallocate(FuseReply(req!), handle: fi!.pointee.fh, mode: mode, offsetBytes: Int64(off), length: Int64(length))
    }
    ops.statfs = { req, _ in handler(req).statfs(FuseReply(req!)) }
    // The namespace is the LUN table: it changes through `vsa lun`, never through the mount.
    ops.mknod = { req, _, _, _, _ in fuse_reply_err(req, EPERM) }
    ops.mkdir = { req, _, _, _ in fuse_reply_err(req, EPERM) }
    ops.unlink = { req, _, _ in fuse_reply_err(req, EPERM) }
    ops.rmdir = { req, _, _ in fuse_reply_err(req, EPERM) }
    ops.symlink = { req, _, _, _ in fuse_reply_err(req, EPERM) }
    ops.rename = { req, _, _, _, _, _ in fuse_reply_err(req, EPERM) }
    ops.link = { req, _, _, _ in fuse_reply_err(req, EPERM) }
    ops.create = { req, _, _, _, _ in fuse_reply_err(req, EPERM) }
    ops.setxattr = { req, _, _, _, _, _ in fuse_reply_err(req, ENOTSUP) }
    ops.getxattr = { req, _, _, _ in fuse_reply_err(req, ENOTSUP) }
    ops.listxattr = { req, _, _ in fuse_reply_err(req, ENOTSUP) }
    ops.removexattr = { req, _, _ in fuse_reply_err(req, ENOTSUP) }
    return ops
}

/// One mounted FUSE session. `run()` serves requests on its worker threads until the file system is unmounted or
/// the process gets SIGINT/SIGTERM/SIGHUP.
public final class FuseSession: @unchecked Sendable {
    private var session: OpaquePointer?
    private let handlerBox: Unmanaged<HandlerBox>
    public let mountpoint: String
    private var signalsInstalled = false

    /// Creates the session and mounts it. `options` are -o options (fsname=..., allow_other, ...).
    public init(handler: FuseHandler, mountpoint: String, options: [String]) throws(SysError) {
        self.mountpoint = mountpoint
        self.handlerBox = Unmanaged.passRetained(HandlerBox(handler))
        var argv: [String] = ["vsa"]
        for o in options where !o.isEmpty { argv += ["-o", o] }
        var cStrings: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) }
        defer { for p in cStrings { free(p) } }
        var ops = makeOperations()
        let created: OpaquePointer? = cStrings.withUnsafeMutableBufferPointer { buf in
            var args = fuse_args(argc: Int32(argv.count), argv: buf.baseAddress, allocated: 0)
            defer { fuse_opt_free_args(&args) }
            return fuse_session_new(&args, &ops, MemoryLayout<fuse_lowlevel_ops>.size, handlerBox.toOpaque())
        }
        guard let created else {
            handlerBox.release()
            throw SysError(errno: EINVAL, call: "fuse_session_new (check the -o options)")
        }
        session = created
        if fuse_session_mount(created, mountpoint) != 0 {
            fuse_session_destroy(created)
            session = nil
            handlerBox.release()
            throw SysError(errno: EIO, call: "mounting \(mountpoint) (see the log for fusermount3's message)")
        }
        if fuse_set_signal_handlers(created) == 0 { signalsInstalled = true }
    }

    /// Serves requests on `threads` workers until unmount; returns 0 or the first error a worker met.
    ///
    /// Not libfuse's fuse_session_loop_mt: that loop ends its workers with pthread_cancel while they wait in read(2),
    /// which ThreadSanitizer cannot follow (the thread dies inside its read interceptor, "finished with ignores
    /// enabled", and the sanitizer ends the process). Here each worker returns on its own: unmounting makes every
    /// read of the session's device fail with ENODEV. A signal (fuse_set_signal_handlers: it only marks the session
    /// exited) is noticed by this thread, which then unmounts to end the workers still waiting.
    public func run(threadsMax threads: Int) -> Int32 {
        guard let session else { return -EINVAL }
        let state = LoopState()
        let box = SessionBox(session)
        var workers: [pthread_t] = []
        var createError: Int32 = 0
        for _ in 0..<max(1, threads) {
            state.started()
            let context = Unmanaged.passRetained(WorkerContext(box, state)).toOpaque()
            var thread = pthread_t()
            let rc = pthread_create(
                &thread, nil,
                { raw in
                    let context = Unmanaged<WorkerContext>.fromOpaque(raw!).takeRetainedValue()
                    FuseSession.work(context.box.session, context.state)
                    return nil
                }, context)
            if rc != 0 {
                // Fewer workers than asked for: serve with those that started (at least one, or fail).
                Unmanaged<WorkerContext>.fromOpaque(context).release()
                state.finished()
                createError = -rc
                continue
            }
            workers.append(thread)
        }
        if workers.isEmpty {
            fuse_session_unmount(session)
            return createError
        }
        var exitedSince: Double? = nil
        while state.running > 0 {
            if fuse_session_exited(session) != 0 {
                // Unmounted: the workers are ending now. Exited and still waiting after a moment: a signal asked for
                // it, and the unmount ends their reads.
                let now = Posix.monotonicSeconds()
                if exitedSince == nil { exitedSince = now }
                if now - exitedSince! > 0.5 {
                    fuse_session_unmount(session)
                    exitedSince = .infinity
                }
            }
            state.waitForChange(milliseconds: 20)
        }
        // Each has left its loop; joined, so none is still ending (its thread-key destructors) when the session goes.
        for worker in workers { pthread_join(worker, nil) }
        return state.error
    }

    /// One worker: receive, process, until the session ends. Signals go to the thread in `run` (as libfuse's workers
    /// block them too), so a read here is not interrupted by them.
    private static func work(_ session: OpaquePointer, _ state: LoopState) {
        var blocked = sigset_t()
        sigemptyset(&blocked)
        for signal in [SIGHUP, SIGINT, SIGTERM, SIGQUIT] { sigaddset(&blocked, signal) }
        pthread_sigmask(SIG_BLOCK, &blocked, nil)
        var buffer = fuse_buf()
        while fuse_session_exited(session) == 0 {
            let received = fuse_session_receive_buf(session, &buffer)
            if received == -EINTR { continue }
            if received <= 0 {
                // 0: the session ended (ENODEV: unmounted); < 0: an error that ends it.
                if received < 0 {
                    state.fail(received)
                    fuse_session_exit(session)
                }
                break
            }
            fuse_session_process_buf(session, &buffer)
        }
        free(buffer.mem)
        state.finished()
    }

    /// Unmounts (if still mounted) and frees the session.
    public func close() {
        guard let s = session else { return }
        if signalsInstalled { fuse_remove_signal_handlers(s) }
        fuse_session_unmount(s)
        fuse_session_destroy(s)
        session = nil
        handlerBox.release()
    }

    /// Tells the kernel to drop what it caches of a file's data (its contents changed under it: a power cut).
    public func invalidateData(inode: UInt64) {
        guard let s = session else { return }
        _ = fuse_lowlevel_notify_inval_inode(s, inode, 0, 0)
    }

    /// Tells the kernel that a directory entry of the root changed (a LUN was created or deleted).
    public func invalidateEntry(name: String, inode: UInt64) {
        guard let s = session else { return }
        _ = fuse_lowlevel_notify_inval_entry(s, 1, name, name.utf8.count)
        if inode != 0 { _ = fuse_lowlevel_notify_inval_inode(s, inode, 0, 0) }
    }
}

/// The session pointer, handed to worker threads.
private final class SessionBox: @unchecked Sendable {
    let session: OpaquePointer
    init(_ session: OpaquePointer) { self.session = session }
}

/// What a worker thread starts with.
private final class WorkerContext {
    let box: SessionBox
    let state: LoopState
    init(_ box: SessionBox, _ state: LoopState) {
        self.box = box
        self.state = state
    }
}

/// The workers' count and first error, and a condition the thread in `run` sleeps on between looks.
private final class LoopState: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var changed = pthread_cond_t()
    private var runningCount = 0
    private var firstError: Int32 = 0
    init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&changed, nil)
    }
    deinit {
        pthread_cond_destroy(&changed)
        pthread_mutex_destroy(&mutex)
    }
    private func locked<R>(_ body: () -> R) -> R {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return body()
    }
    var running: Int { locked { runningCount } }
    var error: Int32 { locked { firstError } }
    func started() { locked { runningCount += 1 } }
    func finished() {
        locked {
            runningCount -= 1
            pthread_cond_broadcast(&changed)
        }
    }
    func fail(_ error: Int32) { locked { if firstError == 0 { firstError = error } } }
    /// Sleeps until a worker ends or `milliseconds` pass.
    func waitForChange(milliseconds: Int) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var until = timespec(tv_sec: now.tv_sec, tv_nsec: now.tv_nsec + milliseconds * 1_000_000)
        if until.tv_nsec >= 1_000_000_000 {
            until.tv_sec += 1
            until.tv_nsec -= 1_000_000_000
        }
        locked { _ = pthread_cond_timedwait(&changed, &mutex, &until) }
    }
}
