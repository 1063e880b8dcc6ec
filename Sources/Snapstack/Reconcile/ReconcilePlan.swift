import BlockIO
import DeviceMapper
internal import StateDatabase

/// One repair `reconcile` made, or would make with `--dry-run`.
public struct ReconcileAction: Sendable, Equatable {
    /// The kind of step (`rebuild-stack`, `remove-orphan`, ...): stable, for scripts and JSON.
    public var step: String
    public var subject: String
    /// What is done, in words.
    public var action: String
}

/// What reconcile looks at, gathered before it decides anything: the recorded state and the
/// kernel's. `ReconcileStep.plan` turns it into steps without touching either.
struct ReconcileObservation {
    struct Device {
        var record: DeviceRecord
        var snapshots: [SnapshotRecord]
        var growths: [StoreGrowthRecord]
        /// Where its disk is now; nil when it is not present (or not looked for).
        var source: (path: String, number: DeviceNumber)?
        /// The open count of its top device; nil when there is no top device.
        var topOpenCount: Int?
        /// The top's status when its table is snapshot-merge.
        var topMergeStatus: SnapshotStatus?
        /// Whether an adopted device's live device maps through its stack.
        var tracking: TrackingCheck = .inPlace
        /// For a device protected `--at-boot`: why its disk cannot take a stack now (mounted,
        /// open); nil when it can.
        var sourceInUse: String?
        /// For a wrapped disk without its stack: what its filesystem shows now (nil: its first
        /// bytes could not be read), against the clean stop's record.
        var diskStamp: Result<FilesystemStamp, FilesystemStamp.Unstampable>?
        /// What the initramfs left when it built this device's stack at this boot (`/`).
        var earlyMarker: EarlyStackMarker?
        /// What its `-real` layer does with change tracking; nil when it has none.
        var trackingLayer: TrackingLayer?
    }

    /// dm devices carrying snapstack's UUID prefix.
    var ownDevices: [Orchestrator.OwnDevice]
    var devices: [Device]
    /// Loop devices whose file is under the state directory.
    var loops: [LoopDevice]
    /// `.cow` and `.era` files in the state directory's store and metadata directories.
    var files: [String]
    /// Logical volumes tagged as snapstack's whose names carry a recorded device's id.
    var volumes: [LogicalVolumeFacts] = []
}

/// One repair, as a value: what reconcile plans, prints with `--dry-run`, and then runs.
enum ReconcileStep: Equatable {
    /// Lower layers first, so that a top resumes onto live devices; an inactive table left by a
    /// crash is discarded first.
    case resumeSuspended(device: String)
    case undoProtect(DeviceRecord)
    case finishUnprotect(DeviceRecord, snapshots: [SnapshotRecord])
    case waitForDisk(DeviceRecord)
    case rebuildStack(DeviceRecord, sourcePath: String, source: DeviceNumber, continuity: TrackingContinuity)
    /// A stack rebuilt with its tracking interrupted whose new era was not recorded (a crash
    /// came between): every incremental is refused until it is.
    case recordInterruptionEra(DeviceRecord)
    /// An era layer whose metadata failed, which fails the origin's writes: swapped for a
    /// linear one, the tracking interrupted.
    case bypassTracking(DeviceRecord)
    /// A tracked device whose era layer was bypassed: the era put back over its metadata.
    case restoreTracking(DeviceRecord)
    /// A device protected `--at-boot` whose disk is present and unused: its first stack, with
    /// new era metadata.
    case buildPendingStack(DeviceRecord, sourcePath: String, source: DeviceNumber)
    /// A stack the initramfs built at this boot, taken over with the verdict on its tracking.
    case takeOverEarlyStack(DeviceRecord, source: DeviceNumber, continuity: TrackingContinuity)
    /// A device protected `--at-boot` whose disk is still in use: left for the next boot.
    case waitForBoot(DeviceRecord, why: String)
    /// An adopted device whose live device bypasses its stack (a foreign reload, a reboot):
    /// adopted again over its current table, its change tracking marked interrupted.
    case readopt(DeviceRecord, table: Table, why: String)
    case undoSnapshot(SnapshotRecord, of: DeviceRecord)
    case finishDrop(SnapshotRecord, of: DeviceRecord)
    case reactivateSnapshots(SnapshotRecord, of: DeviceRecord)
    case startDeferredMerge(SnapshotRecord, of: DeviceRecord)
    case finishMerge(SnapshotRecord, of: DeviceRecord)
    case mergeInProgress(SnapshotRecord, of: DeviceRecord)
    case resumeMerge(SnapshotRecord, of: DeviceRecord)
    case finishGrowth(StoreGrowthRecord, of: SnapshotRecord, device: DeviceRecord)
    /// Puts the top's table right if it is not; not listed as a repair, since it is a check.
    case checkTopTable(DeviceRecord)
    /// A clean stop's record on a device whose stack is still there (the daemon restarted, no
    /// reboot): it spoke for the filesystem as the stop left it, and the top may be written from
    /// now on, so it could only misjudge a later rebuild; the next stop records a new one.
    case forgetCleanStop(DeviceRecord)
    case removeOrphan(device: String)
    case leaveOpenOrphan(device: String, openCount: Int)
    case detachOrphanLoop(path: String, file: String)
    case deleteOrphanFile(path: String)
    /// A volume of snapstack's (a store, era metadata) that no record names; one held open is
    /// left alone.
    case removeOrphanVolume(LogicalVolumeFacts)
    case leaveOpenOrphanVolume(LogicalVolumeFacts)

