// The dashboard's HTTP side: the page (DashboardPage.swift, every asset in it: no CDN), one frame of the array's
// state as JSON, a stream of frames (server-sent events, one a second) and the fault and action buttons' requests.
//
// The page is free to load; everything that reads or changes the array needs the token printed at mount: in the
// query (`?token=`, the event stream cannot send headers) or the `X-VSA-Token` header (the buttons). A request is a
// control request line (ControlProtocol.swift), parsed and bounded by the same code as the control socket's, and
// only the verbs a person at the array would use are taken: failing and replacing drives onto spares, directors,
// faults, scrub, flush.
import ArrayModel
import Control
import Daemon
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import SysPosix

/// One second of the array, as the page draws it: the status, and the rates and latencies of the last interval.
struct DashboardFrame: Codable, Sendable {
    var seconds: Double
    var status: StatusReport
    var luns: [String: Rates] = [:]
    var drives: [String: Rates] = [:]
    var directors: [String: DirectorRates] = [:]
    /// The faults' seeds as text, by fault id: a seed may be above 2^53, past what a JavaScript number holds exactly.
    var faultSeeds: [String: String] = [:]

    struct Rates: Codable, Sendable {
        var readsPerSecond: Double = 0
        var writesPerSecond: Double = 0
        var flushesPerSecond: Double = 0
        var readBytesPerSecond: Double = 0
        var writtenBytesPerSecond: Double = 0
        var readP50Micros: Double = 0
        var readP99Micros: Double = 0
        var writeP50Micros: Double = 0
        var writeP99Micros: Double = 0
        var flushP99Micros: Double = 0
        var errorsPerSecond: Double = 0
    }

    struct DirectorRates: Codable, Sendable {
        var requestsPerSecond: Double
        var messagesPerSecond: Double
        var copiesPerSecond: Double
        var parityOpsPerSecond: Double
    }

    /// What the next frame's rates are measured from.
    struct Mark: Sendable {
        var at: Double
        var status: StatusReport
        var counts: LatencyCounts
    }

    /// The frame now, with rates since `previous` (none in the first frame).
    static func make(array: any ManagedArray, previous: Mark?) -> (DashboardFrame, Mark) {
        let now = Posix.monotonicSeconds()
        let status = array.statusReport()
        let counts = array.latencyCounts()
        var frame = DashboardFrame(seconds: Date().timeIntervalSince1970, status: status)
        for f in status.faults ?? [] { frame.faultSeeds[String(f.id)] = String(f.seed) }
        if let previous, now > previous.at {
            let span = now - previous.at
            func rates(_ a: LatencyCounts.LUN, _ b: LatencyCounts.LUN?) -> Rates {
                let (read, write, flush) = a.summaries(since: b)
                var r = Rates()
                r.readsPerSecond = Double(read.count) / span
                r.writesPerSecond = Double(write.count) / span
                r.flushesPerSecond = Double(flush.count) / span
                r.readP50Micros = read.p50Micros
                r.readP99Micros = read.p99Micros
                r.writeP50Micros = write.p50Micros
                r.writeP99Micros = write.p99Micros
                r.flushP99Micros = flush.p99Micros
                r.errorsPerSecond = Double(a.errors &- min(a.errors, b?.errors ?? 0)) / span
                return r
            }
            for (name, c) in counts.luns {
                var r = rates(c, previous.counts.luns[name])
                if let l = status.luns.first(where: { $0.name == name }), let p = previous.status.luns.first(where: { $0.name == name }) {
                    r.readBytesPerSecond = Double((l.readBytes ?? 0) &- min(l.readBytes ?? 0, p.readBytes ?? 0)) / span
                    r.writtenBytesPerSecond = Double((l.writtenBytes ?? 0) &- min(l.writtenBytes ?? 0, p.writtenBytes ?? 0)) / span
                }
                frame.luns[name] = r
            }
            for (member, c) in counts.drives ?? [:] { frame.drives[member] = rates(c, previous.counts.drives?[member]) }
            for d in status.directors {
                guard let p = previous.status.directors.first(where: { $0.id == d.id }) else { continue }
                func rate(_ a: UInt64, _ b: UInt64) -> Double { Double(a &- min(a, b)) / span }
                let parity = (d.services?.xorOps ?? 0) + (d.services?.pqOps ?? 0)
                let parityBefore = (p.services?.xorOps ?? 0) + (p.services?.pqOps ?? 0)
                frame.directors[d.id] = DirectorRates(
                    requestsPerSecond: rate(d.requests, p.requests), messagesPerSecond: rate(d.messagesSent, p.messagesSent),
                    copiesPerSecond: rate(d.services?.copies ?? 0, p.services?.copies ?? 0), parityOpsPerSecond: rate(parity, parityBefore))
            }
        }
        return (frame, Mark(at: now, status: status, counts: counts))
    }

    var json: String { encodeJSON(self) }
}

enum DashboardRoutes {
    static let tokenHeader = HTTPField.Name("X-VSA-Token")!

