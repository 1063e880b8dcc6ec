import ArgumentParser
import BlockIO
import Foundation
import Reports
import Snapstack

/// The fields of `snapstack devices`. Names are stable: scripts select them with -o.
enum DeviceReport {
    static let fields = [
        ReportField(name: "name", heading: "Name", help: "Protected device name", kind: .text),
        ReportField(name: "path", heading: "Path", help: "Top device that filesystems use", kind: .text),
        ReportField(name: "source", heading: "Source", help: "The disk under the stack", kind: .text),
        ReportField(name: "size", heading: "Size", help: "Device size", kind: .size),
        ReportField(name: "cbt_block", heading: "CBT", help: "Change-tracking block size (empty: no tracking)", kind: .size),
        ReportField(name: "era", heading: "Era", help: "Current change-tracking era", kind: .integer),
        ReportField(name: "snapshots", heading: "#Snap", help: "Number of snapshots", kind: .integer),
        ReportField(name: "state", heading: "State", help: "protected, unstacked, suspended, protecting, unprotecting", kind: .text),
        ReportField(name: "open", heading: "Open", help: "Openers of the top device (mounts, programs)", kind: .integer),
        ReportField(name: "id", heading: "ID", help: "Stable device id (in dm UUIDs)", kind: .text),
        ReportField(name: "created", heading: "Created", help: "When it was protected", kind: .time),
        ReportField(name: "adopted", heading: "Adopted", help: "The live volume adopted online (vg/lv); empty for a disk in a stack of its own", kind: .text),
        ReportField(name: "tracking", heading: "Tracking",
                    help: "continuous; interrupted (the next incremental is refused until a full export); off", kind: .text),
        ReportField(name: "interrupted", heading: "Interrupted", help: "When the change tracking was interrupted", kind: .time),
        ReportField(name: "interrupted_reason", heading: "Why", help: "Why the change tracking was interrupted", kind: .text),
    ]

    static func report(_ devices: [DeviceSummary]) -> Report {
        Report(name: "device", fields: fields,
               defaultFields: ["name", "path", "source", "size", "cbt_block", "era", "snapshots", "state", "tracking"],
               rows: devices.map { d in [
                   "name": .text(d.name), "path": .text(d.path), "source": .text(d.sourcePath), "size": .size(d.size),
                   "cbt_block": d.cbtBlock.map { .size($0) } ?? .none,
                   "era": d.currentEra.map { .integer(Int64($0)) } ?? .none,
                   "snapshots": .integer(Int64(d.snapshotCount)), "state": .text(d.state.rawValue),
                   "open": d.openCount.map { .integer(Int64($0)) } ?? .none, "id": .text(d.id), "created": .time(d.createdAt),
                   "adopted": d.adopted.map { .text($0) } ?? .none, "tracking": .text(d.tracking.rawValue),
                   "interrupted": d.trackingInterruptedAt.map { .time($0) } ?? .none,
                   "interrupted_reason": d.trackingInterruptedReason.map { .text($0) } ?? .none,
               ] })
    }
}

enum SnapshotReport {
    static let fields = [
        ReportField(name: "name", heading: "Name", help: "Snapshot name, NAME-SNAP", kind: .text),
        ReportField(name: "path", heading: "Path", help: "Snapshot device", kind: .text),
        ReportField(name: "origin", heading: "Origin", help: "Protected device it is a snapshot of", kind: .text),
        ReportField(name: "store", heading: "Store", help: "COW store file or device", kind: .text),
        ReportField(name: "size", heading: "Size", help: "COW store size", kind: .size),
        ReportField(name: "used_percent", heading: "Used%", help: "COW space in use", kind: .percent),
        ReportField(name: "used", heading: "Used", help: "COW space in use (the store's own metadata included)", kind: .size),
        ReportField(name: "state", heading: "State", help: "active, invalid, overflow, merging, merge-pending, inactive", kind: .text),
        ReportField(name: "freeze", heading: "Freeze", help: "Freeze window of its set (first suspend to last resume)", kind: .duration),
        ReportField(name: "era", heading: "Era", help: "First change-tracking era after the snapshot", kind: .integer),
        ReportField(name: "set", heading: "Set", help: "Snapshot set id", kind: .integer),
        ReportField(name: "chunk", heading: "Chunk", help: "Copy-on-write chunk size", kind: .size),
        ReportField(name: "access", heading: "Access", help: "ro (the default), or rw for a snapshot taken --writable", kind: .text),
        ReportField(name: "id", heading: "ID", help: "Stable snapshot id", kind: .text),
        ReportField(name: "created", heading: "Created", help: "When it was taken", kind: .time),
    ]

