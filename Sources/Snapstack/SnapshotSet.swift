import BlockIO
import DeviceMapper
import Foundation
import SnapstackErrors
internal import StateDatabase
import SystemPackage

/// How a snapshot set is taken.
public struct SnapshotOptions: Sendable {
    public enum Size: Sendable, Equatable {
        case bytes(Bytes)
        /// Per cent of each origin's size.
        case percent(Double)
    }
    /// COW space per snapshot.
    public var size: Size = .percent(10)
    /// A directory for store files (default: `<state>/stores`), or a block device (one-device sets only).
    public var store: String?
    /// The snapshot's name (default: the time, `YYYYMMDDTHHMMSS`).
    public var name: String?
    public var chunk: Bytes = SnapshotOptions.defaultChunk
    public static let defaultChunk = Bytes.kibibytes(4)
    /// A snapshot device that takes writes (`lvcreate -pw`); read-only by default (`-pr`).
    public var writable = false
    public init() {}
}

/// A snapshot set that was taken.
public struct SnapshotSetResult: Sendable {
    public var setID: Int64
    public var snapshots: [(device: String, name: String, path: String)]
    /// From the first suspend to the last resume.
    public var freezeMicroseconds: Int64
}

extension Orchestrator {
    /// The smallest COW store: a persistent store's header chunk, one metadata chunk and room
    /// for a few data chunks.
    static func minimumStoreSize(chunk: Bytes) -> Bytes { Bytes(chunk.rawValue * 8) }

    /// How much of a new store file, and of each growth of one, is written with zeros before
    /// the kernel gets it. dm-snapshot fills its store from the front, so the first this much
    /// copy-on-write data lands in blocks the file system has written already and overwrites in
    /// place (measured on ext4: 4 KiB-chunk copy-on-write at 2.3x the speed of reserved
    /// blocks, as fast as a store on a disk of its own). More would cost every snapshot a
    /// longer write before it is taken, for data that most backups never copy on write.
    static let storeZeroFill = Bytes.gibibytes(1)

    /// Takes one crash-consistent snapshot of every device in `names` at the same instant.
    ///
    /// Everything slow happens before the freeze: store files, loop devices, the snapshot
    /// devices with their tables loaded but inactive, the origins' snapshot-origin tables
    /// loaded, the era numbers read, the udev cookie made, and the snapshots of origins without
    /// other snapshots made live (they see every write until their origin's table swaps), every
    /// era started anew (so the change-tracking boundary is at most the few milliseconds to the
    /// freeze before the snapshot point: changes since a snapshot are a superset). Then every
    /// top device is suspended at the same time, one thread each (which freezes its
    /// filesystem), any snapshot of an origin with other snapshots is resumed, then all tops at
    /// the same time, each swapping in its snapshot-origin table. udev is waited for only after
    /// the last resume.
    public func snapshot(_ names: [String], options: SnapshotOptions = SnapshotOptions()) throws -> SnapshotSetResult {
        let plan = try planSnapshotSet(names, options: options)
        var (set, records) = try recordIntent(plan)
        try reached(.snapshotRecorded)

        var run = SnapshotRun(plan: plan, records: records)
        do {
            for step in plan.steps { try execute(step, &run) }
        } catch {
            throw rollingBack(error, records.enumerated().map { index, record in
                ("undo the snapshot of \(plan.members[index].device.name)", {
                    try self.removeSnapshotArtifacts(record, of: plan.members[index].device)
                    try self.database.deleteSnapshot(id: record.id)
                    try self.restoreTopTable(plan.members[index].device)
                })
            })
        }
        for index in records.indices {
            records[index].state = .active
            records[index].era = run.eras[index]
            try database.update(records[index])
        }
        set.state = .complete
        set.freezeMicroseconds = run.freezeMicroseconds
        try database.updateSet(set)
        event("snapshot", names.joined(separator: ","), "set \(set.id!) \"\(plan.name)\" taken; freeze window \(run.freezeMicroseconds) us")
        return SnapshotSetResult(setID: set.id!, snapshots: plan.members.map { ($0.device.name, plan.name, $0.snapshot.devicePath) },
                                 freezeMicroseconds: run.freezeMicroseconds)
    }