    /// The verbs the dashboard's buttons may use.
    static func allowed(_ request: ControlRequest) -> Bool {
        switch request {
        case .driveFail, .scrub, .directorFail, .directorRestore, .inject, .injectClear, .flush, .powerCut: true
        // Onto a hot spare only: a page does not name files on this machine.
        case .driveReplace(_, let newDrive, _, _): newDrive == nil
        default: false
        }
    }

    static func text(_ status: HTTPResponse.Status, _ line: String) -> Response {
        var response = Response(status: status, body: .init(byteBuffer: ByteBuffer(string: line + "\n")))
        response.headers[.contentType] = "text/plain; charset=utf-8"
        response.headers[.cacheControl] = "no-store"
        return response
    }

    static func json(_ text: String) -> Response {
        var response = Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: text)))
        response.headers[.contentType] = "application/json"
        response.headers[.cacheControl] = "no-store"
        return response
    }

    /// The service processor and its array when the request carries the right token; otherwise the answer.
    /// `inQuery`: the token may come in the query (the page's reads; an event stream cannot send headers). Requests that
    /// change the array take it from the header only, which no other site's form or link can send.
    static func authorised(_ request: Request, _ box: ServiceBox, inQuery: Bool = true) -> Result<(ServiceProcessor, any ManagedArray), Refusal> {
        guard let processor = box.value else { return .failure(Refusal(text(.serviceUnavailable, "the dashboard is starting"))) }
        let given = request.headers[tokenHeader] ?? (inQuery ? request.uri.queryParameters.get("token") : nil)
        guard let given, !given.isEmpty else {
            return .failure(Refusal(text(.unauthorized, "this needs the dashboard's token: `vsa dashboard TARGET` prints the URL that carries it")))
        }
        // Compared in full whatever differs first, so the time taken tells nothing about the token.
        let a = Array(given.utf8)
        let b = Array(processor.token.utf8)
        var difference = a.count ^ b.count
        for i in 0..<min(a.count, b.count) { difference |= Int(a[i] ^ b[i]) }
        guard difference == 0 else { return .failure(Refusal(text(.forbidden, "wrong dashboard token"))) }
        guard let array = processor.array else { return .failure(Refusal(text(.serviceUnavailable, "the array is not running"))) }
        return .success((processor, array))
    }

    /// A request carried out: the control reply's payload (a fault's id and seed, a failover's notes, ...).
    struct Done: Codable {
        var ok = true
        var reply: String
        var json: String { encodeJSON(self) }
    }

    struct Refusal: Error {
        let response: Response
        init(_ response: Response) { self.response = response }
    }

    static func add(to router: Router<BasicRequestContext>, box: ServiceBox) {
        router.get("/") { _, _ -> Response in
            var response = Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: DashboardPage.html)))
            response.headers[.contentType] = "text/html; charset=utf-8"
            // Everything the page needs is in it; it may talk to its own origin only.
            response.headers[.contentSecurityPolicy] =
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:"
            response.headers[.cacheControl] = "no-store"
            return response
        }
        router.get("api/frame") { request, _ -> Response in
            switch authorised(request, box) {
            case .failure(let refusal): return refusal.response
            case .success(let (_, array)):
                return json(await offload { DashboardFrame.make(array: array, previous: nil).0.json })
            }
        }
        router.get("api/events") { request, _ -> Response in
            switch authorised(request, box) {
            case .failure(let refusal): return refusal.response
            case .success(let (processor, array)):
                var response = Response(
                    status: .ok,
                    body: .init { writer in
                        var mark: DashboardFrame.Mark? = nil
                        while !processor.stopping.load(ordering: .relaxed) && !Task.isCancelled {
                            let previous = mark
                            let (frame, next) = await offload { DashboardFrame.make(array: array, previous: previous) }
                            mark = next
                            try await writer.write(ByteBuffer(string: "data: \(frame.json)\n\n"))
                            try await Task.sleep(for: .seconds(1))
                        }
                        try await writer.finish(nil)
                    })
                response.headers[.contentType] = "text/event-stream"
                response.headers[.cacheControl] = "no-store"
                return response
            }
        }
        router.post("api/request") { request, _ -> Response in
            switch authorised(request, box, inQuery: false) {
            case .failure(let refusal): return refusal.response
            case .success(let (_, array)):
                var request = request
                guard let body = try? await request.collectBody(upTo: 4096) else { return text(.contentTooLarge, "a request is one line of at most 4 KiB") }
                let line = String(buffer: body)
                guard !line.dropLast(line.hasSuffix("\n") ? 1 : 0).contains("\n") else { return text(.badRequest, "a request is one line") }
                let parsed: ControlRequest
                do throws(VSAError) { parsed = try ControlRequest(line: line) } catch { return text(.badRequest, error.message) }
                guard allowed(parsed) else { return text(.forbidden, "the dashboard does not do \(parsed.verb); use the vsa command") }
                switch await offload({ array.perform(parsed) }) {
                case .done(let payload): return json(Done(reply: payload).json)
                case .refused(let message): return text(.conflict, message)
                }
            }
        }
    }
}
