// Failover corner cases on one engine driven through Engines without threads (as the simulation does).
import ArrayModel
import BackEnd
import Buffers
import Directors
import Drives
import GlobalMemory
import MemoryServices
import Metadata
import XCTest

final class FailoverTests: XCTestCase {
    /// A restore whose acting director cannot put its write-pending data down (more members out than RAID-5
    /// survives) is refused, and nothing changes: the failed director stays failed, the data stays where it is.
    func testRestoreIsRefusedWhenTheActingDirectorCannotDestage() throws {
        let array = try CoreTestArray(name: "failover")
        defer { array.remove() }
        let (store, lun, engines) = (array.store, array.lun, array.engines)
        let buffer = alignedBuffer(bytes: 1 << 16)
        buffer.base.initializeMemory(as: UInt8.self, repeating: 0xA5, count: 1 << 16)

        XCTAssertEqual(try engines.failDirector(DirectorID(index: 0)).isEmpty, false)
        XCTAssertEqual(engines.write(lun: lun, offsetBytes: 0, count: 4096, from: buffer.base), 0, "1b acts for 1a's stripes")
        // Two members out: 1b's write-through destage fails; the write is refused, its sectors stay write-pending.
        store.drives[1].transition(to: .failed)
        store.drives[2].transition(to: .failed)
        let stripe = store.geometry.stripeDataBytes
        XCTAssertEqual(engines.write(lun: lun, offsetBytes: 0, count: 4096, from: buffer.base), EIO)
        XCTAssertEqual(engines.write(lun: lun, offsetBytes: stripe, count: 4096, from: buffer.base), EIO)
        XCTAssertGreaterThan(engines.directors[1].cache.writePendingSlots, 0)

        XCTAssertThrowsError(try engines.restoreDirector(DirectorID(index: 0))) { error in
            XCTAssertTrue((error as? VSAError)?.message.contains("nothing was changed") ?? false, "\(error)")
        }
        XCTAssertEqual(engines.directors[0].state, .failed)
        XCTAssertEqual(engines.actingHomes(of: 1), [0, 1], "1b still acts for both homes")
        XCTAssertGreaterThan(engines.directors[1].cache.writePendingSlots, 0, "the write-pending data was not dropped")
    }
}
