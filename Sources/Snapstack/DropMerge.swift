import BlockIO
import DeviceMapper
import Foundation
import SnapstackErrors
internal import StateDatabase
import SystemPackage

/// How a merge ended for the caller.
public enum MergeOutcome: Sendable, Equatable {
    /// The origin now holds the snapshot's content; the snapshot is gone.
    case merged
    /// Running in the kernel; `snapstack reconcile` (or the daemon) finishes it.
    case started
    /// The origin is open: the merge starts at its next activation (reconcile with the top
    /// device closed, or boot), as `lvconvert --merge` defers it.
    case deferred
}

extension Orchestrator {
    /// Drops the snapshot named `argument` (`NAME-SNAP` or its device path).
    public func drop(snapshot argument: String) throws {
        let (snapshot, device) = try snapshot(named: argument)
        try drop(snapshot, of: device)
    }

    func drop(_ snapshot: SnapshotRecord, of device: DeviceRecord) throws {
        let name = try Layout.snapshotName(device.name, snapshot.name)
        if let info = try dm.info(name), info.openCount > 0 {
            throw SnapstackError(.refused, "cannot drop \(device.name)-\(snapshot.name)",
                                 why: "\(name.devicePath) is open (mounted or being read)", remedy: "unmount it or stop the reader")
        }
        guard snapshot.state != .merging else {
            throw SnapstackError(.refused, "\(device.name)-\(snapshot.name) is merging into \(device.name)",
                                 remedy: "wait for the merge to finish")
        }
        var record = snapshot
        record.state = .dropping
        try database.update(record)
        try reached(.dropRecorded)
        try finishDrop(record, of: device)
        event("drop", "\(device.name)-\(snapshot.name)", "dropped")
    }

    /// The steps of a drop after its intent is recorded; idempotent, used by reconcile too.
    func finishDrop(_ snapshot: SnapshotRecord, of device: DeviceRecord) throws {
        try run(try Teardown.drop(snapshot, of: device))
    }

    /// Rolls the origin back to the snapshot's content with `snapshot-merge`, then drops the
    /// snapshot. Waits (reporting progress) unless `wait` is false.
    public func merge(snapshot argument: String, wait: Bool = true, stopWaiting: () -> Bool = { false },
                      progress: (Double) -> Void = { _ in }) throws -> MergeOutcome {
        let (snapshot, device) = try snapshot(named: argument)
        // Other snapshots stay valid through a merge, as LVM's do: the merge's writes to the
        // origin are copied into them first, like any origin write. The kernel merges one
        // snapshot of an origin at a time.
        if let other = try database.snapshots(deviceID: device.id)
            .first(where: { $0.id != snapshot.id && ($0.state == .merging || $0.state == .mergePending) }) {
            throw SnapstackError(.refused, "cannot merge \(device.name)-\(snapshot.name)",
                                 why: "\(device.name)-\(other.name) is \(other.state == .merging ? "merging" : "waiting to merge") into \(device.name)",
                                 remedy: "wait for that merge to finish")
        }
        switch snapshot.state {
        case .active, .mergePending, .merging: break
        default:
            throw SnapstackError(.refused, "cannot merge \(device.name)-\(snapshot.name)", why: "it is \(snapshot.state.rawValue)")
        }
        if case .snapshot(let status)? = try? dm.status(try Layout.snapshotName(device.name, snapshot.name)).first?.status,
           status == .invalid || status == .overflow {
            throw SnapstackError(.refused, "cannot merge \(device.name)-\(snapshot.name)",
                                 why: "the kernel reports it \(status == .invalid ? "invalid" : "overflowed"): its content is incomplete",
                                 remedy: "drop it")
        }
        let snapshotDevice = try Layout.snapshotName(device.name, snapshot.name)
        if let info = try dm.info(snapshotDevice), info.openCount > 0 {
            throw SnapstackError(.refused, "cannot merge \(device.name)-\(snapshot.name)",
                                 why: "\(snapshotDevice.devicePath) is open", remedy: "unmount it or stop the reader")
        }
        var record = snapshot
        if let info = try dm.info(try device.topName()), info.openCount > 0 {
            // Rolling back under a mounted filesystem would change its blocks behind its back.
            record.state = .mergePending
            try database.update(record)
            event("merge", "\(device.name)-\(snapshot.name)", "deferred: \(device.name) is open")
            return .deferred
        }
        record.state = .merging
        try database.update(record)
        try reached(.mergeRecorded)
        try startMerge(record, of: device)
        event("merge", "\(device.name)-\(snapshot.name)", "started")
        guard wait else { return .started }
        return try waitForMerge(record, of: device, stopWaiting: stopWaiting, progress: progress) ? .merged : .started
    }

    /// Removes the snapshot device and loads snapshot-merge on the top; idempotent.
    func startMerge(_ snapshot: SnapshotRecord, of device: DeviceRecord) throws {
        try run(try Teardown.startMerge(snapshot, of: device))
    }

    /// Polls the merge until the kernel reports it done, then finishes it and returns true; or
    /// returns false as soon as `stopWaiting` says so, leaving the merge running.
    func waitForMerge(_ snapshot: SnapshotRecord, of device: DeviceRecord, stopWaiting: () -> Bool,
                      progress: (Double) -> Void) throws -> Bool {
        let top = try device.topName()
        var initial: UInt64?
        while true {
            guard case .snapshotMerge(let status)? = try dm.status(top).first?.status else {
                throw SnapstackError(.failed, "\(top.devicePath) is not merging", remedy: "run `snapstack reconcile`")
            }
            guard case .active(let allocated, _, let metadata) = status else {
                throw SnapstackError(.failed, "the merge of \(device.name)-\(snapshot.name) stopped",
                                     why: "the kernel reports \(status)", remedy: "check the kernel log (dmesg); the origin keeps what was merged so far")
            }
            let left = (allocated - metadata).rawValue
            if initial == nil { initial = max(left, 1) }
            progress(100 * (1 - Double(left) / Double(initial!)))
            if status.isMergeComplete { break }
            if stopWaiting() { return false }
            usleep(100_000)
        }
        try reached(.mergeFinished)
        try finishMerge(snapshot, of: device)
        return true
    }

    /// After the kernel finished merging: the top goes back to linear and the store is removed.
    func finishMerge(_ snapshot: SnapshotRecord, of device: DeviceRecord) throws {
        try run(Teardown.finishMerge(snapshot, of: device))
        event("merge", "\(device.name)-\(snapshot.name)", "finished")
    }
}