    var kind: String {
        switch self {
        case .resumeSuspended: "resume-suspended"
        case .undoProtect: "undo-protect"
        case .finishUnprotect: "finish-unprotect"
        case .waitForDisk: "wait-for-disk"
        case .rebuildStack: "rebuild-stack"
        case .recordInterruptionEra: "record-interruption-era"
        case .bypassTracking: "bypass-tracking"
        case .restoreTracking: "restore-tracking"
        case .buildPendingStack: "build-pending-stack"
        case .takeOverEarlyStack: "take-over-early-stack"
        case .waitForBoot: "wait-for-boot"
        case .readopt: "readopt"
        case .undoSnapshot: "undo-snapshot"
        case .finishDrop: "finish-drop"
        case .reactivateSnapshots: "reactivate-snapshot"
        case .startDeferredMerge: "start-deferred-merge"
        case .finishMerge: "finish-merge"
        case .mergeInProgress: "merge-in-progress"
        case .resumeMerge: "resume-merge"
        case .finishGrowth: "finish-growth"
        case .checkTopTable: "check-top-table"
        case .forgetCleanStop: "forget-clean-stop"
        case .removeOrphan: "remove-orphan"
        case .leaveOpenOrphan: "leave-open-orphan"
        case .detachOrphanLoop: "detach-orphan-loop"
        case .deleteOrphanFile: "delete-orphan-file"
        case .removeOrphanVolume: "remove-orphan-volume"
        case .leaveOpenOrphanVolume: "leave-open-orphan-volume"
        }
    }

    /// Whether the step is reported: a check that finds nothing to do is not a repair.
    var isReported: Bool {
        switch self {
        case .checkTopTable, .forgetCleanStop: false
        default: true
        }
    }

    var action: ReconcileAction {
        func label(_ s: SnapshotRecord, _ d: DeviceRecord) -> String { "\(d.name)-\(s.name)" }
        let (subject, text): (String, String) = switch self {
        case .resumeSuspended(let name): (name, "resume (it was left suspended)")
        case .undoProtect(let d): (d.name, "undo the interrupted protect")
        case .finishUnprotect(let d, _): (d.name, "finish the interrupted unprotect")
        case .waitForDisk(let d): (d.name, "wait: its disk is not present (identity \(d.sourcePath), \(d.sizeBytes) bytes)")
        case .rebuildStack(let d, let path, let number, .kept):
            (d.name, "rebuild the stack over \(path) (\(number))"
                + (d.cbtBlockSectors == nil ? "" : ", keeping its change tracking: its filesystem is as the daemon's clean stop left it"))
        case .rebuildStack(let d, let path, let number, .interrupted(let why)):
            (d.name, "rebuild the stack over \(path) (\(number)); change tracking interrupted: \(why)")
        case .rebuildStack(let d, let path, let number, .bypassed(let why)):
            (d.name, "rebuild the stack over \(path) (\(number)); change tracking interrupted and snapshots invalid: \(why)")
        case .recordInterruptionEra(let d):
            (d.name, "record the era from which its interrupted change tracking is complete")
        case .bypassTracking(let d):
            (d.name, "let writes bypass its change tracking, interrupted: \(Orchestrator.eraMetadataFailed)")
        case .restoreTracking(let d):
            (d.name, "track changes again over \(d.eraMetadataPath ?? "its metadata") (bypassed since \(d.trackingInterruptedAt.map { $0.formatted(.iso8601) } ?? "an interruption"))")
        case .buildPendingStack(let d, let path, let number):
            (d.name, "build the stack protect --at-boot asked for over \(path) (\(number)), with new change tracking")
        case .takeOverEarlyStack(let d, _, let continuity):
            (d.name, "take over the stack the initramfs built over \(d.sourcePath)"
                + (d.state == .pending ? ", with new change tracking" : continuity.interruption.map { "; change tracking interrupted: \($0)" }
                    ?? ", keeping its change tracking: its filesystem is as the last shutdown left it"))
        case .waitForBoot(let d, let why):
            (d.name, "wait for the next boot: protected --at-boot, but \(why)")
        case .readopt(let d, _, let why):
            (d.name, "adopt again over its current table; change tracking interrupted: \(why)")
        case .undoSnapshot(let s, let d): (label(s, d), "undo the interrupted snapshot")
        case .finishDrop(let s, let d): (label(s, d), "finish the interrupted drop")
        case .reactivateSnapshots(let s, let d): (label(s, d), "re-activate the snapshot from its store")
        case .startDeferredMerge(let s, let d): (label(s, d), "start the deferred merge (\(d.name) is closed now)")
        case .finishMerge(let s, let d): (label(s, d), "finish the completed merge")
        case .mergeInProgress(let s, let d): (label(s, d), "merge in progress; left running")
        case .resumeMerge(let s, let d): (label(s, d), "resume the interrupted merge")
        case .finishGrowth(let g, let s, let d):
            (label(s, d), "finish growing its store to \(Orchestrator.describe(Bytes(UInt64(g.toBytes))))")
        case .checkTopTable(let d): (d.name, "check the top table")
        case .forgetCleanStop(let d): (d.name, "forget the clean stop's record: the stack outlived it")
        case .removeOrphan(let name): (name, "remove: not in the database")
        case .leaveOpenOrphan(let name, let count): (name, "left alone: not in the database, but open (\(count) opener(s))")
        case .detachOrphanLoop(let path, let file): (path, "detach: backs \(file), which nothing records")
        case .deleteOrphanFile(let path): (path, "delete: nothing records it")
        case .removeOrphanVolume(let volume): (volume.fullName, "lvremove: a volume of snapstack's that nothing records")
        case .leaveOpenOrphanVolume(let volume): (volume.fullName, "left alone: a volume of snapstack's that nothing records, but open")
        }
        return ReconcileAction(step: kind, subject: subject, action: text)
    }

