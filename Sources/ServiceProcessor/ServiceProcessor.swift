// The service processor: what the management PC beside a Symmetrix does for its array, in the same process. It
// serves the Prometheus endpoint (`-o metrics=ADDRESS`) and the live dashboard (`-o dashboard[=ADDRESS]`) over HTTP,
// on Hummingbird. It reads the array through its status and histograms and drives it through the typed control
// protocol, exactly as the `vsa` command does; the layers below never learn about HTTP.
//
// Life cycle, in the daemon process: bind (before the array is assembled, so a port in use refuses the mount and
// changes nothing) -> attach the running daemon -> serve -> stop (when the file system is unmounted, before the
// array is destaged). Requests that come before the attach get 503.
import ArrayModel
import Control
import Daemon
import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import Synchronization
import SysPosix

/// What the service processor drives: the daemon, or a test's stand-in.
public protocol ManagedArray: AnyObject, Sendable {
    func statusReport() -> StatusReport
    func latencyCounts() -> LatencyCounts
    func perform(_ request: ControlRequest) -> ControlReply
}

extension ArrayDaemon: ManagedArray {}

/// A TCP address to serve on: `HOST:PORT`, HOST an IPv4 address, `[IPv6]` or `localhost`, PORT 0 for any free one.
public struct ServiceAddress: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int

    /// Parses one `-o` value; throws one line naming the option.
    public init(parsing text: String, option: String) throws(VSAError) {
        let usage = "-o \(option) takes HOST:PORT, e.g. 127.0.0.1:\(option == "metrics" ? 9580 : 9581) (got '\(text)')"
        guard let colon = text.lastIndex(of: ":") else { throw VSAError(usage) }
        var host = String(text[..<colon])
        let portText = text[text.index(after: colon)...]
        guard !portText.isEmpty, portText.count <= 5, portText.allSatisfy(\.isASCII), let port = Int(portText), port >= 0, port <= 65535 else {
            throw VSAError("\(usage): the port is a number from 0 to 65535")
        }
        if host.hasPrefix("[") && host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
            guard Posix.isIPv6Address(host) else { throw VSAError("\(usage): \(host) is not an IPv6 address") }
        } else if host == "localhost" {
            host = "127.0.0.1"
        } else {
            guard Posix.isIPv4Address(host) else { throw VSAError("\(usage): \(host) is not an IPv4 address (names other than localhost are not looked up)") }
        }
        self.host = host
        self.port = port
    }

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

public final class ServiceProcessor: Sendable {
    public let metricsURL: String?
    public let dashboardURL: String?
    /// What the dashboard's page and requests must carry (printed at mount, shown by `vsa dashboard`).
    public let token: String
    let attached = Mutex<(any ManagedArray)?>(nil)
    let exporter = Mutex<MetricsExporter?>(nil)
    let stopping = Atomic<Bool>(false)
    private let servers: [Task<Void, Never>]
    private let finished: DispatchSemaphore
    private let collectorStopped = DispatchSemaphore(value: 0)
    private let collects: Bool

