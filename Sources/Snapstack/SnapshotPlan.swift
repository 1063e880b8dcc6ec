import BlockIO
import DeviceMapper
import Foundation
import SnapstackErrors
internal import StateDatabase
import SystemPackage

/// A snapshot set as decided before anything changes: every member checked and sized, the COW
/// stores' location resolved, and what each member's top table already is. `steps` is the
/// order of the changes, a pure function of this value; `Orchestrator.snapshot` records the
/// intent, runs them, and undoes them on error.
struct SnapshotSetPlan: Sendable {
    struct Member: Sendable {
        var device: DeviceRecord
        var top: DMName
        var real: DMName
        var snapshot: DMName
        var realNumber: DeviceNumber
        /// COW space for this member's snapshot, in whole chunks.
        var storeSize: Bytes
        /// The top's snapshot-origin table is live already (the origin has other snapshots):
        /// its new snapshot goes live inside the freeze, and the top keeps its table.
        var originLive: Bool

        /// What its `-real` layer does (planned only over an era that works, or a linear one).
        var tracking: TrackingLayer? = nil
        /// Whether its `-real` layer records writes: a checkpoint starts the snapshot's era.
        var tracksChanges: Bool { device.cbtBlockSectors != nil && tracking == .era }
        var length: Sectors { Sectors(UInt64(device.sizeBytes) / Sectors.size) }
        var originTable: Table {
            get throws { try Table(length: length, .snapshotOrigin(SnapshotOrigin(origin: .number(realNumber)))) }
        }
    }

    var name: String
    var chunk: Sectors
    /// Whether the snapshot devices take writes.
    var writable = false
    var members: [Member]
    var storeLocation: Orchestrator.StoreLocation

    var steps: [SnapshotStep] {
        var steps: [SnapshotStep] = []
        for index in members.indices {
            switch storeLocation {
            case .directory: steps.append(.createStoreFile(member: index))
            case .volumeGroup: steps.append(.createStoreVolume(member: index))
            case .device: break
            }
            steps.append(.attachStore(member: index))
        }
        steps.append(.reached(.snapshotStoreAttached))
        for (index, member) in members.enumerated() {
            steps.append(.prepareSnapshot(member: index))
            if !member.originLive { steps.append(.loadOriginTable(member: index)) }
        }
        steps.append(.reached(.snapshotPreloaded))
        steps.append(.readEras)
        steps.append(.activateBeforeFreeze(members: members.indices.filter { !members[$0].originLive }))
        steps.append(.reached(.snapshotActivated))
        steps.append(.freeze(checkpoint: members.indices.filter { members[$0].tracksChanges },
                             activateInside: members.indices.filter { members[$0].originLive }))
        steps.append(.reached(.snapshotResumed))
        return steps
    }
}

/// One change of taking a snapshot set; members are indices into the plan's members.
enum SnapshotStep: Equatable, Sendable, CustomStringConvertible {
    /// The member's store file, written with zeros at its start (see `storeZeroFill`).
    case createStoreFile(member: Int)
    /// The member's store volume, tagged as snapstack's, its start zeroed by LVM.
    case createStoreVolume(member: Int)
    /// The store's loop device (a file) or the store device itself.
    case attachStore(member: Int)
    /// The snapshot device with its table loaded, inactive.
    case prepareSnapshot(member: Int)
    /// The top's snapshot-origin table, loaded inactive, swapped in by the freeze's resume.
    case loadOriginTable(member: Int)
    /// The era each snapshot begins: the checkpoint in the freeze starts exactly the next one.
    case readEras
    /// Snapshots whose origin has no live snapshot-origin go live before the freeze: until the
    /// top swaps tables inside it, writes reach the -real layer past them, where they read.
    case activateBeforeFreeze(members: [Int])
    /// New eras for `checkpoint`, every top suspended at once, snapshots of origins with a
    /// live snapshot-origin resumed, every top resumed at once swapping in its loaded table.
    case freeze(checkpoint: [Int], activateInside: [Int])
    /// A failpoint: what a crash here leaves is what reconcile must repair.
    case reached(Failpoint)

    var description: String {
        switch self {
        case .createStoreFile(let member): "create-store-file \(member)"
        case .createStoreVolume(let member): "create-store-volume \(member)"
        case .attachStore(let member): "attach-store \(member)"
        case .prepareSnapshot(let member): "prepare-snapshot \(member)"
        case .loadOriginTable(let member): "load-origin-table \(member)"
        case .readEras: "read-eras"
        case .activateBeforeFreeze(let members): "activate-before-freeze \(members)"
        case .freeze(let checkpoint, let inside): "freeze checkpoint \(checkpoint) activate-inside \(inside)"
        case .reached(let point): "failpoint \(point.rawValue)"
        }
    }
}

