import BlockIO
import DeviceMapper
import Foundation
import SnapstackErrors
internal import StateDatabase

/// Whether a stack built again over a disk keeps its change tracking. From power-off (or a
/// stack removed, or a disk unplugged) to the next build the disk has no stack, and whatever
/// wrote to it then went unrecorded. Continuity is proven, never assumed: it holds only when
/// the disk's filesystem shows the stamp (`FilesystemStamp`) that the daemon recorded when it
/// last stopped with the stack whole and the top unused. Otherwise the tracking is interrupted,
/// with the reason, and the next incremental is refused.
extension DeviceRecord {
    /// The clean stop's record used up, and the tracking interrupted as `continuity` says:
    /// with no era yet, so that every incremental is refused until the new stack records one.
    mutating func consumeCleanStop(_ continuity: TrackingContinuity) {
        cleanStopStamp = nil
        cleanStopAt = nil
        if let why = continuity.interruption { interruptTracking(why) }
    }

    mutating func interruptTracking(_ why: String) {
        trackingInterruptedAt = Date()
        trackingInterruptedReason = why
        trackingInterruptedEra = nil
    }
}

enum TrackingContinuity: Equatable {
    case kept
    /// Nothing proves the disk was left alone (no clean stop recorded, its first blocks
    /// unreadable): the tracking is interrupted.
    case interrupted(String)
    /// The disk's filesystem changed while it had no stack: writes bypassed the tracking and
    /// the persistent snapshots' copy-on-write alike, so both are given up.
    case bypassed(String)

    var interruption: String? {
        switch self {
        case .kept: nil
        case .interrupted(let why), .bypassed(let why): why
        }
    }

    /// The verdict for rebuilding `device`'s stack over `disk`, whose filesystem gives `now`
    /// (nil: its first bytes could not be read).
    static func judge(_ device: DeviceRecord, disk: String,
                      now: Result<FilesystemStamp, FilesystemStamp.Unstampable>?) -> TrackingContinuity {
        guard device.cbtBlockSectors != nil else { return .kept }
        guard let recorded = device.cleanStopStamp.flatMap(FilesystemStamp.init(parsing:)) else {
            return .interrupted("no clean stop of snapstack's daemon was recorded while its stack was whole and unused "
                                + "(a crash, a power cut, a disk unplugged or a stack removed by hand): nothing proves "
                                + "that nothing wrote to \(disk) while it had no stack")
        }
        switch now {
        case nil:
            return .interrupted("the first blocks of \(disk) could not be read to check its filesystem against the clean stop's")
        case .failure(let why)?:
            return .bypassed("\(disk) no longer shows the filesystem the clean stop recorded: \(why)")
        case .success(let stamp)? where stamp == recorded:
            return .kept
        case .success(let stamp)?:
            return .bypassed("the filesystem on \(disk) changed while it had no stack: \(recorded.changes(to: stamp))")
        }
    }
}

extension Orchestrator {
    /// The stamp of the filesystem on the device `number`, read past the page cache.
    func filesystemStamp(of number: DeviceNumber) -> Result<FilesystemStamp, FilesystemStamp.Unstampable>? {
        host.firstBytes(of: number, count: FilesystemStamp.bytesNeeded).map(FilesystemStamp.read)
    }

    /// Records, for every disk whose stack is whole and whose top is unused, what its
    /// filesystem shows now: the proof a rebuild after the next boot checks. The daemon calls
    /// this when it stops; at a shutdown systemd stops it after unmounting what fstab mounted.
    /// A device in use, or whose filesystem cannot vouch for it, has its record cleared. Returns
    /// the names recorded.
    public func recordCleanStop() throws -> [String] {
        var recorded: [String] = []
        for device in try database.devices() where device.state == .protected && !device.isAdopted && device.cbtBlockSectors != nil {
            var updated = device
            updated.cleanStopStamp = nil
            updated.cleanStopAt = nil
            if let top = try dm.info(try device.topName()), top.openCount == 0, !top.suspended,
               try dm.info(try Layout.realName(device.name)) != nil,
               case .success(let stamp)? = filesystemStamp(of: top.number) {
                updated.cleanStopStamp = stamp.description
                updated.cleanStopAt = Date()
                recorded.append(device.name)
            }
            if updated != device { try database.update(updated) }
        }
        return recorded
    }

    /// Builds the stack of `device` again over the disk `path` (`number`), over its recorded
    /// era metadata, with the tracking `continuity` allows. The clean stop's record is consumed
    /// first. An interruption is recorded before the build, with no era yet (which refuses
    /// every incremental), and its era once the new stack has started one: a crash in between
    /// leaves it refusing, and reconcile records the era (`recordInterruptionEra`).
    func rebuild(_ device: DeviceRecord, path: String, number: DeviceNumber, continuity: TrackingContinuity) throws -> DeviceRecord {
        var updated = device
        updated.sourcePath = path
        updated.sourceMajor = Int(number.major)
        updated.sourceMinor = Int(number.minor)
        updated.consumeCleanStop(continuity)
        if updated != device { try database.update(updated) }
        // Before the build, which re-activates only the valid ones.
        if case .bypassed(let why) = continuity { try invalidateSnapshots(of: updated, why: why) }
        try buildStack(updated, source: number, newMetadata: false)
        if let why = continuity.interruption {
            updated = try recordInterruptionEra(updated)
            notice("warning: change tracking of \(device.name) is interrupted: \(why); the next incremental needs a full export or --allow-full")
            event(TrackingEvent.interrupted, device.name, "change tracking interrupted: \(why); stack rebuilt over \(path) (\(number))")
        } else if updated.trackingInterruptedAt != nil && updated.trackingInterruptedEra == nil {
            // Interrupted before the stack went (its era layer bypassed, say): the new era layer
            // is complete from now on.
            updated = try recordInterruptionEra(updated)
        }
        return updated
    }

    /// Marks `device`'s snapshots invalid: writes reached its origin past their copy-on-write.
    func invalidateSnapshots(of device: DeviceRecord, why: String) throws {
        for var snapshot in try database.snapshots(deviceID: device.id) where snapshot.state == .active || snapshot.state == .mergePending {
            snapshot.state = .invalid
            try database.update(snapshot)
            notice("warning: snapshot \(device.name)-\(snapshot.name) is invalid: \(why), past its copy-on-write")
        }
    }

    /// Starts a new era on `device`'s live stack and records it as the first whose changes are
    /// complete: an incremental must start from it or later.
    @discardableResult
    func recordInterruptionEra(_ device: DeviceRecord) throws -> DeviceRecord {
        var record = device
        guard record.cbtBlockSectors != nil else { return record }
        let real = try Layout.realName(record.name)
        try dm.message(real, era: .checkpoint)
        guard case .era(let status)? = try dm.status(real).first?.status else {
            throw SnapstackError(.failed, "\(real.devicePath) is not tracking changes", remedy: "run `snapstack reconcile`")
        }
        record.trackingInterruptedEra = Int64(status.currentEra)
        try database.update(record)
        return record
    }
}
