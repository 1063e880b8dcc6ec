import BlockIO
import SystemPackage
import Testing

@Suite("DeviceUsage")
struct DeviceUsageTests {
    @Test("free when nothing uses the device")
    func free() {
        let usage = DeviceUsage()
        #expect(usage.isFree)
        #expect(usage.reason == nil)
    }

    @Test("one sentence per cause", arguments: [
        (DeviceUsage(mountPoints: ["/mnt/data"]), "it is mounted on /mnt/data"),
        (DeviceUsage(mountPoints: ["/mnt/a", "/mnt/my data"]), "it is mounted on /mnt/a, /mnt/my data"),
        (DeviceUsage(holders: ["dm-3"]), "it is held by dm-3 (a device-mapper or md device is built on it)"),
        (DeviceUsage(holders: ["dm-3", "md0"]), "it is held by dm-3, md0 (a device-mapper or md device is built on it)"),
        (DeviceUsage(swap: true), "it is in use as swap"),
        (DeviceUsage(exclusivelyHeld: true), "another program holds it open exclusively"),
    ] as [(DeviceUsage, String)])
    func reasons(usage: DeviceUsage, expected: String) {
        #expect(!usage.isFree)
        #expect(usage.reason == expected)
    }

    @Test("the most specific cause wins over the exclusive claim it implies")
    func precedence() {
        // A mounted device, a dm member and a swap device are all claimed exclusively too.
        #expect(DeviceUsage(mountPoints: ["/m"], holders: ["dm-0"], swap: true, exclusivelyHeld: true).reason
                == "it is mounted on /m")
        #expect(DeviceUsage(holders: ["dm-0"], exclusivelyHeld: true).reason?.hasPrefix("it is held by dm-0") == true)
        #expect(DeviceUsage(swap: true, exclusivelyHeld: true).reason == "it is in use as swap")
    }
}

@Suite("DeviceUse on this host's own tables")
struct DeviceUseHostTests {
    @Test("the root file system's device number is mounted on /")
    func rootMount() throws {
        // The mount table's own entry for "/" gives the number the kernel uses for it (on
        // btrfs a subvolume's st_dev can differ from it).
        let entries = DeviceUse.parseMountInfo(try readText("/proc/self/mountinfo"))
        let root = try #require(entries.last { $0.mountPoint == "/" })
        #expect(try DeviceUse.mountPoints(of: root.device).contains("/"))
    }

    @Test("a device number the kernel does not have has no holders and is no swap")
    func missingDevice() throws {
        let nothing = DeviceNumber(major: 0, minor: 0)
        #expect(try DeviceUse.holders(of: nothing).isEmpty)
        #expect(try !DeviceUse.isSwap(nothing))
    }

    @Test("usage of something that is not a block device is refused", arguments: ["/dev/null", "/proc/self/mountinfo"])
    func notABlockDevice(path: String) {
        #expect(throws: BlockIOError(path: path, reason: .notABlockDevice)) {
            try DeviceUse.usage(of: FilePath(path))
        }
    }

    @Test("usage of a missing path names the path and stat")
    func missingPath() {
        #expect(throws: BlockIOError(path: "/dev/snapstack-no-such-disk",
                                       reason: .system(operation: "stat", .noSuchFileOrDirectory))) {
            try DeviceUse.usage(of: "/dev/snapstack-no-such-disk")
        }
        #expect(DeviceUse.exclusiveOpenError("/dev/snapstack-no-such-disk") == .noSuchFileOrDirectory)
    }
}

/// The whole text of a small file, read with swift-system.
func readText(_ path: FilePath) throws -> String {
    let descriptor = try FileDescriptor.open(path, .readOnly)
    return try descriptor.closeAfter {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = try chunk.withUnsafeMutableBytes { try descriptor.read(into: $0) }
            if count == 0 { return String(decoding: bytes, as: UTF8.self) }
            bytes += chunk[..<count]
        }
    }
}
