import BlockIO
import DeviceMapper
import Foundation
@_spi(Testing) import Images
import SnapstackErrors
import SystemPackage

/// Copy-out end to end: `export`, `verify`, `apply`, `restore`, `changes`, checked with
/// sha256sum against the snapshot device and with era_invalidate against the change tracking.
enum ExportScenarios {
    /// Incrementals in a row: each goes through the same path, so CI runs 2; the nightly tier 5.
    static let incrementals = Tier.length(ci: 2, nightly: 5)

    static let all: [Scenario] = [
        Scenario("export: full then \(incrementals) incrementals of ext4 under writes equal each snapshot, reading only changed blocks",
                 incrementalRounds).lasting(Tier.length(ci: 170, nightly: 280)),
        Scenario("export: killed mid-copy is incomplete, a re-run finishes it; verify names a flipped byte's block",
                 interruptedExport),
        Scenario("export: streams through apply equal direct exports; raw stream equals the snapshot; restore writes the device it checked",
                 streamsAndRestore).lasting(230),
    ]

    typealias CLI = OrchestratorScenarios.CLI

    /// The last line of a command's stdout: the export id.
    static func lastLine(_ text: String) -> String {
        text.split(separator: "\n").last.map(String.init) ?? ""
    }

    /// The JSON line `export --reportformat json` ends stderr with.
    static func outcome(_ stderr: String) throws -> [String: Any] {
        try event("exported", in: stderr)
    }

    /// The last `{"event":NAME,...}` JSON line a command wrote to stderr.
    static func event(_ name: String, in stderr: String) throws -> [String: Any] {
        for line in stderr.split(separator: "\n").reversed() {
            if let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
               object["event"] as? String == name {
                return object
            }
        }
        throw Failure(description: "no \"\(name)\" JSON line in: \(stderr)")
    }

    static func export(_ cli: CLI, _ arguments: String...) throws -> (id: String, outcome: [String: Any]) {
        let result = try cli.run(["export"] + arguments + ["--reportformat", "json"])
        try expectEqual(result.status, 0, "export \(arguments.joined(separator: " ")) (stderr: \(result.stderr))")
        return (lastLine(result.stdout), try outcome(result.stderr))
    }

    static func fileSHA256(_ lab: Lab, _ path: String) throws -> String {
        String(try lab.sh("sha256sum", path).prefix(64))
    }

    /// Blocks era_invalidate reports for the device written since `era`, taking and dropping a
    /// metadata snapshot itself.
    static func eraWitness(_ lab: Lab, cli: CLI, device: String, id: String, since era: Int64) throws -> Set<UInt64> {
        // A metadata file's loop device, or the volume `protect --cbt-metadata VG` made.
        var metadata = try lab.sh("losetup", "-j", cli.state + "/cbt/\(id).era").split(separator: ":").first.map(String.init) ?? ""
        if metadata.isEmpty {
            metadata = try lab.sh("lvs", "--noheadings", "-o", "lv_path", "@snapstack").split(separator: "\n")
                .map { $0.trimmingCharacters(in: .whitespaces) }.first { $0.hasSuffix("/snapstack-\(id)-era") } ?? ""
        }
        let real = try DMName("snapstack-\(device)-real")
        try lab.dm.message(real, era: .takeMetadataSnapshot)
        defer { try? lab.dm.message(real, era: .dropMetadataSnapshot) }
        return try EraScenarios.invalidated(lab, metadata: metadata, since: UInt32(era))
    }

    static func exportRow(_ cli: CLI, _ id: String) throws -> [String: Any] {
        guard let row = try cli.rows("exports").first(where: { $0["name"] as? String == id }) else {
            throw Failure(description: "export \(id) is not reported")
        }
        return row
    }

    // MARK: Scenarios

