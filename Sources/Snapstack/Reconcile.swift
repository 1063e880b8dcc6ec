import BlockIO
import DeviceMapper
import Foundation
import Store
import SystemPackage
import Udev

/// One repair `reconcile` made, or would make with `--dry-run`.
public struct ReconcileAction: Sendable, Equatable {
    public var subject: String
    public var action: String
}

extension Orchestrator {
    /// Compares the database with the live dm devices that carry snapstack's UUID prefix and
    /// the loop devices of its files, and repairs: resumes what is suspended, finishes or undoes
    /// half-done operations, re-activates persistent snapshots, rebuilds the stacks of protected
    /// devices that are present but unstacked (as after a reboot) over their existing era
    /// metadata, and removes orphans. Every step is idempotent: running it twice changes nothing
    /// the second time.
    public func reconcile(dryRun: Bool = false) throws -> [ReconcileAction] {
        var plan: [(ReconcileAction, () throws -> Void)] = []
        func step(_ subject: String, _ action: String, _ body: @escaping () throws -> Void) {
            plan.append((ReconcileAction(subject: subject, action: action), body))
        }

        // 1. Nothing of ours stays suspended: lower layers first, so that a top resumes onto
        // live devices. An inactive table left by a crash is discarded; step 2 loads what the
        // database asks for.
        let ours = try liveDevices()
        for device in ours.sorted(by: { $0.layerOrder < $1.layerOrder }) where device.info.suspended {
            step(device.info.name, "resume (it was left suspended)") {
                let name = try DMName(device.info.name)
                if try self.dm.info(name)?.hasInactiveTable == true { try self.dm.clearInactive(name) }
                try self.dm.resume(name)
            }
        }

        // 2. Every recorded device and snapshot.
        for device in try store.devices() {
            let snapshots = try store.snapshots(deviceID: device.id)
            switch device.state {
            case .protecting:
                step(device.name, "undo the interrupted protect") {
                    try self.removeStack(device)
                    try self.store.deleteDevice(id: device.id)
                }
                continue
            case .unprotecting:
                step(device.name, "finish the interrupted unprotect") {
                    for snapshot in snapshots { try self.removeSnapshotArtifacts(snapshot, of: device) }
                    try self.removeStack(device)
                    try self.store.deleteDevice(id: device.id)
                }
                continue
            case .protected:
                break
            }
            guard let source = try locate(device) else {
                step(device.name, "wait: its disk is not present (identity \(device.sourcePath), \(device.sizeBytes) bytes)") {}
                continue
            }
            let stackPresent = ours.contains { $0.deviceID == device.id && $0.layer == .real }
                && ours.contains { $0.deviceID == device.id && $0.layer == .top }
            if !stackPresent {
                step(device.name, "rebuild the stack over \(source.path) (\(source.number)), keeping its change tracking") {
                    var updated = device
                    updated.sourcePath = source.path
                    updated.sourceMajor = Int(source.number.major)
                    updated.sourceMinor = Int(source.number.minor)
                    if updated != device { try self.store.update(updated) }
                    try self.buildStack(updated, source: source.number, createMetadata: false,
                                        beforeTop: { try self.activateSnapshots(of: updated) })
                }
            }
            for snapshot in snapshots {
                let label = "\(device.name)-\(snapshot.name)"
                let uuid = try Layout.uuid(deviceID: device.id, .snapshot(id: snapshot.id)).rawValue
                switch snapshot.state {
                case .creating:
                    step(label, "undo the interrupted snapshot") {
                        try self.removeSnapshotArtifacts(snapshot, of: device)
                        try self.store.deleteSnapshot(id: snapshot.id)
                    }
                case .dropping:
                    step(label, "finish the interrupted drop") { try self.finishDrop(snapshot, of: device) }
                case .invalid:
                    break
                case .active:
                    if stackPresent && !ours.contains(where: { $0.info.uuid == uuid }) {
                        step(label, "re-activate the snapshot from its store") { try self.activateSnapshots(of: device) }
                    }
                case .mergePending:
                    let top = try Layout.topName(device.name)
                    if stackPresent, let info = try dm.info(top), info.openCount == 0 {
                        step(label, "start the deferred merge (\(device.name) is closed now)") {
                            var record = snapshot
                            record.state = .merging
                            try self.store.update(record)
                            try self.startMerge(record, of: device)
                        }
                    }
                case .merging:
                    let top = try Layout.topName(device.name)
                    if case .snapshotMerge(let status)? = try? dm.status(top).first?.status {
                        if status.isMergeComplete {
                            step(label, "finish the completed merge") { try self.finishMerge(snapshot, of: device) }
                        } else {
                            step(label, "merge in progress; left running") {}
                        }
                    } else if stackPresent {
                        step(label, "resume the interrupted merge") { try self.startMerge(snapshot, of: device) }
                    }
                }
            }
            plan += try storeGrowthRepairs(device)
            if stackPresent {
                plan.append((ReconcileAction(subject: device.name, action: "check the top table"), {
                    if try self.store.device(id: device.id) != nil { try self.restoreTopTable(device) }
                }))
            }
        }

        // Whatever a record names is not an orphan: it is kept, or removed by its record's own
        // step above, and so listed once.
        var expected = Set<String>()   // dm UUIDs
        var expectedFiles = Set<String>()
        for device in try store.devices() {
            expected.insert(try Layout.uuid(deviceID: device.id, .top).rawValue)
            expected.insert(try Layout.uuid(deviceID: device.id, .real).rawValue)
            if let path = device.eraMetadataPath { expectedFiles.insert(path) }
            for snapshot in try store.snapshots(deviceID: device.id) {
                expected.insert(try Layout.uuid(deviceID: device.id, .snapshot(id: snapshot.id)).rawValue)
                if snapshot.storeKind == .file { expectedFiles.insert(snapshot.storePath) }
            }
        }

        // 3. Orphans: dm devices of ours the database does not know, snapshots first.
        for device in ours.sorted(by: { $0.layerOrder > $1.layerOrder }) where !expected.contains(device.info.uuid ?? "") {
            if device.info.openCount > 0 {
                step(device.info.name, "left alone: not in the database, but open (\(device.info.openCount) opener(s))") {}
                continue
            }
            step(device.info.name, "remove: not in the database") { try self.dm.remove(try DMName(device.info.name)) }
        }
        // ...and loop devices and files under the state directory that nothing records.
        let prefix = stateDirectory.string + "/"
        for loop in (try? host.allLoops()) ?? [] {
            guard let file = loop.backingFile, file.hasPrefix(prefix), !expectedFiles.contains(file) else { continue }
            step(loop.path, "detach: backs \(file), which nothing records") {
                // It may be held by a dm orphan removed above; detach is lazy then.
                try self.host.detachLoop(loop.path)
            }
        }
        for directory in [storeDirectory, metadataDirectory] {
            for file in (try? FileManager.default.contentsOfDirectory(atPath: directory.string)) ?? [] {
                let path = directory.appending(file).string
                guard (file.hasSuffix(".cow") || file.hasSuffix(".era")), !expectedFiles.contains(path) else { continue }
                step(path, "delete: nothing records it") {
                    // An undo above may have deleted it already.
                    if FileManager.default.fileExists(atPath: path), try self.host.loops(backing: path).isEmpty {
                        try FileManager.default.removeItem(atPath: path)
                    }
                }
            }
        }

        let actions = plan.map(\.0).filter { $0.action != "check the top table" }
        if dryRun { return actions }
        var failures: [String] = []
        for (action, body) in plan {
            do { try body() } catch { failures.append("\(action.subject): \(action.action): \(error)") }
        }
        if !actions.isEmpty { event("reconcile", "", actions.map { "\($0.subject): \($0.action)" }.joined(separator: "; ")) }
        guard failures.isEmpty else {
            throw SnapstackError(.failed, "reconcile could not repair everything", why: failures.joined(separator: "; "),
                                 remedy: "fix the cause and run `snapstack reconcile` again")
        }
        return actions
    }

