// fsync against a destage pass in flight, with the directors' real threads running. A director's idle destage pass
// writes a journaled (partial-stripe RAID-5) stripe into its open batch; the test holds the pass there, between the
// write and the commit that makes the batch durable, and runs a host flush meanwhile. The flush must not return
// before the batch is on the drives. Before the fix the slot went clean as soon as its data sat in the open batch, the
// flush saw nothing write-pending on that director, skipped it, and returned with the data only in memory.
import ArrayModel
import BackEnd
import Buffers
import Directors
import Drives
import GlobalMemory
import Metadata
import Synchronization
import XCTest

final class FsyncRaceTests: XCTestCase {
    func testFlushWaitsForTheDestagePassInFlight() throws {
        let array = try CoreTestArray(name: "fsync-race")
        defer { array.remove() }
        let (store, lun, engines) = (array.store, array.lun, array.engines)
        let passHeld = DispatchSemaphore(value: 0)
        let passGoOn = DispatchSemaphore(value: 0)
        let first = Atomic<Bool>(true)
        let director = engines.directors[1]
        XCTAssertTrue(director.backEnd.hasJournal, "RAID-5 partial-stripe writes go through the journal")
        director.cache.beforeCommit = {
            guard first.exchange(false, ordering: .relaxed) else { return }
            passHeld.signal()
            passGoOn.wait()
        }
        for d in engines.directors {
            d.idleDestageDelay = 0.02
            let thread = Thread { d.run() }
            thread.name = "director-\(d.id)"
            thread.start()
        }
        defer { engines.stopAll() }

        // A 4 KiB write into a stripe whose home is 1b: a partial stripe, so its destage is journaled.
        let lunStripe: UInt64 = engines.home(lunID: lun.lunID, lunStripe: 0) == 1 ? 0 : 1
        XCTAssertEqual(engines.home(lunID: lun.lunID, lunStripe: lunStripe), 1)
        let buffer = alignedBuffer(bytes: 4096)
        buffer.base.initializeMemory(as: UInt8.self, repeating: 0x5A, count: 4096)
        XCTAssertEqual(engines.write(lun: lun, offsetBytes: lunStripe * store.geometry.stripeDataBytes, count: 4096, from: buffer.base), 0)

        // 1b's thread, idle with write-pending data, destages it; the hook holds the pass before its commit.
        guard passHeld.wait(timeout: .now() + 10) == .success else {
            passGoOn.signal()
            return XCTFail("1b's idle destage pass never reached its commit")
        }
        let flushed = DispatchSemaphore(value: 0)
        let result = Atomic<Int32>(-1)
        let flusher = Thread {
            result.store(engines.flush(lun: lun), ordering: .releasing)
            flushed.signal()
        }
        flusher.start()
        let returnedEarly = flushed.wait(timeout: .now() + 0.5) == .success
        passGoOn.signal()
        XCTAssertFalse(returnedEarly, "fsync returned while 1b's journal batch holding the acknowledged write was only in memory")
        if !returnedEarly { XCTAssertEqual(flushed.wait(timeout: .now() + 10), .success, "fsync never returned after the pass committed") }
        XCTAssertEqual(result.load(ordering: .acquiring), 0)
        XCTAssertEqual(director.cache.writePendingSlots, 0, "the pass committed: nothing is write-pending")

        // The data is in place on the drives: a cold back end reads it.
        let cold = try RAIDBackEnd(geometry: store.geometry, drives: store.drives, memory: director.memory, marks: BackEndMarks())
        let target = alignedBuffer(bytes: 4096)
        let table = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: store.geometry.dataStripsPerStripe)
        defer { table.deallocate() }
        table.initialize(repeating: nil, count: store.geometry.dataStripsPerStripe)
        table[0] = target.base
        XCTAssertTrue(cold.readStrips(stripe: lun.startStripe + lunStripe, stripMask: 1, offsetBytes: 0, count: 4096, targets: table))
        XCTAssertEqual(memcmp(target.base, buffer.base, 4096), 0, "the acknowledged write is on the drives")
    }
}
