import BlockIO
import Foundation
import SnapstackErrors
import SystemPackage
import Udev

/// The host as Linux shows it: ioctls, sysfs, /proc, udev.
public struct LinuxHost: HostDevices {
    public init() {}

    public var runtimeDirectory: String { "/run/snapstack" }
    public var lvmSystemDirectory: String { ProcessInfo.processInfo.environment["LVM_SYSTEM_DIR"] ?? "/etc/lvm" }
    public var lvmLockDirectory: String { "/run/lock/lvm" }

    public func facts(of path: FilePath) throws -> BlockDeviceFacts { try BlockDeviceFacts.read(path) }
    public func dmUUID(of number: DeviceNumber) -> String? { Sysfs.dmUUID(number) }
    public func underlyingDevices(of number: DeviceNumber) -> Set<DeviceNumber> { Sysfs.underlyingDevices(number) }
    public func usage(of path: FilePath) throws -> DeviceUsage { try DeviceUse.usage(of: path) }

    /// Found through /proc/PID/fd: an ordinary open is invisible to the O_EXCL probe, and a
    /// table load would not notice it either, yet the opener would keep reading and writing
    /// the disk beside the stack.
    public func openers(of number: DeviceNumber) -> [String] { DeviceUse.openers(of: number) }

    public func identity(of number: DeviceNumber, size: Bytes) -> DeviceIdentity? {
        (try? UdevContext())?.blockDevice(number).map { DeviceIdentity(udev: $0, size: size) }
    }

    public func blockDevices() -> [(node: String, number: DeviceNumber)] {
        guard let udev = try? UdevContext() else { return [] }
        return ((try? udev.blockDevices()) ?? []).compactMap { device in device.deviceNode.map { ($0, device.number) } }
    }

    @discardableResult
    public func trigger(_ number: DeviceNumber) -> Bool { UdevContext.trigger(number) }

    public func names(of number: DeviceNumber) -> [String] {
        var names = ["/dev/block/\(number)"]
        if let device = (try? UdevContext())?.blockDevice(number) {
            if let node = device.deviceNode { names.append(node) }
            names += (device.properties["DEVLINKS"] ?? "").split(separator: " ").map(String.init)
        }
        return names
    }

    public func hasLVMLabel(_ number: DeviceNumber) -> Bool {
        guard let handle = FileHandle(forReadingAtPath: "/dev/block/\(number)"),
              let data = try? handle.read(upToCount: 4 * 512) else { return false }
        try? handle.close()
        let bytes = [UInt8](data), label = Array("LABELONE".utf8)
        return (0..<4).contains { sector in
            bytes.count >= sector * 512 + 8 && Array(bytes[(sector * 512)..<(sector * 512 + 8)]) == label
        }
    }

    public func firstBytes(of number: DeviceNumber, count: Int) -> [UInt8]? {
        // Past the page cache: the stamp read at a stop, through the top device, and the one
        // read at the next build, from the disk, must both be what the disk holds.
        try? DeviceHead.read("/dev/block/\(number)", count: count)
    }

    public func overwrite(_ number: DeviceNumber, at offset: Bytes, with bytes: [UInt8]) throws {
        try DeviceHead.overwrite("/dev/block/\(number)", at: offset.rawValue, with: bytes)
    }

    public func updateInitramfs() throws {
        let tool = try InitramfsTool.installed { FileManager.default.isExecutableFile(atPath: $0) }
        let result = try ChildProcess.run(tool.executable, tool.arguments)
        guard result.status == 0 else {
            let said = result.stderr.split(separator: "\n").suffix(3).joined(separator: "; ")
            throw SnapstackError(.failed, "\(tool.commandLine) failed (exit \(result.status))", why: said.isEmpty ? "it said nothing" : said)
        }
    }

    public var initramfsCommand: String {
        ((try? InitramfsTool.installed { FileManager.default.isExecutableFile(atPath: $0) }) ?? .initramfsTools).commandLine
    }

    public func loops(backing file: String) throws -> [LoopDevice] { try Loop.find(backingFile: file) }
    public func allLoops() throws -> [LoopDevice] { try Loop.all() }
    public func attachLoop(file: FilePath, directIO: Bool) throws -> LoopDevice { try Loop.attach(file: file, directIO: directIO) }
    public func detachLoop(_ path: String) throws { _ = try Loop.detach(path) }
    public func refreshLoopCapacity(_ path: String) throws { try Loop.refreshCapacity(path) }
    public func loopUsesDirectIO(_ loop: LoopDevice) throws -> Bool { try Loop.usesDirectIO(loop) }

    public func createFile(_ path: FilePath, size: Bytes, preallocate: Bool, zeroFill: Bytes) throws {
        // Loop-backed files are overwritten block by block: on btrfs they must not copy on write.
        let noCopyOnWrite = fileSystem(of: path.removingLastComponent())?.needsNoCopyOnWrite == true
        try FileAllocation.create(path, size: size, preallocate: preallocate, zeroFill: zeroFill, noCopyOnWrite: noCopyOnWrite)
    }
    public func growFile(_ path: FilePath, to size: Bytes, preallocate: Bool, zeroFill: Bytes) throws {
        try FileAllocation.grow(path, to: size, preallocate: preallocate, zeroFill: zeroFill)
    }
    public func isFullyWritten(_ path: FilePath) throws -> Bool { try FileAllocation.isFullyWritten(path) }
    public func fileSystem(of directory: FilePath) -> FileSystemType? { try? FileSystemType(of: directory) }
    public func writeCache(of number: DeviceNumber) -> WriteCache? { try? WriteCache.of(number) }
    public func setWriteCache(_ mode: WriteCache, ofDeviceNamed name: String) throws {
        try WriteCache.set(mode, ofDeviceNamed: name)
    }
}
