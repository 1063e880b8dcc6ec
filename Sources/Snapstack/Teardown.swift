import BlockIO
import DeviceMapper
import Foundation
internal import StateDatabase
import SystemPackage

/// What taking a snapshot or a stack apart does, as a value: `drop`, `merge` and `unprotect`
/// plan their changes as these steps, and reconcile finishes an interrupted one by running the
/// same plan again. Every step is idempotent (a device already removed, a record already
/// deleted, a file already gone are done), which is what lets a plan run twice.
enum TeardownStep: Equatable, Sendable, CustomStringConvertible {
    /// `dmsetup remove` of a device, if it exists; `failure` says what could not be done.
    case removeDevice(DMName, failure: String)
    /// The snapshot's record deleted: from here on the top table no longer serves it.
    case forgetSnapshot(SnapshotRecord)
    /// The top's table made what the remaining snapshots need (linear when none, or
    /// snapshot-merge while one merges): the origin pays copy-on-write only while needed.
    case restoreTopTable(DeviceRecord, failure: String)
    /// The snapshot device if still there, its store's loop device and file.
    case removeSnapshotArtifacts(SnapshotRecord, of: DeviceRecord)
    /// The era metadata's loop device, and its file unless kept for a rebuild.
    case detachMetadata(path: String, delete: Bool)
    /// One of snapstack's logical volumes removed, if it exists (a root's shutdown record).
    case removeVolume(group: String, name: String)
    /// The udev markers that hide the disk as a member; the disk is re-triggered.
    case withdrawMember(DeviceRecord)
    case forgetDevice(DeviceRecord)
    /// An adopted live device given its own table back (byte for byte), if it maps through the stack.
    case restoreLive(DeviceRecord)
    /// A failpoint: what a crash here leaves is what reconcile must repair.
    case reached(Failpoint)

    var description: String {
        switch self {
        case .removeDevice(let name, _): "remove-device \(name)"
        case .forgetSnapshot(let snapshot): "forget-snapshot \(snapshot.name)"
        case .restoreTopTable(let device, _): "restore-top-table \(device.name)"
        case .removeSnapshotArtifacts(let snapshot, let device): "remove-snapshot-artifacts \(device.name)-\(snapshot.name)"
        case .detachMetadata(let path, let delete): "detach-metadata \(path)\(delete ? " delete" : "")"
        case .removeVolume(let group, let name): "remove-volume \(group)/\(name)"
        case .withdrawMember(let device): "withdraw-member \(device.name)"
        case .forgetDevice(let device): "forget-device \(device.name)"
        case .restoreLive(let device): "restore-live \(device.name)"
        case .reached(let point): "failpoint \(point.rawValue)"
        }
    }
}

/// The plans: pure functions of the records.
enum Teardown {
    /// A drop after its intent is recorded: the snapshot device goes first, so that nothing
    /// reads a snapshot whose origin no longer copies for it.
    static func drop(_ snapshot: SnapshotRecord, of device: DeviceRecord) throws -> [TeardownStep] {
        [.removeDevice(try Layout.snapshotName(device.name, snapshot.name), failure: "cannot remove \(device.name)-\(snapshot.name)"),
         .reached(.dropSnapshotRemoved),
         .forgetSnapshot(snapshot),
         .restoreTopTable(device, failure: "cannot restore the table of \(device.name)"),
         .reached(.dropOriginReloaded),
         .removeSnapshotArtifacts(snapshot, of: device)]
    }

    /// A merge's start after its intent is recorded. A merge must not run beside a live
    /// snapshot of the same store: its persistent exceptions are on the COW device and the
    /// merge reads them from there. The top's restored table is then snapshot-merge.
    static func startMerge(_ snapshot: SnapshotRecord, of device: DeviceRecord) throws -> [TeardownStep] {
        [.removeDevice(try Layout.snapshotName(device.name, snapshot.name),
                       failure: "cannot remove \(device.name)-\(snapshot.name) before the merge"),
         .reached(.mergeSnapshotRemoved),
         .restoreTopTable(device, failure: "cannot start merging \(device.name)-\(snapshot.name)"),
         .reached(.mergeStarted)]
    }

    /// After the kernel finished merging: the top goes back to linear and the store is removed.
    static func finishMerge(_ snapshot: SnapshotRecord, of device: DeviceRecord) -> [TeardownStep] {
        [.forgetSnapshot(snapshot),
         .restoreTopTable(device, failure: "cannot end the merge of \(device.name)-\(snapshot.name)"),
         .removeSnapshotArtifacts(snapshot, of: device)]
    }

    /// A stack's layers, top first (nothing may be left mapping through a removed layer),
    /// then the era metadata, then the markers that hide the disk. `deleteMetadata` false keeps
    /// the metadata for a rebuild over the same disk.
    static func removeStack(_ device: DeviceRecord, deleteMetadata: Bool) throws -> [TeardownStep] {
        let failure = "cannot remove the stack of \(device.name)"
        // An adopted device stays: it gets its table back, and the layers under it go.
        var steps: [TeardownStep] = [
            device.isAdopted ? .restoreLive(device) : .removeDevice(try device.topName(), failure: failure),
            .reached(.unprotectTopRemoved),
            .removeDevice(try Layout.realName(device.name), failure: failure), .reached(.unprotectRealRemoved),
        ]
        if device.isAdopted { steps.append(.removeDevice(try Layout.cloneName(device.name), failure: failure)) }
        if let path = device.eraMetadataPath { steps.append(.detachMetadata(path: path, delete: deleteMetadata)) }
        if deleteMetadata, let (group, name) = device.stopVolume { steps.append(.removeVolume(group: group, name: name)) }
        if !device.isAdopted { steps.append(.withdrawMember(device)) }
        return steps
    }

    /// An unprotect after its intent is recorded (its snapshots dropped first).
    static func unprotect(_ device: DeviceRecord) throws -> [TeardownStep] {
        try removeStack(device, deleteMetadata: true) + [.forgetDevice(device)]
    }
}

extension Orchestrator {
    /// The one executor of teardown plans.
    func run(_ steps: [TeardownStep]) throws {
        for step in steps {
            switch step {
            case .removeDevice(let name, let failure):
                try failing(failure) { try dm.remove(name) }
            case .forgetSnapshot(let snapshot):
                try database.deleteSnapshot(id: snapshot.id)
            case .restoreTopTable(let device, let failure):
                try failing(failure) { try restoreTopTable(device) }
            case .removeSnapshotArtifacts(let snapshot, let device):
                try removeSnapshotArtifacts(snapshot, of: device)
            case .detachMetadata(let path, let delete):
                if let (group, name) = Self.metadataVolume(path) {
                    if delete { try volumes.removeVolume(group: group, name: name) }
                } else {
                    try detach(FilePath(path))
                    if delete { try? FileManager.default.removeItem(atPath: path) }
                }
            case .removeVolume(let group, let name):
                try volumes.removeVolume(group: group, name: name)
            case .withdrawMember(let device):
                withdrawMember(device)
            case .forgetDevice(let device):
                try database.deleteDevice(id: device.id)
            case .restoreLive(let device):
                try restoreLive(device)
            case .reached(let point):
                try reached(point)
            }
        }
    }
}
