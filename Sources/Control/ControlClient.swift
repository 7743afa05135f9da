// The client end of the control socket: one request, one reply, then the connection closes (ControlServer in the
// daemon is the other end).
import ArrayModel
import Metadata
import SysPosix

#if canImport(Glibc)
    import Glibc
#endif

public enum ControlClient {
    /// How long a reply may take: a daemon whose drive or director is stuck answers within its drive deadline (30 s
    /// by default); one that does not answer in 5 minutes is reported, not waited for.
    public static let replySeconds = 300

    /// Sends `request` to the daemon of the array in `directory`; returns the payload of its reply, or throws the
    /// daemon's one line of refusal (or one line saying why the daemon could not be asked).
    public static func send(_ request: ControlRequest, directory: String) throws(VSAError) -> String {
        let path = ArrayStore.socketPath(directory: directory)
        let log = ArrayStore.logPath(directory: directory)
        let fd: Int32
        do {
            fd = try UnixSocket.withReachablePath(folder: directory, name: ArrayStore.socketName) { short throws(SysError) in
                try UnixSocket.connect(path: short)
            }
        } catch {
            throw VSAError("cannot reach the daemon of \(directory) at \(path) (\(error)); is it still running? see \(log)")
        }
        defer { Posix.close(fd) }
        UnixSocket.setTimeouts(fd, seconds: replySeconds)
        let wire: String
        do {
            try UnixSocket.send(fd, request.line)
            wire = try UnixSocket.receive(fd, untilNewline: false)
        } catch {
            if error.errno == EAGAIN || error.errno == EWOULDBLOCK {
                throw VSAError("the daemon of \(directory) did not answer within \(replySeconds) s (a drive or a director may be stuck); see \(log)")
            }
            throw VSAError("talking to the daemon failed: \(error)")
        }
        switch ControlReply(wire: wire) {
        case .done(let payload): return payload
        case .refused(let line): throw VSAError(line)
        case nil: throw VSAError("the daemon gave no answer; see \(log)")
        }
    }
}