    /// The repairs for `observed`, in the order they must run. Pure: the same observation gives
    /// the same plan. `restoreTracking`: put back era layers that were bypassed.
    static func plan(_ observed: ReconcileObservation, restoreTracking: Bool = true) throws -> [ReconcileStep] {
        var plan: [ReconcileStep] = []
        let ours = observed.ownDevices
        for device in ours.sorted(by: { $0.layerOrder < $1.layerOrder }) where device.info.suspended {
            plan.append(.resumeSuspended(device: device.info.name))
        }
        for device in observed.devices {
            plan += try steps(for: device, ours: ours, restoreTracking: restoreTracking)
        }

        // Whatever a record names is not an orphan: it is kept, or removed by its record's own
        // step above, and so listed once.
        var expected = Set<String>()   // dm UUIDs
        var expectedFiles = Set<String>()
        for device in observed.devices {
            let record = device.record
            expected.insert(try Layout.uuid(deviceID: record.id, .top).rawValue)
            expected.insert(try Layout.uuid(deviceID: record.id, .real).rawValue)
            if record.isAdopted { expected.insert(try Layout.uuid(deviceID: record.id, .clone).rawValue) }
            if let path = record.eraMetadataPath { expectedFiles.insert(path) }
            if let (group, name) = record.stopVolume { expectedFiles.insert("\(group)/\(name)") }
            for snapshot in device.snapshots {
                expected.insert(try Layout.uuid(deviceID: record.id, .snapshot(id: snapshot.id)).rawValue)
                if snapshot.storeKind == .file || snapshot.storeKind == .volume { expectedFiles.insert(snapshot.storePath) }
            }
        }
        // Orphans: dm devices first, snapshots before the layers they sit on; then loop
        // devices (one held by a dm orphan removed above is detached lazily), then files.
        // An orphan held only by orphans removed before it goes too; one held by anything else
        // (a mount, a reader, an orphan left alone) stays.
        var removed: [DeviceNumber] = []
        for device in ours.sorted(by: { $0.layerOrder > $1.layerOrder }) where !expected.contains(device.info.uuid ?? "") {
            let openers = device.info.openCount - removed.filter { $0 == device.info.number }.count
            if openers > 0 {
                plan.append(.leaveOpenOrphan(device: device.info.name, openCount: openers))
            } else {
                plan.append(.removeOrphan(device: device.info.name))
                removed += device.holds
            }
        }
        for loop in observed.loops {
            guard let file = loop.backingFile, !expectedFiles.contains(file) else { continue }
            plan.append(.detachOrphanLoop(path: loop.path, file: file))
        }
        for file in observed.files where !expectedFiles.contains(file) {
            plan.append(.deleteOrphanFile(path: file))
        }
        // After the dm orphans: a snapshot orphan removed above lets go of its store.
        for volume in observed.volumes where !expectedFiles.contains(volume.fullName) {
            let heldOnlyByRemoved = volume.number.map { removed.contains($0) } ?? false
            plan.append(volume.open && !heldOnlyByRemoved ? .leaveOpenOrphanVolume(volume) : .removeOrphanVolume(volume))
        }
        return plan
    }