    static func report(_ snapshots: [SnapshotSummary]) -> Report {
        Report(name: "snapshot", fields: fields,
               defaultFields: ["name", "origin", "path", "size", "used_percent", "state", "freeze", "created"],
               rows: snapshots.map { s in [
                   "name": .text(s.name), "path": .text(s.path), "origin": .text(s.origin), "store": .text(s.store),
                   "size": .size(s.storeSize), "used_percent": s.usedPercent.map { .percent($0) } ?? .none,
                   "used": s.storeUsed.map { .size($0) } ?? .none,
                   "state": .text(s.state.rawValue), "freeze": s.freezeMicroseconds.map { .duration(microseconds: $0) } ?? .none,
                   "era": s.era.map { .integer($0) } ?? .none, "set": .integer(s.setID), "chunk": .size(s.chunk),
                   "id": .text(s.id), "created": .time(s.createdAt), "access": .text(s.writable ? "rw" : "ro"),
               ] })
    }
}

struct DevicesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "devices",
        abstract: "Report the protected devices.",
        discussion: "Fields (-o): " + DeviceReport.fields.map(\.name).joined(separator: ", ") + ". Use -o help for their meaning.")

    @OptionGroup var report: ReportArguments
    @OptionGroup var global: GlobalOptions

    func run() throws {
        try running { try report.print(DeviceReport.report(try global.orchestrator(.shared).deviceSummaries())) }
    }
}

struct SnapshotsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshots",
        abstract: "Report the snapshots.",
        discussion: "Fields (-o): " + SnapshotReport.fields.map(\.name).joined(separator: ", ") + ". Use -o help for their meaning.")

    @OptionGroup var report: ReportArguments
    @OptionGroup var global: GlobalOptions

    func run() throws {
        try running { try report.print(SnapshotReport.report(try global.orchestrator(.shared).snapshotSummaries())) }
    }
}

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Summarise snapstack's state and whether `snapstack reconcile` has anything to repair.",
        discussion: "Exit status 0 when everything is consistent, 1 when reconcile has work to do.")

    @OptionGroup var report: ReportArguments
    @OptionGroup var global: GlobalOptions

    func run() throws {
        try running {
            let orchestrator = try global.orchestrator(.shared)
            let summary = try orchestrator.statusSummary()
            let row: [String: ReportValue] = [
                "name": .text("snapstack"), "path": .text(orchestrator.stateDirectory.string),
                "devices": .integer(Int64(summary.devices)), "snapshots": .integer(Int64(summary.snapshots)),
                "suspended": .text(summary.suspended.joined(separator: ",")),
                "repairs": .integer(Int64(summary.needsReconcile.count)),
                "pending": .text(summary.needsReconcile.joined(separator: "; ")),
            ]
            try report.print(Report(name: "status", fields: [
                ReportField(name: "name", heading: "Name", help: "Always snapstack", kind: .text),
                ReportField(name: "path", heading: "State", help: "State directory", kind: .text),
                ReportField(name: "devices", heading: "#Dev", help: "Protected devices", kind: .integer),
                ReportField(name: "snapshots", heading: "#Snap", help: "Snapshots", kind: .integer),
                ReportField(name: "suspended", heading: "Suspended", help: "snapstack devices suspended now", kind: .text),
                ReportField(name: "repairs", heading: "#Repairs", help: "Repairs reconcile would make", kind: .integer),
                ReportField(name: "pending", heading: "Pending", help: "What reconcile would repair", kind: .text),
            ], defaultFields: ["path", "devices", "snapshots", "suspended", "repairs"], rows: [row]))
            if !summary.needsReconcile.isEmpty || !summary.suspended.isEmpty { throw ExitStatus.failed.exitCode }
        }
    }
}
