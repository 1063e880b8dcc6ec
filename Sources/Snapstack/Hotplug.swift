import BlockIO
import DeviceMapper
import Foundation
internal import StateDatabase
import SystemPackage
import Udev

/// What became of a block device that appeared.
public enum AppearedOutcome: Sendable, Equatable {
    /// It is the disk of protected device `name`; its stack was rebuilt over it, with its change
    /// tracking and persistent snapshots.
    case rebuilt(name: String)
    /// It is the disk of `name`, whose stack is already live over it.
    case alreadyStacked(name: String)
    /// Its identity is `name`'s, but `name`'s stack cannot be rebuilt over it now (`why`).
    case waiting(name: String, why: String)
    /// No protected device has its identity.
    case notProtected
}

/// What was torn down after a block device vanished.
public struct VanishedOutcome: Sendable, Equatable {
    /// The protected device whose disk it was.
    public var name: String
    /// dm devices that were still open: their tables were replaced by `error` and the kernel
    /// removes them when their last opener closes them.
    public var deferred: [String]
}

extension Orchestrator {
    /// The identity a record keeps, as `locate` reads it.
    static func recordedIdentity(_ device: DeviceRecord) -> DeviceIdentity {
        DeviceIdentity(wwn: device.wwn, serial: device.serial, partUUID: device.partUUID, fsUUID: device.fsUUID,
                       size: Bytes(UInt64(device.sizeBytes)))
    }

    /// Whether `candidate` (a block device udev describes, of `size`) is `device`'s disk: by the
    /// recorded identity, or — for a disk recorded without one — at the recorded number.
    static func isDisk(of device: DeviceRecord, _ candidate: UdevDevice, size: Bytes) -> Bool {
        let recorded = recordedIdentity(device)
        if recorded.isAnonymous {
            return candidate.number == DeviceNumber(major: UInt32(device.sourceMajor), minor: UInt32(device.sourceMinor))
                && size == recorded.size
        }
        return recorded.matches(DeviceIdentity(udev: candidate, size: size))
    }

    /// The protected device whose disk `candidate` is, if any.
    public func protectedName(of candidate: UdevDevice) throws -> String? {
        guard let node = candidate.deviceNode, let facts = try? host.facts(of: FilePath(node)) else { return nil }
        return try database.devices().first { $0.state == .protected && !$0.isAdopted && Self.isDisk(of: $0, candidate, size: facts.size) }?.name
    }

    /// For a block device that appeared (udev `add`): when it is the disk of a protected device
    /// whose stack is missing — plugged in again, or present at boot — rebuilds the stack over
    /// it, as `reconcile` would: over the existing era metadata (change tracking continues only
    /// when the disk's filesystem proves that nothing wrote to it meanwhile, see
    /// `TrackingContinuity`; the kernel starts a new era), with its persistent snapshots re-activated before the top
    /// device opens to I/O, and the top table its snapshots need. The disk of a device
    /// protected `--at-boot` gets its first stack, when nothing uses it.
    public func restack(_ candidate: UdevDevice) throws -> AppearedOutcome {
        guard let node = candidate.deviceNode, let facts = try? host.facts(of: FilePath(node)),
              host.dmUUID(of: candidate.number)?.hasPrefix(Layout.uuidPrefix) != true else { return .notProtected }
        guard let device = try database.devices().first(where: {
            ($0.state == .protected || $0.state == .pending) && !$0.isAdopted && Self.isDisk(of: $0, candidate, size: facts.size)
        })
        else { return .notProtected }
        if device.state == .pending {
            if let why = try inUse(node, facts.number) {
                return .waiting(name: device.name, why: "protected --at-boot, but \(why)")
            }
            try buildPendingStack(device, sourcePath: node, source: facts.number)
            refreshLVMFilter()
            return .rebuilt(name: device.name)
        }
        let real = try Layout.realName(device.name), top = try device.topName()
        let under = try dm.info(real) != nil ? try underlyingDisk(of: real) : nil
        if under == facts.number {
            // A stack over this very disk: complete, or its top is missing (buildStack adds it).
            if try dm.info(top) != nil { return .alreadyStacked(name: device.name) }
        } else {
            if let under, FileManager.default.fileExists(atPath: "/sys/dev/block/\(under)") {
                return .waiting(name: device.name, why: "its stack is live over \(under), a disk with the same identity")
            }
            // What is left of a disk that went away (its remove event was missed, or an error
            // table awaits its last close) goes before the new stack takes the same names.
            if let info = try dm.info(top), info.openCount > 0 {
                return .waiting(name: device.name, why: "\(top.devicePath) of the disk that went away is still open (mounted?); unmount it")
            }
            let deferred = try removeVanishedLayers(device)
            guard deferred.isEmpty else {
                return .waiting(name: device.name, why: "\(deferred.joined(separator: ", ")) of the disk that went away is still open")
            }
        }
        let continuity = try dm.info(real) == nil
            ? TrackingContinuity.judge(device, disk: node, now: filesystemStamp(of: facts.number)) : .kept
        let updated = try rebuild(device, path: node, number: facts.number, continuity: continuity)
        try restoreTopTable(updated)
        event("restack", device.name, "stack rebuilt over \(node) (\(facts.number))")
        refreshLVMFilter()
        return .rebuilt(name: device.name)
    }