    static func hasWholeStack(_ device: DeviceRecord, _ ours: [Orchestrator.OwnDevice]) -> Bool {
        ours.contains { $0.deviceID == device.id && $0.layer == .real } && ours.contains { $0.deviceID == device.id && $0.layer == .top }
    }

    /// The steps for one recorded device and its snapshots.
    static func steps(for observed: ReconcileObservation.Device, ours: [Orchestrator.OwnDevice],
                      restoreTracking: Bool = true) throws -> [ReconcileStep] {
        let device = observed.record
        switch device.state {
        case .protecting: return [.undoProtect(device)]
        case .unprotecting: return [.finishUnprotect(device, snapshots: observed.snapshots)]
        case .protected: break
        case .pending:
            guard let source = observed.source else { return [.waitForDisk(device)] }
            if observed.earlyMarker != nil, hasWholeStack(device, ours) {
                return [.takeOverEarlyStack(device, source: source.number, continuity: .kept)]
            }
            if let why = observed.sourceInUse { return [.waitForBoot(device, why: why)] }
            return [.buildPendingStack(device, sourcePath: source.path, source: source.number)]
        }
        guard let source = observed.source else { return [.waitForDisk(device)] }
        var plan: [ReconcileStep] = []
        let stackPresent: Bool
        if device.isAdopted {
            // Its live device plays the top; the stack is present when that maps through it.
            if case .bypassed(let table, let why) = observed.tracking {
                plan.append(.readopt(device, table: table, why: why))
                stackPresent = false
            } else {
                stackPresent = true
                if let marker = observed.earlyMarker, observed.tracking == .inPlace {
                    plan.append(.takeOverEarlyStack(device, source: source.number,
                                                    continuity: Orchestrator.earlyContinuity(device, marker: marker)))
                }
            }
        } else {
            stackPresent = hasWholeStack(device, ours)
            if let marker = observed.earlyMarker, stackPresent {
                plan.append(.takeOverEarlyStack(device, source: source.number,
                                                continuity: Orchestrator.earlyContinuity(device, marker: marker)))
            }
            if !stackPresent {
                let continuity = TrackingContinuity.judge(device, disk: source.path, now: observed.diskStamp)
                plan.append(.rebuildStack(device, sourcePath: source.path, source: source.number, continuity: continuity))
            }
        }
        if stackPresent && device.cbtBlockSectors != nil {
            switch observed.trackingLayer {
            case .failed?:
                plan.append(.bypassTracking(device))
            case .linear?:
                if restoreTracking { plan.append(.restoreTracking(device)) }
            case .era?, nil:
                if device.trackingInterruptedAt != nil && device.trackingInterruptedEra == nil {
                    plan.append(.recordInterruptionEra(device))
                }
            }
        }
        for snapshot in observed.snapshots {
            let uuid = try Layout.uuid(deviceID: device.id, .snapshot(id: snapshot.id)).rawValue
            switch snapshot.state {
            case .creating: plan.append(.undoSnapshot(snapshot, of: device))
            case .dropping: plan.append(.finishDrop(snapshot, of: device))
            case .invalid: break
            // The takeover gives them up: the initramfs's top did not copy on write for them.
            case .active where observed.earlyMarker != nil && stackPresent: break
            case .active:
                // Without a stack, the rebuild re-activates the snapshots before the top opens.
                if stackPresent && !ours.contains(where: { $0.info.uuid == uuid }) {
                    plan.append(.reactivateSnapshots(snapshot, of: device))
                }
            case .mergePending:
                if stackPresent, observed.topOpenCount == 0 { plan.append(.startDeferredMerge(snapshot, of: device)) }
            case .merging:
                if let status = observed.topMergeStatus {
                    plan.append(status.isMergeComplete ? .finishMerge(snapshot, of: device) : .mergeInProgress(snapshot, of: device))
                } else if stackPresent {
                    plan.append(.resumeMerge(snapshot, of: device))
                }
            }
        }
        for growth in observed.growths {
            guard let snapshot = observed.snapshots.first(where: { $0.id == growth.snapshotID }) else { continue }
            plan.append(.finishGrowth(growth, of: snapshot, device: device))
        }
        if stackPresent { plan.append(.checkTopTable(device)) }
        // Last of the device's steps: it reads the record afresh and clears only the stop's fields.
        if stackPresent && device.cleanStopStamp != nil { plan.append(.forgetCleanStop(device)) }
        return plan
    }
}
