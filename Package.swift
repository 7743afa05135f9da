// swift-tools-version:6.1
// vsa: a virtual enterprise storage array on FUSE. One target per layer of the architecture
// (see docs/ARCHITECTURE.md); dependencies point down the diagram, never up.
import PackageDescription

// The hot-path layers touch their preallocated tables from one executor at a time (a director's work never runs on two
// threads at once), so release builds drop Swift's dynamic exclusivity checks there: they cost a TLS lookup and an
// access-set insert per table access, ~4% of daemon CPU on 4 KiB reads (perf). Debug builds and tests keep them.
let hotPath: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]

let package = Package(
    name: "vsa",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "vsa", targets: ["CLI"])

    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // Allocation counters for the hot-path benchmarks (Benchmarks/HotPath); the interposer needs no system package.
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
        // The service processor's HTTP side (metrics and the dashboard). No default traits: neither swift-configuration
        // nor the Foundation extras are used, and each is build time on 2 cores.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1", traits: []),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // C libraries at the edge: a modulemap and a shim header each.
        .systemLibrary(
            name: "CFuse3", path: "Sources/CFuse3", pkgConfig: "fuse3",
            providers: [.apt(["libfuse3-dev"])]),
        .systemLibrary(
            name: "CURing", path: "Sources/CURing", pkgConfig: "liburing",
            providers: [.apt(["liburing-dev"])]),
        .systemLibrary(
            name: "CISAL", path: "Sources/CISAL", pkgConfig: "libisal",
            providers: [.apt(["libisal-dev"])]),
        .systemLibrary(
            name: "CNBD", path: "Sources/CNBD", pkgConfig: "libnbd",
            providers: [.apt(["libnbd-dev"])]),
        // Swift wrappers: the only code that calls C.
        .target(name: "SysPosix", path: "Sources/SysPosix"),
        .target(name: "SysURing", dependencies: ["CURing", "SysPosix"], path: "Sources/SysURing"),
        .target(name: "SysISAL", dependencies: ["CISAL"], path: "Sources/SysISAL"),
        // The NBD client for remote drives (issue 15; docs/ROADMAP.md).
        .target(name: "SysNBD", dependencies: ["CNBD", "SysPosix"], path: "Sources/SysNBD"),
        .target(name: "SysFuse", dependencies: ["CFuse3", "SysPosix"], path: "Sources/SysFuse", swiftSettings: hotPath),
        // The array, top to bottom.
        .target(name: "ArrayModel", path: "Sources/ArrayModel"),
        .target(name: "Buffers", dependencies: ["SysPosix"], path: "Sources/Buffers"),
        .target(name: "MemoryServices", dependencies: ["SysISAL", "Buffers"], path: "Sources/MemoryServices", swiftSettings: hotPath),
        .target(
            name: "Drives", dependencies: ["SysURing", "SysNBD", "SysPosix", "ArrayModel", "Buffers"], path: "Sources/Drives", swiftSettings: hotPath),
        .target(name: "Metadata", dependencies: ["ArrayModel", "Drives", "MemoryServices", "Buffers", "SysPosix"], path: "Sources/Metadata"),
        .target(name: "BackEnd", dependencies: ["ArrayModel", "Drives", "MemoryServices", "Buffers"], path: "Sources/BackEnd", swiftSettings: hotPath),
        // The pool between LUN space and the RAID back end: thin LUNs, redirect-on-write, snapshots (docs/POOL.md).
        .target(name: "Pool", dependencies: ["ArrayModel", "BackEnd", "MemoryServices", "Buffers"], path: "Sources/Pool", swiftSettings: hotPath),
        .target(
            name: "GlobalMemory", dependencies: ["ArrayModel", "Pool", "BackEnd", "MemoryServices", "Buffers"], path: "Sources/GlobalMemory",
            swiftSettings: hotPath),
        .target(
            name: "Directors", dependencies: ["ArrayModel", "GlobalMemory", "Pool", "BackEnd", "Drives", "MemoryServices", "Buffers"],
            path: "Sources/Directors", swiftSettings: hotPath),
        .target(
            name: "FrontEnd", dependencies: ["SysFuse", "SysPosix", "Directors", "GlobalMemory", "ArrayModel", "Buffers"], path: "Sources/FrontEnd",
            swiftSettings: hotPath),
        // The replica layer (issue 15): LUNs copied to NBD exports on other machines, SRDF-style. A HostIOPort between
        // the front end and the directors.
        .target(
            name: "Replication", dependencies: ["Directors", "MemoryServices", "SysNBD", "SysPosix", "ArrayModel"], path: "Sources/Replication",
            swiftSettings: hotPath),
        // The control protocol (requests and replies, typed) and the socket's client end: shared by the daemon, the
        // `vsa` command and what else drives the array.
        .target(name: "Control", dependencies: ["ArrayModel", "Metadata", "SysPosix"], path: "Sources/Control"),
        .target(
            name: "Daemon",
            dependencies: [
                "Control", "FrontEnd", "Replication", "Directors", "GlobalMemory", "Pool", "BackEnd", "Metadata", "Drives",
                "MemoryServices", "ArrayModel", "Buffers", "SysFuse", "SysPosix",
            ], path: "Sources/Daemon"),
        // The service processor (as the management PC beside a Symmetrix): the Prometheus endpoint and the live
        // dashboard, over HTTP. It sits above the daemon and drives it through the typed control protocol; nothing
        // below it learns about HTTP.
        .target(
            name: "ServiceProcessor",
            dependencies: [
                "Daemon", "Control", "ArrayModel", "SysPosix",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ], path: "Sources/ServiceProcessor"),
        .executableTarget(
            name: "CLI",
            dependencies: [
                "Daemon", "ServiceProcessor", "Control", "Replication", "ArrayModel", "Metadata", "SysPosix",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/CLI"),
        // Hot-path benchmarks: heap allocations per operation (held at zero by Benchmarks/Thresholds) and wall time.
        .executableTarget(
            name: "HotPath",
            dependencies: [
                "ArrayModel", "Buffers", "MemoryServices", "Drives", "Metadata", "BackEnd", "GlobalMemory", "Directors", "SysPosix",
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/HotPath",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]),
        .testTarget(
            name: "UnitTests",
            dependencies: [
                "ArrayModel", "MemoryServices", "Metadata", "BackEnd", "Pool", "GlobalMemory",
                "Directors", "Drives", "Buffers", "SysISAL", "SysNBD", "Daemon", "Control", "ServiceProcessor", "Replication",
            ], path: "Tests/UnitTests"),
        .testTarget(name: "IntegrationTests", dependencies: ["CLI"], path: "Tests/IntegrationTests"),
    ]
)
