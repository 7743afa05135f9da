// The control socket (DIR/control.sock, mode 0600): what `vsa` talks to while the array is mounted. One request line
// in, one reply out, then the connection closes. Who can reach the socket is trusted to run the array (the owner of
// the folder); what it sends is still input: every client gets its own thread (at most `clientsMax` at once, more
// are told to retry), a request must arrive within `requestTimeoutSeconds` and fit in `requestBytesMax`, and a reply
// that the client does not read within the timeout is dropped. So an idle, slow or garbage-sending client costs one
// thread for a few seconds and never holds up another command or host I/O. Commands that change the array run one
// at a time (`commandLock`); `status` does not wait for them.
import ArrayModel
import Foundation
import Metadata
import Synchronization
import SysPosix

#if canImport(Glibc)
    import Glibc
#endif

/// Limits of the control socket.
enum ControlLimits {
    static let clientsMax = 32
    static let requestBytesMax = 64 << 10
    static let requestTimeoutSeconds = 5
}

final class ControlClients: Sendable {
    let active = Atomic<Int>(0)
}

extension ArrayDaemon {
    /// Binds DIR/control.sock (through /proc/self/fd when the folder's path is too long for a socket address).
    static func bindControlSocket(directory: String) throws(VSAError) -> Int32 {
        do {
            return try UnixSocket.withReachablePath(folder: directory, name: ArrayStore.socketName) { path throws(SysError) in
                try UnixSocket.listen(path: path)
            }
        } catch { throw VSAError("cannot create the control socket in \(directory): \(error)") }
    }

    func removeControlSocket() {
        _ = try? UnixSocket.withReachablePath(folder: options.directory, name: ArrayStore.socketName) { path throws(SysError) in unlink(path) }
    }

    /// Accepts clients on `listener` for the life of the daemon, each served on a thread of its own.
    func startControlSocket(listener: Int32) {
        let clients = ControlClients()
        let thread = Thread { [self] in
            while true {
                guard let client = try? UnixSocket.accept(listener) else {
                    usleep(10_000)  // EMFILE and the like: do not spin
                    continue
                }
                UnixSocket.setTimeouts(client, seconds: ControlLimits.requestTimeoutSeconds)
                guard clients.active.add(1, ordering: .relaxed).newValue <= ControlLimits.clientsMax else {
                    clients.active.subtract(1, ordering: .relaxed)
                    try? UnixSocket.send(client, "error the daemon is serving \(ControlLimits.clientsMax) control clients; try again\n")
                    Posix.close(client)
                    continue
                }
                let worker = Thread { [self] in
                    serveControlClient(client)
                    Posix.close(client)
                    clients.active.subtract(1, ordering: .relaxed)
                }
                worker.name = "control-client"
                worker.start()
            }
        }
        thread.name = "control"
        thread.start()
    }

    /// One client: its request line (bounded in size and time), the reply.
    private func serveControlClient(_ client: Int32) {
        let request: String
        do { request = try UnixSocket.receive(client, untilNewline: true, bytesMax: ControlLimits.requestBytesMax) } catch {
            let reason =
                error.errno == EMSGSIZE
                ? "request longer than \(ControlLimits.requestBytesMax) bytes"
                : error.errno == EAGAIN || error.errno == EWOULDBLOCK
                    ? "no request within \(ControlLimits.requestTimeoutSeconds) s" : "\(error)"
            try? UnixSocket.send(client, "error \(reason)\n")
            return
        }
        guard let newline = request.firstIndex(of: "\n") else {
            try? UnixSocket.send(client, "error incomplete request (no newline)\n")
            return
        }
        var line = request[..<newline]
        if line.hasSuffix("\r") { line = line.dropLast() }
        try? UnixSocket.send(client, handle(String(line)))
    }
}