    /// Binds the addresses asked for (one server when both are the same) and starts serving; throws one line when
    /// an address cannot be bound, with nothing left running.
    public init(metrics: ServiceAddress?, dashboard: ServiceAddress?) throws(VSAError) {
        var bytes = [UInt8](repeating: 0, count: 16)
        var generator = SystemRandomNumberGenerator()
        for i in bytes.indices { bytes[i] = generator.next() }
        token = bytes.map { String(format: "%02x", $0) }.joined()
        var plans: [(ServiceAddress, metrics: Bool, dashboard: Bool)] = []
        if let metrics { plans.append((metrics, true, dashboard == metrics)) }
        if let dashboard, dashboard != metrics { plans.append((dashboard, false, true)) }
        finished = DispatchSemaphore(value: 0)
        collects = metrics != nil
        var tasks: [Task<Void, Never>] = []
        var bound: [ServiceAddress] = []
        var failure: VSAError? = nil
        // `self` is not whole until every stored property is set: routes reach the service processor through a box.
        let box = ServiceBox()
        for plan in plans {
            let router = Router()
            if plan.metrics { MetricsRoutes.add(to: router, box: box) }
            if plan.dashboard { DashboardRoutes.add(to: router, box: box) }
            let started = DispatchSemaphore(value: 0)
            let outcome = Mutex<Result<Int, VSAError>?>(nil)
            var logger = Logger(label: "vsa.service-processor")
            // Its own notes (a stream cancelled at unmount) are not the array's; failures to bind are reported above.
            logger.logLevel = .critical
            let app = Application(
                router: router,
                // Connections idle between requests for 30 s are closed (64 of them would otherwise shut everyone
                // else out); an event stream is a request in progress, never idle.
                server: .http1(configuration: .init(idleTimeout: .seconds(30))),
                configuration: .init(
                    address: .hostname(plan.0.host, port: plan.0.port), serverName: "vsa",
                    availableConnectionsDelegate: MaximumAvailableConnections(64)),
                onServerRunning: { channel in
                    outcome.withLock { $0 = .success(channel.localAddress?.port ?? plan.0.port) }
                    started.signal()
                },
                logger: logger)
            let address = plan.0
            let done = finished
            tasks.append(
                Task.detached {
                    do { try await app.run() } catch {
                        let text = "\(error)"
                        let line =
                            text.contains("in use")
                            ? "\(address) is in use (another program listens there); give -o \(plan.metrics ? "metrics" : "dashboard")=HOST:PORT with another port"
                            : "cannot serve on \(address): \(text)"
                        outcome.withLock { if $0 == nil { $0 = .failure(VSAError(line)) } }
                        started.signal()
                    }
                    done.signal()
                })
            if started.wait(timeout: .now() + 10) == .timedOut {
                outcome.withLock { if $0 == nil { $0 = .failure(VSAError("\(address) did not start serving within 10 s")) } }
            }
            switch outcome.withLock({ $0 })! {
            case .success(let port): bound.append(ServiceAddress(host: address.host, port: port))
            case .failure(let error): failure = error
            }
            if failure != nil { break }
        }
        servers = tasks
        func url(_ a: ServiceAddress) -> String {
            let host = a.host == "0.0.0.0" ? "127.0.0.1" : (a.host == "::" ? "[::1]" : (a.host.contains(":") ? "[\(a.host)]" : a.host))
            return "http://\(host):\(a.port)"
        }
        metricsURL = metrics == nil || bound.isEmpty ? nil : url(bound[0]) + "/metrics"
        dashboardURL = dashboard == nil || failure != nil ? nil : url(bound[bound.count - 1]) + "/?token=" + token
        box.processor.withLock { $0 = self }
        if let failure {
            stop()
            throw failure
        }
        if collects {
            Thread.detachNewThread { [self] in
                // Once a second: histograms are replayed into the registry as they fill, so a scrape after a quiet
                // hour replays no more than a second of I/O (MetricsExporter.swift).
                while !stopping.load(ordering: .relaxed) {
                    usleep(1_000_000)
                    guard !stopping.load(ordering: .relaxed) else { break }
                    exporter.withLock { $0 }?.collect()
                }
                collectorStopped.signal()
            }
        }
    }

    /// The array to serve, once it runs.
    public func attach(_ array: any ManagedArray) {
        attached.withLock { $0 = array }
        exporter.withLock { $0 = collects ? MetricsExporter(array: array) : nil }
    }

    var array: (any ManagedArray)? { stopping.load(ordering: .relaxed) ? nil : attached.withLock { $0 } }

    /// Stops serving: open event streams end, the servers close (waited for at most 3 s: a handler still blocked in
    /// the array does not hold up the unmount).
    public func stop() {
        guard !stopping.exchange(true, ordering: .relaxed) else { return }
        for task in servers { task.cancel() }
        let deadline = DispatchTime.now() + 3
        for _ in servers where finished.wait(timeout: deadline) == .timedOut { break }
        if collects { _ = collectorStopped.wait(timeout: .now() + 2) }
        attached.withLock { $0 = nil }
    }
}

/// The service processor, for routes built before it is whole.
final class ServiceBox: Sendable {
    let processor = Mutex<ServiceProcessor?>(nil)
    var value: ServiceProcessor? { processor.withLock { $0 } }
}

/// Runs blocking array work (status, a failover) off the server's threads.
func offload<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        DispatchQueue.global().async { continuation.resume(returning: work()) }
    }
}

enum MetricsRoutes {
    static func add(to router: Router<BasicRequestContext>, box: ServiceBox) {
        router.get("metrics") { _, _ -> Response in
            guard let processor = box.value, processor.array != nil, let exporter = processor.exporter.withLock({ $0 }) else {
                return Response(status: .serviceUnavailable, body: .init(byteBuffer: ByteBuffer(string: "the array is not running\n")))
            }
            let text = await offload { exporter.scrape() }
            var response = Response(status: .ok, body: .init(byteBuffer: ByteBuffer(bytes: text)))
            response.headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
            return response
        }
    }
}
