import BlockIO
import Exposition
import Foundation
import SnapstackErrors
internal import StateDatabase
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Event kinds of change tracking, which the metrics count.
public enum TrackingEvent {
    /// Change tracking of a device stopped covering its writes (a foreign table reload that
    /// left the era layer unused, or a stack rebuilt after writes it cannot account for), so
    /// its next incremental is refused until a full export. Recorded when an adopted device is
    /// adopted again (`Orchestrator.readopt`) and when a stack is rebuilt without proof that
    /// its disk was left alone (`TrackingContinuity`); `snapstack_tracking_interruptions_total`
    /// counts it.
    public static let interrupted = "tracking-interrupted"
}

/// Everything the metrics are made of, read through the same calls as the `devices`,
/// `snapshots`, `exports` and `events` reports, so that the values are theirs.
public struct MetricsInput: Sendable {
    public var devices: [DeviceSummary]
    public var snapshots: [SnapshotSummary]
    public var exports: [ExportSummary]
    public var overflows: Int
    public var trackingInterruptions: Int
    /// When the input was read: the file's freshness, so that a stale file is noticed.
    public var readAt: Date

    public init(devices: [DeviceSummary], snapshots: [SnapshotSummary], exports: [ExportSummary],
                overflows: Int, trackingInterruptions: Int, readAt: Date) {
        self.devices = devices
        self.snapshots = snapshots
        self.exports = exports
        self.overflows = overflows
        self.trackingInterruptions = trackingInterruptions
        self.readAt = readAt
    }
}

/// snapstack's metrics, for node_exporter's textfile collector.
public enum SnapstackMetrics {
    /// The states a device can be in, each a series of `snapstack_device_state` (1 for the one
    /// it is in), so that an alert can say `{state="protected"} != 1`.
    public static let deviceStates = DeviceSummary.State.allCases
    /// The states `snapstack snapshots` shows.
    public static let snapshotStates = SnapshotSummary.State.allCases

