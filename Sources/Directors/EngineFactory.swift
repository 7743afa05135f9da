// The one way the directors are built: each with its cache portion, the mirror for its partner, its back-end adapter
// (own io_uring, own journal slice) and its memory services. The daemon, the simulation and the hot-path benchmarks
// all build their stack here, so what the tests exercise is what the daemon runs. Threads are not started here: only
// the daemon (and the threaded tests) make threads.
import ArrayModel
import BackEnd
import Drives
import GlobalMemory
import MemoryServices

/// What the directors of one array are built from.
public struct EngineSpec {
    public var geometry: ArrayGeometry
    public var drives: [Drive]
    public var engineCount: Int
    public var slotsPerDirector: Int
    /// Each director's front-end queue (a bounded ring; a full ring is backpressure).
    public var queueCapacity = 1024
    /// The array's identity and each director's journal epoch (from recovery); nil: no journal (bare back ends).
    public var journal: (arrayUUID: UUID128, epochs: [UInt64])?
    /// Block checksums shared by every director's back end (nil: not kept).
    public var checksums: BlockChecksums?
    public var mirroring = true
    public var directRouting = false

    public init(geometry: ArrayGeometry, drives: [Drive], engineCount: Int, slotsPerDirector: Int) {
        self.geometry = geometry
        self.drives = drives
        self.engineCount = engineCount
        self.slotsPerDirector = slotsPerDirector
    }
}

extension Engines {
    /// Builds every director of `spec` and the engines over them. Throws a one-line error (io_uring could not be set
    /// up, a cache portion too small for a stripe's worth of tracks).
    public static func build(_ spec: EngineSpec) throws(VSAError) -> Engines {
        let directorCount = spec.engineCount * 2
        guard spec.engineCount >= 1 && spec.engineCount <= DirectorID.enginesMax else {
            throw VSAError("an array has 1 to \(DirectorID.enginesMax) engines, not \(spec.engineCount)")
        }
        guard spec.slotsPerDirector >= 2 * spec.geometry.dataStripsPerStripe + 2 else {
            throw VSAError("a director's cache portion needs at least \(2 * spec.geometry.dataStripsPerStripe + 2) slots, not \(spec.slotsPerDirector)")
        }
        if let journal = spec.journal, journal.epochs.count < directorCount {
            throw VSAError("the journal has \(journal.epochs.count) director slices, the array \(directorCount) directors")
        }
        var directors: [Director] = []
        for i in 0..<directorCount {
            let memory = MemoryServices()
            let marks = BackEndMarks()
            let owner = spec.journal.map { JournalOwner(arrayUUID: $0.arrayUUID, director: i, epoch: $0.epochs[i]) }
            let backEnd: RAIDBackEnd
            do {
                backEnd = try RAIDBackEnd(geometry: spec.geometry, drives: spec.drives, memory: memory, marks: marks, journal: owner, checksums: spec.checksums)
            } catch { throw VSAError("cannot set up director \(DirectorID(index: i))'s back end: \(error)") }
            directors.append(
                Director(
                    id: DirectorID(index: i), cacheSlots: spec.slotsPerDirector, queueCapacity: spec.queueCapacity, backEnd: backEnd,
                    memory: memory, counters: CacheCounters(), marks: marks))
        }
        return Engines(
            directors: directors, geometry: spec.geometry, engineCount: spec.engineCount, mirroring: spec.mirroring, directRouting: spec.directRouting)
    }
}
