// Injected drive faults for the deterministic simulation (Tests/UnitTests/SimulationTests.swift): a power cut after
// a chosen number of writes (the write it falls on is torn: only some of its sectors land; every write and flush
// after it is dropped), and the loss of writes no flush covered. Writes are logged with the bytes they replaced, per
// drive, until that drive's next flush; at the cut, a seeded random subset of those logged writes is undone, newest
// first, as a drive's volatile cache would lose them. Only page-cache drive files (the simulation's, on tmpfs) go
// through it; so do injected I/O errors (every read and write of one drive fails from a chosen moment). Installed by
// tests only; the daemon never sets it.
import ArrayModel
import SysPosix

#if canImport(Glibc)
    import Glibc
#endif

public final class DriveFaultInjector: @unchecked Sendable {
    /// The injector in use (nil: none; the normal case). Set before the drives are opened, on the test's thread.
    nonisolated(unsafe) public static var active: DriveFaultInjector? = nil

    /// Writes that still land before the power cut.
    public var writesBeforeCut = Int.max
    /// A drive whose every read and write now fails with an I/O error (a drive dying under the array).
    public var failingPath: String? = nil
    /// Sectors of the torn write that land (nil: a seeded random number, none to all).
    public var tornSectors: Int? = nil
    /// The chance, in percent, that the power cut loses an unflushed write.
    public var lossPercent: UInt64 = 50
    /// The power is off: writes and flushes are dropped (and reported done, as the process would not know).
    public private(set) var cut = false
    private var state: UInt64
    private var undo: [String: [(offset: UInt64, old: [UInt8])]] = [:]
    public private(set) var tornWrites = 0
    public private(set) var lostWrites = 0

    public init(seed: UInt64) { state = seed }

    /// SplitMix64 (the injected faults' generator): the simulation's seed decides every fault.
    public func next() -> UInt64 { DriveFaults.nextRandom(&state) }

    /// A write of `count` bytes at `offset` to `fd` (drive `path`) is about to happen. Returns how many of its bytes
    /// to write: all, some whole sectors (the torn write at the cut), or none (after the cut).
    func beforeWrite(path: String, fd: Int32, offset: UInt64, count: Int, durable: Bool = false) -> Int {
        if cut { return 0 }
        // A durable write (RWF_DSYNC) is not in the drive's volatile cache: a power cut cannot lose it once done, so
        // only the others are logged for undoing.
        if !durable {
            var old = [UInt8](repeating: 0, count: count)
            let n = old.withUnsafeMutableBytes { (try? Posix.pread(fd, $0.baseAddress!, count: count, offset: offset)) ?? 0 }
            if n < count { for i in max(n, 0)..<count { old[i] = 0 } }
            undo[path, default: []].append((offset, old))
        }
        writesBeforeCut -= 1
        guard writesBeforeCut <= 0 else { return count }
        cut = true
        tornWrites += 1
        return min(count, (tornSectors ?? Int(next() % UInt64(count / sectorBytes + 1))) * sectorBytes)
    }

    /// A flush of drive `path`: what it wrote is durable now (unless the power is already off).
    func flushed(path: String) -> Bool {
        if cut { return false }
        undo[path] = nil
        return true
    }

    /// The power cut itself: each unflushed write is lost with probability `lossPercent` (newest first), then the injector is
    /// reset for the next run. Returns how many writes were lost.
    @discardableResult
    public func losePower() -> Int {
        var lost = 0
        for (path, writes) in undo.sorted(by: { $0.key < $1.key }) {
            guard let fd = try? Posix.open(path, flags: O_RDWR | O_CLOEXEC) else { continue }
            for write in writes.reversed() where next() % 100 < lossPercent {
                _ = write.old.withUnsafeBytes { try? Posix.pwrite(fd, $0.baseAddress!, count: write.old.count, offset: write.offset) }
                lost += 1
            }
            Posix.close(fd)
        }
        undo = [:]
        cut = false
        writesBeforeCut = .max
        lostWrites += lost
        return lost
    }

    /// Forgets the log without losing anything (a clean stop, or a drive file replaced).
    public func reset() {
        undo = [:]
        cut = false
        writesBeforeCut = .max
    }
}
