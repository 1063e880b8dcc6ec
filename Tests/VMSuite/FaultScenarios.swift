import BlockIO
import DeviceMapper
import Foundation

/// Real faults under the image directory: a file system that fills up, and a device that starts
/// failing writes (dm-flakey's `error_writes`), mid-export and mid-apply. Each must end in a
/// clear error with the image marked incomplete (verify says so, exit 9), the origin as it was
/// (sha256), no device left suspended (dmsetup info), and a re-run elsewhere that completes.
enum FaultScenarios {
    static let all: [Scenario] = [
        Scenario("faults: the image directory full (ENOSPC) or failing writes (dm-flakey EIO) mid-export and mid-apply: a clear error, the image incomplete, the origin intact, nothing suspended",
                 imageDirectoryFaults).lasting(100),
        Scenario("faults: the state directory full (ENOSPC) during protect, snapshot and drop: a clear error, nothing half-made (dmsetup, losetup), the origin intact, nothing suspended; each works once there is room",
                 stateDirectoryFull).lasting(120),
        Scenario("faults: the COW store failing every write (dm-flakey EIO) while the origin takes writes: the origin's writes all land (sha256), the snapshot invalid (snapshots, dmsetup status), its export refused, nothing suspended, reconcile and drop clean",
                 failingStore).lasting(60),
        Scenario("faults: the era metadata failing every write (dm-flakey EIO): the kernel fails writes to unmarked blocks, snapshot and the daemon bypass the era (linear, never suspended), the next incremental is refused (10), --allow-full is exact, writes land again; reconcile restores tracking once the metadata heals, and a full + incremental are exact",
                 failingEraMetadata).lasting(200),
    ]

    typealias CLI = OrchestratorScenarios.CLI

