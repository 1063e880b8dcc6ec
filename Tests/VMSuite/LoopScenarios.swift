import BlockIO
import Foundation
import SystemPackage

/// Loop devices, backing files and "is this device in use" against the real kernel, with
/// losetup, blockdev, findmnt, dmsetup and swapon as the witnesses.
enum LoopScenarios {
    static let all: [Scenario] = [
        Scenario("loop: attach binds the file; losetup and blockdev show it at the file's size", attachShown),
        Scenario("loop: a read-only attach refuses writes", readOnlyAttach),
        Scenario("loop: concurrent attaches each bind a device of their own", concurrentAttaches),
        Scenario("loop: detach unbinds the device, and a second detach is a no-op", detachTwice),
        Scenario("loop: detach while another opener holds the device waits for its close", detachWhileOpen),
        Scenario("loop: refreshCapacity after growing the backing file shows the new size", refreshAfterGrow),
        Scenario("loop: with autoclear the device is unbound when its last opener closes it", autoclearOnClose),
        Scenario("device use: a free loop device is free", freeDevice),
        Scenario("device use: a mounted loop device reports its mount point", mountedDevice),
        Scenario("device use: a loop device under a device-mapper device is held", heldByDeviceMapper),
        Scenario("device use: a loop device in use as swap is reported", swapDevice),
        Scenario("device use: a loop device opened with O_EXCL is held exclusively", exclusiveOpener),
    ]

    // MARK: Loop devices

