import BlockIO
import DeviceMapper
import Foundation
import SnapstackErrors
internal import StateDatabase
import SystemPackage
import Udev

extension Orchestrator {
    /// Compares the database with the live dm devices that carry snapstack's UUID prefix and
    /// the loop devices of its files, and repairs: resumes what is suspended, finishes or undoes
    /// half-done operations, re-activates persistent snapshots, rebuilds the stacks of protected
    /// devices that are present but unstacked (as after a reboot) over their existing era
    /// metadata, and removes orphans. Every step is idempotent: running it twice changes nothing
    /// the second time.
    ///
    /// It observes first (`ReconcileObservation`), plans from that alone (`ReconcileStep.plan`),
    /// then runs the steps in order; `dryRun` returns the plan. `restoreTracking`: put back the
    /// era layers that were bypassed because their metadata failed (the daemon leaves that to
    /// the admin, who knows when the metadata's device was fixed).
    public func reconcile(dryRun: Bool = false, restoreTracking: Bool = true) throws -> [ReconcileAction] {
        let plan = try ReconcileStep.plan(try observeForReconcile(), restoreTracking: restoreTracking)
        let actions = plan.filter(\.isReported).map(\.action)
        if dryRun { return actions }
        var failures: [String] = []
        for step in plan {
            do { try execute(step) } catch {
                failures.append("\(step.action.subject): \(step.action.action): \(error)")
            }
        }
        if !actions.isEmpty { event("reconcile", "", actions.map { "\($0.subject): \($0.action)" }.joined(separator: "; ")) }
        // Disk names may have changed since the filter was written (a reboot, a re-plug).
        refreshLVMFilter()
        guard failures.isEmpty else {
            throw SnapstackError(.failed, "reconcile could not repair everything", why: failures.joined(separator: "; "),
                                 remedy: "fix the cause and run `snapstack reconcile` again")
        }
        return actions
    }

    /// The recorded state and the kernel's, as reconcile's plan needs them.
    func observeForReconcile() throws -> ReconcileObservation {
        let growths = try database.storeGrowths()
        var devices: [ReconcileObservation.Device] = []
        for record in try database.devices() {
            let top = try record.topName()
            let info = try dm.info(top)
            var mergeStatus: SnapshotStatus?
            if info != nil, case .snapshotMerge(let status)? = try? dm.status(top).first?.status { mergeStatus = status }
            let snapshots = try database.snapshots(deviceID: record.id)
            let source = record.state == .protected || record.state == .pending ? try locate(record) : nil
            // The disk's filesystem, read only when its stack is to be rebuilt.
            var diskStamp: Result<FilesystemStamp, FilesystemStamp.Unstampable>?
            if record.state == .protected, !record.isAdopted, record.cbtBlockSectors != nil, let source,
               try info == nil || dm.info(try Layout.realName(record.name)) == nil {
                diskStamp = filesystemStamp(of: source.number)
            }
            devices.append(ReconcileObservation.Device(
                record: record, snapshots: snapshots,
                growths: growths.filter { growth in snapshots.contains { $0.id == growth.snapshotID } },
                source: source,
                topOpenCount: info?.openCount, topMergeStatus: mergeStatus,
                tracking: try trackingCheck(record),
                sourceInUse: record.state == .pending ? try source.flatMap { try inUse($0.path, $0.number) } : nil,
                diskStamp: diskStamp,
                earlyMarker: earlyMarker(of: record),
                trackingLayer: record.state == .protected && record.cbtBlockSectors != nil ? try trackingLayer(of: record) : nil))
        }
        let prefix = stateDirectory.string + "/"
        let loops = ((try? host.allLoops()) ?? []).filter { $0.backingFile?.hasPrefix(prefix) == true }
        var files: [String] = []
        for directory in [storeDirectory, metadataDirectory] {
            for file in (try? FileManager.default.contentsOfDirectory(atPath: directory.string)) ?? []
            where file.hasSuffix(".cow") || file.hasSuffix(".era") {
                files.append(directory.appending(file).string)
            }
        }
        // Volumes (stores, era metadata) named for recorded devices only: another state
        // directory's are not ours to judge.
        let recorded = Set(devices.map(\.record.id))
        let volumes = (recorded.isEmpty ? [] : (try? self.volumes.volumes(tagged: Self.volumeTag)) ?? []).filter { volume in
            recorded.contains { volume.name.hasPrefix(Self.storeVolumeName(deviceID: $0, snapshotID: "")) }
        }
        return ReconcileObservation(ownDevices: try liveDevices(), devices: devices, loops: loops, files: files.sorted(), volumes: volumes)
    }

