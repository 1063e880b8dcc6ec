import BlockIO
import DeviceMapper
import Foundation
import SnapstackErrors
internal import StateDatabase
import SystemPackage

/// What a stack's `-real` layer does with change tracking, as the kernel shows it.
enum TrackingLayer: Equatable {
    /// An era target that records writes.
    case era
    /// An era target whose metadata failed (its status reads `Error`): it fails every write to
    /// a block it has not marked yet.
    case failed
    /// A linear target: the tracking is bypassed (or the device has none).
    case linear
}

/// A device whose change tracking was bypassed because its era metadata failed.
public struct TrackingBypass: Sendable, Equatable {
    public var name: String
    public var why: String
}

/// When dm-era cannot commit its metadata (the device under the metadata file or volume
/// fails writes, or is gone), it fails the origin's writes to every block not yet marked in
/// the current era, and it fails its resume, which starts a new era. Backup software must
/// never take the disk it protects down with it: the era layer is swapped for a linear one
/// over the same origin, so that writes go through, and the tracking is recorded as
/// interrupted, so that the next incremental is refused with the reason. Once the metadata
/// device works again, `reconcile` puts the era layer back over the recorded metadata and
/// records the era from which the tracking is complete again.
extension Orchestrator {
    static let eraMetadataFailed = "its change-tracking metadata could not be written (dm-era reports Error, and fails writes to blocks it has not marked)"

    func trackingLayer(of device: DeviceRecord) throws -> TrackingLayer? {
        let real = try Layout.realName(device.name)
        guard try dm.info(real) != nil, let line = try dm.table(real).lines.first else { return nil }
        switch line.target {
        case .era:
            if case .failed? = try dm.status(real).first?.status { return .failed }
            return .era
        case .linear: return .linear
        default: return nil
        }
    }

    /// The protected devices whose era layer reports that its metadata failed.
    public func devicesWithFailedTracking() throws -> [String] {
        try database.devices().filter { $0.state == .protected && $0.cbtBlockSectors != nil }
            .filter { try trackingLayer(of: $0) == .failed }.map(\.name)
    }

    /// Bypasses the tracking of every protected device whose era layer reports that its
    /// metadata failed: what the daemon does at each look. Returns the devices bypassed.
    public func bypassFailedTracking() throws -> [TrackingBypass] {
        var bypassed: [TrackingBypass] = []
        for device in try database.devices() where device.state == .protected && device.cbtBlockSectors != nil {
            guard try trackingLayer(of: device) == .failed else { continue }
            try bypassTracking(device, why: Self.eraMetadataFailed)
            bypassed.append(TrackingBypass(name: device.name, why: Self.eraMetadataFailed))
        }
        return bypassed
    }

    /// Swaps `device`'s era layer for a linear table over the same origin and records the
    /// tracking as interrupted (first: a crash in between leaves it refusing incrementals).
    /// Idempotent: a layer that is linear already is left alone. Also resumes a `-real` that
    /// a failed resume of its era table left suspended. Returns whether it swapped the layer.
    @discardableResult
    func bypassTracking(_ device: DeviceRecord, why: String) throws -> Bool {
        let real = try Layout.realName(device.name)
        guard let info = try dm.info(real), let line = try dm.table(real).lines.first,
              case .era(let era) = line.target else { return false }
        var record = try database.device(id: device.id) ?? device
        record.interruptTracking(why)
        try database.update(record)
        let table = try Table(length: line.length, .linear(Linear(device: era.origin)))
        try failing("cannot bypass the change tracking of \(device.name)") {
            if info.hasInactiveTable { try dm.clearInactive(real) }
            try dm.load(real, table: table)
            if info.suspended {
                try dm.resume(real)
            } else {
                // The era target's own suspend tries a last commit, which fails: it says so in
                // the kernel log and the suspend goes on.
                try dm.withSuspended([real], options: [.noLockFS], transaction: nil) {}
            }
        }
        notice("warning: change tracking of \(device.name) is bypassed: \(why); writes go straight to its disk, "
               + "and the next incremental needs a full export or --allow-full. Once the metadata's device works "
               + "again, `snapstack reconcile` tracks changes again")
        event(TrackingEvent.interrupted, device.name, "change tracking bypassed: \(why)")
        return true
    }

    /// After a failed load or resume of `device`'s era layer: bypasses it when the failure left
    /// it suspended (the era swapped in, its resume's commit failed) or its metadata failed.
    /// Returns whether it did.
    @discardableResult
    func bypassIfEraFailed(_ device: DeviceRecord) throws -> Bool {
        guard try dm.info(try Layout.realName(device.name))?.suspended == true || trackingLayer(of: device) == .failed else {
            return false
        }
        return try bypassTracking(device, why: Self.eraMetadataFailed)
    }

    /// Puts the era layer back over `device`'s recorded metadata, and records the era from
    /// which its tracking is complete. When the metadata still fails, the era is swapped out
    /// again (the device is never left suspended) and the error says so.
    func restoreTracking(_ device: DeviceRecord) throws {
        guard let blockSectors = device.cbtBlockSectors, let path = device.eraMetadataPath else { return }
        let real = try Layout.realName(device.name)
        guard let line = try dm.table(real).lines.first, case .linear(let linear) = line.target else { return }
        let metadata: DeviceNumber
        if let (group, name) = device.eraMetadataVolume {
            let volume = try activeVolumePath(group: group, name: name)
            metadata = try host.facts(of: FilePath(volume)).number
        } else {
            metadata = try attach(FilePath(path)).number
        }
        let table = try Table(length: line.length, .era(Era(metadata: .number(metadata), origin: linear.device,
                                                             blockSize: Sectors(UInt64(blockSectors)))))
        do {
            try dm.load(real, table: table)
            try dm.withSuspended([real], options: [.noLockFS], transaction: nil) {}
        } catch {
            try? dm.clearInactive(real)
            try bypassIfEraFailed(device)
            throw SnapstackError(.failed, "cannot track the changes of \(device.name) again", why: "\(error)",
                                 remedy: "its change-tracking metadata \(path) must be writable: check the device it is on, then run `snapstack reconcile` again",
                                 cause: error)
        }
        _ = try recordInterruptionEra(try database.device(id: device.id) ?? device)
        notice("\(device.name): change tracking resumed over \(path); the next incremental needs a full export first")
    }
}