    /// The metric families of `input`. Every family is present, also without samples, so that
    /// its HELP says what will be there. (About 110 lines: one declarative list, family by
    /// family in the order of the README's table, reads better whole than cut in parts.)
    public static func families(_ input: MetricsInput) -> [MetricFamily] {
        var families: [MetricFamily] = []
        func family(_ name: String, _ type: MetricType, _ help: String, _ samples: [Sample]) {
            families.append(MetricFamily(name, type, help: help, samples: samples))
        }
        func named(_ name: String) -> [Label] { [Label("name", name)] }
        func seconds(_ date: Date) -> Double { date.timeIntervalSince1970 }

        family("snapstack_metrics_written_timestamp_seconds", .gauge,
               "When snapstack read the state these metrics show (Unix time): a file older than the daemon's interval is stale.",
               [Sample(seconds(input.readAt))])

        // Devices.
        let devices = input.devices
        family("snapstack_protected_devices", .gauge, "Protected devices, as `snapstack devices` lists them.",
               [Sample(Double(devices.count))])
        family("snapstack_device_info", .gauge,
               "A protected device (always 1): its top device, the disk under it, its id, and whether it has change tracking (cbt) or none.",
               devices.map { d in Sample([Label("name", d.name), Label("path", d.path), Label("source", d.sourcePath),
                                          Label("id", d.id), Label("tracking", d.cbtBlock == nil ? "none" : "cbt")], 1) })
        family("snapstack_device_state", .gauge,
               "1 for the state a device is in (protected, unstacked, suspended, protecting, unprotecting), 0 for the others.",
               devices.flatMap { d in
                   deviceStates.map { Sample([Label("name", d.name), Label("state", $0.rawValue)], $0 == d.state ? 1 : 0) }
               })
        family("snapstack_device_size_bytes", .gauge, "Size of the protected device.",
               devices.map { Sample(named($0.name), Double($0.size.rawValue)) })
        family("snapstack_device_cbt_block_bytes", .gauge, "Change-tracking block size; absent for a device without change tracking.",
               devices.compactMap { d in d.cbtBlock.map { Sample(named(d.name), Double($0.rawValue)) } })
        family("snapstack_device_era", .gauge, "The change-tracking era the device is in now, where the kernel's era target reports it.",
               devices.compactMap { d in d.currentEra.map { Sample(named(d.name), Double($0)) } })
        family("snapstack_device_tracking", .gauge,
               "1 for the state of a device's change tracking (continuous; interrupted: the next incremental export is refused until a full one; off), 0 for the others.",
               devices.flatMap { d in
                   DeviceSummary.Tracking.allCases.map { Sample([Label("name", d.name), Label("tracking", $0.rawValue)], $0 == d.tracking ? 1 : 0) }
               })
        family("snapstack_device_snapshots", .gauge, "Snapshots of the device.",
               devices.map { Sample(named($0.name), Double($0.snapshotCount)) })
        family("snapstack_device_openers", .gauge, "Openers of the device's top device (mounts, programs), where it exists.",
               devices.compactMap { d in d.openCount.map { Sample(named(d.name), Double($0)) } })

        // The newest snapshot of each device that has a recorded freeze window.
        var lastFreeze: [String: SnapshotSummary] = [:]
        for s in input.snapshots where s.freezeMicroseconds != nil {
            if let known = lastFreeze[s.origin], (known.createdAt, known.setID) >= (s.createdAt, s.setID) { continue }
            lastFreeze[s.origin] = s
        }
        family("snapstack_device_last_freeze_seconds", .gauge,
               "Freeze window (first suspend to last resume) of the set of the device's newest snapshot.",
               lastFreeze.map { Sample(named($0.key), Double($0.value.freezeMicroseconds!) / 1_000_000) })

        // The last complete export of each protected device.
        let protected = Set(devices.map(\.name))
        var lastExport: [String: ExportSummary] = [:]
        var lastFull: [String: ExportSummary] = [:]
        for export in input.exports where protected.contains(export.device) && export.state == .complete {
            let finished = export.completedAt ?? export.createdAt
            func newer(_ known: ExportSummary?) -> Bool {
                guard let known else { return true }
                return (known.completedAt ?? known.createdAt, known.createdAt, known.id) < (finished, export.createdAt, export.id)
            }
            if newer(lastExport[export.device]) { lastExport[export.device] = export }
            if export.kind == .full, newer(lastFull[export.device]) { lastFull[export.device] = export }
        }
        let exports = lastExport.sorted { $0.key < $1.key }
        family("snapstack_device_last_export_info", .gauge,
               "The device's last complete export (always 1): its id, kind (full or incremental) and format.",
               exports.map { Sample([Label("name", $0.key), Label("export", $0.value.id), Label("kind", $0.value.kind.rawValue),
                                     Label("format", $0.value.format)], 1) })
        family("snapstack_device_last_export_timestamp_seconds", .gauge, "When the device's last complete export completed (Unix time).",
               exports.map { Sample(named($0.key), seconds($0.value.completedAt ?? $0.value.createdAt)) })
        family("snapstack_device_last_export_duration_seconds", .gauge, "How long the device's last complete export took.",
               exports.compactMap { e in e.value.completedAt.map { Sample(named(e.key), max(0, $0.timeIntervalSince(e.value.createdAt))) } })
        family("snapstack_device_last_export_read_bytes", .gauge, "Bytes the device's last complete export read from its snapshot.",
               exports.map { Sample(named($0.key), Double($0.value.bytesRead.rawValue)) })
        family("snapstack_device_last_export_written_bytes", .gauge, "Bytes of data the device's last complete export wrote (holes not counted).",
               exports.map { Sample(named($0.key), Double($0.value.bytesWritten.rawValue)) })
        family("snapstack_device_last_full_export_timestamp_seconds", .gauge,
               "When the device's last complete full export completed (Unix time).",
               lastFull.map { Sample(named($0.key), seconds($0.value.completedAt ?? $0.value.createdAt)) })

        // Snapshots.
        let snapshots = input.snapshots
        family("snapstack_snapshots", .gauge, "Snapshots, as `snapstack snapshots` lists them.", [Sample(Double(snapshots.count))])
        family("snapstack_snapshot_info", .gauge,
               "A snapshot (always 1): its device, the protected device it is of, its store, set and id.",
               snapshots.map { s in Sample([Label("name", s.name), Label("path", s.path), Label("origin", s.origin),
                                            Label("store", s.store), Label("set", String(s.setID)), Label("id", s.id)], 1) })
        family("snapstack_snapshot_state", .gauge,
               "1 for the state a snapshot is in (active, invalid, overflow, merging, merge-pending, inactive, creating, dropping), 0 for the others.",
               snapshots.flatMap { s in
                   snapshotStates.map { Sample([Label("name", s.name), Label("state", $0.rawValue)], $0 == s.state ? 1 : 0) }
               })
        family("snapstack_snapshot_store_size_bytes", .gauge, "Size of the snapshot's copy-on-write store.",
               snapshots.map { Sample(named($0.name), Double($0.storeSize.rawValue)) })
        family("snapstack_snapshot_store_used_bytes", .gauge,
               "Copy-on-write space in use (the store's own metadata included), where the kernel reports it; it overflows at the store's size.",
               snapshots.compactMap { s in s.storeUsed.map { Sample(named(s.name), Double($0.rawValue)) } })
        family("snapstack_snapshot_freeze_seconds", .gauge, "Freeze window (first suspend to last resume) of the snapshot's set.",
               snapshots.compactMap { s in s.freezeMicroseconds.map { Sample(named(s.name), Double($0) / 1_000_000) } })
        family("snapstack_snapshot_created_timestamp_seconds", .gauge, "When the snapshot was taken (Unix time).",
               snapshots.map { Sample(named($0.name), seconds($0.createdAt)) })

        // Counters from the event log.
        family("snapstack_store_overflows_total", .counter,
               "Snapshots the kernel invalidated because their store filled up (events of kind overflow).",
               [Sample(Double(input.overflows))])
        family("snapstack_tracking_interruptions_total", .counter,
               "Times change tracking of a device was interrupted (events of kind \(TrackingEvent.interrupted)); its next export must be full.",
               [Sample(Double(input.trackingInterruptions))])
        return families
    }