    /// Runs one step; each is idempotent, and tolerates what an earlier step already did.
    func execute(_ step: ReconcileStep) throws {
        switch step {
        case .resumeSuspended(let raw):
            let name = try DMName(raw)
            if try dm.info(name)?.hasInactiveTable == true { try dm.clearInactive(name) }
            do {
                try dm.resume(name)
            } catch {
                // An era layer whose metadata fails cannot resume (a resume starts an era):
                // it is swapped for a linear one rather than left suspended.
                guard let device = try database.devices().first(where: { (try? Layout.realName($0.name)) == name }),
                      try bypassIfEraFailed(device)
                else { throw error }
            }
        case .undoProtect(let device):
            try run(try Teardown.unprotect(device))
        case .finishUnprotect(let device, let snapshots):
            try run(snapshots.map { .removeSnapshotArtifacts($0, of: device) } + (try Teardown.unprotect(device)))
        case .waitForDisk, .waitForBoot, .mergeInProgress, .leaveOpenOrphan:
            break
        case .rebuildStack(let device, let path, let number, let continuity):
            _ = try rebuild(device, path: path, number: number, continuity: continuity)
        case .recordInterruptionEra(let device):
            try recordInterruptionEra(device)
        case .bypassTracking(let device):
            try bypassTracking(device, why: Self.eraMetadataFailed)
        case .restoreTracking(let device):
            try restoreTracking(device)
        case .forgetCleanStop(let device):
            // Afresh: an earlier step of this plan may have updated the record.
            guard var current = try database.device(id: device.id) else { break }
            current.cleanStopStamp = nil
            current.cleanStopAt = nil
            try database.update(current)
        case .takeOverEarlyStack(let device, let number, let continuity):
            try takeOverEarlyStack(device, source: number, continuity: continuity)
        case .buildPendingStack(let device, let path, let number):
            try buildPendingStack(device, sourcePath: path, source: number)
        case .readopt(let device, let table, let why):
            try readopt(device, table: table, why: why)
        case .undoSnapshot(let snapshot, let device):
            try removeSnapshotArtifacts(snapshot, of: device)
            try database.deleteSnapshot(id: snapshot.id)
        case .finishDrop(let snapshot, let device):
            try finishDrop(snapshot, of: device)
        case .reactivateSnapshots(_, let device):
            try activateSnapshots(of: device)
        case .startDeferredMerge(let snapshot, let device):
            var record = snapshot
            record.state = .merging
            try database.update(record)
            try startMerge(record, of: device)
        case .finishMerge(let snapshot, let device):
            try finishMerge(snapshot, of: device)
        case .resumeMerge(let snapshot, let device):
            try startMerge(snapshot, of: device)
        case .finishGrowth(let growth, let snapshot, let device):
            // An earlier step may have dropped or undone the snapshot: then nothing is left to grow.
            guard let current = try database.snapshot(id: snapshot.id),
                  let pending = try database.storeGrowth(snapshotID: growth.snapshotID) else { return }
            try finishGrowth(pending, of: current, device: device)
            event(StoreEvent.extend, step.action.subject,
                  "store grown from \(Self.describe(Bytes(UInt64(pending.fromBytes)))) to \(Self.describe(Bytes(UInt64(pending.toBytes)))); finished by reconcile")
        case .checkTopTable(let device):
            if try database.device(id: device.id) != nil { try restoreTopTable(device) }
        case .removeOrphan(let raw):
            try dm.remove(try DMName(raw))
        case .detachOrphanLoop(let path, _):
            // It may be held by a dm orphan removed above; detach is lazy then.
            try host.detachLoop(path)
        case .removeOrphanVolume(let volume):
            try volumes.removeVolume(group: volume.group, name: volume.name)
        case .leaveOpenOrphanVolume:
            break
        case .deleteOrphanFile(let path):
            // An undo above may have deleted it already.
            if FileManager.default.fileExists(atPath: path), try host.loops(backing: path).isEmpty {
                try FileManager.default.removeItem(atPath: path)
            }
        }
    }

