// swift-tools-version: 6.1
// zramnbd: Linux zram (zsmalloc + a page store compressed with any of zram's algorithms) served over NBD.
// Dependencies point one way: zramnbd -> ZramDaemon -> {TLS -> NBD, ZramDevice -> {ZsPool, Codec}}, and
// every module -> Posix (the one layer over libc: locks, threads, mmap, sockets, fds, the page size).
import PackageDescription

let package = Package(
    name: "zramnbd",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "zramnbd", targets: ["zramnbd"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        // C libraries from Debian (scripts/install-deps.sh installs the -dev packages).
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        // liblzo2: only the tests and the codec benchmark (the lzo/lzo-rle streams are a port of the kernel's).
        .systemLibrary(name: "CLZO", pkgConfig: "lzo2", providers: [.apt(["liblzo2-dev"])]),
        .systemLibrary(name: "CNBD", pkgConfig: "libnbd", providers: [.apt(["libnbd-dev"])]),
        .systemLibrary(name: "CGnuTLS", pkgConfig: "gnutls", providers: [.apt(["libgnutls28-dev"])]),

        // The system layer: pthread locks and threads, the monotonic clock, memory reservations,
        // fd I/O, unix and TCP sockets. No dependencies; everything else talks to libc through it.
        .target(name: "Posix"),
        // The zsmalloc allocator: size classes, zspages, handles, compaction. Knows nothing else.
        .target(name: "ZsPool", dependencies: ["Posix"], exclude: ["STATE.md"]),
        // Page compressors (lzo, lzo-rle, lz4, lz4hc, zstd, deflate) behind one protocol.
        .target(name: "Codec", dependencies: ["CLZ4", "CZstd", "CZlib", "Posix"]),
        // zram's page store: slot table, same/huge pages, discard, mem_limit, counters.
        .target(name: "ZramDevice", dependencies: ["ZsPool", "Codec", "Posix"]),
        // The NBD protocol and server; talks to any block backend, knows nothing of compression.
        .target(name: "NBD", dependencies: ["Posix"], exclude: ["DESIGN.md"]),
        // NBD's TLS (STARTTLS) through GnuTLS: certificates, pre-shared keys, the channel.
        .target(name: "TLS", dependencies: ["NBD", "CGnuTLS", "Posix"]),
        // The daemon: CLI, config, stats files, control socket; wires devices to NBD exports.
        .target(name: "ZramDaemon", dependencies: [
            "ZramDevice", "NBD", "TLS", "Codec", "Posix",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "zramnbd", dependencies: ["ZramDaemon"]),
        // Benchmarks (scripts/bench.sh drives them); never timed in tests.
        .executableTarget(name: "zspool-bench", dependencies: ["ZsPool", "Posix"]),
        .executableTarget(name: "codec-bench", dependencies: ["Codec", "CLZO"]),

        // Helpers shared by the tests: spawning processes, temp dirs, kernel zram oracle devices.
        .target(name: "TestSupport"),
        .testTarget(name: "ZsPoolTests", dependencies: ["ZsPool", "TestSupport"]),
        .testTarget(name: "ZramDeviceTests", dependencies: ["ZramDevice", "Codec", "CLZ4", "CZstd", "CLZO", "CZlib", "TestSupport"]),
        .testTarget(name: "NBDTests", dependencies: ["NBD", "TLS", "CNBD", "TestSupport"]),
        .testTarget(name: "DaemonTests", dependencies: ["ZramDaemon", "ZramDevice", "Posix", "CNBD", "TestSupport"],
                    exclude: ["Fixtures"]),
    ]
)
