import BlockIO
import DeviceMapper
import Foundation
import Snapstack
import SystemPackage

extension SimulatedKernel: HostDevices {
    public func facts(of path: FilePath) throws -> BlockDeviceFacts {
        try state.withLock { state in
            guard let number = state.number(ofPath: path.string), let size = state.size(of: number) else {
                throw BlockIOError(path: path, reason: .system(operation: "open", .noSuchFileOrDirectory))
            }
            return BlockDeviceFacts(path: path, number: number, size: size,
                                    logicalBlockSize: .init(512), physicalBlockSize: .init(4096))
        }
    }

    public func dmUUID(of number: DeviceNumber) -> String? {
        state.withLock { state in state.devices.values.first { $0.number == number }?.uuid }
    }

    public func underlyingDevices(of number: DeviceNumber) -> Set<DeviceNumber> {
        state.withLock { state in
            var result: Set<DeviceNumber> = [number]
            var queue = [number]
            while let next = queue.popLast() {
                guard let device = state.devices.values.first(where: { $0.number == next }) else { continue }
                for reference in device.live?.referencedDevices ?? [] where result.insert(reference).inserted { queue.append(reference) }
            }
            return result
        }
    }

    public func openers(of number: DeviceNumber) -> [String] {
        state.withLock { state in state.disks.values.first { $0.number == number }?.openers ?? [] }
    }

    public func usage(of path: FilePath) throws -> DeviceUsage {
        state.withLock { $0.disks[path.string]?.usage ?? $0.pathUsage[path.string] ?? DeviceUsage() }
    }

    public func identity(of number: DeviceNumber, size: Bytes) -> DeviceIdentity? {
        state.withLock { state in state.disks.values.first { $0.number == number }.map { var i = $0.identity; i.size = size; return i } }
    }

    public func blockDevices() -> [(node: String, number: DeviceNumber)] {
        state.withLock { state in state.disks.map { ($0.key, $0.value.number) }.sorted { $0.node < $1.node } }
    }

    @discardableResult
    public func trigger(_ number: DeviceNumber) -> Bool {
        state.withLock { state in state.disks.values.contains { $0.number == number } }
    }

    public func overwrite(_ number: DeviceNumber, at offset: Bytes, with bytes: [UInt8]) throws {
        guard offset == .zero else { throw BlockIOError(path: FilePath("/dev/block/\(number)"), reason: .system(operation: "write", .invalidArgument)) }
        state.withLock { state in
            for (path, disk) in state.disks where disk.number == number { state.disks[path]?.head = bytes + [UInt8](repeating: 0, count: 4096 - bytes.count) }
        }
    }

    public var initramfsCommand: String { "update-initramfs -u -k all" }

    public func updateInitramfs() throws {
        try state.withLock { state in
            guard !state.failInitramfs else { throw SimulatedFault(operation: "update-initramfs: E: mkinitramfs failure") }
            state.initramfsUpdates += 1
        }
    }

    /// A directory of the test's own: an lvm.conf written there is the host's LVM configuration.
    public var lvmSystemDirectory: String { runtimeDirectory + "/lvm" }
    public var lvmLockDirectory: String { runtimeDirectory + "/lock/lvm" }

    public func names(of number: DeviceNumber) -> [String] {
        state.withLock { state in
            ["/dev/block/\(number)"] + state.disks.filter { $0.value.number == number }.flatMap { [$0.key] + $0.value.links }
        }
    }

    public func firstBytes(of number: DeviceNumber, count: Int) -> [UInt8]? {
        // Through a stack, the disk at its bottom along the data path (an era layer's origin,
        // not its metadata): every layer maps sector 0 to the disk's.
        state.withLock { state in
            var current = number
            while let device = state.devices.values.first(where: { $0.number == current }), let line = device.live?.lines.first {
                let next: DeviceReference
                switch line.target {
                case .linear(let linear): next = linear.device
                case .era(let era): next = era.origin
                case .snapshotOrigin(let origin): next = origin.origin
                case .snapshot(let snapshot): next = snapshot.origin
                case .snapshotMerge(let merge): next = merge.origin
                case .striped(let striped): next = striped.stripes[0].device
                default: return nil
                }
                guard case .number(let below) = next else { return nil }
                current = below
            }
            return state.disks.values.first { $0.number == current }.map { disk in
                Array((disk.head + [UInt8](repeating: 0, count: max(0, count - disk.head.count))).prefix(count))
            }
        }
    }