    /// What running a plan has learnt so far.
    struct SnapshotRun {
        var plan: SnapshotSetPlan
        var records: [SnapshotRecord]
        var cows: [DeviceReference?]
        var eras: [Int64?]
        var freezeMicroseconds: Int64 = 0

        init(plan: SnapshotSetPlan, records: [SnapshotRecord]) {
            self.plan = plan
            self.records = records
            cows = Array(repeating: nil, count: plan.members.count)
            eras = Array(repeating: nil, count: plan.members.count)
        }
    }

    /// The set and its snapshots in the database as `creating`: what reconcile undoes should
    /// the process die before they are marked complete.
    private func recordIntent(_ plan: SnapshotSetPlan) throws -> (SnapshotSetRecord, [SnapshotRecord]) {
        let now = Date()
        let set = try database.insertSet(SnapshotSetRecord(id: nil, createdAt: now, state: .creating, freezeMicroseconds: nil))
        var records: [SnapshotRecord] = []
        for member in plan.members {
            let id = SnapshotRecord.newID()
            let path: String
            switch plan.storeLocation {
            case .directory(let directory): path = directory.appending("\(member.device.id)-\(id).cow").string
            case .device(let device): path = device
            case .volumeGroup(let group): path = group.name + "/" + Self.storeVolumeName(deviceID: member.device.id, snapshotID: id)
            }
            let record = SnapshotRecord(
                id: id, setID: set.id!, deviceID: member.device.id, name: plan.name, state: .creating,
                storeKind: plan.storeLocation.storeKind, storePath: path,
                storeSizeBytes: Int64(member.storeSize.rawValue), chunkSectors: Int(plan.chunk.rawValue), era: nil, createdAt: now,
                writable: plan.writable)
            try database.insert(record)
            records.append(record)
        }
        return (set, records)
    }

