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
    /// An adopted device's clone layer, carrying the table the live device had: created, or
    /// reloaded with a new one after a foreign reload (when the live device bypasses it).
    case createClone(DMName)
    /// An adopted live device reloaded to map through `-real`: the one suspend and resume
    /// that switches it over, refused if its table changed since it was recorded.
    case reloadLive(DMName)
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
        case .createClone(let name): "create-clone \(name)"
        case .reloadLive(let name): "reload-live \(name)"
        case .reached(let point): "failpoint \(point.rawValue)"
        }
    }
}

enum StackBuild {
    /// The stack of `device`, bottom up. `newMetadata`: a first protect, whose era metadata does
    /// not exist yet; otherwise the recorded metadata is attached as it is. `withSnapshots`:
    /// the recorded snapshots come back between `-real` and the top.
    /// An adopted device's stack starts with its clone and ends with its live device, which
    /// needs no markers: LVM and udev know it already.
    static func plan(_ device: DeviceRecord, newMetadata: Bool, withSnapshots: Bool) throws -> [StackStep] {
        var steps: [StackStep] = []
        if device.isAdopted { steps.append(.createClone(try Layout.cloneName(device.name))) }
        if let blockSectors = device.cbtBlockSectors, let path = device.eraMetadataPath {
            if newMetadata {
                let blocks = UInt64(device.sizeBytes) / Sectors.size / UInt64(blockSectors) + 1
                steps.append(.createMetadata(path: path, size: Orchestrator.metadataSize(blocks: blocks)))
            }
            steps += [.attachMetadata(path: path), .reached(.protectMetadataAttached)]
        }
        steps += [.createReal(try Layout.realName(device.name)), .reached(.protectRealCreated)]
        if withSnapshots { steps.append(.activateSnapshots) }
        if device.isAdopted {
            steps += [.reloadLive(try device.topName()), .reached(.protectTopCreated)]
        } else {
            steps += [.createTop(try device.topName()), .publishMember, .reached(.protectTopCreated)]
        }
        return steps
    }
}

extension Orchestrator {
    /// The one executor of stack plans, over the disk at `source`.
    func run(_ steps: [StackStep], for device: DeviceRecord, source: DeviceNumber) throws {
        let size = Sectors(UInt64(device.sizeBytes) / Sectors.size)
        var metadataLoop: DeviceNumber?
        // An adopted device's layers stand on its clone.
        var source = source
        for step in steps {
            switch step {
            case .createMetadata(let path, let metadataSize):
                if let (group, name) = device.eraMetadataVolume {
                    // -Zy: LVM zeroes the volume's start, where dm-era looks for a superblock.
                    try failing("cannot create the change-tracking metadata volume \(path)") {
                        try volumes.createVolume(group: group, name: name, size: metadataSize, tag: Self.volumeTag)
                    }
                    break
                }
                try failing("cannot create the change-tracking metadata \(path)") {
                    try FileManager.default.createDirectory(atPath: metadataDirectory.string, withIntermediateDirectories: true)
                    try checkMetadataFileSystem(metadataDirectory)
                    // dm-era fails the origin's write when it cannot commit, so no block of the
                    // file may need allocating later: written whole (a few MiB) where the file
                    // system overwrites in place (every commit, which a cold write waits for,
                    // then touches no file system metadata), reserved elsewhere (btrfs, where
                    // the file is made without copy-on-write; tmpfs).
                    let zeros = zeroFill(metadataSize, for: FilePath(path))
                    try host.createFile(FilePath(path), size: metadataSize, preallocate: zeros < metadataSize, zeroFill: zeros)
                }
            case .attachMetadata(let path):
                if let (group, name) = device.eraMetadataVolume {
                    let volume = try activeVolumePath(group: group, name: name)
                    try failing("cannot open the change-tracking metadata volume \(path)") {
                        metadataLoop = try host.facts(of: FilePath(volume)).number
                    }
                } else {
                    metadataLoop = try attach(FilePath(path)).number
                }
            case .createReal(let real):
                guard try dm.info(real) == nil || device.isAdopted else { break }
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
                    if try dm.info(real) != nil {
                        // Adopted again at a new size: dm-era resizes its metadata on resume.
                        do {
                            try ensureLiveTable(real, table)
                        } catch {
                            // A resume whose commit failed leaves the era swapped in and the
                            // layer suspended: bypassed, never left so.
                            try bypassIfEraFailed(device)
                            throw error
                        }
                    } else {
                        try dm.create(real, uuid: try Layout.uuid(deviceID: device.id, .real), table: table, udevFlags: .hiddenLayer)
                    }
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
            case .createClone(let clone):
                source = try ensureClone(clone, of: device)
            case .reloadLive(let live):
                try reloadLive(live, of: device)
            case .reached(let point):
                try reached(point)
            }
        }
    }
}