    public func hasLVMLabel(_ number: DeviceNumber) -> Bool {
        state.withLock { state in state.disks.values.contains { $0.number == number && $0.lvmLabel } }
    }

    // MARK: Loop devices

    func loopDevice(_ index: Int, _ loop: Loop) -> LoopDevice {
        LoopDevice(path: "/dev/loop\(index)", number: DeviceNumber(major: 7, minor: UInt32(index)), backingFile: loop.file)
    }

    /// A loop device detached while held still shows its file, as in sysfs.
    public func loops(backing file: String) throws -> [LoopDevice] {
        state.withLock { state in
            state.loops.filter { $0.value.file == file }.sorted { $0.key < $1.key }.map { loopDevice($0.key, $0.value) }
        }
    }

    public func allLoops() throws -> [LoopDevice] {
        state.withLock { state in state.loops.sorted { $0.key < $1.key }.map { loopDevice($0.key, $0.value) } }
    }

    public func attachLoop(file: FilePath, directIO: Bool) throws -> LoopDevice {
        try change("attach \(file)")
        let size = try fileSize(file)
        return state.withLock { state in
            let index = (0...).first { state.loops[$0] == nil }!
            let loop = Loop(file: file.string, directIO: directIO, size: size)
            state.loops[index] = loop
            return loopDevice(index, loop)
        }
    }

    public func detachLoop(_ path: String) throws {
        try change("detach \(path)")
        state.withLock { state in
            guard path.hasPrefix("/dev/loop"), let index = Int(path.dropFirst("/dev/loop".count)) else { return }
            state.loops[index]?.autoclear = true
            state.clearReleasedLoops()
        }
    }

    public func refreshLoopCapacity(_ path: String) throws {
        try change("refresh \(path)")
        guard let index = Int(path.dropFirst("/dev/loop".count)),
              let file = state.withLock({ $0.loops[index]?.file }) else { return }
        let size = try fileSize(FilePath(file))
        state.withLock { $0.loops[index]?.size = size }
    }

    public func loopUsesDirectIO(_ loop: LoopDevice) throws -> Bool {
        state.withLock { $0.loops[Int(loop.number.minor)]?.directIO ?? false }
    }

    // MARK: Files: real sparse files, so that the orchestrator's own file handling is real.

    func fileSize(_ path: FilePath) throws -> Bytes {
        let attributes = try FileManager.default.attributesOfItem(atPath: path.string)
        return Bytes((attributes[.size] as? NSNumber)?.uint64Value ?? 0)
    }

    public func createFile(_ path: FilePath, size: Bytes, preallocate: Bool, zeroFill: Bytes) throws {
        try change("create file \(path)")
        guard FileManager.default.createFile(atPath: path.string, contents: nil, attributes: [.posixPermissions: 0o600]),
              truncate(path.string, off_t(size.rawValue)) == 0 else {
            throw SimulatedFault(operation: "create file \(path)")
        }
        if preallocate { state.withLock { _ = $0.preallocatedFiles.insert(path.string) } }
    }

    public func growFile(_ path: FilePath, to size: Bytes, preallocate: Bool, zeroFill: Bytes) throws {
        try change("grow file \(path)")
        guard truncate(path.string, off_t(size.rawValue)) == 0 else { throw SimulatedFault(operation: "grow file \(path)") }
    }

    public func isFullyWritten(_ path: FilePath) throws -> Bool { false }
    public func fileSystem(of directory: FilePath) -> FileSystemType? { state.withLock { $0.fileSystem } }
    public func writeCache(of number: DeviceNumber) -> WriteCache? { nil }
    public func setWriteCache(_ mode: WriteCache, ofDeviceNamed name: String) throws {}
}