    static func incrementalRounds(_ lab: Lab) throws {
        let cli = CLI(lab)
        let size = Bytes.mebibytes(64)
        let disk = try lab.loopDevice("disk", size: size)
        // Small blocks, so that a few scattered writes leave most of the 64 MiB unchanged.
        let top = try cli.protect(disk.path, "vol", "--cbt-block", "64K")
        try lab.sh("mkfs.ext4", "-q", "-b", "4096", top)
        let mountPoint = lab.scratch.appendingPathComponent("mnt").path
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        try lab.sh("mount", top, mountPoint)
        var mounted = true
        defer { if mounted { _ = try? lab.sh("umount", mountPoint) } }
        try lab.sh("dd", "if=/dev/urandom", "of=\(mountPoint)/base", "bs=1M", "count=16", "status=none", "conv=fsync")

        let image = lab.scratch.appendingPathComponent("vol.img").path
        let first = lab.lastLineOf(try cli.ok("snapshot", "vol", "--as", "r0"))
        var (base, full) = try export(cli, "vol-r0", "--to", image)
        try expect(!base.isEmpty, "export printed no id")
        try expectEqual(full["kind"] as? String, "full", "first export's kind")
        try expectEqual(try fileSHA256(lab, image), try lab.sha256(first, length: size), "full image vs snapshot r0")
        try cli.ok("drop", "vol-r0")
        guard let deviceID = try cli.rows("devices").first?["id"] as? String else { throw Failure(description: "no device id") }

        var generator = SeededGenerator(seed: UInt64(ProcessInfo.processInfo.environment["SNAPSTACK_SEED"].flatMap(UInt64.init)
                                                      ?? UInt64(Date().timeIntervalSince1970)))
        print("      seed \(generator.seed)")
        let blockSize = (full["block_size"] as? NSNumber)?.uint64Value ?? 0
        try expect(blockSize >= 4096, "export reports block size \(blockSize)")
        var baseEra = (full["era"] as? NSNumber)?.int64Value ?? -1
        for round in 1...incrementals {
            // Small unaligned rewrites inside the big file, a large new file, a straddling
            // write across a block boundary, and a small file: all through ext4.
            var writes: [(offset: UInt64, count: Int)] = (0..<8).map { _ in
                (UInt64.random(in: 0..<(16 << 20) - 5000, using: &generator), Int.random(in: 1...4000, using: &generator))
            }
            writes.append(((UInt64.random(in: 1..<(16 << 20) / blockSize, using: &generator) * blockSize) - 700, 1400))
            let script = writes.map {
                "dd if=/dev/urandom of=\"$1\" bs=1 count=\($0.count) seek=\($0.offset) conv=notrunc status=none"
            }.joined(separator: " && ")
            try lab.sh("sh", "-c", script, "sh", "\(mountPoint)/base")
            try lab.sh("dd", "if=/dev/urandom", "of=\(mountPoint)/large\(round)", "bs=1M",
                       "count=\(Int.random(in: 1...4, using: &generator))", "status=none")
            try lab.sh("sh", "-c", "head -c \(Int.random(in: 1...9000, using: &generator)) /dev/urandom > \"$1\"", "sh", "\(mountPoint)/small\(round)")
            try lab.sh("sync")

            let snapshot = lab.lastLineOf(try cli.ok("snapshot", "vol", "--as", "r\(round)"))
            let (id, outcome) = try export(cli, "vol-r\(round)", "--to", image, "--since", base)
            try expectEqual(outcome["kind"] as? String, "incremental", "round \(round) kind")
            try expectEqual(try fileSHA256(lab, image), try lab.sha256(snapshot, length: size), "round \(round): image vs snapshot")
            // era_invalidate after the export: it sees at least what the export planned.
            let changed = try eraWitness(lab, cli: cli, device: "vol", id: deviceID, since: baseEra)
            let read = (outcome["bytes_read"] as? NSNumber)?.uint64Value ?? .max
            try expect(read > 0, "round \(round): the incremental read nothing")
            try expect(read <= UInt64(changed.count) * blockSize,
                       "round \(round): read \(read) bytes, era_invalidate reports \(changed.count) blocks of \(blockSize)")
            try expect(changed.count < Int(size.rawValue / blockSize) / 2, "round \(round): \(changed.count) blocks changed, too many to mean anything")
            print("      round \(round): read \(read / 1024) KiB for \(changed.count) changed blocks (\(size.rawValue / 1024) KiB device)")
            try cli.ok("drop", "vol-r\(round)")
            base = id
            baseEra = (outcome["era"] as? NSNumber)?.int64Value ?? -1
        }
        try cli.ok("verify", image)
        // `changes` agrees with era_invalidate.
        try lab.sh("dd", "if=/dev/urandom", "of=\(mountPoint)/after", "bs=64k", "count=5", "status=none", "conv=fsync")
        let listed = try cli.reportRows(["changes", "vol", "--since", base])
        var blocks = Set<UInt64>()
        for row in listed {
            let firstBlock = (row["first_block"] as? NSNumber)?.uint64Value ?? 0
            let count = (row["blocks"] as? NSNumber)?.uint64Value ?? 0
            blocks.formUnion(firstBlock..<(firstBlock + count))
        }
        let witness = try eraWitness(lab, cli: cli, device: "vol", id: deviceID, since: baseEra)
        try expect(!blocks.isEmpty, "changes listed nothing after writes")
        try expect(blocks.isSubset(of: witness), "changes lists blocks era_invalidate does not: \(blocks.subtracting(witness).sorted().prefix(10))")
        try expect(witness.subtracting(blocks).count <= 64,
                   "era_invalidate (taken later) reports \(witness.subtracting(blocks).count) blocks more than changes")
        try lab.sh("umount", mountPoint)
        mounted = false
        try cli.ok("unprotect", "vol")
    }

