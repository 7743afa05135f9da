// Hot-path benchmarks: what one operation of each kind costs, and how many heap allocations it makes. In steady state
// every one of these allocates nothing; Benchmarks/Thresholds holds that at zero and `make test` checks it
// (`swift package benchmark thresholds check`). Names have no spaces: the threshold files are named after them. The drives are files under /var/tmp, opened with O_DIRECT where the
// file system allows it, so the io_uring path is the one measured.
import ArrayModel
import BackEnd
import Benchmark
import Buffers
import Directors
import Drives
import Foundation
import GlobalMemory
import MemoryServices
import Metadata
import SysPosix

/// One RAID-5 array of four small drives, a LUN on it, and the layers over it, made once per process.
final class TestBed: @unchecked Sendable {
    let store: ArrayStore
    let lun: LUNRef
    let memory = MemoryServices()
    let counters = CacheCounters()
    let marks = BackEndMarks()
    let backEnd: RAIDBackEnd
    let cache: TrackCache
    let engines: Engines
    let io: DriveIO
    let buffer = alignedBuffer(bytes: 1 << 20)
    let table = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: 8)

    init() {
        let directory = "/var/tmp/vsa-hotpath-\(getpid())"
        try? FileManager.default.removeItem(atPath: directory)
        store = try! ArrayStore.create(
            CreateOptions(
                directory: directory, driveCount: 4, driveSizeBytes: 64 << 20, drivePaths: [], raidLevel: .raid5, spareCount: 0,
                stripUnitBytes: 65536, cacheBytes: 64 << 20, engineCount: 1, force: true))
        let entry = try! store.createLUN(name: "bench", sizeBytes: 96 << 20)
        lun = LUNRef(lunID: entry.lunID, startStripe: entry.startStripe, sizeBytes: entry.sizeBytes)
        backEnd = try! RAIDBackEnd(geometry: store.geometry, drives: store.drives, memory: memory, marks: marks)
        cache = TrackCache(slotCount: 64, store: backEnd, memory: memory, counters: counters)
        var spec = EngineSpec(geometry: store.geometry, drives: store.drives, engineCount: 1, slotsPerDirector: 256)
        spec.queueCapacity = 64
        engines = try! Engines.build(spec)
        io = try! DriveIO(drives: store.drives, capacity: 64)
        for i in 0..<8 { table[i] = buffer.base + i * 65536 }
        atexit { try? FileManager.default.removeItem(atPath: "/var/tmp/vsa-hotpath-\(getpid())") }
    }
}

nonisolated(unsafe) var bed: TestBed! = nil
/// The miss benchmark's random walk; global because the benchmark closure runs once per sample.
nonisolated(unsafe) var missState: UInt64 = 0x1234_5678

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal],
        warmupIterations: 50,
        maxDuration: .seconds(1),
        maxIterations: 5_000,
        thresholds: [.mallocCountTotal: .init(absolute: [.p0: 0, .p25: 0, .p50: 0, .p75: 0, .p90: 0, .p99: 0, .p100: 0])])
    if bed == nil { bed = TestBed() }

    Benchmark("routing-owner-director") { benchmark in
        for i in benchmark.scaledIterations { blackHole(bed.engines.owner(lunID: bed.lun.lunID, lunStripe: UInt64(i))) }
    }

    Benchmark("cache-hit-4KiB-read") { benchmark in
        _ = bed.cache.read(lun: bed.lun, offsetBytes: 8192, count: 4096, into: bed.buffer.base)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations { blackHole(bed.cache.read(lun: bed.lun, offsetBytes: 8192, count: 4096, into: bed.buffer.base)) }
    }

    Benchmark("cache-miss-4KiB-drive-read") { benchmark in
        // 64 slots over a 96 MiB LUN, random 4 KiB reads: nearly every one misses and reads one page.
        for _ in benchmark.scaledIterations {
            missState = missState &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            let page = (missState >> 33) % (96 << 8)
            let ok = bed.cache.read(lun: bed.lun, offsetBytes: page * 4096, count: 4096, into: bed.buffer.base)
            precondition(ok, "cache miss read failed")
        }
        let misses = bed.counters.readMisses.load(ordering: .relaxed)
        precondition(misses > 0, "the miss benchmark did not miss")
    }

    Benchmark("host-read-4KiB-through-director") { benchmark in
        _ = bed.engines.read(lun: bed.lun, offsetBytes: 0, count: 4096, into: bed.buffer.base)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations { blackHole(bed.engines.read(lun: bed.lun, offsetBytes: 0, count: 4096, into: bed.buffer.base)) }
    }

    // A 4 KiB host write that stays write-pending: copied into the owner's slot and mirrored into the partner's
    // memory portion before it is acknowledged.
    Benchmark("host-write-4KiB-mirrored") { benchmark in
        _ = bed.engines.write(lun: bed.lun, offsetBytes: 4096, count: 4096, from: bed.buffer.base)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations { blackHole(bed.engines.write(lun: bed.lun, offsetBytes: 4096, count: 4096, from: bed.buffer.base)) }
    }

    Benchmark("raid5-full-stripe-write-3x64KiB") { benchmark in
        for i in benchmark.scaledIterations {
            let ok = bed.backEnd.writeStripe(stripe: UInt64(i % 256), strips: bed.table, dirtyMask: 0b111, offsetBytes: 0, count: 65536, allNew: true)
            precondition(ok, "full-stripe write failed")
        }
    }

    Benchmark("raid5-read-modify-write-4KiB") { benchmark in
        for i in benchmark.scaledIterations {
            let stripe = UInt64(i % 256)
            let ok =
                bed.backEnd.readOld(stripe: stripe, dirtyMask: 0b1, offsetBytes: 4096, count: 4096)
                && bed.backEnd.writeDelta(stripe: stripe, strips: bed.table, dirtyMask: 0b1, offsetBytes: 4096, count: 4096)
            precondition(ok, "read-modify-write failed")
        }
    }

    Benchmark("io_uring-submit-reap-4KiB-read") { benchmark in
        for i in benchmark.scaledIterations {
            bed.io.queueRead(drive: i % 4, into: bed.buffer.base, count: 4096, offsetBytes: (1 << 20) + UInt64(i % 1024) * 4096)
            blackHole(bed.io.submit())
        }
    }

    // What the latency histograms add to each host request and each drive batch: two clock reads and a record. A
    // thousand a sample, so the harness's own clock reads do not swamp it: the time is for 1000.
    let histogram = LatencyHistogram()
    Benchmark("latency-record-with-clock-x1000") { benchmark in
        for _ in benchmark.scaledIterations {
            for _ in 0..<1000 {
                let began = Posix.monotonicNanoseconds()
                histogram.record(nanoseconds: Posix.monotonicNanoseconds() &- began)
            }
        }
    }
}