    /// A dm device that carries our UUID prefix.
    struct OwnDevice {
        var info: DeviceInfo
        var deviceID: String
        var layer: Layout.Layer
        /// The devices its live table holds open.
        var holds: [DeviceNumber] = []
        /// Bottom-up order: clone, real, snapshots, top.
        var layerOrder: Int {
            switch layer {
            case .clone: -1
            case .real: 0
            case .snapshot: 1
            case .top: 2
            }
        }
    }

    func liveDevices() throws -> [OwnDevice] {
        var result: [OwnDevice] = []
        try failing("cannot list device-mapper devices") {
            for listed in try dm.list() {
                guard let info = try dm.info(rawName: listed.name), let uuid = info.uuid,
                      let (id, layer) = Layout.parse(uuid: uuid) else { continue }
                let holds = info.hasLiveTable ? ((try? dm.table(try DMName(listed.name)))?.referencedDevices ?? []) : []
                result.append(OwnDevice(info: info, deviceID: id, layer: layer, holds: holds))
            }
        }
        return result
    }

    /// Finds the disk of a protected device: at its recorded number if the identity there
    /// still matches, else by identity among udev's block devices.
    func locate(_ device: DeviceRecord) throws -> (path: String, number: DeviceNumber)? {
        if device.isAdopted {
            // An adopted device is its live dm device, found by name as LVM activates it.
            let live = try device.topName()
            return try dm.info(live).map { (live.devicePath, $0.number) }
        }
        let recorded = DeviceIdentity(wwn: device.wwn, serial: device.serial, partUUID: device.partUUID,
                                      fsUUID: device.fsUUID, size: Bytes(UInt64(device.sizeBytes)))
        let number = DeviceNumber(major: UInt32(device.sourceMajor), minor: UInt32(device.sourceMinor))
        if let facts = try? host.facts(of: FilePath(device.sourcePath)), facts.number == number, facts.size == recorded.size {
            let current = host.identity(of: number, size: facts.size)
            if recorded.isAnonymous || current.map(recorded.matches) ?? true { return (device.sourcePath, number) }
        }
        guard !recorded.isAnonymous else { return nil }
        for (node, candidate) in host.blockDevices() {
            guard host.dmUUID(of: candidate)?.hasPrefix(Layout.uuidPrefix) != true,
                  let facts = try? host.facts(of: FilePath(node)),
                  let identity = host.identity(of: candidate, size: facts.size), recorded.matches(identity) else { continue }
            return (node, candidate)
        }
        return nil
    }

    /// Creates the snapshot devices of `device`'s active snapshots that are missing, from their
    /// persistent stores. While the top exists it is suspended around each activation, so that
    /// no origin write slips past a snapshot that is coming back.
    func activateSnapshots(of device: DeviceRecord) throws {
        let real = try number(of: try Layout.realName(device.name))
        let top = try device.topName()
        for snapshot in try database.snapshots(deviceID: device.id) where snapshot.state == .active || snapshot.state == .mergePending {
            let name = try Layout.snapshotName(device.name, snapshot.name)
            guard try dm.info(name) == nil else { continue }
            let table = try Table(length: Sectors(UInt64(device.sizeBytes) / Sectors.size),
                                  .snapshot(Snapshot(origin: .number(real), cow: try attachStore(snapshot),
                                                     chunkSize: Sectors(UInt64(snapshot.chunkSectors)))))
            let uuid = try Layout.uuid(deviceID: device.id, .snapshot(id: snapshot.id))
            try failing("cannot re-activate \(device.name)-\(snapshot.name)") {
                try dm.createInactive(name, uuid: uuid, table: table, readOnly: !snapshot.writable)
                if try dm.info(top) != nil {
                    try dm.withSuspended([top]) { try dm.resume(name) }
                } else {
                    try dm.resume(name)
                }
            }
        }
    }
}