    static func interruptedExport(_ lab: Lab) throws {
        let cli = CLI(lab)
        let size = Bytes.mebibytes(64)
        let disk = try lab.loopDevice("disk", size: size, random: true)
        _ = try cli.protect(disk.path, "kill")
        let snapshot = lab.lastLineOf(try cli.ok("snapshot", "kill", "--as", "k1"))
        let image = lab.scratch.appendingPathComponent("kill.img").path

        // Slowed down so that it is surely still copying when it is killed.
        let export = Process()
        export.executableURL = URL(fileURLWithPath: CommandScenarios.snapstack)
        export.arguments = ["export", "kill-k1", "--to", image, "--max-rate", "8M", "--state-dir", cli.state]
        export.standardOutput = FileHandle.nullDevice
        export.standardError = FileHandle.nullDevice
        try export.run()
        // Killed once it has been copying for a moment: the manifest marks the copy's start.
        let started = Date()
        while !FileManager.default.fileExists(atPath: image + ".sums") && Date().timeIntervalSince(started) < 60 {
            usleep(100_000)
        }
        usleep(1_500_000)
        kill(export.processIdentifier, SIGKILL)
        export.waitUntilExit()
        try expectEqual(export.terminationReason, .uncaughtSignal, "export still running when killed")

        let interrupted = try lab.run([CommandScenarios.snapstack, "verify", image], allowFailure: true)
        try expectEqual(interrupted.status, 9, "verify of a killed export (stderr: \(interrupted.stderr))")
        try expect(interrupted.stderr.contains("incomplete"), "verify does not say incomplete: \(interrupted.stderr)")
        let rerun = try cli.ok("export", "kill-k1", "--to", image)
        let id = lab.lastLineOf(rerun)
        try expectEqual(try exportRow(cli, id)["state"] as? String, "complete", "export state after the re-run")
        try expectEqual(try cli.rows("exports").count, 1, "exports after a re-run (one export, finished)")
        try cli.ok("verify", image)
        try expectEqual(try fileSHA256(lab, image), try lab.sha256(snapshot, length: size), "finished image vs snapshot")

        // One flipped byte in block 5.
        let block = (try exportRow(cli, id)["block"] as? NSNumber)?.intValue ?? 0
        try expect(block >= 4096 && 6 * block <= Int(size.rawValue), "export block size \(block)")
        let offset = 5 * block + 1234
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: image))
        try handle.seek(toOffset: UInt64(offset))
        let byte = try handle.read(upToCount: 1)?.first ?? 0
        try handle.seek(toOffset: UInt64(offset))
        try handle.write(contentsOf: [byte ^ 0x01])
        try handle.close()
        let damaged = try lab.run([CommandScenarios.snapstack, "verify", image], allowFailure: true)
        try expectEqual(damaged.status, 9, "verify of a flipped byte (stderr: \(damaged.stderr))")
        try expect(damaged.stderr.contains("block 5 "), "verify does not name block 5: \(damaged.stderr)")
        try cli.ok("unprotect", "kill", "--force")
    }

    static func streamsAndRestore(_ lab: Lab) throws {
        let cli = CLI(lab)
        let size = Bytes.mebibytes(32)
        let disk = try lab.loopDevice("disk", size: size)
        let top = try cli.protect(disk.path, "str")
        try lab.writeRandom(top, offset: .zero, length: .mebibytes(8))
        try lab.writeRandom(top, offset: .mebibytes(20), length: .mebibytes(3))
        let s1 = lab.lastLineOf(try cli.ok("snapshot", "str", "--as", "s1"))
        let snapshotSum = try lab.sha256(s1, length: size)

        let direct = lab.scratch.appendingPathComponent("direct.img").path
        let applied = lab.scratch.appendingPathComponent("applied.img").path
        let raw = lab.scratch.appendingPathComponent("raw.img").path
        let (directFull, _) = try export(cli, "str-s1", "--to", direct)
        let pipe = "set -o pipefail; \"$1\" export str-s1 --to - --format delta --state-dir \"$2\" | \"$1\" apply --to \"$3\""
        let streamedFull = lab.lastLineOf(try lab.sh("bash", "-c", pipe, "bash", CommandScenarios.snapstack, cli.state, applied))
        try expectEqual(try fileSHA256(lab, applied), try fileSHA256(lab, direct), "full: applied stream vs direct export")
        try expectEqual(try fileSHA256(lab, applied), snapshotSum, "full: applied stream vs snapshot")
        try lab.sh("cmp", direct + ".sums", applied + ".sums")
        try cli.ok("verify", applied)
        try lab.sh("bash", "-c", "set -o pipefail; \"$1\" export str-s1 --to - --state-dir \"$2\" > \"$3\"",
                   "bash", CommandScenarios.snapstack, cli.state, raw)
        try expectEqual(try fileSHA256(lab, raw), snapshotSum, "raw stream vs snapshot")
        try cli.ok("drop", "str-s1")

        // Incremental: some blocks change, one becomes zero.
        try lab.writeRandom(top, offset: .mebibytes(30), length: .kibibytes(300))
        try lab.sh("dd", "if=/dev/zero", "of=\(top)", "bs=64k", "seek=2", "count=1", "oflag=direct", "conv=notrunc", "status=none")
        let s2 = lab.lastLineOf(try cli.ok("snapshot", "str", "--as", "s2"))
        _ = try export(cli, "str-s2", "--to", direct, "--since", directFull)
        let incremental = "set -o pipefail; \"$1\" export str-s2 --to - --since \"$4\" --state-dir \"$2\" | \"$1\" apply --to \"$3\""
        _ = try lab.sh("bash", "-c", incremental, "bash", CommandScenarios.snapstack, cli.state, applied, streamedFull)
        let s2Sum = try lab.sha256(s2, length: size)
        try expectEqual(try fileSHA256(lab, direct), s2Sum, "incremental: direct image vs snapshot")
        try expectEqual(try fileSHA256(lab, applied), s2Sum, "incremental: applied stream vs snapshot")
        try lab.sh("cmp", direct + ".sums", applied + ".sums")
        try cli.ok("verify", applied)
        // A stream is applied only on top of its base.
        let wrongBase = "set -o pipefail; \"$1\" export str-s2 --to - --since \"$4\" --state-dir \"$2\" | \"$1\" apply --to \"$3\""
        let refused = try lab.run(["bash", "-c", wrongBase, "bash", CommandScenarios.snapstack, cli.state, raw, streamedFull],
                                  allowFailure: true)
        try expect(refused.status != 0, "apply onto an image without a manifest succeeded")
        try expectEqual(try fileSHA256(lab, raw), snapshotSum, "a refused apply changed the image")

        // Restore onto a fresh disk, then refuse a mounted one.
        let target = try lab.loopDevice("target", size: size, random: true)
        try cli.ok("restore", direct, "--to", target.path)
        try expectEqual(try lab.sha256(target.path, length: size), s2Sum, "restored disk vs snapshot")
        // The device restore checked is the one it writes: a link swapped between the checks and
        // the open, to a device nobody named, is refused, and that device is left untouched.
        let victim = try lab.loopDevice("victim", size: size, random: true)
        let victimSum = try lab.sha256(victim.path, length: size)
        let link = lab.scratch.appendingPathComponent("restore-link").path
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: target.path)
        do {
            _ = try Image.restore(FilePath(direct), to: FilePath(link), betweenCheckAndOpen: {
                try FileManager.default.removeItem(atPath: link)
                try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: victim.path)
            })
            throw Failure(description: "a restore whose device was swapped after its checks went ahead")
        } catch let error as SnapstackError {
            try expect(error.kind == .refused && "\(error)".contains("when checked"), "the swapped restore's error: \(error)")
        }
        try expectEqual(try lab.sha256(victim.path, length: size), victimSum, "the device swapped in after the checks was written")
        let busy = try lab.loopDevice("busy", size: size)
        try lab.sh("mkfs.ext4", "-q", busy.path)
        let mountPoint = lab.scratch.appendingPathComponent("busy").path
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        // Read-only, so that ext4 itself (lazy inode-table init, superblock updates) leaves the
        // bytes alone while the refusal is checked.
        try lab.sh("mount", "-o", "ro", busy.path, mountPoint)
        defer { _ = try? lab.sh("umount", mountPoint) }
        let before = try lab.sha256(busy.path, length: size)
        let mounted = try lab.run([CommandScenarios.snapstack, "restore", direct, "--to", busy.path], allowFailure: true)
        try expectEqual(mounted.status, 6, "restore onto a mounted device (stderr: \(mounted.stderr))")
        try expect(mounted.stderr.contains("mounted"), "restore refusal does not say mounted: \(mounted.stderr)")
        try expectEqual(try lab.sha256(busy.path, length: size), before, "a refused restore changed the device")
        try cli.ok("unprotect", "str", "--force")
    }
}

/// A small deterministic generator (SplitMix64), so that a failing round can be replayed with
/// SNAPSTACK_SEED.
struct SeededGenerator: RandomNumberGenerator {
    let seed: UInt64
    private var state: UInt64
    init(seed: UInt64) {
        self.seed = seed
        state = seed
    }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension Lab {
    func lastLineOf(_ text: String) -> String {
        ExportScenarios.lastLine(text)
    }
}

extension OrchestratorScenarios.CLI {
    /// The rows of a JSON report for a command with arguments.
    func reportRows(_ arguments: [String]) throws -> [[String: Any]] {
        let result = try run(arguments + ["--reportformat", "json", "-o", "all"])
        try expectEqual(result.status, 0, "snapstack \(arguments.joined(separator: " ")) (stderr: \(result.stderr))")
        guard let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any],
              let reports = object["report"] as? [[String: Any]], let rows = reports.first?.values.first as? [[String: Any]]
        else { throw Failure(description: "unexpected JSON: \(result.stdout)") }
        return rows
    }
}