    /// A mounted ext4 of `size` on `device`, unmounted at the end of the scenario.
    static func mountExt4(_ lab: Lab, _ device: String, at label: String) throws -> String {
        try lab.sh("mkfs.ext4", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0", device)
        let mountPoint = lab.scratch.appendingPathComponent(label).path
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        try lab.sh("mount", device, mountPoint)
        return mountPoint
    }

    static func noneSuspended(_ lab: Lab, _ when: String) throws {
        let suspended = try DaemonScenarios.suspendedDevices(lab)
        try expect(suspended.isEmpty, "\(when): devices left suspended: \(suspended)")
    }

    static func expectIncomplete(_ lab: Lab, _ image: String, _ when: String) throws {
        let verify = try lab.run([CommandScenarios.snapstack, "verify", image], allowFailure: true)
        try expectEqual(verify.status, 9, "\(when): verify (stderr: \(verify.stderr))")
        try expect(verify.stderr.contains("incomplete"), "\(when): verify does not say incomplete: \(verify.stderr)")
    }

    static func imageDirectoryFaults(_ lab: Lab) throws {
        let cli = CLI(lab)
        let size = Bytes.mebibytes(32)
        let disk = try lab.loopDevice("disk", size: size, random: true)
        let top = try cli.protect(disk.path, "vol")
        let origin = try lab.sha256(top, length: size)
        let snapshot = try cli.ok("snapshot", "vol", "--as", "s").trimmingCharacters(in: .whitespacesAndNewlines)

        // A 12 MiB file system for a 32 MiB image of random bytes: it fills up mid-copy.
        let small = try lab.loopDevice("small", size: .mebibytes(12))
        let full = try mountExt4(lab, small.path, at: "full")
        defer { _ = try? lab.run(["umount", full], allowFailure: true) }
        let exported = try cli.run(["export", "vol-s", "--to", full + "/img"])
        try expect(exported.status != 0, "an export into a full file system succeeded")
        try expect(exported.stderr.contains("No space left on device"), "export into a full file system: \(exported.stderr)")
        try expectIncomplete(lab, full + "/img", "export into a full file system")
        try noneSuspended(lab, "after the export into a full file system")
        try lab.sh("sh", "-c", "rm -f \"$1\"/img*", "sh", full)
        let streamed = try lab.run(["bash", "-c", "set -o pipefail; \"$1\" export vol-s --to - --format delta --state-dir \"$2\" | \"$1\" apply --to \"$3\"",
                                    "bash", CommandScenarios.snapstack, cli.state, full + "/applied"], allowFailure: true)
        try expect(streamed.status != 0, "an apply into a full file system succeeded")
        try expect(streamed.stderr.contains("No space left on device"), "apply into a full file system: \(streamed.stderr)")
        try expectIncomplete(lab, full + "/applied", "apply into a full file system")

        // A device that starts failing every write while the export runs (slowed to 4 MiB/s).
        let backing = try lab.loopDevice("flaky", size: .mebibytes(64))
        let (flakyName, flakyUUID) = try lab.name("flaky")
        let sectors = Bytes.mebibytes(64).rawValue / 512
        lab.track(flakyName)
        try lab.sh("dmsetup", "create", flakyName.rawValue, "-u", flakyUUID.rawValue, "--table", "0 \(sectors) linear \(backing.path) 0")
        let failing = try mountExt4(lab, flakyName.devicePath, at: "failing")
        defer { _ = try? lab.run(["umount", failing], allowFailure: true) }
        let export = Process()
        export.executableURL = URL(fileURLWithPath: CommandScenarios.snapstack)
        export.arguments = ["export", "vol-s", "--to", failing + "/img", "--max-rate", "4M", "--state-dir", cli.state]
        let errors = Pipe()
        export.standardOutput = FileHandle.nullDevice
        export.standardError = errors
        try export.run()
        let started = Date()
        while !FileManager.default.fileExists(atPath: failing + "/img.sums") && Date().timeIntervalSince(started) < 60 { usleep(100_000) }
        usleep(1_000_000)
        // --nolockfs: freezing and thawing ext4 writes its superblock, which the new table fails.
        try lab.sh("dmsetup", "suspend", "--nolockfs", flakyName.rawValue)
        try lab.sh("dmsetup", "load", flakyName.rawValue, "--table", "0 \(sectors) flakey \(backing.path) 0 0 1 1 error_writes")
        try lab.sh("dmsetup", "resume", flakyName.rawValue)
        let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        export.waitUntilExit()
        try expect(export.terminationStatus != 0, "an export whose image device failed succeeded")
        try expect(stderr.contains("Input/output error") || stderr.contains("Read-only file system"),
                   "export onto a failing device: \(stderr)")
        try expect(!stderr.contains("Fatal error") && !stderr.contains("Swift runtime failure"), "export trapped: \(stderr)")
        try expectIncomplete(lab, failing + "/img", "export onto a failing device")
        try noneSuspended(lab, "after the export onto a failing device")
        // Writes work again, so that the file system can be unmounted and the device removed.
        try lab.sh("dmsetup", "suspend", "--nolockfs", flakyName.rawValue)
        try lab.sh("dmsetup", "load", flakyName.rawValue, "--table", "0 \(sectors) linear \(backing.path) 0")
        try lab.sh("dmsetup", "resume", flakyName.rawValue)
        _ = try lab.run(["umount", failing], allowFailure: true)

        // What was refused or broken changed nothing of the origin, and a re-run elsewhere completes.
        try expectEqual(try lab.sha256(top, length: size), origin, "the origin after the faults")
        let good = lab.scratch.appendingPathComponent("good.img").path
        try cli.ok("export", "vol-s", "--to", good)
        try cli.ok("verify", good)
        try expectEqual(String(try lab.sh("sha256sum", good).prefix(64)), try lab.sha256(snapshot, length: size), "the image of a re-run")
        try cli.ok("unprotect", "vol", "--force")
    }

    /// The era metadata on an LV (`--cbt-metadata VG`) whose dm device is switched to
    /// dm-flakey `error_writes`. dm-era is fail-closed: it fails the origin's writes to blocks it
    /// cannot mark. snapstack must not leave it so: `snapshot` (and, without a command, the
    /// daemon's store watch) swap the era layer for a linear one, so that writes land, and
    /// record the tracking as interrupted; once the metadata works, `reconcile` restores it.
    static func failingEraMetadata(_ lab: Lab) throws {
        let cli = CLI(lab)
        let size = Bytes.mebibytes(32)
        let disk = try lab.loopDevice("disk", size: size, random: true)
        try AdoptionScenarios.withVolumeGroup(lab, "erafault", pvSizes: [.mebibytes(64)]) { vg in
            vg.cli = cli
            vg.adopted.append("vol")
            let top = try cli.protect(disk.path, "vol", "--cbt-block", "64K", "--cbt-metadata", vg.name)
            func realTable() throws -> String { try lab.sh("dmsetup", "table", "snapstack-vol-real").trimmingCharacters(in: .whitespacesAndNewlines) }
            let eraTable = try realTable()
            let fields = eraTable.split(separator: " ")
            try expect(fields.count == 6 && fields[2] == "era", "snapstack-vol-real: \(eraTable)")
            let majorMinor = fields[3].split(separator: ":")
            let metadataName = try lab.sh("dmsetup", "info", "-c", "--noheadings", "-o", "name", "-j", String(majorMinor.first ?? ""), "-m", String(majorMinor.last ?? ""))
                .trimmingCharacters(in: .whitespacesAndNewlines)
            try expect(metadataName.hasPrefix("erafault-snapstack"), "the era metadata's dm device: \(metadataName)")
            let metadataTable = try lab.sh("dmsetup", "table", metadataName).trimmingCharacters(in: .whitespacesAndNewlines)
            func switchMetadata(_ table: String) throws {
                try lab.sh("dmsetup", "suspend", metadataName)
                try lab.sh("dmsetup", "load", metadataName, "--table", table)
                try lab.sh("dmsetup", "resume", metadataName)
            }
            let metadataFields = metadataTable.split(separator: " ")
            try expect(metadataFields.count == 5 && metadataFields[2] == "linear", "the metadata LV's table: \(metadataTable)")
            let failingTable = "0 \(metadataFields[1]) flakey \(metadataFields[3]) \(metadataFields[4]) 0 1 1 error_writes"
            func writeBlock(_ mebibyte: Int) throws -> (status: Int32, stdout: String, stderr: String) {
                try lab.run(["dd", "if=/dev/urandom", "of=\(top)", "bs=64k", "count=1", "seek=\(mebibyte * 16)", "oflag=direct",
                             "conv=notrunc", "status=none"], allowFailure: true)
            }
            func tracking() throws -> (state: String, why: String) {
                let row = try AdoptionScenarios.deviceRow(cli, "vol")
                return (row["tracking"] as? String ?? "", row["interrupted_reason"] as? String ?? "")
            }

            // A full export before the fault: the base an incremental would build on.
            let image = lab.scratch.appendingPathComponent("vol.img").path
            _ = lab.lastLineOf(try cli.ok("snapshot", "vol", "--as", "s0"))
            let (base, _) = try ExportScenarios.export(cli, "vol-s0", "--to", image)
            try cli.ok("drop", "vol-s0")

            // The fault: dm-era can commit nothing, and fails a write to a block it has not marked.
            try switchMetadata(failingTable)
            let beforeFailedWrite = try lab.sha256(top, length: size)
            let failed = try writeBlock(16)
            try expect(failed.status != 0, "a write to an unmarked block succeeded while the era metadata failed writes (the fault is not live)")
            try expectEqual(try lab.sha256(top, length: size), beforeFailedWrite, "the origin after the failed write")
            try expect(try lab.sh("dmsetup", "status", "snapstack-vol-real").contains(" era Error"), "era status under the fault")

            // snapshot bypasses the era layer and is taken; the write goes through now.
            let snapshotted = try cli.run(["snapshot", "vol", "--as", "s1"])
            try expectEqual(snapshotted.status, 0, "snapshot while the era metadata fails (stderr: \(snapshotted.stderr))")
            try expect(snapshotted.stderr.contains("change tracking of vol is bypassed"), "snapshot's warning: \(snapshotted.stderr)")
            let bypassedTable = try realTable()
            try expect(bypassedTable.contains(" linear \(fields[4]) 0"), "snapstack-vol-real after the bypass: \(bypassedTable)")
            try noneSuspended(lab, "after the bypass")
            let state = try tracking()
            try expectEqual(state.state, "interrupted", "tracking after the bypass")
            try expect(state.why.contains("metadata could not be written"), "the interruption's reason: \(state.why)")
            let written = try writeBlock(16)
            try expectEqual(written.status, 0, "a write after the bypass (stderr: \(written.stderr))")

            // The next incremental is refused, never silently short; --allow-full reads it all.
            let refused = try cli.run(["export", "vol-s1", "--to", image, "--since", base])
            try expectEqual(refused.status, 10, "export --since across the bypass (stderr: \(refused.stderr))")
            _ = try ExportScenarios.export(cli, "vol-s1", "--to", image, "--since", base, "--allow-full")
            try expectEqual(String(try lab.sh("sha256sum", image).prefix(64)), try lab.sha256(lab.lastLineOf(snapshotted.stdout), length: size),
                            "the --allow-full image vs snapshot s1")
            try cli.ok("drop", "vol-s1")

            // While the metadata still fails, reconcile's restore ends bypassed again, saying why.
            let still = try cli.run(["reconcile"])
            try expect(still.status != 0 && still.stderr.contains("cannot track the changes of vol again"), "reconcile while failing: \(still.stderr)")
            let stillBypassed = try realTable()
            try expect(stillBypassed.contains(" linear "), "snapstack-vol-real after a failed restore: \(stillBypassed)")
            try noneSuspended(lab, "after the failed restore")

            // Healed: reconcile puts the era back; a full then an incremental are exact.
            try switchMetadata(metadataTable)
            let restored = try cli.ok("reconcile")
            try expect(restored.contains("track changes again"), "reconcile after the heal: \(restored)")
            try expectEqual(try realTable(), eraTable, "snapstack-vol-real after the restore")
            let fresh = lab.scratch.appendingPathComponent("fresh.img").path
            _ = try cli.ok("snapshot", "vol", "--as", "s2")
            let (fullAfter, _) = try ExportScenarios.export(cli, "vol-s2", "--to", fresh)
            try cli.ok("drop", "vol-s2")
            try lab.writeRandom(top, offset: .mebibytes(8), length: .kibibytes(128))
            let s3 = lab.lastLineOf(try cli.ok("snapshot", "vol", "--as", "s3"))
            let (_, incremental) = try ExportScenarios.export(cli, "vol-s3", "--to", fresh, "--since", fullAfter)
            try expectEqual(incremental["kind"] as? String, "incremental", "the export after the restore")
            let read = (incremental["bytes_read"] as? NSNumber)?.uint64Value ?? .max
            try expect(read > 0 && read <= 256 << 10, "the incremental after the restore read \(read) bytes for 128 KiB written")
            try expectEqual(String(try lab.sh("sha256sum", fresh).prefix(64)), try lab.sha256(s3, length: size), "incremental image vs snapshot s3")
            try cli.ok("drop", "vol-s3")

            // With no command to notice, the daemon's store watch bypasses the failed era.
            let daemon = try DaemonScenarios.Daemon(lab, state: cli.state, config: try DaemonScenarios.writeConfig(lab, "rules:\n"))
            defer { _ = try? daemon.terminate() }
            try daemon.waitReady()
            try switchMetadata(failingTable)
            let started = Date()
            var landed = false
            while Date().timeIntervalSince(started) < 60 {
                if try writeBlock(20).status == 0 { landed = true; break }
                Thread.sleep(forTimeInterval: 0.5)
            }
            try expect(landed, "writes still failed 60 s after the era metadata failed, with the daemon running; its log:\n\(daemon.logText)")
            print(String(format: "      the daemon let writes through %.1f s after the metadata failed", Date().timeIntervalSince(started)))
            // The write may land before the bypass when it needs no commit (its block marked
            // already): the bypass itself comes within a poll interval (5 s) either way.
            while Date().timeIntervalSince(started) < 60 && !daemon.logText.contains("change tracking bypassed") {
                Thread.sleep(forTimeInterval: 0.5)
            }
            try expect(daemon.logText.contains("change tracking bypassed"), "the daemon's log: \(daemon.logText)")
            print(String(format: "      the daemon's bypass was in its log %.1f s after the metadata failed", Date().timeIntervalSince(started)))
            try expectEqual(try tracking().state, "interrupted", "tracking after the daemon's bypass")
            let daemonBypassed = try realTable()
            try expect(daemonBypassed.contains(" linear "), "snapstack-vol-real after the daemon's bypass: \(daemonBypassed)")
            try noneSuspended(lab, "after the daemon's bypass")
            try expectEqual(try daemon.terminate(), 0, "the daemon's exit status")
            try switchMetadata(metadataTable)
            try cli.ok("unprotect", "vol")
        }
    }

    /// The state directory on a small file system that an admin's file fills to the last block.
    /// protect, snapshot and drop each meet ENOSPC (their era metadata, their store, the
    /// database's journal): each must say so and leave the kernel as it was; with room again, each works.
    static func stateDirectoryFull(_ lab: Lab) throws {
        let size = Bytes.mebibytes(32)
        let disk = try lab.loopDevice("disk", size: size, random: true)
        let origin = try lab.sha256(disk.path, length: size)
        let small = try lab.loopDevice("statefs", size: .mebibytes(24))
        let mount = try mountExt4(lab, small.path, at: "statefs")
        defer { _ = try? lab.run(["umount", mount], allowFailure: true) }
        let cli = CLI(lab, state: mount + "/state")
        let filler = mount + "/filler"

        /// Fills the file system to its last block (root may use the reserved ones too), then
        /// gives back `leaving` KiB: room for the database's journal, none for a store or era
        /// metadata.
        func fill(leaving: Int = 0) throws {
            _ = try lab.run(["dd", "if=/dev/zero", "of=\(filler)", "bs=64k", "oflag=append", "conv=notrunc,fsync", "status=none"], allowFailure: true)
            let free = try lab.sh("df", "--output=avail", "-B1", mount).split(separator: "\n").last.map { $0.trimmingCharacters(in: .whitespaces) }
            try expectEqual(free, "0", "free bytes after filling \(mount)")
            if leaving > 0 { try lab.sh("truncate", "-s", "-\(leaving)K", filler) }
        }
        func room() throws { try lab.sh("rm", "-f", filler) }
        /// What the kernel holds of snapstack's: dm devices and loop devices on the state.
        func kernelState() throws -> String {
            let devices = try lab.sh("dmsetup", "table").split(separator: "\n").filter { $0.contains("snapstack") }.sorted()
            let loops = try lab.sh("losetup", "-a", "-O", "NAME,BACK-FILE", "--noheadings").split(separator: "\n").filter { $0.contains(mount) }.sorted()
            return (devices + loops).joined(separator: "\n")
        }
        func refused(_ arguments: [String], _ what: String) throws {
            let before = try kernelState()
            let result = try cli.run(arguments)
            try expect(result.status != 0, "\(what) succeeded on a full state directory")
            try expect(result.stderr.contains("No space left on device") || result.stderr.contains("disk is full"),
                       "\(what) on a full state directory does not name the cause: \(result.stderr)")
            try expect(!result.stderr.contains("Fatal error") && !result.stderr.contains("Swift runtime failure"), "\(what) trapped: \(result.stderr)")
            try expectEqual(try kernelState(), before, "dm and loop devices after \(what) failed")
            try noneSuspended(lab, "after \(what) failed")
            try expectEqual(try lab.sha256(disk.path, length: size), origin, "the origin after \(what) failed")
        }

        // protect: its era metadata file, or the database, meets a full file system.
        try cli.ok("devices")
        try fill()
        try refused(["protect", disk.path, "--name", "vol"], "protect")
        try room()
        try fill(leaving: 256)
        try refused(["protect", disk.path, "--name", "vol"], "protect with room for the database only")
        try room()
        try expectEqual(try cli.ok("reconcile"), "nothing to repair\n", "reconcile after the refused protect")
        let top = try cli.protect(disk.path, "vol")

        // snapshot: its store in the state directory cannot be allocated.
        try fill()
        try refused(["snapshot", "vol", "--as", "s1", "--size", "4M"], "snapshot")
        try room()
        try fill(leaving: 256)
        try refused(["snapshot", "vol", "--as", "s1", "--size", "4M"], "snapshot with room for the database only")
        try room()
        try expectEqual(try cli.ok("reconcile"), "nothing to repair\n", "reconcile after the refused snapshot")
        try expect(try cli.rows("snapshots").isEmpty, "a refused snapshot is listed")

        // drop: the database's journal has no room for the change.
        let snapshot = try cli.ok("snapshot", "vol", "--as", "s1", "--size", "4M").trimmingCharacters(in: .whitespacesAndNewlines)
        let frozen = try lab.sha256(snapshot, length: size)
        try fill()
        let dropped = try cli.run(["drop", "vol-s1"])
        try noneSuspended(lab, "after drop on a full state directory")
        try room()
        if dropped.status == 0 {
            // SQLite found room in pages it had: then the drop is whole.
            try expect(!FileManager.default.fileExists(atPath: snapshot), "drop succeeded but \(snapshot) is still there")
        } else {
            try expect(dropped.stderr.contains("No space left on device") || dropped.stderr.contains("disk is full"),
                       "drop on a full state directory does not name the cause: \(dropped.stderr)")
            _ = try cli.ok("reconcile")
            try expectEqual(try cli.ok("reconcile"), "nothing to repair\n", "a second reconcile after the failed drop")
            if FileManager.default.fileExists(atPath: snapshot) {
                try expectEqual(try lab.sha256(snapshot, length: size), frozen, "the snapshot a failed drop left")
                try cli.ok("drop", "vol-s1")
            }
        }
        try expect(try cli.rows("snapshots").isEmpty, "vol-s1 is still listed after its drop")
        try expectEqual(try lab.sha256(top, length: size), origin, "the origin through its top after the faults")
        try cli.ok("unprotect", "vol")
        try expectEqual(try lab.sha256(disk.path, length: size), origin, "the origin after unprotect")
    }

    /// The snapshot's copy-on-write store on a device that starts failing every write. The kernel
    /// invalidates a snapshot whose exception it cannot store and lets the origin's write go on:
    /// the origin must get every byte written to it, the snapshot must be reported invalid and
    /// never exported, and nothing may be left suspended.
    static func failingStore(_ lab: Lab) throws {
        let cli = CLI(lab)
        let size = Bytes.mebibytes(32)
        let disk = try lab.loopDevice("disk", size: size, random: true)
        let top = try cli.protect(disk.path, "vol")
        // The scratch directory's files are read through the page cache (no O_DIRECT there).
        func fileHash(_ path: String) throws -> String { String(try lab.sh("sha256sum", path).prefix(64)) }
        let before = lab.scratch.appendingPathComponent("before.bin").path
        try lab.sh("dd", "if=\(top)", "of=\(before)", "bs=1M", "count=32", "iflag=direct", "status=none")

        let backing = try lab.loopDevice("store", size: .mebibytes(16))
        let (storeName, storeUUID) = try lab.name("store")
        let sectors = Bytes.mebibytes(16).rawValue / 512
        lab.track(storeName)
        try lab.sh("dmsetup", "create", storeName.rawValue, "-u", storeUUID.rawValue, "--table", "0 \(sectors) linear \(backing.path) 0")
        let snapshot = try cli.ok("snapshot", "vol", "--as", "s", "--store", storeName.devicePath).trimmingCharacters(in: .whitespacesAndNewlines)
        try expectEqual(try lab.sha256(snapshot, length: size), try fileHash(before), "the snapshot before the fault")

        try lab.sh("dmsetup", "suspend", "--nolockfs", storeName.rawValue)
        try lab.sh("dmsetup", "load", storeName.rawValue, "--table", "0 \(sectors) flakey \(backing.path) 0 0 1 1 error_writes")
        try lab.sh("dmsetup", "resume", storeName.rawValue)

        // 4 MiB written to the origin at 8 MiB: every chunk needs a copy the store cannot take.
        let written = lab.scratch.appendingPathComponent("written.bin").path
        try lab.sh("dd", "if=/dev/urandom", "of=\(written)", "bs=1M", "count=4", "status=none")
        let write = try lab.run(["dd", "if=\(written)", "of=\(top)", "bs=1M", "seek=8", "oflag=direct", "conv=fsync,notrunc", "status=none"],
                                allowFailure: true)
        try expectEqual(write.status, 0, "the origin's write while its snapshot's store fails (stderr: \(write.stderr))")
        let expected = lab.scratch.appendingPathComponent("expected.bin").path
        try lab.sh("cp", before, expected)
        try lab.sh("dd", "if=\(written)", "of=\(expected)", "bs=1M", "seek=8", "conv=notrunc", "status=none")
        try expectEqual(try lab.sha256(top, length: size), try fileHash(expected),
                        "the origin after writes its snapshot's store failed (every byte written, nothing else changed)")

        let status = try lab.sh("dmsetup", "status", URL(fileURLWithPath: snapshot).lastPathComponent)
        try expect(status.contains("Invalid"), "dmsetup status of the snapshot whose store failed: \(status)")
        let listed = try cli.ok("snapshots", "-o", "name,state", "--noheadings")
        try expect(listed.split(separator: "\n").contains { $0.split(separator: " ").map(String.init) == ["vol-s", "invalid"] },
                   "snapshots does not show vol-s invalid: \(listed)")
        let image = lab.scratch.appendingPathComponent("s.img").path
        let export = try cli.run(["export", "vol-s", "--to", image])
        try expect(export.status != 0, "the export of a snapshot whose store failed succeeded")
        try expect(export.stderr.contains("invalid"), "the refused export does not say the snapshot is invalid: \(export.stderr)")
        try expect(!FileManager.default.fileExists(atPath: image) || (try? lab.run([CommandScenarios.snapstack, "verify", image], allowFailure: true).status) != 0,
                   "the refused export left an image that verifies")
        try noneSuspended(lab, "after the store failed")

        try cli.ok("reconcile")
        try cli.ok("drop", "vol-s")
        try noneSuspended(lab, "after the invalid snapshot was dropped")
        try lab.sh("dmsetup", "suspend", "--nolockfs", storeName.rawValue)
        try lab.sh("dmsetup", "load", storeName.rawValue, "--table", "0 \(sectors) linear \(backing.path) 0")
        try lab.sh("dmsetup", "resume", storeName.rawValue)
        // A new snapshot on the healed store works, and the origin is what was written.
        let healed = try cli.ok("snapshot", "vol", "--as", "t", "--store", storeName.devicePath).trimmingCharacters(in: .whitespacesAndNewlines)
        try expectEqual(try lab.sha256(healed, length: size),
                        try fileHash(expected), "a snapshot taken after the store healed")
        try cli.ok("unprotect", "vol", "--force")
    }
}
