import BlockIO
import DeviceMapper
import Foundation
internal import StateDatabase

/// A protected device as the reports show it: the database's record joined with what the
/// kernel says now.
public struct DeviceSummary: Sendable {
    public enum State: String, Sendable, CaseIterable {
        case protected
        /// Recorded, with no live stack: `reconcile` builds it.
        case unstacked
        /// Its top device is suspended now.
        case suspended
        /// A protect or unprotect that a crash interrupted: `reconcile` finishes or undoes it.
        case protecting, unprotecting
        /// Protected with `--at-boot`: the daemon builds its stack at the next boot, before
        /// anything mounts the device.
        case pending
    }

    public var id: String
    public var name: String
    public var path: String
    public var sourcePath: String
    public var size: Bytes
    public var cbtBlock: Bytes?
    /// The era the tracking layer is in now; nil without change tracking or without a stack.
    public var currentEra: UInt32?
    public var snapshotCount: Int
    public var state: State
    public var openCount: Int?
    public var createdAt: Date
    /// An adopted live device as its users name it (`vg/lv` for an LVM volume); nil for a disk
    /// in a stack of our own.
    public var adopted: String? = nil
    public var tracking: Tracking = .continuous
    /// When and why the tracking was last interrupted, while that still matters (no complete
    /// export since).
    public var trackingInterruptedAt: Date? = nil
    public var trackingInterruptedReason: String? = nil

    public enum Tracking: String, Sendable, CaseIterable {
        /// Every write since the last complete export is recorded: an incremental is exact.
        case continuous
        /// Writes may have gone unrecorded: the next incremental is refused (exit 10) until a
        /// full export, or `--allow-full`.
        case interrupted
        /// Protected without change tracking.
        case off
    }
}

/// A snapshot as the reports show it.
public struct SnapshotSummary: Sendable {
    public enum State: String, Sendable, CaseIterable {
        case active
        /// The kernel invalidated it (its store filled, or failed).
        case invalid
        /// A write to the snapshot itself did not fit in its store.
        case overflow
        case merging
        case mergePending = "merge-pending"
        /// Recorded, with no live device: `reconcile` loads it.
        case inactive
        /// A take or a drop that a crash interrupted: `reconcile` finishes or undoes it.
        case creating, dropping
    }

    public var id: String
    public var name: String
    public var path: String
    public var origin: String
    public var store: String
    public var storeSize: Bytes
    public var chunk: Bytes
    public var usedPercent: Double?
    /// COW space in use (the kernel's allocated sectors, the store's own metadata included), read
    /// in the same status as `usedPercent`; nil where that is nil.
    public var storeUsed: Bytes?
    public var state: State
    public var era: Int64?
    public var setID: Int64
    public var freezeMicroseconds: Int64?
    public var createdAt: Date
    /// Whether the snapshot device takes writes (`snapshot --writable`).
    public var writable = false
}

/// An export as the reports show it: what was read, from which snapshot, on top of which earlier
/// export, and where it went. Exports outlive their snapshots, so the snapshot is named, not held.
public struct ExportSummary: Sendable, Equatable {
    public enum Kind: String, Sendable { case full, incremental }
    /// `running` until every block is copied; a crash leaves it running, and the same export
    /// run again finishes it.
    public enum State: String, Sendable { case running, complete }

    /// A short stable id (8 hexadecimal digits), named by `--since`.
    public var id: String
    public var device: String
    public var snapshot: String
    public var kind: Kind
    public var state: State
    /// The export this one was applied on top of (incrementals only).
    public var base: String?
    /// The snapshot's era; nil for a device without change tracking.
    public var era: Int64?
    /// The first era whose writes an incremental read (the base's era).
    public var sinceEra: Int64?
    public var blockSize: Bytes
    public var deviceSize: Bytes
    /// The image file, or nil for a stream written to standard output.
    public var imagePath: String?
    /// `raw`, `image` or `delta`: what the bytes written look like.
    public var format: String
    public var bytesRead: Bytes
    public var bytesWritten: Bytes
    public var createdAt: Date
    public var completedAt: Date?

    public init(id: String, device: String, snapshot: String, kind: Kind, state: State, base: String? = nil,
                era: Int64?, sinceEra: Int64? = nil, blockSize: Bytes, deviceSize: Bytes, imagePath: String?,
                format: String, bytesRead: Bytes, bytesWritten: Bytes, createdAt: Date, completedAt: Date?) {
        self.id = id
        self.device = device
        self.snapshot = snapshot
        self.kind = kind
        self.state = state
        self.base = base
        self.era = era
        self.sinceEra = sinceEra
        self.blockSize = blockSize
        self.deviceSize = deviceSize
        self.imagePath = imagePath
        self.format = format
        self.bytesRead = bytesRead
        self.bytesWritten = bytesWritten
        self.createdAt = createdAt
        self.completedAt = completedAt
    }

    init(_ record: ExportRecord, device: String) {
        self.init(id: record.id, device: device, snapshot: record.snapshotName,
                  kind: record.kind == .full ? .full : .incremental,
                  state: record.state == .complete ? .complete : .running, base: record.baseExportID,
                  era: record.era, sinceEra: record.sinceEra,
                  blockSize: Bytes(UInt64(clamping: record.blockSizeBytes)),
                  deviceSize: Bytes(UInt64(clamping: record.deviceSizeBytes)), imagePath: record.imagePath,
                  format: record.format, bytesRead: Bytes(UInt64(clamping: record.bytesRead)),
                  bytesWritten: Bytes(UInt64(clamping: record.bytesWritten)),
                  createdAt: record.createdAt, completedAt: record.completedAt)
    }
}