    /// A dm device that carries our UUID prefix.
    struct OwnDevice {
        var info: DeviceInfo
        var deviceID: String
        var layer: Layout.Layer
        /// Bottom-up order: real, snapshots, top.
        var layerOrder: Int {
            switch layer {
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
                result.append(OwnDevice(info: info, deviceID: id, layer: layer))
            }
        }
        return result
    }

    /// Finds the disk of a protected device: at its recorded number if the identity there
    /// still matches, else by identity among udev's block devices.
    func locate(_ device: DeviceRecord) throws -> (path: String, number: DeviceNumber)? {
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
        let top = try Layout.topName(device.name)
        for snapshot in try store.snapshots(deviceID: device.id) where snapshot.state == .active || snapshot.state == .mergePending {
            let name = try Layout.snapshotName(device.name, snapshot.name)
            guard try dm.info(name) == nil else { continue }
            let table = try Table(length: Sectors(UInt64(device.sizeBytes) / Sectors.size),
                                  .snapshot(Snapshot(origin: .number(real), cow: try attachStore(snapshot),
                                                     chunkSize: Sectors(UInt64(snapshot.chunkSectors)))))
            let uuid = try Layout.uuid(deviceID: device.id, .snapshot(id: snapshot.id))
            try failing("cannot re-activate \(device.name)-\(snapshot.name)") {
                try dm.createInactive(name, uuid: uuid, table: table)
                if try dm.info(top) != nil {
                    try dm.withSuspended([top]) { try dm.resume(name) }
                } else {
                    try dm.resume(name)
                }
            }
        }
    }
}