    /// For a block device that vanished (udev `remove`): tears down the stack of the protected
    /// device whose disk it was, and leaves its record, era metadata and snapshot stores for
    /// `restack` when it comes back. Nothing here waits on the vanished disk: a layer nobody has
    /// open is removed; one still open (a mounted filesystem, a reader of a snapshot) first gets
    /// an `error` table — swapped in with a no-flush, no-freeze suspend that waits only for I/O
    /// already in flight, which the disk's driver has failed — so that every later I/O fails at
    /// once instead of waiting, and then a deferred remove, which the kernel carries out when
    /// the last opener closes it (`dmsetup remove --force --deferred`).
    public func tearDownVanished(_ number: DeviceNumber) throws -> VanishedOutcome? {
        for device in try database.devices() where device.state == .protected && !device.isAdopted {
            let real = try Layout.realName(device.name)
            let recorded = DeviceNumber(major: UInt32(device.sourceMajor), minor: UInt32(device.sourceMinor))
            let live = try dm.info(real) != nil ? try underlyingDisk(of: real) : nil
            guard live == number || (live == nil && recorded == number) else { continue }
            let deferred = try removeVanishedLayers(device)
            withdrawMember(device, keepPersistent: true)
            event("vanished", device.name, "disk \(number) went away; stack removed" +
                  (deferred.isEmpty ? "" : ", \(deferred.joined(separator: ", ")) removed when closed"))
            return VanishedOutcome(name: device.name, deferred: deferred)
        }
        return nil
    }

    /// Removes `device`'s snapshot devices, top and -real layer (in that order, so that each
    /// is released by what stood on it), then detaches the loop devices of its metadata and
    /// stores. Returns the layers whose removal the kernel defers until they are closed.
    @discardableResult
    func removeVanishedLayers(_ device: DeviceRecord) throws -> [String] {
        var deferred: [String] = []
        var names: [DMName] = []
        for snapshot in try database.snapshots(deviceID: device.id) {
            names.append(try Layout.snapshotName(device.name, snapshot.name))
        }
        // Only a disk of ours vanishes this way: an adopted device's node is not ours to remove.
        guard !device.isAdopted else { return [] }
        names += [try Layout.topName(device.name), try Layout.realName(device.name)]
        try failing("cannot remove the stack of \(device.name), whose disk went away") {
            for name in names where try forceRemove(name) { deferred.append(name.rawValue) }
            if let path = device.eraMetadataPath, device.eraMetadataVolume == nil { try detach(FilePath(path)) }
            for snapshot in try database.snapshots(deviceID: device.id) where snapshot.storeKind == .file {
                try detach(FilePath(snapshot.storePath))
            }
        }
        return deferred
    }

    /// Removes `name` now when nothing has it open; else swaps in an `error` table and asks for
    /// a deferred remove. Returns true when the removal was deferred.
    func forceRemove(_ name: DMName) throws -> Bool {
        guard let info = try dm.info(name) else { return false }
        if info.hasInactiveTable { try dm.clearInactive(name) }
        if info.suspended { try dm.resume(name) }
        if info.openCount == 0 {
            do {
                try dm.remove(name)
                return false
            } catch {
                // Opened since we looked: fall through to the error table.
                guard try dm.info(name)?.openCount ?? 0 > 0 else { throw error }
            }
        }
        let length = try dm.rawTable(name).reduce(Sectors.zero) { $0 + $1.length }
        if length > .zero {
            try dm.load(name, table: try Table(length: length, .error))
            do {
                try dm.withSuspended([name], options: [.noLockFS, .noFlush], transaction: nil) {}
            } catch {
                try? dm.clearInactive(name)
                throw error
            }
        }
        try dm.removeDeferred(name)
        return true
    }

    /// The disk a -real layer maps: the origin of its era table, or its linear device.
    func underlyingDisk(of real: DMName) throws -> DeviceNumber? {
        guard let line = try? dm.table(real).lines.first else { return nil }
        switch line.target {
        case .era(let era): if case .number(let number) = era.origin { return number }
        case .linear(let linear): if case .number(let number) = linear.device { return number }
        default: break
        }
        return nil
    }
}