    private func execute(_ step: SnapshotStep, _ run: inout SnapshotRun) throws {
        let members = run.plan.members
        switch step {
        case .createStoreFile(let index):
            let path = FilePath(run.records[index].storePath)
            try failing("cannot create the COW store \(path)") {
                try host.createFile(path, size: members[index].storeSize, preallocate: true,
                                    zeroFill: zeroFill(Self.storeZeroFill, for: path))
            }
        case .createStoreVolume(let index):
            let (group, name) = try Self.volumeParts(run.records[index].storePath)
            try failing("cannot create the COW store \(group)/\(name)") {
                try volumes.createVolume(group: group, name: name, size: members[index].storeSize, tag: Self.volumeTag)
            }
        case .attachStore(let index):
            run.cows[index] = try attachStore(run.records[index])
        case .prepareSnapshot(let index):
            let member = members[index]
            guard let cow = run.cows[index] else { preconditionFailure("a plan attaches a store before its snapshot") }
            try failing("cannot prepare \(member.snapshot.devicePath)") {
                try dm.createInactive(member.snapshot, uuid: try Layout.uuid(deviceID: member.device.id, .snapshot(id: run.records[index].id)),
                                      table: try Table(length: member.length,
                                                       .snapshot(Snapshot(origin: .number(member.realNumber), cow: cow,
                                                                          chunkSize: run.plan.chunk))),
                                      readOnly: !run.records[index].writable)
            }
        case .loadOriginTable(let index):
            try failing("cannot prepare \(members[index].top.devicePath)") {
                try dm.load(members[index].top, table: try members[index].originTable)
            }
        case .readEras:
            // Should anything else start an era between this read and the checkpoint, the
            // recorded era is older than the truth: changes since the snapshot are then a
            // superset, never short.
            for (index, member) in members.enumerated() where member.tracksChanges {
                try failing("cannot read the era of \(member.device.name)") {
                    if case .era(let status) = try dm.status(member.real).first?.status { run.eras[index] = Int64(status.currentEra) + 1 }
                }
            }
        case .activateBeforeFreeze(let indices):
            // A snapshot must be live before its origin's snapshot-origin table is, or writes
            // in between would not be copied (dm-snap skips inactive snapshots). Where the
            // origin has no live snapshot-origin yet, its writes still go straight to the -real
            // layer through the top's linear table, past the snapshot, which reads them there as
            // it reads every chunk it has not copied: the snapshot shows the origin as it is
            // until the top swaps tables, which happens inside the freeze. So these snapshots go
            // live before the window, and the window does not grow with them. udev is waited for
            // here, so that its probes of the new devices do not share the CPUs with the freeze.
            try failing("cannot take the snapshot set") {
                try dm.withUdevTransaction { udev in
                    for index in indices { try dm.resume(members[index].snapshot, transaction: udev) }
                }
            }
        case .freeze(let checkpoint, let inside):
            try failing("cannot take the snapshot set") {
                try dm.withUdevTransaction { udev in
                    dm.prepare(udev)
                    // Every era starts a new era just before the freeze, all at the same time.
                    // A checkpoint waits for an era metadata commit (tens of milliseconds on a
                    // file system: most of a one-device window when it was inside it). Writes
                    // between it and the freeze are in the snapshot and counted in the new era
                    // too: an incremental after this snapshot reads them again, so it is a
                    // superset of the changes, never short.
                    try dm.messageTogether(checkpoint.map { (device: members[$0].real, text: EraMessage.checkpoint.rawValue) })
                    try reached(.snapshotCheckpointed)
                    // The freeze window: every top is suspended at the same time, each from a
                    // thread of its own, and resumed the same way, swapping in its
                    // snapshot-origin table.
                    let (_, window) = try dm.withSuspendedTogether(members.map(\.top)) {
                        try reached(.snapshotSuspended)
                        // Where the snapshot-origin table is live already, resuming a snapshot
                        // makes it copy from that instant on (the kernel suspends the origin
                        // internally for it): only inside the freeze is that the set's instant.
                        for index in inside { try dm.resume(members[index].snapshot, transaction: udev) }
                    }
                    run.freezeMicroseconds = Int64(window.components.seconds * 1_000_000
                                                   + window.components.attoseconds / 1_000_000_000_000)
                }
            }
        case .reached(let point):
            try reached(point)
        }
    }