extension Orchestrator {
    /// Creates `clone` with the table `device` recorded for its live device, or reloads it
    /// with that table; returns its number.
    func ensureClone(_ clone: DMName, of device: DeviceRecord) throws -> DeviceNumber {
        guard let text = device.adoptedTable else {
            throw SnapstackError(.failed, "cannot build the stack of \(device.name)", why: "the table of its live device is not recorded")
        }
        let table = try Table(parsing: text)
        try failing("cannot create \(clone.devicePath)") {
            if try dm.info(clone) != nil {
                // Reloading the clone under a live device that maps through it would change
                // the data under its filesystem; a foreign reload is what lets it change.
                if case .inPlace = try trackingCheck(device), try dm.table(clone) != table {
                    throw SnapstackError(.failed, "\(clone.devicePath) does not carry the recorded table of \(device.name)",
                                         remedy: "run `snapstack reconcile`")
                }
                try ensureLiveTable(clone, table)
            } else {
                try dm.create(clone, uuid: try Layout.uuid(deviceID: device.id, .clone), table: table, udevFlags: .hiddenLayer)
            }
        }
        return try number(of: clone)
    }

    /// Switches the live device over to the stack: its table becomes what its snapshots need
    /// over `-real`. Refused, changing nothing, if its table is not the one recorded (another
    /// program reloaded it meanwhile).
    func reloadLive(_ live: DMName, of device: DeviceRecord) throws {
        try withVolumeGroupLock(device) { try reloadLiveLocked(live, of: device) }
    }

    private func reloadLiveLocked(_ live: DMName, of device: DeviceRecord) throws {
        let real = try number(of: try Layout.realName(device.name))
        let current = try dm.table(live)
        if Adoption.mapsThroughStack(current, real: real) { return }
        guard current.description == device.adoptedTable else {
            throw SnapstackError(.refused, "cannot adopt \(live.devicePath)", why: "its table changed while it was being adopted (an LVM command?)",
                                 remedy: "try again")
        }
        let table = try desiredTopTable(device, real: real, snapshots: try database.snapshots(deviceID: device.id),
                                        cow: { try self.attachStore($0) })
        try failing("cannot switch \(live.devicePath) over to its change tracking") { try ensureLiveTable(live, table) }
    }

    /// Loads back the table an adopted device had, from its clone (the same table, and the
    /// one that maps its data now), when it still maps through the stack; idempotent.
    func restoreLive(_ device: DeviceRecord) throws {
        // Only a live device that maps through the stack needs its table back, and LVM's lock
        // for that: an undo after LVM's lock could not be had has nothing to give back.
        guard try livesOnStack(device) else { return }
        try withVolumeGroupLock(device) { try restoreLiveLocked(device) }
    }

    private func livesOnStack(_ device: DeviceRecord) throws -> Bool {
        let live = try device.topName()
        guard try dm.info(live) != nil, let real = try dm.info(try Layout.realName(device.name)) else { return false }
        return Adoption.mapsThroughStack(try dm.table(live), real: real.number)
    }

    private func restoreLiveLocked(_ device: DeviceRecord) throws {
        let live = try device.topName()
        guard try livesOnStack(device) else { return }
        let clone = try Layout.cloneName(device.name)
        let table = try dm.info(clone) != nil ? try dm.table(clone) : try Table(parsing: device.adoptedTable ?? "")
        try failing("cannot give \(live.devicePath) its own table back") { try ensureLiveTable(live, table) }
    }
}
