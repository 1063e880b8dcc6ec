import BlockIO
import DeviceMapper
import Foundation

/// Backups into what users already run: a restic repository, and the systemd template unit
/// that schedules `snapstack backup`. Witnesses: sha256sum of what restic gives back and of
/// the device, `restic stats` for the repository's growth, `systemd-analyze verify`.
enum BackupScenarios {
    static let all: [Scenario] = [
        Scenario("backup: a full export streamed into restic comes back equal; \(resticIncrementals) incrementals of 1% into restic, each equal to its snapshot",
                 resticCycles).lasting(230).nightly(),
        Scenario("backup: the template unit's own ExecStart makes a full, then incrementals, then a full after protection was interrupted",
                 templateUnit).lasting(250),
    ]

    typealias CLI = OrchestratorScenarios.CLI

    // MARK: restic

    /// Each cycle repeats the same path as the template unit's backups, which CI runs; the
    /// nightly tier streams them into restic three times.
    static let resticIncrementals = 3

    static func resticCycles(_ lab: Lab) throws {
        let cli = CLI(lab)
        let size = Bytes.mebibytes(64)
        // Random content: zeros would deduplicate to nothing and prove nothing.
        let disk = try lab.loopDevice("disk", size: size, random: true)
        _ = try cli.protect(disk.path, "vol", "--cbt-block", "64K")
        let repository = lab.scratch.appendingPathComponent("restic").path
        let restic = Restic(lab: lab, repository: repository)
        try restic.ok("init")

        // A full export streamed in, and dumped back out.
        let first = lab.lastLineOf(try cli.ok("snapshot", "vol", "--as", "s0"))
        try lab.sh("sh", "-c", "\"$1\" export vol-s0 --to - --state-dir \"$2\" | RESTIC_PASSWORD=\"$3\" restic --repo \"$4\" backup --quiet --stdin --stdin-filename vol.img",
                   "sh", CommandScenarios.snapstack, cli.state, Restic.password, repository)
        let streamed = try restic.dumpSHA256("latest", "/vol.img")
        try expectEqual(streamed, try lab.sha256(first, length: size), "restic dump of the streamed full export vs snapshot s0")
        try cli.ok("drop", "vol-s0")
        let afterStream = try restic.rawSize()

        // The image kept current by `snapstack backup`, backed up by restic after each export.
        let image = lab.scratch.appendingPathComponent("vol.img").path
        var generator = SeededGenerator(seed: UInt64(ProcessInfo.processInfo.environment["SNAPSTACK_SEED"].flatMap(UInt64.init)
                                                      ?? UInt64(Date().timeIntervalSince1970)))
        print("      seed \(generator.seed)")
        var previous = try restic.rawSize()
        var stored: [UInt64] = []
        // Three incrementals show what every one does (the suite's time is better spent on
        // scenarios of their own than on more rounds of the same).
        for cycle in 0...resticIncrementals {
            var changed: UInt64 = 0
            if cycle > 0 {
                // 1% of the device, as files change: 2 runs of 64 KiB-aligned data.
                let run = size.rawValue / 100 / 2 / 65536 * 65536
                for _ in 0..<2 {
                    let offset = UInt64.random(in: 0..<(size.rawValue - run) / 65536, using: &generator) * 65536
                    try lab.writeRandom(try topPath("vol"), offset: Bytes(offset), length: Bytes(run))
                    changed += run
                }
            }
            let result = try lab.run([CommandScenarios.snapstack, "backup", "vol", "--to", image, "--keep-snapshot", "--restic-repository", repository, "--reportformat", "json",
                                        "--state-dir", cli.state],
                                     allowFailure: true, environment: ["RESTIC_PASSWORD": Restic.password])
            try expectEqual(result.status, 0, "backup cycle \(cycle) (stderr: \(result.stderr))")
            let event = try backupEvent(result.stderr)
            try expectEqual(event["plan"] as? String, cycle == 0 ? "full" : "incremental", "cycle \(cycle) plan")
            guard let snapshotName = event["snapshot"] as? String, let resticID = event["restic_snapshot"] as? String else {
                throw Failure(description: "cycle \(cycle): no snapshot or restic snapshot in \(event)")
            }
            let snapshot = "/dev/mapper/snapstack-vol-\(snapshotName)"
            let expected = try lab.sha256(snapshot, length: size)
            try expectEqual(try ExportScenarios.fileSHA256(lab, image), expected, "cycle \(cycle): image vs its snapshot")
            try expectEqual(try restic.dumpSHA256(resticID, image), expected, "cycle \(cycle): restic dump \(resticID) vs its snapshot")
            try cli.ok("drop", "vol-\(snapshotName)")
            let now = try restic.rawSize()
            let read = (event["bytes_read"] as? NSNumber)?.uint64Value ?? 0
            print("      cycle \(cycle): changed \(changed / 1024) KiB, export read \(read / 1024) KiB, restic repository grew \((now - previous) / 1024) KiB")
            if cycle > 0 {
                stored.append(now - previous)
                try expect(read <= changed + 4 * 65536, "cycle \(cycle): the incremental read \(read) bytes for \(changed) changed")
            }
            previous = now
        }
        // Deduplication stores what changed, rounded out to restic's content-defined chunks
        // (1 MiB on average; the chunk a changed run falls in is larger than average, and a run
        // may straddle two), never the disk again: a quarter of the device is far above the
        // first and far below the second.
        let worst = stored.max() ?? .max
        try expect(worst < size.rawValue / 4,
                   "restic grew by \(worst) bytes in one cycle of \(size.rawValue / 100) changed bytes (device \(size.rawValue))")
        try cli.ok("unprotect", "vol")
        print("      restic: streamed full \(afterStream / 1024) KiB; per 1% cycle \(stored.map { "\($0 / 1024)" }.joined(separator: ", ")) KiB")
    }

