import BlockIO
import Exposition
import Foundation
import SnapstackErrors
import Testing
@testable import Snapstack

private let t0 = Date(timeIntervalSince1970: 1_764_686_400)

private func device(_ name: String, cbt: Bytes?, era: UInt32?, state: DeviceSummary.State = .protected,
                    tracking: DeviceSummary.Tracking = .continuous) -> DeviceSummary {
    DeviceSummary(id: "id-\(name)", name: name, path: "/dev/mapper/snapstack-\(name)", sourcePath: "/dev/loop\(name.count)",
                  size: .mebibytes(64), cbtBlock: cbt, currentEra: era, snapshotCount: 1, state: state, openCount: 0,
                  createdAt: t0, tracking: tracking)
}

private func snapshot(_ origin: String, _ name: String, set: Int64, freeze: Int64?, used: Bytes?, at offset: Double) -> SnapshotSummary {
    SnapshotSummary(id: "sid-\(name)", name: "\(origin)-\(name)", path: "/dev/mapper/snapstack-\(origin)-\(name)", origin: origin,
                    store: "/var/lib/snapstack/stores/\(origin)-\(name).cow", storeSize: .mebibytes(16), chunk: .kibibytes(4),
                    usedPercent: used.map { Double($0.rawValue) * 100 / Double(Bytes.mebibytes(16).rawValue) }, storeUsed: used,
                    state: .active, era: 3, setID: set, freezeMicroseconds: freeze, createdAt: t0.addingTimeInterval(offset))
}

private func export(_ id: String, _ device: String, _ kind: ExportSummary.Kind, state: ExportSummary.State = .complete,
                    at offset: Double, read: UInt64, written: UInt64) -> ExportSummary {
    ExportSummary(id: id, device: device, snapshot: "s", kind: kind, state: state, era: 2,
                  blockSize: .kibibytes(64), deviceSize: .mebibytes(64), imagePath: "/backup/x.img", format: "image",
                  bytesRead: Bytes(read), bytesWritten: Bytes(written), createdAt: t0.addingTimeInterval(offset),
                  completedAt: state == .complete ? t0.addingTimeInterval(offset + 2.5) : nil)
}

private func lines(_ text: String, _ family: String) -> [String] {
    text.split(separator: "\n").map(String.init).filter { $0.hasPrefix(family + "{") || $0.hasPrefix(family + " ") }
}

@Suite struct SnapstackMetricsTests {
    let input = MetricsInput(
        devices: [device("db:1", cbt: .kibibytes(64), era: 7, tracking: .interrupted),
                  device("w+v@x", cbt: nil, era: nil, state: .unstacked, tracking: .off)],
        snapshots: [
            snapshot("db:1", "old", set: 1, freeze: 41_250, used: .kibibytes(8), at: 10),
            snapshot("db:1", "new", set: 2, freeze: 12_000, used: .mebibytes(2), at: 20),
            snapshot("w+v@x", "old", set: 1, freeze: 41_250, used: nil, at: 10),
        ],
        exports: [
            export("aaaa0001", "db:1", .full, at: 100, read: 67_108_864, written: 40_000_000),
            export("aaaa0002", "db:1", .incremental, at: 200, read: 2_097_152, written: 2_097_152),
            // Running, and of a device no longer protected: neither counts.
            export("aaaa0003", "db:1", .incremental, state: .running, at: 300, read: 1, written: 1),
            export("aaaa0004", "gone", .full, at: 400, read: 5, written: 5),
        ],
        overflows: 2, trackingInterruptions: 0, readAt: t0.addingTimeInterval(1000.5))

