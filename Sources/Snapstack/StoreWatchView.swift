import BlockIO
import DeviceMapper
import Foundation
import SnapstackErrors
internal import StateDatabase
import SystemPackage

/// What the store watch reads and does: store use, overflowed snapshots, the event log.
extension Orchestrator {
    // MARK: The store watch's view

    /// Whether `stateDirectory` holds a state database yet, checked without creating anything.
    public static func hasState(in stateDirectory: FilePath) -> Bool {
        FileManager.default.fileExists(atPath: StateDatabase.databasePath(in: stateDirectory.string))
    }

    /// The stores of the live snapshots (active, merge pending, or marked invalid), with what
    /// the kernel says of each (`DM_TABLE_STATUS`).
    public func storeUsage() throws -> [StoreUsage] {
        var result: [StoreUsage] = []
        for device in try database.devices() where device.state == .protected {
            for snapshot in try database.snapshots(deviceID: device.id)
            where snapshot.state == .active || snapshot.state == .mergePending || snapshot.state == .invalid {
                let name = try Layout.snapshotName(device.name, snapshot.name)
                var condition = StoreUsage.Condition.missing
                // A device that vanished between the two calls reads as missing, not as an error.
                if try dm.info(name) != nil, let status = try? dm.status(name).first?.status {
                    switch status {
                    case .snapshot(.active(let allocated, let total, let metadata)):
                        condition = .active(allocated: allocated.bytes, total: total.bytes, metadata: metadata.bytes)
                    case .snapshot(.invalid): condition = .invalid
                    case .snapshot(.overflow): condition = .overflow
                    default: condition = .unknown
                    }
                }
                result.append(StoreUsage(
                    name: "\(device.name)-\(snapshot.name)", snapshotID: snapshot.id, origin: device.name,
                    originSize: Bytes(UInt64(device.sizeBytes)), storeIsGrowable: snapshot.storeKind != .device,
                    storePath: snapshot.storePath, storeSize: Bytes(UInt64(snapshot.storeSizeBytes)),
                    chunk: Sectors(UInt64(snapshot.chunkSectors)).bytes, condition: condition,
                    markedInvalid: snapshot.state == .invalid))
            }
        }
        return result
    }

    // MARK: Overflow

    /// Drops the snapshot named `argument` because the kernel reports it `Invalid` or
    /// `Overflow`, through the ordinary drop path (which puts the origin back to `linear` when
    /// it was the last snapshot: a table swap, no write to the origin's data), and records an
    /// `overflow` event saying why. The origin was never at risk: when a store fills because
    /// of origin writes, the kernel invalidates the snapshot and lets the writes through.
    ///
    /// A snapshot that is still open (mounted, being read) cannot be removed: it is marked
    /// `invalid` in the database instead, and the next call drops it once it is closed.
    /// Refused for a snapshot the kernel reports valid: that is `drop`'s job.
    @discardableResult
    public func dropOverflowed(snapshot argument: String, detail: String? = nil) throws -> OverflowDrop {
        let (snapshot, device) = try snapshot(named: argument)
        let label = "\(device.name)-\(snapshot.name)"
        let name = try Layout.snapshotName(device.name, snapshot.name)
        let info = try dm.info(name)
        var status: SnapshotStatus?
        if info != nil, case .snapshot(let current)? = try? dm.status(name).first?.status { status = current }
        let store = Self.describe(Bytes(UInt64(snapshot.storeSizeBytes)))
        var reason: String
        switch status {
        case .invalid?:
            reason = "the kernel invalidated it: its store (\(store)) filled up with copies of chunks the origin overwrote, or failed"
        case .overflow?:
            reason = "the kernel reports it overflowed: a write to the snapshot did not fit in its store (\(store))"
        default:
            guard snapshot.state == .invalid else {
                throw SnapstackError(.refused, "\(label) has not overflowed",
                                     why: status.map { "the kernel reports \($0)" } ?? "\(name.devicePath) does not exist",
                                     remedy: "use `snapstack drop` to drop a snapshot")
            }
            reason = "found invalid earlier"
        }
        if let detail { reason += " (\(detail))" }
        reason += "; its content is incomplete. The origin's writes went through and its data is intact"
        if let info, info.openCount > 0 {
            if snapshot.state != .invalid {
                var record = snapshot
                record.state = .invalid
                try self.database.update(record)
                event(StoreEvent.overflow, label, reason + "; not dropped yet: \(name.devicePath) is open, it is dropped once closed")
            }
            return OverflowDrop(name: label, reason: reason, dropped: false)
        }
        event(StoreEvent.overflow, label, reason + "; dropping it")
        try drop(snapshot, of: device)
        return OverflowDrop(name: label, reason: reason, dropped: true)
    }

    // MARK: Events

    /// Appends a line to the event log.
    public func record(event kind: String, subject: String, message: String) {
        event(kind, subject, message)
    }

    /// The event log, oldest first: the last `limit` lines, of `kind` only when given.
    public func events(kind: String? = nil, limit: Int = 100) throws -> [EventSummary] {
        try database.events(kind: kind, limit: limit).reversed().map {
            EventSummary(id: $0.id ?? 0, time: $0.time, kind: $0.kind, subject: $0.subject, message: $0.message)
        }
    }

    /// How many events of `kind` were ever recorded: what `snapstack events --kind KIND` lists,
    /// without its `--last` bound.
    public func eventCount(kind: String) throws -> Int {
        try database.eventCount(kind: kind)
    }

    /// `16 MiB (16777216 bytes)`: exact for scripts that parse logs, short for people.
    static func describe(_ size: Bytes) -> String {
        let (value, unit) = size.binaryScaled
        guard let unit else { return "\(size.rawValue) bytes" }
        let short = value == value.rounded() ? String(format: "%.0f", value) : String(format: "%.2f", value)
        return "\(short) \(unit) (\(size.rawValue) bytes)"
    }
}
