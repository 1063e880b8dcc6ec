// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "snapstack",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Snapstack", targets: ["Snapstack"]),
        .library(name: "DeviceMapper", targets: ["DeviceMapper"]),
        .executable(name: "snapstack", targets: ["snapstack"]),
        .executable(name: "snapstack-vmsuite", targets: ["VMSuite"]),
        .executable(name: "snapstack-fuzz", targets: ["SnapstackFuzz"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // C libraries from Debian, seen through pkg-config.
        .systemLibrary(
            name: "CDeviceMapper", pkgConfig: "devmapper",
            providers: [.apt(["libdevmapper-dev"])]),
        .systemLibrary(
            name: "CUdev", pkgConfig: "libudev",
            providers: [.apt(["libudev-dev"])]),
        .systemLibrary(
            name: "CXXHash", pkgConfig: "libxxhash",
            providers: [.apt(["libxxhash-dev"])]),
        // liblvm2cmd ships no pkg-config file: its module map names the library.
        .systemLibrary(
            name: "CLVM2Cmd",
            providers: [.apt(["liblvm2-dev"])]),
        // The few things Swift cannot do itself: libdm's variadic logger, flexible array
        // members, and kernel constants that Glibc's module map leaves out.
        .target(
            name: "CShims",
            dependencies: ["CDeviceMapper"],
            cSettings: [.define("_GNU_SOURCE")]),

        // Typed units, device numbers and block-device facts over swift-system.
        .target(
            name: "BlockIO",
            dependencies: ["CShims", .product(name: "SystemPackage", package: "swift-system")]),
        // Targets that render and parse their own table and status lines, and the libdm client.
        .target(
            name: "DeviceMapper",
            dependencies: ["BlockIO", "CShims", "CDeviceMapper",
                           .product(name: "SystemPackage", package: "swift-system")]),
        // libudev: enumeration, properties, daemon liveness.
        .target(
            name: "Udev",
            dependencies: ["BlockIO", "CUdev"]),
        // The persistent state: SQLite through GRDB, WAL, synchronous=FULL, migrations.
        .target(
            name: "StateDatabase",
            dependencies: [.product(name: "GRDB", package: "GRDB.swift")]),
        // lvs-style reports: fields, units, headings, separators, JSON.
        .target(
            name: "Reports",
            dependencies: ["BlockIO"]),
        // dm-era's on-disk metadata (superblock, writesets, era array) read natively.
        .target(
            name: "ChangeTracking",
            dependencies: ["BlockIO", "CShims", .product(name: "SystemPackage", package: "swift-system")]),
        // The copy-out core: O_DIRECT reads into owned aligned buffers, zero detection, sparse
        // writes, XXH3 block digests, rate limit, progress, delta streams.
        .target(
            name: "CopyEngine",
            dependencies: ["BlockIO", "CShims", "CXXHash", "Reports",
                           .product(name: "SystemPackage", package: "swift-system")]),
        // The auto-protect policy file and its rules over udev properties.
        .target(
            name: "Policy",
            dependencies: ["BlockIO", .product(name: "Yams", package: "Yams")]),
        // Prometheus' text exposition format (0.0.4), rendered from a model; pure.
        .target(name: "Exposition"),
        // SnapstackError: what failed, why, what to do, and the kind that picks the exit status.
        .target(name: "SnapstackErrors"),
        // flock(2) with a timeout and the holder's name: the state directory's locks and an image's.
        .target(
            name: "Locking",
            dependencies: ["SnapstackErrors", .product(name: "SystemPackage", package: "swift-system")]),
        // Backup images: manifest, checksum file, verify, restore, applying a delta stream. They
        // need no orchestrator, no state and no device-mapper.
        .target(
            name: "Images",
            dependencies: ["BlockIO", "CopyEngine", "Locking", "SnapstackErrors",
                           .product(name: "SystemPackage", package: "swift-system")]),
        // The library that backup software embeds.
        .target(
            name: "Snapstack",
            dependencies: ["DeviceMapper", "Udev", "BlockIO", "StateDatabase", "ChangeTracking", "CopyEngine", "Exposition",
                           "Images", "Locking", "SnapstackErrors", "CShims", "CXXHash",
                           .product(name: "SystemPackage", package: "swift-system")]),
        // A kernel in memory behind the same seam (device-mapper, loop devices, disks), for
        // running and crashing every verb without root.
        .target(
            name: "KernelSimulator",
            dependencies: ["Snapstack", "DeviceMapper", "BlockIO", .product(name: "SystemPackage", package: "swift-system")]),
        // One LVM command in-process through liblvm2cmd: the child side of `LVMTool`, run by
        // `snapstack lvm-exec` so that liblvm2cmd's process-wide settings stay out of snapstack.
        .target(
            name: "LVMExec",
            dependencies: ["CLVM2Cmd"]),
        // `snapstack daemon`: service lifecycle, udev monitor, policy, store watch.
        .target(
            name: "SnapstackDaemon",
            dependencies: ["Snapstack", "Udev", "Policy", "DeviceMapper", "BlockIO", "Locking",
                           .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                           .product(name: "Logging", package: "swift-log"),
                           .product(name: "SystemPackage", package: "swift-system")]),
        .executableTarget(
            name: "snapstack",
            dependencies: ["Snapstack", "SnapstackDaemon", "Images", "Locking", "SnapstackErrors", "Reports", "CopyEngine", "LVMExec",
                           .product(name: "ArgumentParser", package: "swift-argument-parser")]),

        // Unit tier: no root, no kernel device-mapper.
        .testTarget(
            name: "DeviceMapperTests",
            dependencies: ["DeviceMapper"],
            exclude: ["Fixtures"]),
        .testTarget(
            name: "BlockIOTests",
            dependencies: ["BlockIO"]),
        .testTarget(
            name: "StateDatabaseTests",
            dependencies: ["StateDatabase"]),
        .testTarget(
            name: "ReportsTests",
            dependencies: ["Reports"]),
        .testTarget(
            name: "ChangeTrackingTests",
            dependencies: ["ChangeTracking"],
            exclude: ["Fixtures"]),
        .testTarget(
            name: "CopyEngineTests",
            dependencies: ["CopyEngine", "BlockIO"]),
        .testTarget(
            name: "ImageTests",
            dependencies: ["Images", "Snapstack", "SnapstackErrors", "CopyEngine", "StateDatabase", .product(name: "SystemPackage", package: "swift-system")]),
        .testTarget(
            name: "ExpositionTests",
            dependencies: ["Exposition"]),
        .testTarget(
            name: "MetricsTests",
            dependencies: ["Snapstack", "Exposition", "BlockIO"]),
        .testTarget(
            name: "PolicyTests",
            dependencies: ["Policy"]),
        .testTarget(
            name: "SnapstackDaemonTests",
            dependencies: ["SnapstackDaemon", "Udev",
                           .product(name: "Logging", package: "swift-log"),
                           .product(name: "ServiceLifecycleTestKit", package: "swift-service-lifecycle")]),
        .testTarget(
            name: "StoreWatchTests",
            dependencies: ["SnapstackDaemon", "Snapstack", "BlockIO"]),
        // The orchestrator on a simulated kernel: every verb, crash and rollback, no root.
        .testTarget(
            name: "OrchestrationTests",
            dependencies: ["Snapstack", "KernelSimulator", "DeviceMapper", "BlockIO", "StateDatabase", "Locking", "SnapstackErrors", "Udev",
                           .product(name: "SystemPackage", package: "swift-system")]),
        // VM tier: runs as root inside the lab VM against the real kernel (Tests/lab/vm.sh).
        .executableTarget(
            name: "VMSuite",
            dependencies: ["DeviceMapper", "Snapstack", "SnapstackDaemon", "BlockIO", "ChangeTracking", "Images", "SnapstackErrors",
                           .product(name: "SystemPackage", package: "swift-system")],
            path: "Tests/VMSuite"),
        // Fuzz tier: the parsers of what others write, replayed from committed corpora (CI) or
        // driven by libFuzzer when built with -sanitize=fuzzer -DFUZZING (Tests/fuzz/run.sh).
        .executableTarget(
            name: "SnapstackFuzz",
            dependencies: ["BlockIO", "ChangeTracking", "CopyEngine", "DeviceMapper", "Images", "Policy", "Snapstack",
                           .product(name: "SystemPackage", package: "swift-system")],
            path: "Tests/fuzz",
            exclude: ["run.sh", "corpus"]),
        // Benchmark tier: the copy-out core against dd and cp on host loop devices.
        .executableTarget(
            name: "CopyBench",
            dependencies: ["CopyEngine", "BlockIO",
                           .product(name: "SystemPackage", package: "swift-system")],
            path: "Tests/CopyBench"),
    ],
    swiftLanguageModes: [.v6]
)