    @Test func devices() throws {
        let text = try SnapstackMetrics.render(input)
        #expect(lines(text, "snapstack_protected_devices") == ["snapstack_protected_devices 2"])
        #expect(lines(text, "snapstack_device_info") == [
            #"snapstack_device_info{name="db:1",path="/dev/mapper/snapstack-db:1",source="/dev/loop4",id="id-db:1",tracking="cbt"} 1"#,
            #"snapstack_device_info{name="w+v@x",path="/dev/mapper/snapstack-w+v@x",source="/dev/loop5",id="id-w+v@x",tracking="none"} 1"#,
        ])
        #expect(lines(text, "snapstack_device_state").filter { $0.hasSuffix(" 1") } == [
            #"snapstack_device_state{name="db:1",state="protected"} 1"#, #"snapstack_device_state{name="w+v@x",state="unstacked"} 1"#,
        ])
        #expect(lines(text, "snapstack_device_state").count == 2 * SnapstackMetrics.deviceStates.count)
        #expect(lines(text, "snapstack_device_tracking").filter { $0.hasSuffix(" 1") } == [
            #"snapstack_device_tracking{name="db:1",tracking="interrupted"} 1"#, #"snapstack_device_tracking{name="w+v@x",tracking="off"} 1"#,
        ])
        #expect(lines(text, "snapstack_device_cbt_block_bytes") == [#"snapstack_device_cbt_block_bytes{name="db:1"} 65536"#])
        #expect(lines(text, "snapstack_device_era") == [#"snapstack_device_era{name="db:1"} 7"#])
        #expect(lines(text, "snapstack_device_size_bytes").count == 2)
    }

    @Test func lastExportIsTheLastCompleteOne() throws {
        let text = try SnapstackMetrics.render(input)
        #expect(lines(text, "snapstack_device_last_export_info") == [
            #"snapstack_device_last_export_info{name="db:1",export="aaaa0002",kind="incremental",format="image"} 1"#,
        ])
        #expect(lines(text, "snapstack_device_last_export_timestamp_seconds") == [
            #"snapstack_device_last_export_timestamp_seconds{name="db:1"} 1764686602.5"#,
        ])
        #expect(lines(text, "snapstack_device_last_export_duration_seconds") == [#"snapstack_device_last_export_duration_seconds{name="db:1"} 2.5"#])
        #expect(lines(text, "snapstack_device_last_export_read_bytes") == [#"snapstack_device_last_export_read_bytes{name="db:1"} 2097152"#])
        #expect(lines(text, "snapstack_device_last_full_export_timestamp_seconds") == [
            #"snapstack_device_last_full_export_timestamp_seconds{name="db:1"} 1764686502.5"#,
        ])
    }

    @Test func snapshotsAndFreeze() throws {
        let text = try SnapstackMetrics.render(input)
        #expect(lines(text, "snapstack_snapshots") == ["snapstack_snapshots 3"])
        #expect(lines(text, "snapstack_device_last_freeze_seconds") == [
            #"snapstack_device_last_freeze_seconds{name="db:1"} 0.012"#, #"snapstack_device_last_freeze_seconds{name="w+v@x"} 0.04125"#,
        ])
        #expect(lines(text, "snapstack_snapshot_store_used_bytes") == [
            #"snapstack_snapshot_store_used_bytes{name="db:1-new"} 2097152"#, #"snapstack_snapshot_store_used_bytes{name="db:1-old"} 8192"#,
        ])
        #expect(lines(text, "snapstack_snapshot_store_size_bytes").allSatisfy { $0.hasSuffix(" 16777216") })
    }

    @Test func countersAndFreshness() throws {
        let text = try SnapstackMetrics.render(input)
        #expect(text.contains("# TYPE snapstack_store_overflows_total counter\nsnapstack_store_overflows_total 2\n"))
        #expect(text.contains("# TYPE snapstack_tracking_interruptions_total counter\nsnapstack_tracking_interruptions_total 0\n"))
        #expect(text.contains("kind tracking-interrupted"))
        #expect(lines(text, "snapstack_metrics_written_timestamp_seconds") == ["snapstack_metrics_written_timestamp_seconds 1764687400.5"])
    }

    @Test func emptyStateHasEveryFamily() throws {
        let empty = MetricsInput(devices: [], snapshots: [], exports: [], overflows: 0, trackingInterruptions: 0, readAt: t0)
        let text = try SnapstackMetrics.render(empty)
        let families = text.split(separator: "\n").filter { $0.hasPrefix("# TYPE ") }.map { $0.split(separator: " ")[2] }
        #expect(families.count == SnapstackMetrics.families(input).count)
        #expect(families == families.sorted())
        #expect(families.allSatisfy { $0.hasPrefix("snapstack_") })
        #expect(lines(text, "snapstack_protected_devices") == ["snapstack_protected_devices 0"])
    }

    @Test func writtenAtomicallyWithMode0644() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("metrics-\(getpid())-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("snapstack.prom").path
        try SnapstackMetrics.write("a 1\n", to: .init(path))
        var first = stat()
        stat(path, &first)
        try SnapstackMetrics.write("a 2\n", to: .init(path))
        var second = stat()
        stat(path, &second)
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "a 2\n")
        #expect(first.st_ino != second.st_ino, "replaced by a rename, not rewritten in place")
        #expect(second.st_mode & 0o777 == 0o644)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path) == ["snapstack.prom"])
        #expect(throws: SnapstackError.self) { try SnapstackMetrics.write("x", to: .init(directory.appendingPathComponent("no/such.prom").path)) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path) == ["snapstack.prom"])
    }
}
