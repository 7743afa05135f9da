// The control protocol is input on the daemon's side: every request goes through the wire and back unchanged, and
// anything that is not a request is refused with one line before anything acts on it.
import ArrayModel
import Control
import XCTest

final class ControlProtocolTests: XCTestCase {
    static let requests: [ControlRequest] = [
        .status, .flush,
        .lunCreate(name: "db 1", sizeBytes: 10 << 40, thin: true), .lunCreate(name: "x", sizeBytes: 512, thin: false),
        .lunDelete(name: "x"),
        .snapCreate(lun: "db", name: "s1", secureSeconds: 0), .snapCreate(lun: "db", name: "s2", secureSeconds: 86400),
        .snapDelete(lun: "db", name: "s1"), .snapRestore(lun: "db", name: "s1"), .snapLink(lun: "db", name: "s1", clone: "c"),
        .snapUnlink(clone: "c"), .snapRelink(clone: "c", name: "s2"),
        .driveFail(drive: "2", force: false), .driveFail(drive: "/dev/loop3", force: true),
        .driveReplace(drive: "1", newDrive: nil, force: false, rateBytes: 200 << 20),
        .driveReplace(drive: "d1", newDrive: "/tmp/new drive", force: true, rateBytes: 0),
        .scrub(repair: true, rateBytes: 0), .scrub(repair: false, rateBytes: 1 << 30),
        .directorFail(director: "1a"), .directorRestore(director: "2b"),
        .latencyCounts, .powerCut(torn: false, seed: nil), .powerCut(torn: true, seed: 18_446_744_073_709_551_615 / 2),
        .replicaCreate(name: "dr", luns: ["db 1"], uris: ["nbd://10.0.0.9:10809/db"], mode: "sync", cycleSeconds: 30),
        .replicaCreate(
            name: "g.2", luns: ["a", "b", "c"], uris: ["nbd+unix:///a?socket=/run/a.sock", "nbd://h/b", "nbd://h/c"], mode: "async",
            cycleSeconds: 86_400, journal: "nbd://h/journal", cacheBytes: 64 << 20),
        .replicaCreate(name: "g3", luns: ["a"], uris: ["nbd://h/a"], mode: "async", cycleSeconds: 2, journal: "nbd://h/j", cacheBytes: 1 << 20, apply: "r2"),
        .replicaSuspend(name: "dr"), .replicaResume(name: "dr"), .replicaFailover(name: "dr"), .replicaFailback(name: "dr"),
        .replicaDelete(name: "dr"),
    ]

    func testEveryRequestCrossesTheWireUnchanged() throws {
        for request in Self.requests {
            XCTAssertTrue(request.line.hasSuffix("\n"))
            XCTAssertEqual(request.line.filter { $0 == "\n" }.count, 1, request.line)
            XCTAssertEqual(try ControlRequest(line: request.line), request)
            XCTAssertEqual(try ControlRequest(line: String(request.line.dropLast())), request, "the newline is optional")
        }
    }

    func testWhatIsNotARequestIsRefusedWithOneLine() {
        let refused = [
            "", "\n", "\u{0}\u{ff} garbage", "\t\t\t", "status\textra", "flush\t",
            "lun-create\tx", "lun-create\tx\t10\tthick", "lun-create\tx\t-1", "lun-create\tx\t18446744073709551615",
            "lun-create\tx\t99999999999999999999999", "lun-create\tx\t1e9", "lun-create\tx\t 5", "lun-create\tx\t",
            "snap-create\tdb\ts", "snap-create\tdb\ts\tsoon", "drive-fail\t1\tyes", "drive-fail\t1", "drive-replace\t-1\t\t0",
            "drive-replace\t1\t\t2\t0", "scrub\t1\t-5", "scrub\ttrue\t0", "director-fail", "director-fail\t1a\t1b", "lun-delete",
            "LUN-CREATE\tx\t10", "unknown", "powercut", "powercut\t2\t", "powercut\t1\tx", "powercut\t1\t1\t1",
            "replica-create", "replica-create\tg\tsync\t30", "replica-create\tg\tsync\t30\t\t0\tr1\t1\ta",
            "replica-create\tg\tsync\t30\t\t0\tr1\t2\ta\tnbd://h/a", "replica-create\tg\tsync\t30\t\t0\tr1\t0",
            "replica-create\tg\tsync\t-1\t\t0\tr1\t1\ta\tu", "replica-create\tg\tsync\t30\t\t0\tr1\t99999999999999999999\ta\tu",
            "replica-create\tg\tsync\t30\t\t0\tr1\t257", "replica-create\tg\tasync\t30\tnbd://h/j\t-5\tr1\t1\ta\tu",
            "replica-create\tg\tasync\t30\tnbd://h/j\t0\t1\ta\tu",
            "replica-suspend", "replica-resume\ta\tb", "replica-failover", "replica-failback\ta\tb", "replica-delete",
        ]
        for line in refused {
            XCTAssertThrowsError(try ControlRequest(line: line), line.debugDescription) { error in
                let message = (error as? VSAError)?.message ?? ""
                XCTAssertFalse(message.isEmpty)
                XCTAssertFalse(message.contains("\n"), message)
            }
        }
    }

    func testRepliesAndTheirPayloadsCrossTheWire() {
        XCTAssertEqual(ControlReply(wire: ControlReply.done("{}").wire), .done("{}"))
        XCTAssertEqual(ControlReply(wire: ControlReply.refused("no LUN named x").wire), .refused("no LUN named x"))
        XCTAssertEqual(ControlReply.refused("two\nlines").wire, "error two; lines", "a refusal is one line")
        XCTAssertNil(ControlReply(wire: ""))
        XCTAssertNil(ControlReply(wire: "okay"))
        XCTAssertEqual(SnapshotTaken(payload: SnapshotTaken(milliseconds: 12.34).payload), SnapshotTaken(milliseconds: 12.3))
        XCTAssertNil(SnapshotTaken(payload: "-1"))
        XCTAssertEqual(CloneLinked(payload: CloneLinked(lunID: 7).payload), CloneLinked(lunID: 7))
        XCTAssertNil(CloneLinked(payload: "99999999999"))
        let cut = PowerCutDone(droppedBlocks: 12, keptBlocks: 3, seed: 99, luns: ["db 1", "logs"])
        XCTAssertEqual(PowerCutDone(payload: cut.payload), cut)
        XCTAssertNil(PowerCutDone(payload: "-1\t0\t5"))
        for started in [ReplaceStarted(member: 2, newDrive: "/x y", queued: true), ReplaceStarted(member: 0, newDrive: "d4", queued: false)] {
            XCTAssertEqual(ReplaceStarted(payload: started.payload), started)
        }
        XCTAssertNil(ReplaceStarted(payload: "-1\tx"))
        XCTAssertNil(ReplaceStarted(payload: "1\tx\tlater"))
        XCTAssertEqual(DirectorChanged(payload: DirectorChanged(notes: ["a", "b"]).payload).notes, ["a", "b"])
    }
}
