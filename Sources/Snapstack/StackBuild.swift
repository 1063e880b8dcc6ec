import BlockIO
import DeviceMapper
import Foundation
import SnapstackErrors
internal import StateDatabase
import SystemPackage

/// What building a protected device's stack does, as a value: `protect` plans a new stack with
/// new era metadata; reconcile and hotplug plan the same stack again over the disk, keeping the
/// metadata so that change tracking continues, and bring its snapshots back before the top
/// opens to I/O. Every step is idempotent (a device already there, a file already attached are
/// done), so a plan that a crash cut short finishes when run again; `Teardown.removeStack`
/// undoes it.
enum StackStep: Equatable, Sendable, CustomStringConvertible {
    /// A new era metadata file of `size`, its start zeroed: dm-era formats a zeroed superblock.
    case createMetadata(path: String, size: Bytes)
    /// The metadata file's loop device (one already attached to it is reused).
    case attachMetadata(path: String)
    /// The hidden `-real` layer over the disk: era on the metadata's loop device with the
    /// tracking block, or linear without change tracking.
    case createReal(DMName)
    /// The recorded active snapshots loaded again over `-real`, before the top exists: after
    /// a reboot no write may reach the origin before their copy-on-write is back.
    case activateSnapshots
    /// The top device: linear over `-real`, or snapshot-origin when snapshots are active.
    case createTop(DMName)
    /// The udev markers that hide the disk (a member of a stack) from everything but us.
    case publishMember
    /// A failpoint: what a crash here leaves is what reconcile must repair.
    case reached(Failpoint)

    var description: String {
        switch self {
        case .createMetadata(let path, let size): "create-metadata \(path) \(size.rawValue)"
        case .attachMetadata(let path): "attach-metadata \(path)"
        case .createReal(let name): "create-real \(name)"
        case .activateSnapshots: "activate-snapshots"
        case .createTop(let name): "create-top \(name)"
        case .publishMember: "publish-member"
        case .reached(let point): "failpoint \(point.rawValue)"
        }
    }
}

enum StackBuild {
    /// The stack of `device`, bottom up. `newMetadata`: a first protect, whose era metadata does
    /// not exist yet; otherwise the recorded metadata is attached as it is. `withSnapshots`:
    /// the recorded snapshots come back between `-real` and the top.
    static func plan(_ device: DeviceRecord, newMetadata: Bool, withSnapshots: Bool) throws -> [StackStep] {
        var steps: [StackStep] = []
        if let blockSectors = device.cbtBlockSectors, let path = device.eraMetadataPath {
            if newMetadata {
                let blocks = UInt64(device.sizeBytes) / Sectors.size / UInt64(blockSectors) + 1
                steps.append(.createMetadata(path: path, size: Orchestrator.metadataSize(blocks: blocks)))
            }
            steps += [.attachMetadata(path: path), .reached(.protectMetadataAttached)]
        }
        steps += [.createReal(try Layout.realName(device.name)), .reached(.protectRealCreated)]
        if withSnapshots { steps.append(.activateSnapshots) }
        steps += [.createTop(try Layout.topName(device.name)), .publishMember, .reached(.protectTopCreated)]
        return steps
    }
}

extension Orchestrator {
    /// The one executor of stack plans, over the disk at `source`.
    func run(_ steps: [StackStep], for device: DeviceRecord, source: DeviceNumber) throws {
        let size = Sectors(UInt64(device.sizeBytes) / Sectors.size)
        var metadataLoop: DeviceNumber?
        for step in steps {
            switch step {
            case .createMetadata(let path, let metadataSize):
                try failing("cannot create the change-tracking metadata \(path)") {
                    try FileManager.default.createDirectory(atPath: metadataDirectory.string, withIntermediateDirectories: true)
                    // Written whole (a few MiB): every era commit, which a cold write waits
                    // for, then overwrites blocks in place instead of allocating them.
                    try host.createFile(FilePath(path), size: metadataSize, preallocate: false,
                                        zeroFill: zeroFill(metadataSize, for: FilePath(path)))
                }
            case .attachMetadata(let path):
                metadataLoop = try attach(FilePath(path)).number
            case .createReal(let real):
                guard try dm.info(real) == nil else { break }
                let table: Table
                if let blockSectors = device.cbtBlockSectors, device.eraMetadataPath != nil {
                    guard let metadataLoop else {
                        throw SnapstackError(.failed, "cannot create \(real.devicePath)", why: "its era metadata is not attached")
                    }
                    table = try Table(length: size, .era(Era(metadata: .number(metadataLoop), origin: .number(source),
                                                             blockSize: Sectors(UInt64(blockSectors)))))
                } else {
                    table = try Table(length: size, .linear(Linear(device: .number(source))))
                }
                try failing("cannot create \(real.devicePath)") {
                    try dm.create(real, uuid: try Layout.uuid(deviceID: device.id, .real), table: table, udevFlags: .hiddenLayer)
                }
            case .activateSnapshots:
                try activateSnapshots(of: device)
            case .createTop(let top):
                guard try dm.info(top) == nil else { break }
                let real = try number(of: try Layout.realName(device.name))
                let snapshots = try database.snapshots(deviceID: device.id).filter { $0.state == .active }
                let table = snapshots.isEmpty
                    ? try Table(length: size, .linear(Linear(device: .number(real))))
                    : try Table(length: size, .snapshotOrigin(SnapshotOrigin(origin: .number(real))))
                try failing("cannot create \(top.devicePath)") {
                    try dm.create(top, uuid: try Layout.uuid(deviceID: device.id, .top), table: table)
                }
            case .publishMember:
                publishMember(device, source: source)
            case .reached(let point):
                try reached(point)
            }
        }
    }
}