    /// `restic` against one repository, with a fixed password in its environment.
    struct Restic {
        static let password = "snapstack-vmsuite"
        let lab: Lab
        let repository: String

        @discardableResult
        func ok(_ arguments: String...) throws -> String {
            try ok(arguments)
        }

        func ok(_ arguments: [String]) throws -> String {
            let result = try lab.run(["restic", "--repo", repository] + arguments, allowFailure: true,
                                     environment: ["RESTIC_PASSWORD": Self.password])
            try expectEqual(result.status, 0, "restic \(arguments.joined(separator: " ")) (stderr: \(result.stderr))")
            return result.stdout
        }

        /// sha256 of one file of a restic snapshot, as `restic dump` writes it out.
        func dumpSHA256(_ snapshot: String, _ path: String) throws -> String {
            let output = try lab.sh("sh", "-c", "RESTIC_PASSWORD=\"$1\" restic --repo \"$2\" dump \"$3\" \"$4\" | sha256sum",
                                    "sh", Self.password, repository, snapshot, path)
            return String(output.prefix(64))
        }

        /// The bytes the repository's blobs take (`restic stats --mode raw-data`).
        func rawSize() throws -> UInt64 {
            let output = try ok("stats", "--mode", "raw-data", "--json")
            guard let object = try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any],
                  let total = (object["total_size"] as? NSNumber)?.uint64Value else {
                throw Failure(description: "restic stats printed \(output)")
            }
            return total
        }
    }

    static func backupEvent(_ stderr: String) throws -> [String: Any] {
        try ExportScenarios.event("backup", in: stderr)
    }

    static func topPath(_ name: String) throws -> String { "/dev/mapper/snapstack-\(name)" }

    // MARK: The template unit

    /// The unit's ExecStart, expanded as systemd does for instance `instance` with the variables
    /// of its EnvironmentFile: `%i` is the instance, `${VAR}` one word, `$VAR` split on blanks.
    struct TemplateUnit {
        var execStart: String
        var environmentFile: String

        init(path: String) throws {
            let text = try String(contentsOfFile: path, encoding: .utf8)
            func value(_ key: String) throws -> String {
                let lines = text.split(separator: "\n").filter { $0.hasPrefix(key + "=") }
                guard lines.count == 1, let line = lines.first else {
                    throw Failure(description: "\(path) has \(lines.count) \(key)= lines")
                }
                return String(line.dropFirst(key.count + 1))
            }
            execStart = try value("ExecStart")
            environmentFile = try value("EnvironmentFile")
        }

        func environmentFile(instance: String) -> String {
            environmentFile.replacingOccurrences(of: "%i", with: instance)
        }

        func command(instance: String, environment: [String: String], binary: String) throws -> [String] {
            var words: [String] = []
            for word in execStart.split(separator: " ").map(String.init) {
                if word.hasPrefix("${") && word.hasSuffix("}") {
                    words.append(environment[String(word.dropFirst(2).dropLast())] ?? "")
                } else if word.hasPrefix("$") {
                    words += (environment[String(word.dropFirst())] ?? "").split(separator: " ").map(String.init)
                } else {
                    try expect(!word.contains("%") || word == "%i", "ExecStart uses a specifier this test does not expand: \(word)")
                    words.append(word == "%i" ? instance : word)
                }
            }
            try expectEqual(words.first, "/usr/sbin/snapstack", "the unit's program")
            words[0] = binary
            return words
        }
    }

    static func templateUnit(_ lab: Lab) throws {
        let cli = CLI(lab)
        let repositoryRoot = FileManager.default.currentDirectoryPath
        let unit = try TemplateUnit(path: repositoryRoot + "/systemd/snapstack-backup@.service")

        // systemd itself accepts the units, installed the way a package installs them.
        let root = lab.scratch.appendingPathComponent("root").path
        let binaryDirectory = URL(fileURLWithPath: CommandScenarios.snapstack).deletingLastPathComponent().path
        try lab.sh("bash", repositoryRoot + "/systemd/install.sh", "--root", root, "--sbindir", binaryDirectory, "--no-reload")
        let units = root + "/usr/lib/systemd/system"
        try lab.sh("cp", units + "/snapstack-backup@.service", units + "/snapstack-backup@data-1.service")
        try lab.sh("cp", units + "/snapstack-backup@.timer", units + "/snapstack-backup@data-1.timer")
        let verify = try lab.run(["systemd-analyze", "verify", "--man=no", units + "/snapstack-backup@data-1.service",
                                  units + "/snapstack-backup@data-1.timer", units + "/snapstack.service"], allowFailure: true)
        try expectEqual(verify.status, 0, "systemd-analyze verify (\(verify.stderr))")
        try expect(verify.stderr.isEmpty, "systemd-analyze verify warns: \(verify.stderr)")

        // A device whose name has a '-' (which %I would turn into '/'), with an ext4
        // filesystem, so that its identity (the filesystem UUID) is recorded.
        let size = Bytes.mebibytes(64)
        let disk = try lab.loopDevice("disk", size: size)
        try lab.sh("mkfs.ext4", "-q", disk.path)
        try lab.sh("udevadm", "trigger", "--action=change", "--settle", disk.path)
        let name = "data-1"
        let top = try cli.protect(disk.path, name, "--cbt-block", "64K")

        let image = lab.scratch.appendingPathComponent("backups/\(name).img").path
        try FileManager.default.createDirectory(atPath: lab.scratch.appendingPathComponent("backups").path,
                                                withIntermediateDirectories: true)
        let environment = ["SNAPSTACK_BACKUP_TO": image, "SNAPSTACK_BACKUP_OPTIONS": "--reportformat json --size 20%",
                           "SNAPSTACK_STATE_DIR": cli.state]
        let configuration = unit.environmentFile(instance: name)
        try expectEqual(configuration, "/etc/snapstack/backup/\(name).conf", "the unit's EnvironmentFile")
        try FileManager.default.createDirectory(atPath: "/etc/snapstack/backup", withIntermediateDirectories: true)
        try environment.map { "\($0.key)=\($0.value)" }.sorted().joined(separator: "\n")
            .write(toFile: configuration, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: configuration) }
        let command = try unit.command(instance: name, environment: environment, binary: CommandScenarios.snapstack)

        func backup(_ label: String, expect kind: String) throws -> [String: Any] {
            let result = try lab.run(command, allowFailure: true, environment: environment)
            try expectEqual(result.status, 0, "\(label): \(command.joined(separator: " ")) (stderr: \(result.stderr))")
            let event = try backupEvent(result.stderr)
            try expectEqual(event["plan"] as? String, kind, "\(label): plan (\(event["reason"] ?? ""))")
            // No snapshot is left behind, and the image is the device as it was (nothing
            // wrote to it since).
            try expectEqual(try cli.rows("snapshots").count, 0, "\(label): snapshots left")
            try expectEqual(try ExportScenarios.fileSHA256(lab, image), try lab.sha256(top, length: size), "\(label): image vs device")
            let verified = try cli.run(["verify", image])
            try expectEqual(verified.status, 0, "\(label): verify (\(verified.stderr))")
            return event
        }

        let first = try backup("first run", expect: "full")
        try expect((first["reason"] as? String)?.contains("no image") == true, "first run's reason: \(first)")
        for run in 2...3 {
            try lab.writeRandom(top, offset: .mebibytes(UInt64(8 * run)), length: .kibibytes(640))
            let event = try backup("run \(run)", expect: "incremental")
            let read = (event["bytes_read"] as? NSNumber)?.uint64Value ?? .max
            try expect(read <= 768 * 1024, "run \(run) read \(read) bytes for 640 KiB written")
        }

        // Protection interrupted: unprotected, a write the tracking can never see, protected
        // again. The next run must read everything, and say why.
        try cli.ok("unprotect", name)
        try lab.writeRandom(disk.path, offset: .mebibytes(40), length: .kibibytes(128))
        _ = try cli.protect(disk.path, name, "--cbt-block", "64K")
        let interrupted = try backup("after protection was interrupted", expect: "full")
        try expect((interrupted["reason"] as? String)?.contains("protected anew") == true, "reason: \(interrupted)")
        try lab.writeRandom(top, offset: .mebibytes(4), length: .kibibytes(64))
        _ = try backup("the run after", expect: "incremental")

        // Failures reach the journal as one line with the reason, and a status systemd shows.
        let unknown = try unit.command(instance: "nosuch", environment: environment, binary: CommandScenarios.snapstack)
        let failed = try lab.run(unknown, allowFailure: true, environment: environment)
        try expectEqual(failed.status, 5, "backup of an unknown device (stderr: \(failed.stderr))")
        try expect(failed.stderr.contains("no protected device is named \"nosuch\""), "stderr: \(failed.stderr)")
        var noTarget = environment
        noTarget["SNAPSTACK_BACKUP_TO"] = nil
        let missing = try lab.run(try unit.command(instance: name, environment: noTarget, binary: CommandScenarios.snapstack),
                                  allowFailure: true, environment: noTarget)
        try expectEqual(missing.status, 64, "backup without SNAPSTACK_BACKUP_TO (stderr: \(missing.stderr))")
        try expectEqual(try cli.rows("snapshots").count, 0, "snapshots left after the failures")
        try cli.ok("unprotect", name)
    }
}