    static func timestampName(_ date: Date = Date()) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMdd'T'HHmmss"
        return formatter.string(from: date)
    }

    enum StoreLocation: Sendable {
        case directory(FilePath)
        case device(String)
        /// A new logical volume per snapshot in this volume group.
        case volumeGroup(VolumeGroupFacts)

        var storeKind: StoreKind {
            switch self {
            case .directory: .file
            case .device: .device
            case .volumeGroup: .volume
            }
        }
    }

    /// The logical volume holding a snapshot's store: named by ids, as store files are, since
    /// LVM allows fewer characters in names than snapstack does.
    static func storeVolumeName(deviceID: String, snapshotID: String) -> String { "snapstack-\(deviceID)-\(snapshotID)" }

    /// The tag of every logical volume snapstack makes: what the orphan sweep looks for.
    static let volumeTag = "snapstack"

    /// Where COW data goes, refused when it lives on a device of the set: copy-on-write data
    /// written through the origin it protects would recurse into the snapshot. An argument
    /// without a `/` names an LVM volume group (`./name` for a directory here).
    func resolveStore(_ argument: String?, memberCount: Int, memberDevices: Set<DeviceNumber>) throws -> StoreLocation {
        if let argument, !argument.contains("/") {
            return .volumeGroup(try volumeGroup(argument, for: "the store", avoiding: memberDevices,
                                                otherwise: "a directory as ./\(argument.replacingNewlines)"))
        }
        let path = argument ?? storeDirectory.string
        if argument == nil {
            try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true,
                                                     attributes: [.posixPermissions: 0o700])
        }
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw SnapstackError(.notFound, "no store \(path.replacingNewlines)", why: "\(Errno(rawValue: errno))",
                                 remedy: "name an existing directory or block device with --store")
        }
        let location: StoreLocation
        let onDevices: Set<DeviceNumber>
        switch st.st_mode & S_IFMT {
        case S_IFDIR:
            location = .directory(FilePath(path))
            onDevices = host.underlyingDevices(of: DeviceNumber(st.st_dev))
        case S_IFBLK:
            guard memberCount == 1 else {
                throw SnapstackError(.invalidArgument, "a block device can be the store of one snapshot only",
                                     remedy: "give a directory with --store for a set of \(memberCount) devices")
            }
            var usage = DeviceUsage()
            try failing("cannot tell whether \(path) is in use") { usage = try host.usage(of: FilePath(path)) }
            if let reason = usage.reason {
                throw SnapstackError(.refused, "cannot use \(path) as a store", why: reason)
            }
            location = .device(path)
            onDevices = host.underlyingDevices(of: DeviceNumber(st.st_rdev))
        default:
            throw SnapstackError(.invalidArgument, "\(path.replacingNewlines) is neither a directory nor a block device")
        }
        if !onDevices.isDisjoint(with: memberDevices) {
            throw SnapstackError(.refused, "the store \(path) is on a device of the snapshot set",
                                 why: "copy-on-write data written through the origin it protects would recurse",
                                 remedy: "put the store on another disk with --store")
        }
        return location
    }

    /// The COW device of a snapshot, its loop device attached if it is a file.
    func attachStore(_ record: SnapshotRecord) throws -> DeviceReference {
        switch record.storeKind {
        case .file: return .number(try attach(FilePath(record.storePath)).number)
        case .device: return try DeviceReference.checkedPath(record.storePath)
        case .volume:
            let (group, name) = try Self.volumeParts(record.storePath)
            return try DeviceReference.checkedPath(try activeVolumePath(group: group, name: name))
        }
    }

    /// Removes a snapshot's device, loop device and store file; idempotent.
    func removeSnapshotArtifacts(_ record: SnapshotRecord, of device: DeviceRecord) throws {
        try failing("cannot remove \(device.name)-\(record.name)") {
            try dm.remove(try Layout.snapshotName(device.name, record.name))
            switch record.storeKind {
            case .file:
                try detach(FilePath(record.storePath))
                try? FileManager.default.removeItem(atPath: record.storePath)
            case .volume:
                let (group, name) = try Self.volumeParts(record.storePath)
                try volumes.removeVolume(group: group, name: name)
            case .device:
                break
            }
        }
    }

    /// `vg/lv` apart.
    static func volumeParts(_ storePath: String) throws -> (group: String, name: String) {
        let parts = storePath.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2, LVMNames.isValid(parts[0]), LVMNames.isValid(parts[1]) else {
            throw SnapstackError(.stateUnreadable, "the recorded store volume \(storePath.replacingNewlines) is not vg/lv")
        }
        return (parts[0], parts[1])
    }

    /// Puts the top table back to what the remaining snapshots need, clearing any inactive
    /// table left by a preload; idempotent.
    func restoreTopTable(_ device: DeviceRecord) throws {
        let top = try device.topName()
        guard let info = try dm.info(top) else { return }
        // A live device that bypasses its stack carries another program's table: not ours to
        // touch; adopting it again (which records the interruption) puts ours back.
        if case .bypassed = try trackingCheck(device) { return }
        if info.hasInactiveTable { try dm.clearInactive(top) }
        let snapshots = try database.snapshots(deviceID: device.id)
        let table = try desiredTopTable(device, real: try number(of: try Layout.realName(device.name)), snapshots: snapshots,
                                        cow: { try self.attachStore($0) })
        try ensureLiveTable(top, table)
    }
}
