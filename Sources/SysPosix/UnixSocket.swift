// The control plane's Unix-domain stream socket: one request line in, one reply (possibly multi-line) out.
// A socket address holds at most 107 bytes of path; an array folder may be deeper than that. Such a path is reached
// through /proc/self/fd/N/NAME, where N is a descriptor of the folder opened with O_PATH: the socket still lives in
// the folder, under its name, and both ends find it the same way.
#if canImport(Glibc)
    import Glibc
#endif

public enum UnixSocket {
    /// The longest path a socket address holds (sun_path less its terminating NUL).
    public static var pathBytesMax: Int { MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1 }

    /// Runs `body` with a path for `folder/name` that fits a socket address: the path itself when it fits, else one
    /// through /proc/self/fd (the folder held open with O_PATH for the duration).
    public static func withReachablePath<T>(folder: String, name: String, _ body: (String) throws(SysError) -> T) throws(SysError) -> T {
        let direct = folder.hasSuffix("/") ? folder + name : folder + "/" + name
        if direct.utf8.count <= pathBytesMax { return try body(direct) }
        let oPath: Int32 = 0o10_000_000  // O_PATH (Linux; Glibc exports it only under _GNU_SOURCE)
        let fd = open(folder, oPath | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw SysError(errno: errno, call: "open \(folder)") }
        defer { close(fd) }
        let short = "/proc/self/fd/\(fd)/\(name)"
        guard short.utf8.count <= pathBytesMax else { throw SysError(errno: ENAMETOOLONG, call: "socket name \(name)") }
        return try body(short)
    }

    private static func address(_ path: String) throws(SysError) -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw SysError(errno: ENAMETOOLONG, call: "socket path \(path)")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        return addr
    }

    /// Binds a listening socket at `path` with mode 0600 (removing a stale socket file first).
    public static func listen(path: String) throws(SysError) -> Int32 {
        let fd = try syscall("socket") { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        unlink(path)
        var addr = try address(path)
        let oldMask = umask(0o177)
        defer { umask(oldMask) }
        _ = try syscall("bind \(path)") {
            withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
        }
        chmod(path, 0o600)
        _ = try syscall("listen") { Glibc.listen(fd, 16) }
        return fd
    }

    public static func accept(_ listener: Int32) throws(SysError) -> Int32 {
        let fd = try syscall("accept") { Glibc.accept(listener, nil, nil) }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        return fd
    }

    /// Bounds how long one recv or send on `fd` may block (a silent or stalled peer then gets EAGAIN).
    public static func setTimeouts(_ fd: Int32, seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    public static func connect(path: String) throws(SysError) -> Int32 {
        let fd = try syscall("socket") { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        var addr = try address(path)
        do {
            _ = try syscall("connect \(path)") {
                withUnsafePointer(to: &addr) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
                }
            }
        } catch {
            Glibc.close(fd)
            throw error
        }
        return fd
    }

    public static func send(_ fd: Int32, _ text: String) throws(SysError) {
        let bytes = Array(text.utf8)
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { raw in Glibc.send(fd, raw.baseAddress! + done, raw.count - done, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SysError(errno: errno, call: "send")
            }
            done += n
        }
    }

    /// Reads until a newline (request) or end of stream (reply), up to `bytesMax`; more than that throws EMSGSIZE.
    public static func receive(_ fd: Int32, untilNewline: Bool, bytesMax: Int = 1 << 20) throws(SysError) -> String {
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            if result.count > bytesMax { throw SysError(errno: EMSGSIZE, call: "recv") }
            let n = chunk.withUnsafeMutableBytes { raw in Glibc.recv(fd, raw.baseAddress!, raw.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SysError(errno: errno, call: "recv")
            }
            if n == 0 { break }
            result.append(contentsOf: chunk[0..<n])
            if untilNewline, chunk[0..<n].contains(10) { break }
        }
        return String(decoding: result, as: UTF8.self)
    }

    public static func shutdownWrite(_ fd: Int32) { _ = shutdown(fd, Int32(SHUT_WR)) }
}