    /// The exposition text of `input`.
    public static func render(_ input: MetricsInput) throws -> String {
        do {
            return try Exposition.render(families(input))
        } catch {
            throw SnapstackError(.failed, "cannot render the metrics", why: "\(error)", cause: error)
        }
    }

    /// Replaces `path` with `text` so that a reader sees the old file or the new one, whole,
    /// never a part: a temporary file in the same directory (hidden, and not named `*.prom`,
    /// so that node_exporter never reads it), written, fsynced, made 0644 (node_exporter runs
    /// as another user), renamed over `path`, and the directory fsynced (`AtomicFile`).
    public static func write(_ text: String, to path: FilePath) throws {
        guard let name = path.lastComponent?.string, !name.isEmpty, name != ".", name != ".." else {
            throw SnapstackError(.invalidArgument, "cannot write the metrics to \(path)", why: "it names no file",
                                 remedy: "name a file, e.g. /var/lib/prometheus/node-exporter/snapstack.prom")
        }
        do {
            try AtomicFile.replace(path, with: Array(text.utf8), permissions: 0o644)
        } catch {
            throw SnapstackError(.failed, "cannot write the metrics file \(path)", why: "\(error)",
                                 remedy: "check that its directory exists and is writable (node_exporter's textfile directory, /var/lib/prometheus/node-exporter on Debian)",
                                 cause: error)
        }
    }
}

extension Orchestrator {
    /// Reads what the metrics show, through the reports' own calls.
    public func metricsInput(now: Date = Date()) throws -> MetricsInput {
        MetricsInput(devices: try deviceSummaries(), snapshots: try snapshotSummaries(),
                     exports: try exports(),
                     overflows: try eventCount(kind: StoreEvent.overflow),
                     trackingInterruptions: try eventCount(kind: TrackingEvent.interrupted), readAt: now)
    }

    /// The metrics in Prometheus' text format.
    public func metricsText(now: Date = Date()) throws -> String {
        try SnapstackMetrics.render(try metricsInput(now: now))
    }
}