extension Orchestrator {
    /// Checks everything a snapshot set needs before anything changes, and sizes it.
    func planSnapshotSet(_ names: [String], options: SnapshotOptions) throws -> SnapshotSetPlan {
        guard !names.isEmpty else { throw SnapstackError(.invalidArgument, "name at least one protected device") }
        guard Set(names).count == names.count else {
            throw SnapstackError(.invalidArgument, "a device is named twice in the set")
        }
        let snapshotName = options.name ?? Self.timestampName()
        try Self.checkName(snapshotName, what: "snapshot", maxLength: Layout.maxSnapshotName)
        guard !Layout.reservedSnapshotNames.contains(snapshotName) else {
            throw SnapstackError(.invalidArgument, "\"\(snapshotName)\" is reserved for snapstack's own layers",
                                 remedy: "choose another name with --as")
        }
        guard let chunkSectors = options.chunk.exactSectors, chunkSectors.rawValue.nonzeroBitCount == 1,
              options.chunk >= .kibibytes(4), options.chunk <= .mebibytes(512) else {
            throw SnapstackError(.invalidArgument, "invalid chunk size \(options.chunk.rawValue) bytes",
                                 why: "it must be a power of two from 4 KiB to 512 MiB")
        }
        var members = try names.map { try planMember($0, snapshotName: snapshotName, options: options) }
        let memberDevices = Set(members.flatMap { member -> [DeviceNumber] in
            [DeviceNumber(major: UInt32(member.device.sourceMajor), minor: UInt32(member.device.sourceMinor)),
             member.realNumber, (try? self.number(of: member.top)) ?? member.realNumber]
        })
        let location = try resolveStore(options.store, memberCount: members.count, memberDevices: memberDevices)
        if case .volumeGroup(let group) = location {
            // LVM allocates whole extents: the plan records the size the volume will have.
            for index in members.indices { members[index].storeSize = group.allocation(for: members[index].storeSize) }
            let needed = members.reduce(UInt64(0)) { $0.addingReportingOverflow($1.storeSize.rawValue).partialValue }
            guard needed <= group.free.rawValue else {
                throw SnapstackError(.refused, "the volume group \(group.name) has \(Self.describe(group.free)) free; the stores need \(Self.describe(Bytes(needed)))",
                                     remedy: "give a smaller --size, or add a disk to it (vgextend)")
            }
        }
        return SnapshotSetPlan(name: snapshotName, chunk: chunkSectors, writable: options.writable, members: members, storeLocation: location)
    }

    private func planMember(_ name: String, snapshotName: String, options: SnapshotOptions) throws -> SnapshotSetPlan.Member {
        var device = try device(named: name)
        switch device.state {
        case .protected: break
        case .pending:
            throw SnapstackError(.refused, "\(name) has no stack yet", why: "it was protected --at-boot: its stack is built at the next boot",
                                 remedy: "reboot (or unmount \(device.sourcePath) and run `snapstack reconcile`)")
        case .protecting, .unprotecting:
            throw SnapstackError(.refused, "\(name) is being \(device.state == .protecting ? "protected" : "unprotected")",
                                 remedy: "run `snapstack reconcile`")
        }
        if device.isAdopted {
            // A snapshot of a device whose writes bypass the stack would miss them.
            try ensureAdopted(device)
            device = try self.device(named: name)
        }
        let top = try device.topName(), real = try Layout.realName(name)
        guard let info = try dm.info(top), let realInfo = try dm.info(real) else {
            throw SnapstackError(.refused, "\(name) has no live stack", remedy: "run `snapstack reconcile` to rebuild it")
        }
        guard !info.suspended, !realInfo.suspended else {
            throw SnapstackError(.refused, "\(name) is suspended", remedy: "run `snapstack reconcile`")
        }
        // An era whose metadata failed can start no era, and fails the origin's writes: it is
        // bypassed (tracking interrupted, the next incremental refused), and the snapshot goes on.
        // A repair, not a part of the snapshot: it stands even if a check below refuses the set.
        var tracking = try trackingLayer(of: device)
        if tracking == .failed {
            try bypassTracking(device, why: Self.eraMetadataFailed)
            device = try self.device(named: name)
            tracking = try trackingLayer(of: device)
        }
        if try database.snapshot(deviceID: device.id, name: snapshotName) != nil {
            throw SnapstackError(.refused, "\(name) already has a snapshot named \(snapshotName)", remedy: "choose another name with --as")
        }
        if let merging = try database.snapshots(deviceID: device.id).first(where: { $0.state == .merging || $0.state == .mergePending }) {
            throw SnapstackError(.refused, "\(name) is merging \(name)-\(merging.name)", remedy: "wait for the merge to finish")
        }
        let size = Self.storeSize(options.size, origin: Bytes(UInt64(device.sizeBytes)), chunk: options.chunk)
        guard size >= Self.minimumStoreSize(chunk: options.chunk) else {
            throw SnapstackError(.refused, "the store for \(name) would be \(size.rawValue) bytes",
                                 why: "a COW store needs at least \(Self.minimumStoreSize(chunk: options.chunk).rawValue) bytes for its header and metadata",
                                 remedy: "give a larger --size")
        }
        var member = SnapshotSetPlan.Member(device: device, top: top, real: real,
                                            snapshot: try Layout.snapshotName(name, snapshotName),
                                            realNumber: realInfo.number, storeSize: size, originLive: false, tracking: tracking)
        try failing("cannot read the table of \(top.devicePath)") { member.originLive = try dm.table(top) == member.originTable }
        return member
    }

    /// A store of `size` for an origin of `origin`: whole chunks, and no larger than the origin
    /// plus room for its metadata (more buys nothing).
    static func storeSize(_ size: SnapshotOptions.Size, origin: Bytes, chunk: Bytes) -> Bytes {
        var bytes: Bytes
        switch size {
        case .bytes(let value): bytes = value
        case .percent(let percent): bytes = Bytes(UInt64((Double(origin.rawValue) * percent / 100).rounded(.up)))
        }
        bytes = Bytes(min(bytes.rawValue, origin.rawValue + origin.rawValue / 16 + (1 << 20)))
        return Bytes((bytes.rawValue + chunk.rawValue - 1) / chunk.rawValue * chunk.rawValue)
    }
}