/// The one-line health of snapstack on this machine.
public struct StatusSummary: Sendable {
    public var devices: Int
    public var snapshots: Int
    public var suspended: [String]
    /// Operations a crash interrupted, and stacks missing or orphaned: `reconcile` repairs them.
    public var needsReconcile: [String]
}

extension Orchestrator {
    public func deviceSummaries() throws -> [DeviceSummary] {
        try database.devices().map(summary(of:))
    }

    /// The protected device called `name`, as the reports show it.
    public func deviceSummary(named name: String) throws -> DeviceSummary {
        try summary(of: device(named: name))
    }

    func summary(of device: DeviceRecord) throws -> DeviceSummary {
        let top = try device.topName()
        let info = try dm.info(top)
        var era: UInt32?
        if device.cbtBlockSectors != nil, case .era(let status)? = try? dm.status(try Layout.realName(device.name)).first?.status {
            era = status.currentEra
        }
        let state: DeviceSummary.State
        switch device.state {
        case .protected: state = info == nil ? .unstacked : info!.suspended ? .suspended : .protected
        case .protecting: state = .protecting
        case .unprotecting: state = .unprotecting
        case .pending: state = .pending
        }
        var tracking = DeviceSummary.Tracking.off
        var interruptedAt: Date?, interruptedReason: String?
        if device.cbtBlockSectors != nil {
            tracking = .continuous
            if case .bypassed(_, let why) = try trackingCheck(device) {
                tracking = .interrupted
                interruptedReason = why
            } else if try trackingIsInterrupted(device) {
                tracking = .interrupted
                interruptedAt = device.trackingInterruptedAt
                interruptedReason = device.trackingInterruptedReason
            }
        }
        return DeviceSummary(
            id: device.id, name: device.name, path: top.devicePath, sourcePath: device.sourcePath,
            size: Bytes(UInt64(device.sizeBytes)),
            cbtBlock: device.cbtBlockSectors.map { Sectors(UInt64($0)).bytes }, currentEra: era,
            snapshotCount: try database.snapshots(deviceID: device.id).count, state: state,
            openCount: info?.openCount, createdAt: device.createdAt,
            adopted: device.adoptedName.map { Adoption.displayName($0, uuid: device.adoptedUUID) },
            tracking: tracking, trackingInterruptedAt: interruptedAt, trackingInterruptedReason: interruptedReason)
    }

    /// Whether `device`'s tracking was interrupted and no complete export has been taken since:
    /// an interruption whose era is not recorded yet counts until it is.
    func trackingIsInterrupted(_ device: DeviceRecord) throws -> Bool {
        guard device.trackingInterruptedAt != nil || device.trackingInterruptedEra != nil else { return false }
        guard let first = device.trackingInterruptedEra else { return true }
        return !(try database.exports(deviceID: device.id)).contains { $0.state == .complete && ($0.era ?? 0) >= first }
    }

    public func snapshotSummaries() throws -> [SnapshotSummary] {
        var result: [SnapshotSummary] = []
        var freeze: [Int64: Int64?] = [:]
        for set in try database.sets() { freeze[set.id!] = set.freezeMicroseconds }
        for device in try database.devices() {
            for snapshot in try database.snapshots(deviceID: device.id) {
                let name = try Layout.snapshotName(device.name, snapshot.name)
                var used: Double?
                var usedBytes: Bytes?
                func read(_ status: SnapshotStatus) {
                    used = status.usedPercent
                    if used != nil, case .active(let allocated, _, _) = status { usedBytes = allocated.bytes }
                }
                var state: SnapshotSummary.State
                switch snapshot.state {
                case .active:
                    state = .active
                    if try dm.info(name) == nil {
                        state = .inactive
                    } else if case .snapshot(let status)? = try? dm.status(name).first?.status {
                        read(status)
                        if status == .invalid { state = .invalid }
                        if status == .overflow { state = .overflow }
                    }
                case .merging:
                    state = .merging
                    if case .snapshotMerge(let status)? = try? dm.status(try device.topName()).first?.status {
                        read(status)
                    }
                case .mergePending:
                    state = .mergePending
                    if case .snapshot(let status)? = try? dm.status(name).first?.status { read(status) }
                case .creating: state = .creating
                case .dropping: state = .dropping
                case .invalid: state = .invalid
                }
                result.append(SnapshotSummary(
                    id: snapshot.id, name: "\(device.name)-\(snapshot.name)", path: name.devicePath, origin: device.name,
                    store: snapshot.storePath, storeSize: Bytes(UInt64(snapshot.storeSizeBytes)),
                    chunk: Sectors(UInt64(snapshot.chunkSectors)).bytes, usedPercent: used, storeUsed: usedBytes, state: state, era: snapshot.era,
                    setID: snapshot.setID, freezeMicroseconds: freeze[snapshot.setID] ?? nil, createdAt: snapshot.createdAt,
                    writable: snapshot.writable))
            }
        }
        return result
    }

    public func statusSummary() throws -> StatusSummary {
        let devices = try deviceSummaries()
        let snapshots = try snapshotSummaries()
        let live = try liveDevices()
        let pending = try reconcile(dryRun: true).filter { !$0.action.hasPrefix("merge in progress") }.map { "\($0.subject): \($0.action)" }
        return StatusSummary(devices: devices.count, snapshots: snapshots.count,
                             suspended: live.filter(\.info.suspended).map(\.info.name), needsReconcile: pending)
    }
}
