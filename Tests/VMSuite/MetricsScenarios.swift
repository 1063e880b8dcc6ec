import BlockIO
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The daemon's metrics file read back by Prometheus' own client library (prometheus_client's
/// text parser, from PyPI), every value compared with the JSON reports that the operator sees.
enum MetricsScenarios {
    static let all: [Scenario] = [
        Scenario("metrics: the daemon's textfile, parsed by prometheus_client, equals the devices/snapshots/exports/events reports; replaced atomically",
                 daemonTextfile).lasting(220).nightly(),
    ]

    typealias CLI = OrchestratorScenarios.CLI

    /// The samples of an exposition, as prometheus_client parses them.
    struct Parsed {
        var types: [String: String]
        var samples: [(name: String, labels: [String: String], value: Double)]

        /// The samples named `name` whose labels include `labels`.
        func matching(_ name: String, _ labels: [String: String] = [:]) -> [(labels: [String: String], value: Double)] {
            samples.filter { sample in sample.name == name && labels.allSatisfy { sample.labels[$0.key] == $0.value } }
                .map { ($0.labels, $0.value) }
        }

        /// The one sample named `name` with `labels`; a failure when there is none or several.
        func value(_ name: String, _ labels: [String: String] = [:]) throws -> Double {
            let found = matching(name, labels)
            guard found.count == 1 else {
                throw Failure(description: "\(found.count) samples of \(name)\(labels) in the metrics: \(found)")
            }
            return found[0].value
        }

        var writtenAt: Double? { matching("snapstack_metrics_written_timestamp_seconds").first?.value }
    }

    /// The parser: prometheus_client's, which Prometheus' Python tooling uses. It must be
    /// installed for the python3 on the VM's PATH (Debian's python3-prometheus-client).
    static let parser = """
        import json, sys
        from prometheus_client.parser import text_string_to_metric_families
        with open(sys.argv[1], encoding="utf-8") as f:
            text = f.read()
        out = {"types": {}, "samples": []}
        for family in text_string_to_metric_families(text):
            out["types"][family.name] = family.type
            for s in family.samples:
                out["samples"].append({"name": s.name, "labels": s.labels, "value": s.value})
        print(json.dumps(out))
        """

    static func parse(_ lab: Lab, _ path: String) throws -> Parsed {
        let result = try lab.run(["python3", "-c", parser, path], allowFailure: true)
        guard result.status == 0 else {
            throw Failure(description: "prometheus_client could not parse \(path) (exit \(result.status)): \(result.stderr)\n"
                          + "file:\n\((try? String(contentsOfFile: path, encoding: .utf8)) ?? "(unreadable)")")
        }
        guard let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any],
              let types = object["types"] as? [String: String], let samples = object["samples"] as? [[String: Any]]
        else { throw Failure(description: "unexpected parser output: \(result.stdout)") }
        return Parsed(types: types, samples: samples.map {
            ($0["name"] as? String ?? "", $0["labels"] as? [String: String] ?? [:], ($0["value"] as? NSNumber)?.doubleValue ?? .nan)
        })
    }

    static func number(_ row: [String: Any], _ key: String) throws -> Double {
        guard let value = (row[key] as? NSNumber)?.doubleValue else {
            throw Failure(description: "report row has no number \(key): \(row)")
        }
        return value
    }

    /// A report's time (`2026-12-02T14:15:13Z`, whole seconds) as Unix time.
    static func time(_ row: [String: Any], _ key: String) throws -> Double {
        guard let text = row[key] as? String, let date = ISO8601DateFormatter().date(from: text) else {
            throw Failure(description: "report row has no time \(key): \(row)")
        }
        return date.timeIntervalSince1970
    }

    static func inode(_ path: String) throws -> UInt64 {
        var info = stat()
        guard stat(path, &info) == 0 else { throw Failure(description: "stat \(path): errno \(errno)") }
        return UInt64(info.st_ino)
    }

    /// Waits until the file at `path` exists, parses, and satisfies `predicate`.
    static func waitForFile(_ lab: Lab, _ path: String, _ what: String, daemon: DaemonScenarios.Daemon, timeout: Double = 180,
                            _ predicate: (Parsed) throws -> Bool) throws -> Parsed {
        let deadline = Date().addingTimeInterval(timeout)
        var last: Parsed?
        while Date() < deadline {
            if FileManager.default.fileExists(atPath: path) {
                let parsed = try parse(lab, path)
                if try predicate(parsed) { return parsed }
                last = parsed
            }
            usleep(200_000)
        }
        throw Failure(description: "the metrics file \(path) did not show \(what) within \(Int(timeout)) s; last: \(String(describing: last?.samples.prefix(5)))\nlog tail:\n\(daemon.logText.suffix(2000))")
    }

    // MARK: The scenario

    static func daemonTextfile(_ lab: Lab) throws {
        let started = Date()
        func note(_ text: String) { StoreWatchScenarios.note(String(format: "%5.1f s  ", Date().timeIntervalSince(started)) + text) }
        let cli = CLI(lab)
        let alphaDisk = try lab.loopDevice("alpha", size: .mebibytes(64), random: true)
        let otherDisk = try lab.loopDevice("other", size: .mebibytes(32), random: true)
        // A name with every punctuation character a device name may have.
        let other = "w+v:1@a=b.c#_d"
        let alphaTop = try cli.protect(alphaDisk.path, "alpha", "--cbt-block", "64K")
        let otherTop = try cli.protect(otherDisk.path, other, "--no-cbt")

        // One set of both (one freeze window), data written under it, a full export, a second
        // snapshot and an incremental on top, and the first snapshot dropped.
        try cli.ok("snapshot", "alpha", other, "--as", "s1", "--size", "16M")
        try lab.sh("dd", "if=/dev/urandom", "of=\(alphaTop)", "bs=1M", "count=4", "oflag=direct", "conv=notrunc,fsync", "status=none")
        note("protected both, snapshot set taken, data written")
        let image = lab.scratch.appendingPathComponent("alpha-backup.img").path
        let (full, _) = try ExportScenarios.export(cli, "alpha-s1", "--to", image)
        try cli.ok("snapshot", "alpha", "--as", "s2", "--size", "16M")
        try lab.sh("dd", "if=/dev/urandom", "of=\(alphaTop)", "bs=1M", "count=2", "seek=8", "oflag=direct", "conv=notrunc,fsync", "status=none")
        let (incremental, _) = try ExportScenarios.export(cli, "alpha-s2", "--to", image, "--since", full)
        try cli.ok("drop", "alpha-s1")

        note("full and incremental exported, s1 dropped")
        // The daemon, writing metrics to a textfile directory of the scratch dir.
        let directory = lab.scratch.appendingPathComponent("node-exporter").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let file = directory + "/snapstack.prom"
        let config = try DaemonScenarios.writeConfig(lab, """
            version: 1
            stores:
              watch: false
              interval: 600s
            metrics:
              file: \(file)
              interval: 2s
            """)
        let check = try lab.sh(CommandScenarios.snapstack, "daemon", "--check-config", "--config", config)
        try expect(check.contains("metrics: written to \(file) every 2.0 seconds"), "--check-config says: \(check)")
        let daemon = try DaemonScenarios.Daemon(lab, state: cli.state, config: config, logLevel: "debug")
        try daemon.waitReady()
        let ready = Date().timeIntervalSince1970
        note("daemon ready")
        // A file written after the boot pass.
        let parsed = try waitForFile(lab, file, "a write after READY", daemon: daemon) { ($0.writtenAt ?? 0) >= ready.rounded(.down) }

        note("metrics file written after READY")
        // Read the reports right after: nothing changes the state meanwhile.
        let devices = try cli.rows("devices")
        let snapshots = try cli.rows("snapshots")
        let exports = try cli.rows("exports")
        try compare(parsed, devices: devices, snapshots: snapshots, exports: exports)
        try expectEqual(try parsed.value("snapstack_store_overflows_total"), 0, "overflows before any")
        try expectEqual(try cli.reportRows(["events", "--kind", "overflow", "--last", "100000"]).count, 0, "overflow events")
        try expectEqual(try parsed.value("snapstack_tracking_interruptions_total"),
                        Double(try cli.reportRows(["events", "--kind", "tracking-interrupted", "--last", "100000"]).count),
                        "tracking interruptions vs events of kind tracking-interrupted")
        try expectEqual(try parsed.value("snapstack_device_last_export_info", ["name": "alpha"]), 1, "alpha's last export info")
        try expectEqual(parsed.matching("snapstack_device_last_export_info", ["name": "alpha"]).first?.labels["export"], incremental,
                        "alpha's last export is the incremental")
        try expectEqual(parsed.matching("snapstack_device_last_export_info", ["name": "alpha"]).first?.labels["kind"], "incremental",
                        "its kind")
        try expect(parsed.matching("snapstack_device_last_export_info", ["name": other]).isEmpty, "\(other) was never exported")
        let fullRow = exports.first { $0["name"] as? String == full } ?? [:]
        try expectEqual(try parsed.value("snapstack_device_last_full_export_timestamp_seconds", ["name": "alpha"]).rounded(.down),
                        try time(fullRow, "completed"), "alpha's last full export's completion")
        let written = try parsed.value("snapstack_metrics_written_timestamp_seconds")
        try expect(written >= ready - 1 && written <= Date().timeIntervalSince1970 + 1, "written at \(written), ready at \(ready)")
        // Types as the parser read them (it names a counter family without _total).
        for (family, type) in ["snapstack_store_overflows": "counter", "snapstack_tracking_interruptions": "counter",
                               "snapstack_device_size_bytes": "gauge", "snapstack_snapshot_store_used_bytes": "gauge",
                               "snapstack_device_info": "gauge", "snapstack_metrics_written_timestamp_seconds": "gauge"] {
            try expectEqual(parsed.types[family], type, "type of \(family)")
        }

        note("compared with the reports")
        // Replaced whole: a new inode each write, mode 0644, no temporary file left beside it.
        let first = try inode(file)
        _ = try waitForFile(lab, file, "a rewrite after the interval", daemon: daemon) { _ in try inode(file) != first }
        let attributes = try FileManager.default.attributesOfItem(atPath: file)
        try expectEqual((attributes[.posixPermissions] as? NSNumber)?.intValue, 0o644, "the file's mode")
        try expectEqual(try FileManager.default.contentsOfDirectory(atPath: directory), ["snapstack.prom"], "the textfile directory")

        note("rewritten with a new inode")
        // An overflow, handled by the daemon's store watch: the counter follows the events.
        try cli.ok("snapshot", other, "--as", "o1", "--size", "512K")
        try lab.sh("dd", "if=/dev/urandom", "of=\(otherTop)", "bs=1M", "count=4", "oflag=direct", "conv=notrunc,fsync", "status=none")
        let after = try waitForFile(lab, file, "one overflow", daemon: daemon) {
            (try? $0.value("snapstack_store_overflows_total")) == 1
                && $0.matching("snapstack_snapshot_info", ["name": "\(other)-o1"]).isEmpty
        }
        note("overflow counted")
        try expectEqual(try cli.reportRows(["events", "--kind", "overflow", "--last", "100000"]).count, 1, "overflow events")
        try compare(after, devices: try cli.rows("devices"), snapshots: try cli.rows("snapshots"), exports: try cli.rows("exports"))
        try expect(try FileManager.default.contentsOfDirectory(atPath: directory) == ["snapstack.prom"], "a temporary file was left")

        // `snapstack metrics` prints the same families, and --to writes the same file format.
        let printed = lab.scratch.appendingPathComponent("printed.prom").path
        try cli.ok("metrics", "--to", printed)
        let byCommand = try parse(lab, printed)
        try expectEqual(byCommand.types, after.types, "families of `snapstack metrics` vs the daemon's file")
        try compare(byCommand, devices: try cli.rows("devices"), snapshots: try cli.rows("snapshots"), exports: try cli.rows("exports"))
        let stdout = try cli.ok("metrics")
        try expect(stdout.hasPrefix("# HELP snapstack_"), "`snapstack metrics` stdout: \(stdout.prefix(200))")
        let bad = try cli.run(["metrics", "--to", lab.scratch.appendingPathComponent("missing/x.prom").path])
        try expectEqual(bad.status, 1, "metrics --to a missing directory (stderr: \(bad.stderr))")
        try expect(bad.stderr.contains("cannot write the metrics file") && bad.stderr.contains("/var/lib/prometheus/node-exporter"),
                   "its message: \(bad.stderr)")

        note("snapstack metrics checked")
        try expectEqual(try daemon.terminate(), 0, "daemon exit status after SIGTERM")
        note("daemon stopped")
        try cli.ok("unprotect", "alpha", "--force")
        try cli.ok("unprotect", other, "--force")
    }

    /// Every value of the metrics against the reports' rows.
    static func compare(_ parsed: Parsed, devices: [[String: Any]], snapshots: [[String: Any]], exports: [[String: Any]]) throws {
        try expectEqual(try parsed.value("snapstack_protected_devices"), Double(devices.count), "protected devices")
        try expectEqual(parsed.matching("snapstack_device_info").count, devices.count, "device_info samples")
        for row in devices {
            let name = row["name"] as? String ?? ""
            let labels = parsed.matching("snapstack_device_info", ["name": name]).first?.labels ?? [:]
            try expectEqual(labels["path"], row["path"] as? String, "\(name): path")
            try expectEqual(labels["source"], row["source"] as? String, "\(name): source")
            try expectEqual(labels["id"], row["id"] as? String, "\(name): id")
            try expectEqual(labels["tracking"], row["cbt_block"] is NSNumber ? "cbt" : "none", "\(name): tracking")
            try expectEqual(try parsed.value("snapstack_device_state", ["name": name, "state": row["state"] as? String ?? ""]), 1,
                            "\(name): state \(row["state"] ?? "")")
            try expectEqual(parsed.matching("snapstack_device_state", ["name": name]).map(\.value).reduce(0, +), 1,
                            "\(name): exactly one state")
            try expectEqual(try parsed.value("snapstack_device_size_bytes", ["name": name]), try number(row, "size"), "\(name): size")
            try expectEqual(try parsed.value("snapstack_device_snapshots", ["name": name]), try number(row, "snapshots"), "\(name): snapshots")
            if row["cbt_block"] is NSNumber {
                try expectEqual(try parsed.value("snapstack_device_cbt_block_bytes", ["name": name]), try number(row, "cbt_block"), "\(name): cbt block")
                try expectEqual(try parsed.value("snapstack_device_era", ["name": name]), try number(row, "era"), "\(name): era")
            } else {
                try expect(parsed.matching("snapstack_device_cbt_block_bytes", ["name": name]).isEmpty, "\(name): a cbt block without tracking")
                try expect(parsed.matching("snapstack_device_era", ["name": name]).isEmpty, "\(name): an era without tracking")
            }
            // The freeze window of its newest snapshot.
            let own = snapshots.filter { $0["origin"] as? String == name && $0["freeze"] is NSNumber }
            if let newest = own.max(by: { (($0["created"] as? String) ?? "", ($0["set"] as? NSNumber)?.intValue ?? 0)
                                            < (($1["created"] as? String) ?? "", ($1["set"] as? NSNumber)?.intValue ?? 0) }) {
                try expectEqual((try parsed.value("snapstack_device_last_freeze_seconds", ["name": name]) * 1_000_000).rounded(),
                                try number(newest, "freeze"), "\(name): last freeze window (µs)")
            }
            // Its last complete export.
            let done = exports.filter { $0["device"] as? String == name && $0["state"] as? String == "complete" }
            if let last = done.last {   // the report lists them oldest first
                let id = last["name"] as? String ?? ""
                try expectEqual(try parsed.value("snapstack_device_last_export_info", ["name": name, "export": id,
                                                                                      "kind": last["kind"] as? String ?? "",
                                                                                      "format": last["format"] as? String ?? ""]),
                                1, "\(name): last export \(id)")
                try expectEqual(try parsed.value("snapstack_device_last_export_timestamp_seconds", ["name": name]).rounded(.down),
                                try time(last, "completed"), "\(name): last export's completion")
                try expectEqual(try parsed.value("snapstack_device_last_export_read_bytes", ["name": name]), try number(last, "read"),
                                "\(name): bytes read")
                try expectEqual(try parsed.value("snapstack_device_last_export_written_bytes", ["name": name]), try number(last, "written"),
                                "\(name): bytes written")
                let took = try parsed.value("snapstack_device_last_export_duration_seconds", ["name": name])
                let span = try time(last, "completed") - time(last, "created")
                try expect(took >= 0 && took <= span + 1, "\(name): export took \(took) s, the report's times \(span) s apart")
            } else {
                try expect(parsed.matching("snapstack_device_last_export_timestamp_seconds", ["name": name]).isEmpty,
                           "\(name): a last export without one")
            }
        }

        try expectEqual(try parsed.value("snapstack_snapshots"), Double(snapshots.count), "snapshots")
        try expectEqual(parsed.matching("snapstack_snapshot_info").count, snapshots.count, "snapshot_info samples")
        for row in snapshots {
            let name = row["name"] as? String ?? ""
            let labels = parsed.matching("snapstack_snapshot_info", ["name": name]).first?.labels ?? [:]
            try expectEqual(labels["origin"], row["origin"] as? String, "\(name): origin")
            try expectEqual(labels["path"], row["path"] as? String, "\(name): path")
            try expectEqual(labels["store"], row["store"] as? String, "\(name): store")
            try expectEqual(labels["set"], (row["set"] as? NSNumber).map { "\($0.intValue)" }, "\(name): set")
            try expectEqual(try parsed.value("snapstack_snapshot_state", ["name": name, "state": row["state"] as? String ?? ""]), 1,
                            "\(name): state \(row["state"] ?? "")")
            let size = try number(row, "size")
            try expectEqual(try parsed.value("snapstack_snapshot_store_size_bytes", ["name": name]), size, "\(name): store size")
            // Nothing writes to the origins while the file and the report are read.
            let used = try parsed.value("snapstack_snapshot_store_used_bytes", ["name": name])
            try expectEqual(used, try number(row, "used"), "\(name): store used bytes")
            let percent = try number(row, "used_percent")
            try expect(abs(used * 100 / size - percent) < 1e-9, "\(name): \(used) of \(size) bytes used vs used_percent \(percent)")
            try expect(used > 0, "\(name): no store use")
            try expectEqual((try parsed.value("snapstack_snapshot_freeze_seconds", ["name": name]) * 1_000_000).rounded(),
                            try number(row, "freeze"), "\(name): freeze window (µs)")
            try expectEqual(try parsed.value("snapstack_snapshot_created_timestamp_seconds", ["name": name]).rounded(.down),
                            try time(row, "created"), "\(name): created")
        }
    }
}
