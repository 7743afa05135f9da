// The service processor's Prometheus side without a mount: a stand-in array whose status and histograms the test
// sets, and the text swift-prometheus renders from them. Counters follow the array's counts (and start again when a
// count goes back), histogram buckets are replayed into the right Prometheus buckets, state sets mark one state,
// and the series of a LUN that went away are dropped. Addresses for -o metrics/dashboard are bounded and checked.
import ArrayModel
import Control
import Daemon
import Foundation
import Synchronization
import XCTest

@testable import ServiceProcessor

final class StandInArray: ManagedArray {
    let state: Mutex<(StatusReport, LatencyCounts)>
    init(_ report: StatusReport) { state = Mutex((report, LatencyCounts(luns: [:]))) }
    func statusReport() -> StatusReport { state.withLock { $0.0 } }
    func latencyCounts() -> LatencyCounts { state.withLock { $0.1 } }
    func perform(_ request: ControlRequest) -> ControlReply { .refused("a stand-in does nothing") }
    func change(_ body: (inout StatusReport, inout LatencyCounts) -> Void) { state.withLock { body(&$0.0, &$0.1) } }
}

final class MetricsExporterTests: XCTestCase {
    static let offlineStatus = #"""
        {"array":{"capacityBytes":125829120,"clean":true,"directory":"/tmp/st1","engineCount":1,"freeBytes":109051904,"memberCount":3,"raidLevel":"raid5","spareCount":0,"state":"optimal","stripeUnitBytes":65536,"uuid":"2289649a-f58c-4eca-a221-3aa0419a432d"},"cache":{"destagedStripes":0,"dirtyBytes":0,"hitRatio":0,"readAheadTracks":0,"readHits":0,"readMisses":0,"sizeBytes":536870912,"slotBytes":65536,"slotCount":3840,"usedSlots":0,"writeHits":0,"writeMisses":0,"writePendingSlots":0,"writeThroughDeferred":0,"writeThroughStripes":0},"directors":[{"actingFor":[],"bounced":0,"cacheSlots":1920,"engine":1,"id":"1a","messagesReceived":0,"messagesSent":0,"mirrorTo":"none","mirroredSlots":0,"primaryDrives":[],"queueDepth":0,"replayedBytes":0,"requests":0,"state":"online","takeovers":0,"unmirroredWrites":0,"usedSlots":0,"writePendingSlots":0}],"drives":[{"directIO":true,"errors":0,"index":0,"path":"/tmp/st1/drive-0","role":"member","sizeBytes":67108864,"state":"online","timeouts":0,"readErrors":0}],"luns":[{"id":1,"name":"l","sizeBytes":16777216,"startStripe":0,"stripeCount":128,"thin":false}],"messages":[]}
        """#

    private func makeArray() throws -> StandInArray {
        StandInArray(try JSONDecoder().decode(StatusReport.self, from: Data(Self.offlineStatus.utf8)))
    }

    private func lines(_ exporter: MetricsExporter) -> Set<String> {
        Set(String(decoding: exporter.scrape(), as: UTF8.self).split(separator: "\n").map(String.init))
    }

    func testCountersFollowTheArraysCountsAndStartAgainWhenACountGoesBack() throws {
        let array = try makeArray()
        let exporter = MetricsExporter(array: array)
        array.change { s, _ in s.luns[0].readBytes = 100 }
        XCTAssertTrue(lines(exporter).contains(#"vsa_lun_read_bytes_total{lun="l"} 100"#))
        array.change { s, _ in s.luns[0].readBytes = 250 }
        XCTAssertTrue(lines(exporter).contains(#"vsa_lun_read_bytes_total{lun="l"} 250"#))
        // The LUN was deleted and made again under its name: its count starts from 0 again, and so does the counter.
        array.change { s, _ in s.luns[0].readBytes = 40 }
        XCTAssertTrue(lines(exporter).contains(#"vsa_lun_read_bytes_total{lun="l"} 40"#))
    }

    func testHistogramBucketsAreReplayedIntoTheirPrometheusBuckets() throws {
        let array = try makeArray()
        let exporter = MetricsExporter(array: array)
        let reads = LatencyHistogram()
        for _ in 0..<5 { reads.record(nanoseconds: 100_000) }  // 100 us: above 0.0001 s, in the 0.00025 bucket
        reads.record(nanoseconds: 3_000_000)  // 3 ms: the 0.005 bucket
        let none = LatencyHistogram().counts
        array.change { _, c in c.luns["l"] = .init(read: reads.counts, write: none, flush: none, errors: 0) }
        var text = lines(exporter)
        XCTAssertTrue(text.contains(#"vsa_lun_latency_seconds_count{lun="l",op="read"} 6"#), "\(text.filter { $0.contains("op=\"read\"") })")
        XCTAssertTrue(text.contains(#"vsa_lun_latency_seconds_bucket{lun="l",op="read",le="0.0001"} 0"#))
        XCTAssertTrue(text.contains(#"vsa_lun_latency_seconds_bucket{lun="l",op="read",le="0.00025"} 5"#))
        XCTAssertTrue(text.contains(#"vsa_lun_latency_seconds_bucket{lun="l",op="read",le="0.0025"} 5"#))
        XCTAssertTrue(text.contains(#"vsa_lun_latency_seconds_bucket{lun="l",op="read",le="0.005"} 6"#))
        XCTAssertTrue(text.contains(#"vsa_lun_reads_total{lun="l"} 6"#))
        // Only what is new is replayed: a second collection with no new I/O changes nothing.
        XCTAssertEqual(lines(exporter), text)
        reads.record(nanoseconds: 3_000_000)
        array.change { _, c in c.luns["l"] = .init(read: reads.counts, write: none, flush: none, errors: 0) }
        text = lines(exporter)
        XCTAssertTrue(text.contains(#"vsa_lun_latency_seconds_count{lun="l",op="read"} 7"#))
    }

    func testStateSetsMarkOneStateAndSeriesOfAGoneLUNAreDropped() throws {
        let array = try makeArray()
        let exporter = MetricsExporter(array: array)
        XCTAssertTrue(lines(exporter).contains(#"vsa_array_state{state="optimal"} 1.0"#))
        array.change { s, _ in
            s.array.state = "degraded"
            s.drives[0].state = "failed"
        }
        let text = lines(exporter)
        XCTAssertTrue(text.contains(#"vsa_array_state{state="optimal"} 0.0"#))
        XCTAssertTrue(text.contains(#"vsa_array_state{state="degraded"} 1.0"#))
        XCTAssertTrue(text.contains(#"vsa_drive_state{drive="0",path="/tmp/st1/drive-0",role="member",state="failed"} 1.0"#))
        XCTAssertTrue(text.contains { $0.contains(#"lun="l""#) })
        array.change { s, _ in s.luns = [] }
        XCTAssertFalse(lines(exporter).contains { $0.contains(#"lun="l""#) }, "a deleted LUN's series stayed")
    }

    func testServiceAddressesAreCheckedAndBounded() throws {
        XCTAssertEqual(try ServiceAddress(parsing: "127.0.0.1:9580", option: "metrics"), ServiceAddress(host: "127.0.0.1", port: 9580))
        XCTAssertEqual(try ServiceAddress(parsing: "localhost:0", option: "metrics"), ServiceAddress(host: "127.0.0.1", port: 0))
        XCTAssertEqual(try ServiceAddress(parsing: "[::1]:9581", option: "dashboard").description, "[::1]:9581")
        for bad in [
            "", "9580", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:99999999999999999999", "1.2.3:80", "host:80", "[::1:80",
            "[zz]:80", "127.0.0.1:８０",
        ] {
            XCTAssertThrowsError(try ServiceAddress(parsing: bad, option: "metrics"), bad) { error in
                let message = (error as? VSAError)?.message ?? ""
                XCTAssertTrue(message.hasPrefix("-o metrics takes HOST:PORT"), "\(bad): \(message)")
                XCTAssertFalse(message.contains("\n"))
            }
        }
    }
}