    static func attachShown(_ lab: Lab) throws {
        try withCleanup(lab) { cleanup in
            let file = try backingFile(lab, "disk", size: .mebibytes(24), cleanup)
            let device = try Loop.attach(file: FilePath(file))
            try expectEqual(device.backingFile, file, "backing file reported by attach")

            let listed = try losetupDevices(lab, backing: file)
            try expectEqual(listed, [device.path], "losetup -j \(file)")
            let all = try lab.sh("losetup", "-a")
            try expect(all.split(separator: "\n").contains { $0.hasPrefix("\(device.path): ") && $0.hasSuffix("(\(file))") },
                       "losetup -a lacks \(device.path) on \(file):\n\(all)")
            try expectEqual(try size(lab, device.path), 24 << 20, "blockdev --getsize64 \(device.path)")
            try expectEqual(try sysfs(device, "dev"), device.number.description, "sysfs dev of \(device.path)")
            try expectEqual(try losetupColumns(lab, device.path, "RO,AUTOCLEAR"), "0 0", "losetup RO,AUTOCLEAR")

            try expect(try Loop.all().contains(device), "Loop.all() lacks \(device)")
            try expectEqual(try Loop.find(backingFile: file), [device], "Loop.find(backingFile:)")
            // A path with a symbolic link in it finds the same device: sysfs names the resolved file.
            let link = lab.scratch.appendingPathComponent("link.img").path
            try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: file)
            try expectEqual(try Loop.find(backingFile: link), [device], "Loop.find through a symbolic link")

            // Bytes written through the device land in the file.
            try lab.writeRandom(device.path, offset: .mebibytes(1), length: .mebibytes(1))
            try expectEqual(try fileSHA256(lab, file, offset: .mebibytes(1), length: .mebibytes(1)),
                            try lab.sha256(device.path, offset: .mebibytes(1), length: .mebibytes(1)),
                            "bytes written through \(device.path), read from \(file)")
        }
    }

    static func readOnlyAttach(_ lab: Lab) throws {
        try withCleanup(lab) { cleanup in
            let file = try backingFile(lab, "ro", size: .mebibytes(8), cleanup)
            let before = try fileSHA256(lab, file, offset: .zero, length: .mebibytes(8))
            let device = try Loop.attach(file: FilePath(file), readOnly: true)

            try expectEqual(try lab.sh("blockdev", "--getro", device.path).trimmingCharacters(in: .whitespacesAndNewlines),
                            "1", "blockdev --getro")
            try expectEqual(try losetupColumns(lab, device.path, "RO"), "1", "losetup RO")
            let write = try lab.run(["dd", "if=/dev/urandom", "of=\(device.path)", "bs=4096", "count=16",
                                     "oflag=direct", "conv=notrunc,fsync", "status=none"], allowFailure: true)
            try expect(write.status != 0, "dd onto the read-only \(device.path) succeeded")
            try expectEqual(try fileSHA256(lab, file, offset: .zero, length: .mebibytes(8)), before, "the backing file after the refused write")
            try expectEqual(try size(lab, device.path), 8 << 20, "blockdev --getsize64")
        }
    }

    static func concurrentAttaches(_ lab: Lab) throws {
        try withCleanup(lab) { cleanup in
            // LOOP_CTL_GET_FREE hands the same index to callers that ask at the same time; all
            // but one of them get EBUSY from LOOP_CONFIGURE and must ask again.
            let count = 6
            let files = try (0..<count).map { try backingFile(lab, "parallel-\($0)", size: .mebibytes(4), cleanup) }
            let results = Results(count: count)
            DispatchQueue.concurrentPerform(iterations: count) { index in
                results.set(index, Result { try Loop.attach(file: FilePath(files[index])) })
            }
            var devices: [LoopDevice] = []
            for (index, result) in results.all.enumerated() {
                switch result {
                case .success(let device)?: devices.append(device)
                case .failure(let error)?: throw Failure(description: "attach of \(files[index]): \(error)")
                case nil: throw Failure(description: "attach of \(files[index]) did not run")
                }
            }
            try expectEqual(Set(devices.map(\.path)).count, count, "distinct devices among \(devices.map(\.path))")
            for (file, device) in zip(files, devices) {
                try expectEqual(try losetupDevices(lab, backing: file), [device.path], "losetup -j \(file)")
            }
        }
    }

    static func detachTwice(_ lab: Lab) throws {
        try withCleanup(lab) { cleanup in
            let file = try backingFile(lab, "detach", size: .mebibytes(8), cleanup)
            let device = try Loop.attach(file: FilePath(file))
            // udev probes a newly bound device (blkid); once it has closed it again, nobody but
            // the detach itself has the device open.
            try lab.sh("udevadm", "settle")
            try expectEqual(try Loop.detach(device.path), .detached, "first detach")
            try expectEqual(try losetupDevices(lab, backing: file), [], "losetup -j after detach")
            try expect(!FileManager.default.fileExists(atPath: "/sys/block/\(device.name)/loop"),
                       "/sys/block/\(device.name)/loop still exists")
            try expectEqual(try Loop.detach(device.path), .wasNotAttached, "second detach")
            try expectEqual(try Loop.find(backingFile: file), [], "Loop.find after detach")
            // Growing nothing: LOOP_SET_CAPACITY on an unbound device is the kernel's ENXIO.
            let error = try expectThrows("refreshCapacity of an unbound device") { try Loop.refreshCapacity(device.path) }
            try expectEqual((error as? BlockIOError)?.reason, .system(operation: "LOOP_SET_CAPACITY", .noSuchAddressOrDevice),
                            "refreshCapacity's error")
        }
    }

    static func detachWhileOpen(_ lab: Lab) throws {
        try withCleanup(lab) { cleanup in
            let file = try backingFile(lab, "busy", size: .mebibytes(8), cleanup)
            let device = try Loop.attach(file: FilePath(file))
            try lab.sh("udevadm", "settle")
            var holder: FileDescriptor? = try FileDescriptor.open(FilePath(device.path), .readOnly, options: [.closeOnExec])
            defer { try? holder?.close() }

            try expectEqual(try Loop.detach(device.path), .deferredUntilClosed, "detach while \(device.path) is open")
            try expectEqual(try losetupDevices(lab, backing: file), [device.path], "losetup -j while still open")
            try expectEqual(try losetupColumns(lab, device.path, "AUTOCLEAR"), "1", "losetup AUTOCLEAR after the deferred detach")

            try holder?.close()
            holder = nil
            try waitUntil("losetup -j \(file) is empty after the last close") { try losetupDevices(lab, backing: file).isEmpty }
            try expectEqual(try Loop.detach(device.path), .wasNotAttached, "detach after the deferred unbind")
        }
    }

    static func refreshAfterGrow(_ lab: Lab) throws {
        try withCleanup(lab) { cleanup in
            let file = try backingFile(lab, "grow", size: .mebibytes(16), cleanup)
            let device = try Loop.attach(file: FilePath(file))
            try expectEqual(try size(lab, device.path), 16 << 20, "blockdev --getsize64 before growing")

            try FileAllocation.grow(FilePath(file), to: .mebibytes(40), preallocate: true)
            try expectEqual(try lab.sh("stat", "-c", "%s", file).trimmingCharacters(in: .whitespacesAndNewlines),
                            "\(40 << 20)", "stat size of the grown file")
            let blocks = UInt64(try lab.sh("stat", "-c", "%b", file).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
            try expect(blocks * 512 >= 40 << 20, "the grown file has \(blocks) blocks reserved, wanted \(40 << 20) bytes")
            // The loop driver keeps the size it read at bind time until told to look again.
            try expectEqual(try size(lab, device.path), 16 << 20, "blockdev --getsize64 before refreshCapacity")

            try Loop.refreshCapacity(device.path)
            try expectEqual(try size(lab, device.path), 40 << 20, "blockdev --getsize64 after refreshCapacity")
        }
    }

    static func autoclearOnClose(_ lab: Lab) throws {
        try withCleanup(lab) { cleanup in
            let file = try backingFile(lab, "autoclear", size: .mebibytes(8), cleanup)
            let (device, descriptor) = try Loop.attachAndOpen(file: FilePath(file), autoclear: true)
            var open: FileDescriptor? = descriptor
            defer { try? open?.close() }
            try lab.sh("udevadm", "settle")
            try expectEqual(try losetupDevices(lab, backing: file), [device.path], "losetup -j while the descriptor is open")
            try expectEqual(try losetupColumns(lab, device.path, "AUTOCLEAR"), "1", "losetup AUTOCLEAR")

            try open?.close()
            open = nil
            try waitUntil("losetup -j \(file) is empty after closing the last descriptor") {
                try losetupDevices(lab, backing: file).isEmpty
            }

            // attach closes its own descriptor: with autoclear the binding lasts only as long as
            // someone else (udev's probe) happens to have the device open.
            let gone = try Loop.attach(file: FilePath(file), autoclear: true)
            try waitUntil("\(gone.path) unbound after attach(autoclear: true) returned") {
                try losetupDevices(lab, backing: file).isEmpty
            }
        }
    }

    // MARK: Device use

    static func freeDevice(_ lab: Lab) throws {
        try withCleanup(lab) { cleanup in
            let file = try backingFile(lab, "free", size: .mebibytes(8), cleanup)
            let device = try Loop.attach(file: FilePath(file))
            try lab.sh("udevadm", "settle")
            let usage = try DeviceUse.usage(of: FilePath(device.path))
            try expect(usage.isFree, "\(device.path) reported in use: \(usage.reason ?? "?") \(usage)")
            try expectEqual(usage.reason, nil, "reason")
            try expectEqual(DeviceUse.exclusiveOpenError(FilePath(device.path)), nil, "O_EXCL open")
            try expectEqual(try lab.sh("findmnt", "-n", "-o", "TARGET", "--source", device.path, allowFailure: true), "", "findmnt")
        }
    }

    static func mountedDevice(_ lab: Lab) throws {
        try withCleanup(lab) { cleanup in
            let file = try backingFile(lab, "fs", size: .mebibytes(32), cleanup)
            let device = try Loop.attach(file: FilePath(file))
            try lab.sh("mkfs.ext4", "-q", device.path)
            // A space in the mount point: mountinfo escapes it as \040.
            let mountPoint = lab.scratch.appendingPathComponent("mount point").path
            try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
            cleanup.add("unmount \(mountPoint)") {
                if try lab.run(["mountpoint", "-q", mountPoint], allowFailure: true).status == 0 {
                    try lab.sh("umount", mountPoint)
                }
            }
            try lab.sh("mount", device.path, mountPoint)

            try expectEqual(try lab.sh("findmnt", "-n", "-o", "TARGET", "--source", device.path)
                                .trimmingCharacters(in: .newlines), mountPoint, "findmnt")
            let usage = try DeviceUse.usage(of: FilePath(device.path))
            try expectEqual(usage.mountPoints, [mountPoint], "mount points")
            try expectEqual(usage.reason, "it is mounted on \(mountPoint)", "reason")
            try expect(usage.exclusivelyHeld && !usage.isFree, "a mounted device should be claimed: \(usage)")
            try expectEqual(DeviceUse.exclusiveOpenError(FilePath(device.path)), .resourceBusy, "O_EXCL open of a mounted device")
            try expectEqual(try DeviceUse.mountPoints(of: device.number), [mountPoint], "mountPoints(of: \(device.number))")

            try lab.sh("umount", mountPoint)
            try expect(try DeviceUse.usage(of: FilePath(device.path)).isFree, "\(device.path) not free after umount")
        }
    }

    static func heldByDeviceMapper(_ lab: Lab) throws {
        try withCleanup(lab) { cleanup in
            let file = try backingFile(lab, "member", size: .mebibytes(16), cleanup)
            let device = try Loop.attach(file: FilePath(file))
            let name = Lab.namePrefix + "loop-held"
            cleanup.add("dmsetup remove \(name)") {
                if try lab.run(["dmsetup", "info", name], allowFailure: true).status == 0 {
                    try lab.sh("dmsetup", "remove", "--retry", name)
                }
            }
            try lab.sh("dmsetup", "create", name, "--table", "0 \((16 << 20) / 512) linear \(device.path) 0")
            let minor = try lab.sh("dmsetup", "info", "-c", "--noheadings", "-o", "minor", name)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            try expect(try lab.sh("dmsetup", "deps", "-o", "devname", name).contains("(\(device.name))"),
                       "dmsetup deps does not name \(device.name)")

            let usage = try DeviceUse.usage(of: FilePath(device.path))
            try expectEqual(usage.holders, ["dm-\(minor)"], "holders")
            try expectEqual(usage.mountPoints, [], "mount points")
            try expectEqual(usage.reason, "it is held by dm-\(minor) (a device-mapper or md device is built on it)", "reason")
            try expect(usage.exclusivelyHeld, "device-mapper claims its members exclusively: \(usage)")

            try lab.sh("dmsetup", "remove", name)
            try expectEqual(try DeviceUse.holders(of: device.number), [], "holders after dmsetup remove")
        }
    }

    static func swapDevice(_ lab: Lab) throws {
        try withCleanup(lab) { cleanup in
            let file = try backingFile(lab, "swap", size: .mebibytes(16), cleanup)
            let device = try Loop.attach(file: FilePath(file))
            try lab.sh("mkswap", "-q", device.path)
            cleanup.add("swapoff \(device.path)") {
                if try lab.sh("swapon", "--show=NAME", "--noheadings").split(separator: "\n").contains(Substring(device.path)) {
                    try lab.sh("swapoff", device.path)
                }
            }
            try lab.sh("swapon", device.path)
            try expect(try lab.sh("swapon", "--show=NAME", "--noheadings").contains(device.path), "swapon --show lacks \(device.path)")

            let usage = try DeviceUse.usage(of: FilePath(device.path))
            try expect(usage.swap, "swap not reported: \(usage)")
            try expectEqual(usage.reason, "it is in use as swap", "reason")
            try lab.sh("swapoff", device.path)
            try expect(try !DeviceUse.isSwap(device.number), "still swap after swapoff")
        }
    }

    static func exclusiveOpener(_ lab: Lab) throws {
        try withCleanup(lab) { cleanup in
            let file = try backingFile(lab, "excl", size: .mebibytes(8), cleanup)
            let device = try Loop.attach(file: FilePath(file))
            try lab.sh("udevadm", "settle")
            // The kernel's claim belongs to the open file, not to the process: this open is a
            // holder of its own, as another program's O_EXCL open would be.
            var claim: FileDescriptor? = try FileDescriptor.open(FilePath(device.path), .readOnly,
                                                                 options: [.exclusiveCreate, .closeOnExec])
            defer { try? claim?.close() }
            let usage = try DeviceUse.usage(of: FilePath(device.path))
            try expectEqual(usage, DeviceUsage(exclusivelyHeld: true), "usage while claimed")
            try expectEqual(usage.reason, "another program holds it open exclusively", "reason")
            try claim?.close()
            claim = nil
            try expect(try DeviceUse.usage(of: FilePath(device.path)).isFree, "not free after the claim was closed")
        }
    }

    // MARK: Helpers

    /// A new sparse file under the scratch directory, made by the code under test, with a
    /// clean-up step that detaches (with losetup, independently of `Loop.detach`) every loop
    /// device still bound to it.
    static func backingFile(_ lab: Lab, _ label: String, size: Bytes, _ cleanup: Cleanup) throws -> String {
        let file = lab.scratch.appendingPathComponent(label + ".img").path
        cleanup.add("detach the loop devices on \(file)") { try releaseLoops(lab, backing: file) }
        try FileAllocation.create(FilePath(file), size: size, preallocate: false)
        return file
    }

    static func releaseLoops(_ lab: Lab, backing file: String) throws {
        for _ in 0..<50 {
            let devices = try losetupDevices(lab, backing: file)
            if devices.isEmpty { return }
            // A device that udev still has open is detached lazily, at its close.
            for device in devices { _ = try lab.run(["losetup", "-d", device], allowFailure: true) }
            try lab.sh("udevadm", "settle")
            if try losetupDevices(lab, backing: file).isEmpty { return }
            Thread.sleep(forTimeInterval: 0.1)
        }
        throw Failure(description: "loop devices on \(file) still bound after losetup -d: \(try losetupDevices(lab, backing: file))")
    }

    /// The devices `losetup -j FILE` lists ("/dev/loop0: [2049]:12 (/path)" per line).
    static func losetupDevices(_ lab: Lab, backing file: String) throws -> [String] {
        try lab.sh("losetup", "-j", file).split(separator: "\n").compactMap { line in
            line.firstIndex(of: ":").map { String(line[..<$0]) }
        }
    }

    /// `losetup --list` columns of one device, space-separated.
    static func losetupColumns(_ lab: Lab, _ device: String, _ columns: String) throws -> String {
        try lab.sh("losetup", "--list", "--noheadings", "--raw", "--output", columns, device)
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static func size(_ lab: Lab, _ device: String) throws -> UInt64 {
        let text = try lab.sh("blockdev", "--getsize64", device).trimmingCharacters(in: .whitespacesAndNewlines)
        return try UInt64(text) ?? { throw Failure(description: "blockdev --getsize64 \(device) said \(text)") }()
    }

    static func sysfs(_ device: LoopDevice, _ attribute: String) throws -> String {
        try String(contentsOfFile: "/sys/block/\(device.name)/\(attribute)", encoding: .utf8)
            .trimmingCharacters(in: .newlines)
    }

    /// sha256 of part of a regular file through the page cache (the lab's /tmp may not do O_DIRECT).
    static func fileSHA256(_ lab: Lab, _ file: String, offset: Bytes, length: Bytes) throws -> String {
        let block: UInt64 = 1 << 16
        let output = try lab.sh("sh", "-c", "dd if=\"$1\" bs=\(block) skip=\(offset.rawValue / block) count=\(length.rawValue / block) status=none | sha256sum", "sh", file)
        return String(output.prefix(64))
    }

    /// Polls `condition` for up to `seconds`: the kernel finishes lazy detaches when the last
    /// opener (often udev's probe) closes the device.
    static func waitUntil(_ what: String, seconds: Double = 10, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try condition() { return }
            Thread.sleep(forTimeInterval: 0.1)
        }
        if try condition() { return }
        throw Failure(description: "timed out after \(seconds) s waiting until \(what)")
    }

    /// Runs `body`, then every clean-up step it registered, newest first, whether the body
    /// passed, failed or threw half-way. Clean-up failures fail the scenario too.
    static func withCleanup(_ lab: Lab, _ body: (Cleanup) throws -> Void) throws {
        let cleanup = Cleanup()
        var problems: [String] = []
        do { try body(cleanup) } catch { problems.append("\(error)") }
        problems += cleanup.run()
        if !problems.isEmpty { throw Failure(description: problems.joined(separator: "\n      ")) }
    }
}

/// Results written by concurrent workers, each into its own slot.
final class Results: @unchecked Sendable {
    private let lock = NSLock()
    private var slots: [Result<LoopDevice, any Error>?]

    init(count: Int) { slots = Array(repeating: nil, count: count) }

    func set(_ index: Int, _ result: Result<LoopDevice, any Error>) {
        lock.withLock { slots[index] = result }
    }

    var all: [Result<LoopDevice, any Error>?] { lock.withLock { slots } }
}

/// Undo steps of one scenario, run in reverse order of registration.
final class Cleanup {
    private var steps: [(what: String, step: () throws -> Void)] = []

    func add(_ what: String, _ step: @escaping () throws -> Void) {
        steps.append((what, step))
    }

    /// Runs every step, newest first; returns what failed.
    func run() -> [String] {
        var problems: [String] = []
        for (what, step) in steps.reversed() {
            do { try step() } catch { problems.append("clean-up: \(what): \(error)") }
        }
        steps.removeAll()
        return problems
    }
}

extension LoopDevice {
    /// `loopN`, the device's sysfs name.
    var name: String { String(path.dropFirst("/dev/".count)) }
}
