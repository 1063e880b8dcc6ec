import BlockIO
import DeviceMapper
import Foundation

/// Online adoption of a live LVM logical volume: `protect /dev/VG/LV` slides era under the
/// mounted LV by reloading the LV's own node (same name, UUID and major:minor) as `linear` over
/// `snapstack-NAME-real` = era over `snapstack-NAME-clone`, which carries LVM's table. Checked
/// with dmsetup, findmnt, lvs and vgck, fsck, sha256sum and era_invalidate.
///
/// LVM in the lab: Debian 12's lvm2 2.03.16 works in the guest with its stock configuration
/// (no lvmetad, no devices file; udev runs, so udev_sync and udev_rules stay on), on PVs that
/// are loop devices over sparse files in the guest's /tmp. `lvcreate` takes 2.5-4 s there, a
/// thin pool and its first thin LV about 17 s; `dm-thin-pool` and `dm-crypt` load with
/// modprobe (vm.sh loads only loop, dm-mod, dm-snapshot and dm-era). No cryptsetup on the
/// host: the dm-crypt device is made with dmsetup and a fixed key.
enum AdoptionScenarios {
    static let all: [Scenario] = [
        Scenario("adopt a mounted LV under a writer: same node, fs stays mounted; snapshot fsck-clean; full + \(mountedRounds) incremental\(mountedRounds == 1 ? "" : "s") equal\(mountedRounds == 1 ? "" : "s") each snapshot; changes agree with era_invalidate; unprotect gives LVM's table back",
                 mountedLV).lasting(Tier.length(ci: 330, nightly: 480)),
        Scenario("adopt a striped LV by its /dev/mapper path: clone carries the striped table; full + 1 incremental equal each snapshot",
                 stripedLV).lasting(280).nightly(),
        Scenario("adopt: lvchange --refresh, then lvextend, of an adopted LV interrupt tracking; reconcile re-adopts (at the new size); held snapshots invalid; export --since refused (10), --allow-full reads all; unprotect gives the grown table back",
                 foreignReload).lasting(500).nightly(),
        Scenario("adopt: the running daemon leaves its own reloads alone and re-adopts an LV that lvextend reloaded (udev change)",
                 daemonReadopts).lasting(170),
        Scenario("adopt: a thin LV, a dm-crypt device, a zero-target device and a mounted loop device are refused (6), every table untouched",
                 refusals).lasting(130),
    ]

    typealias CLI = OrchestratorScenarios.CLI

    /// Incrementals of the mounted LV under its writer: one in CI, three in the nightly tier.
    static let mountedRounds = Tier.length(ci: 1, nightly: 3)

    // MARK: LVM in the lab

    /// A volume group on loop-device PVs, torn down (LVs deactivated, VG and PV labels removed)
    /// whether the scenario passed or not; the loop devices themselves are the lab's.
    final class VolumeGroup {
        let lab: Lab
        let name: String
        let pvs: [(path: String, facts: BlockDeviceFacts)]
        /// snapstack device names adopted in this VG, for the tear-down.
        var adopted: [String] = []
        var mounts: [String] = []
        var writers: [Writer] = []
        var cli: CLI?

        init(_ lab: Lab, name: String, pvSizes: [Bytes]) throws {
            self.lab = lab
            self.name = name
            pvs = try pvSizes.enumerated().map { try lab.loopDevice("\(name)-pv\($0.offset)", size: $0.element) }
            try lvm(["pvcreate", "-q"] + pvs.map(\.path))
            try lvm(["vgcreate", "-q", name] + pvs.map(\.path))
        }

        /// Runs an LVM command (through the `lvm` binary) and returns its stdout.
        @discardableResult
        func lvm(_ arguments: [String], allowFailure: Bool = false) throws -> String {
            try lvmRun(arguments, allowFailure: allowFailure).stdout
        }

        func lvmRun(_ arguments: [String], allowFailure: Bool = true) throws -> (status: Int32, stdout: String, stderr: String) {
            // The suite's inherited descriptors would make every LVM command warn on stderr.
            try lab.run(["lvm"] + arguments, allowFailure: allowFailure, environment: ["LVM_SUPPRESS_FD_WARNINGS": "1"])
        }

        /// Creates LV `lv` (no hyphen in either name, so the dm name is `VG-LV`).
        func createLV(_ lv: String, size: String, _ extra: String...) throws -> LogicalVolume {
            try lvm(["lvcreate", "-q", "-y", "-L", size, "-n", lv] + extra + [name])
            return LogicalVolume(vg: name, name: lv)
        }

        /// mkfs.ext4 on `lv` and mounts it under the scratch directory.
        func mountExt4(_ lv: LogicalVolume) throws -> String {
            try lab.sh("mkfs.ext4", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0", lv.path)
            let mountPoint = lab.scratch.appendingPathComponent("mnt-\(lv.name)").path
            try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
            try lab.sh("mount", lv.path, mountPoint)
            mounts.append(mountPoint)
            return mountPoint
        }

        func umount(_ mountPoint: String) throws {
            try lab.sh("umount", mountPoint)
            mounts.removeAll { $0 == mountPoint }
        }

        /// Best effort: stops writers, unmounts, unprotects what is still adopted, deactivates
        /// and removes the VG. Returns what was left over (a leak is the scenario's failure).
        func tearDown() -> [String] {
            var problems: [String] = []
            for writer in writers { writer.kill() }
            for mountPoint in mounts.reversed() {
                if (try? lab.run(["umount", mountPoint], allowFailure: true).status) != 0 {
                    _ = try? lab.run(["umount", "-l", mountPoint], allowFailure: true)
                    problems.append("\(mountPoint) could not be unmounted")
                }
            }
            let left = { (prefix: String) -> [String] in
                ((try? self.lab.dmsetupNames()) ?? []).filter { $0.hasPrefix(prefix) }.sorted()
            }
            for device in adopted where !left("snapstack-\(device)").isEmpty {
                problems.append("still protected at the end (unprotect --force run): \(left("snapstack-\(device)").joined(separator: ", "))")
                if let cli { _ = try? cli.run(["unprotect", device, "--force"]) }
            }
            // An unprotected PV disk is announced again, and LVM's event activation may map its
            // LVs: let that happen before the deactivation, not after it.
            _ = try? lab.run(["udevadm", "settle"], allowFailure: true)
            _ = try? lvmRun(["vgchange", "-q", "-an", name])
            // What LVM and unprotect left behind: snapshots first, then -real, then the rest.
            var pending = adopted.flatMap { left("snapstack-\($0)") } + left("\(name)-")
            pending.sort { rank($0) < rank($1) }
            if !pending.isEmpty { problems.append("removed by hand: \(pending.joined(separator: ", "))") }
            for _ in 0..<3 where !pending.isEmpty {
                for device in pending {
                    _ = try? lab.run(["dmsetup", "resume", device], allowFailure: true)
                    _ = try? lab.run(["dmsetup", "remove", "--retry", device], allowFailure: true)
                }
                pending = pending.filter { ((try? lab.dmsetupNames()) ?? []).contains($0) }
            }
            if !pending.isEmpty { problems.append("cannot remove \(pending.joined(separator: ", "))") }
            if let result = try? lvmRun(["vgremove", "-q", "-f", name]), result.status != 0 {
                problems.append("vgremove \(name): \(result.stderr.trimmingCharacters(in: .whitespacesAndNewlines))")
            }
            _ = try? lvmRun(["pvremove", "-q", "-y"] + pvs.map(\.path))
            return problems
        }

        private func rank(_ device: String) -> Int {
            device.hasSuffix("-real") ? 2 : device.hasSuffix("-clone") ? 3 : device.hasPrefix("snapstack-") ? 0 : 1
        }
    }

    struct LogicalVolume {
        var vg: String
        var name: String
        var path: String { "/dev/\(vg)/\(name)" }
        var mapperPath: String { "/dev/mapper/\(dmName)" }
        var dmName: String { "\(vg)-\(name)" }
    }

    /// Runs `body` with a new volume group, then tears the group down; a failure of the body
    /// is reported with what the tear-down found.
    static func withVolumeGroup(_ lab: Lab, _ name: String, pvSizes: [Bytes], _ body: (VolumeGroup) throws -> Void) throws {
        let vg = try VolumeGroup(lab, name: name, pvSizes: pvSizes)
        var failure: (any Error)?
        do { try body(vg) } catch { failure = error }
        let problems = vg.tearDown()
        if let failure {
            throw Failure(description: "\(failure)" + (problems.isEmpty ? "" : "\n      tear-down: " + problems.joined(separator: "; ")))
        }
        if !problems.isEmpty { throw Failure(description: "tear-down: " + problems.joined(separator: "; ")) }
    }

    /// A shell loop rewriting a 16 MiB region of a file with O_DIRECT, 256 KiB a pass and about
    /// ten passes a second (unthrottled, it started some 300 dd processes a minute in the lab's
    /// TCG guest, slowing everything else), that logs each pass outside the filesystem and stops at the first failed write.
    final class Writer {
        let process = Process()
        let progress: String
        let stop: String
        private(set) var stderr = ""
        private let errors: String

        init(_ lab: Lab, file: String, label: String) throws {
            progress = lab.scratch.appendingPathComponent("\(label).progress").path
            stop = lab.scratch.appendingPathComponent("\(label).stop").path
            errors = lab.scratch.appendingPathComponent("\(label).stderr").path
            try lab.sh("fallocate", "-l", "16M", file)
            try lab.sh("sync")
            FileManager.default.createFile(atPath: errors, contents: nil)
            process.executableURL = URL(fileURLWithPath: "/bin/sh")
            process.arguments = ["-c", """
                i=0
                while [ ! -e "$2" ]; do
                    dd if=/dev/urandom of="$1" bs=64k count=4 seek=$(( (i % 64) * 4 )) oflag=direct conv=notrunc status=none || exit 1
                    i=$((i+1)); echo $i >> "$3"; sleep 0.1
                done
                """, "sh", file, stop, progress]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle(forWritingAtPath: errors)!
            process.standardInput = FileHandle.nullDevice
            try process.run()
        }

        var passes: Int {
            ((try? String(contentsOfFile: progress, encoding: .utf8)) ?? "").split(separator: "\n").count
        }

        /// Waits until the writer has made `count` more passes than `from`.
        func waitForPasses(_ count: Int, after from: Int? = nil, _ what: String) throws {
            let start = from ?? passes
            let deadline = Date().addingTimeInterval(60)
            while passes < start + count {
                guard process.isRunning else {
                    throw Failure(description: "writer stopped \(what): exit \(process.terminationStatus), stderr: \(errorText)")
                }
                guard Date() < deadline else { throw Failure(description: "writer made no progress \(what) for 60 s (passes \(passes))") }
                usleep(50_000)
            }
        }

        var errorText: String { ((try? String(contentsOfFile: errors, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines) }

        /// Stops the writer and requires that no write of it failed.
        func finish() throws {
            FileManager.default.createFile(atPath: stop, contents: nil)
            process.waitUntilExit()
            try expectEqual(process.terminationStatus, 0, "the writer's exit status (stderr: \(errorText))")
            try expect(errorText.isEmpty, "the writer wrote to stderr: \(errorText)")
        }

        func kill() {
            FileManager.default.createFile(atPath: stop, contents: nil)
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
        }
    }

    // MARK: Witnesses

    static func table(_ lab: Lab, _ name: String) throws -> String {
        try lab.sh("dmsetup", "table", name).trimmingCharacters(in: .newlines)
    }

    /// "MAJ:MIN" of a dm device, as dmsetup reports it.
    static func number(_ lab: Lab, _ name: String) throws -> String {
        guard let fields = try lab.dmsetupInfo(try DMName(name), "major,minor")?.split(separator: "|"), fields.count == 2 else {
            throw Failure(description: "dmsetup does not know \(name)")
        }
        return "\(fields[0]):\(fields[1])"
    }

    /// Name, UUID and major:minor of a dm device.
    static func identity(_ lab: Lab, _ name: String) throws -> String {
        try lab.dmsetupInfo(try DMName(name), "name,uuid,major,minor") ?? "(no device \(name))"
    }

    /// The source and major:minor findmnt shows for a mount point, or "" when nothing is mounted.
    static func mountSource(_ lab: Lab, _ mountPoint: String) throws -> String {
        try lab.run(["findmnt", "-n", "-o", "SOURCE,MAJ:MIN", "--mountpoint", mountPoint], allowFailure: true).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static func sectorCount(_ lab: Lab, _ path: String) throws -> UInt64 {
        UInt64(try lab.sh("blockdev", "--getsz", path).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
    }

    /// Every dm device with its table (`dmsetup table` of all), dmsetup ls and losetup -a.
    static func allTables(_ lab: Lab) throws -> String {
        let tables = try lab.sh("dmsetup", "table").split(separator: "\n").sorted().joined(separator: "\n")
        let loops = try lab.sh("losetup", "-a").split(separator: "\n").sorted().joined(separator: "\n")
        return "tables:\n\(tables)\nloops:\n\(loops)"
    }

    static func deviceRow(_ cli: CLI, _ name: String) throws -> [String: Any] {
        guard let row = try cli.rows("devices").first(where: { $0["name"] as? String == name }) else {
            throw Failure(description: "devices does not report \(name)")
        }
        return row
    }

    static func snapshotRow(_ cli: CLI, _ name: String) throws -> [String: Any] {
        guard let row = try cli.rows("snapshots").first(where: { $0["name"] as? String == name }) else {
            throw Failure(description: "snapshots does not report \(name)")
        }
        return row
    }

    /// The adopted stack as the contract says: the LV's node unchanged in name, UUID and
    /// major:minor; its table `linear` (or `snapshot-origin`) over snapstack-NAME-real; real
    /// `era` over snapstack-NAME-clone with the given block; the clone carrying `lvmTable`.
    static func expectAdopted(_ lab: Lab, lv: LogicalVolume, name: String, identity before: String, lvmTable: String,
                              sectors: UInt64, cbtBlock: UInt64, origin: Bool = false, _ when: String) throws {
        try expectEqual(try identity(lab, lv.dmName), before, "\(when): the LV's name, UUID and major:minor")
        let real = try number(lab, "snapstack-\(name)-real")
        let clone = try number(lab, "snapstack-\(name)-clone")
        let top = origin ? "0 \(sectors) snapshot-origin \(real)" : "0 \(sectors) linear \(real) 0"
        try expectEqual(try table(lab, lv.dmName), top, "\(when): dmsetup table \(lv.dmName)")
        let era = try table(lab, "snapstack-\(name)-real").split(separator: " ").map(String.init)
        try expect(era.count == 6 && era[0] == "0" && era[1] == "\(sectors)" && era[2] == "era" && era[4] == clone
                   && era[5] == "\(cbtBlock)",
                   "\(when): dmsetup table snapstack-\(name)-real is \(era.joined(separator: " ")), expected 0 \(sectors) era META \(clone) \(cbtBlock)")
        try expectEqual(try table(lab, "snapstack-\(name)-clone"), lvmTable, "\(when): dmsetup table snapstack-\(name)-clone against LVM's table")
    }

    /// After unprotect: LVM's table back byte for byte, no snapstack device, LVM content.
    static func expectReleased(_ lab: Lab, vg: VolumeGroup, lv: LogicalVolume, identity before: String, lvmTable: String,
                               mountPoint: String?) throws {
        try expectEqual(try table(lab, lv.dmName), lvmTable, "dmsetup table \(lv.dmName) after unprotect")
        try expectEqual(try identity(lab, lv.dmName), before, "the LV's name, UUID and major:minor after unprotect")
        let left = try lab.dmsetupNames().filter { $0.hasPrefix("snapstack-") }
        try expect(left.isEmpty, "snapstack devices after unprotect: \(left.sorted())")
        if let mountPoint {
            let source = try mountSource(lab, mountPoint)
            try expect(source.hasPrefix(lv.mapperPath + " "), "after unprotect \(mountPoint) shows \(source)")
            try lab.sh("dd", "if=/dev/urandom", "of=\(mountPoint)/after-unprotect", "bs=64k", "count=4", "conv=fsync", "status=none")
        }
        let lvs = try vg.lvmRun(["lvs", "--noheadings", "-o", "lv_name,lv_attr,lv_size", vg.name])
        try expect(lvs.status == 0 && lvs.stderr.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty,
                   "lvs after unprotect exited \(lvs.status): \(lvs.stdout) \(lvs.stderr)")
        let vgck = try vg.lvmRun(["vgck", vg.name])
        try expect(vgck.status == 0 && vgck.stderr.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty,
                   "vgck after unprotect exited \(vgck.status): \(vgck.stdout) \(vgck.stderr)")
    }

    /// Snapshot `name` as `snapshot`, check the LV's table is snapshot-origin, fsck the
    /// snapshot, and return its path.
    static func snapshot(_ lab: Lab, _ cli: CLI, lv: LogicalVolume, name: String, as snapshot: String, sectors: UInt64,
                         fsck: Bool) throws -> String {
        // Half the origin: more than the writer's 16 MiB region and a round's writes can fill.
        let path = lab.lastLineOf(try cli.ok("snapshot", name, "--as", snapshot, "--size", "50%"))
        try expectEqual(path, "/dev/mapper/snapstack-\(name)-\(snapshot)", "snapshot's output")
        let real = try number(lab, "snapstack-\(name)-real")
        try expectEqual(try table(lab, lv.dmName), "0 \(sectors) snapshot-origin \(real)",
                        "dmsetup table \(lv.dmName) with snapshot \(snapshot)")
        if fsck {
            let result = try lab.run(["fsck.ext4", "-n", "-f", path], allowFailure: true)
            try expectEqual(result.status, 0, "fsck.ext4 -n -f of snapshot \(snapshot) (\(result.stdout) \(result.stderr))")
        }
        return path
    }

    /// Full export of a first snapshot, then `rounds` incrementals each on a new snapshot
    /// after more writes through the filesystem, every image equal to its snapshot and reading
    /// no more than era_invalidate reports changed. Returns the last export's id and era.
    static func exportRounds(_ lab: Lab, _ cli: CLI, lv: LogicalVolume, name: String, mountPoint: String, sectors: UInt64,
                             rounds: Int, image: String) throws -> (id: String, era: Int64) {
        let size = Bytes(sectors * 512)
        let deviceID = try deviceRow(cli, name)["id"] as? String ?? ""
        var started = Date()
        let first = try snapshot(lab, cli, lv: lv, name: name, as: "r0", sectors: sectors, fsck: true)
        var (base, full) = try ExportScenarios.export(cli, "\(name)-r0", "--to", image)
        try expectEqual(full["kind"] as? String, "full", "first export's kind")
        try expectEqual(try ExportScenarios.fileSHA256(lab, image), try lab.sha256(first, length: size), "full image vs snapshot r0")
        try cli.ok("drop", "\(name)-r0")
        print(String(format: "      full export: %.1f s for snapshot, fsck, export and both checksums", Date().timeIntervalSince(started)))
        let blockSize = (full["block_size"] as? NSNumber)?.uint64Value ?? 0
        var baseEra = (full["era"] as? NSNumber)?.int64Value ?? -1
        for round in 1...rounds {
            started = Date()
            try lab.sh("dd", "if=/dev/urandom", "of=\(mountPoint)/new\(round)", "bs=64k", "count=\(8 * round)", "status=none")
            try lab.sh("sh", "-c", "head -c \(1000 * round + 123) /dev/urandom > \"$1\"", "sh", "\(mountPoint)/small\(round)")
            try lab.sh("sync")
            let path = try snapshot(lab, cli, lv: lv, name: name, as: "r\(round)", sectors: sectors, fsck: round == rounds)
            let (id, outcome) = try ExportScenarios.export(cli, "\(name)-r\(round)", "--to", image, "--since", base)
            try expectEqual(outcome["kind"] as? String, "incremental", "round \(round) kind")
            try expectEqual(try ExportScenarios.fileSHA256(lab, image), try lab.sha256(path, length: size),
                            "round \(round): image vs snapshot")
            let changed = try ExportScenarios.eraWitness(lab, cli: cli, device: name, id: deviceID, since: baseEra)
            let read = (outcome["bytes_read"] as? NSNumber)?.uint64Value ?? .max
            try expect(read > 0, "round \(round): the incremental read nothing")
            try expect(read <= UInt64(changed.count) * blockSize,
                       "round \(round): read \(read) bytes, era_invalidate reports \(changed.count) blocks of \(blockSize)")
            try expect(changed.count < Int(sectors * 512 / blockSize) / 2,
                       "round \(round): \(changed.count) blocks changed, too many to mean anything")
            print(String(format: "      round %d: read %d KiB for %d changed blocks, %.1f s", round, Int(read / 1024), changed.count,
                         Date().timeIntervalSince(started)))
            try cli.ok("drop", "\(name)-r\(round)")
            base = id
            baseEra = (outcome["era"] as? NSNumber)?.int64Value ?? -1
        }
        try cli.ok("verify", image)
        return (base, baseEra)
    }

    /// `changes NAME --since EXPORT` against era_invalidate, after a few more writes.
    static func changesAgree(_ lab: Lab, _ cli: CLI, name: String, mountPoint: String, since export: String, era: Int64) throws {
        let deviceID = try deviceRow(cli, name)["id"] as? String ?? ""
        try lab.sh("dd", "if=/dev/urandom", "of=\(mountPoint)/changes", "bs=64k", "count=5", "status=none", "conv=fsync")
        var blocks = Set<UInt64>()
        for row in try cli.reportRows(["changes", name, "--since", export]) {
            let first = (row["first_block"] as? NSNumber)?.uint64Value ?? 0
            let count = (row["blocks"] as? NSNumber)?.uint64Value ?? 0
            blocks.formUnion(first..<(first + count))
        }
        let witness = try ExportScenarios.eraWitness(lab, cli: cli, device: name, id: deviceID, since: era)
        try expect(!blocks.isEmpty, "changes listed nothing after writes")
        try expect(blocks.isSubset(of: witness), "changes lists blocks era_invalidate does not: \(blocks.subtracting(witness).sorted().prefix(10))")
        try expect(witness.subtracting(blocks).count <= 64,
                   "era_invalidate (taken later) reports \(witness.subtracting(blocks).count) blocks more than changes")
    }

    // MARK: Scenarios

    static func mountedLV(_ lab: Lab) throws {
        let cli = CLI(lab)
        try withVolumeGroup(lab, "vgadopt", pvSizes: [.mebibytes(256)]) { vg in
            vg.cli = cli
            let lv = try vg.createLV("data", size: "128M")
            let sectors: UInt64 = 128 << 11
            let mountPoint = try vg.mountExt4(lv)
            try lab.sh("dd", "if=/dev/urandom", "of=\(mountPoint)/base", "bs=1M", "count=16", "conv=fsync", "status=none")
            let lvmTable = try table(lab, lv.dmName)
            try expect(lvmTable.hasPrefix("0 \(sectors) linear \(vg.pvs[0].facts.number) "), "LVM's table: \(lvmTable)")
            let before = try identity(lab, lv.dmName)
            let mountedFrom = try mountSource(lab, mountPoint)

            let writer = try Writer(lab, file: "\(mountPoint)/writer", label: "writer")
            vg.writers.append(writer)
            try writer.waitForPasses(3, "before protect")
            vg.adopted.append("data")
            let protectStarted = Date()
            let protected = try cli.run(["protect", lv.path, "--name", "data", "--cbt-block", "64K"])
            try expectEqual(protected.status, 0, "protect \(lv.path) while mounted (stderr: \(protected.stderr))")
            print(String(format: "      protect under the writer: %.1f s", Date().timeIntervalSince(protectStarted)))
            let afterProtect = writer.passes
            try expectAdopted(lab, lv: lv, name: "data", identity: before, lvmTable: lvmTable, sectors: sectors, cbtBlock: 128,
                              "after protect")
            try expectEqual(try mountSource(lab, mountPoint), mountedFrom, "findmnt after protect")
            let row = try deviceRow(cli, "data")
            try expectEqual(row["tracking"] as? String, "continuous", "devices' tracking after protect")
            try writer.waitForPasses(3, after: afterProtect, "after protect")

            let image = lab.scratch.appendingPathComponent("data.img").path
            let (last, era) = try exportRounds(lab, cli, lv: lv, name: "data", mountPoint: mountPoint, sectors: sectors,
                                               rounds: mountedRounds, image: image)
            try writer.finish()
            print("      the writer made \(writer.passes) passes of 256 KiB")
            try changesAgree(lab, cli, name: "data", mountPoint: mountPoint, since: last, era: era)

            try cli.ok("unprotect", "data")
            try expectReleased(lab, vg: vg, lv: lv, identity: before, lvmTable: lvmTable, mountPoint: mountPoint)
            try vg.umount(mountPoint)
            let fsck = try lab.run(["fsck.ext4", "-n", "-f", lv.path], allowFailure: true)
            try expectEqual(fsck.status, 0, "fsck.ext4 -n -f of the LV after unprotect (\(fsck.stdout) \(fsck.stderr))")
        }
    }

    static func stripedLV(_ lab: Lab) throws {
        let cli = CLI(lab)
        try withVolumeGroup(lab, "vgstripe", pvSizes: [.mebibytes(128), .mebibytes(128)]) { vg in
            vg.cli = cli
            let lv = try vg.createLV("data", size: "128M", "-i2", "-I64k")
            let sectors: UInt64 = 128 << 11
            let mountPoint = try vg.mountExt4(lv)
            try lab.sh("dd", "if=/dev/urandom", "of=\(mountPoint)/base", "bs=1M", "count=8", "conv=fsync", "status=none")
            let lvmTable = try table(lab, lv.dmName)
            try expect(lvmTable.hasPrefix("0 \(sectors) striped 2 128 \(vg.pvs[0].facts.number) "), "LVM's table: \(lvmTable)")
            let before = try identity(lab, lv.dmName)

            let writer = try Writer(lab, file: "\(mountPoint)/writer", label: "writer")
            vg.writers.append(writer)
            try writer.waitForPasses(2, "before protect")
            vg.adopted.append("data")
            let protected = try cli.run(["protect", lv.mapperPath, "--name", "data", "--cbt-block", "64K"])
            try expectEqual(protected.status, 0, "protect \(lv.mapperPath) while mounted (stderr: \(protected.stderr))")
            let afterProtect = writer.passes
            try expectAdopted(lab, lv: lv, name: "data", identity: before, lvmTable: lvmTable, sectors: sectors, cbtBlock: 128,
                              "after protect")
            let source = try mountSource(lab, mountPoint)
            try expect(source.hasPrefix(lv.mapperPath + " "), "findmnt after protect: \(source)")
            try writer.waitForPasses(2, after: afterProtect, "after protect")

            let image = lab.scratch.appendingPathComponent("stripe.img").path
            _ = try exportRounds(lab, cli, lv: lv, name: "data", mountPoint: mountPoint, sectors: sectors, rounds: 1, image: image)
            try writer.finish()

            try cli.ok("unprotect", "data")
            try expectReleased(lab, vg: vg, lv: lv, identity: before, lvmTable: lvmTable, mountPoint: mountPoint)
        }
    }

    /// A foreign reload of an adopted LV, twice: `lvchange --refresh` (LVM's table again, same
    /// size), then `lvextend` (LVM's grown table). Each time: `devices` says interrupted, writes
    /// go untracked, reconcile adopts the LV again over LVM's table, the snapshot held across
    /// the reload is invalid, an incremental on an export from before is refused with 10 and
    /// `--allow-full` reads every block; after the second, tracking is exact again and unprotect
    /// gives LVM's grown table back. The export checks are collected rather than thrown, so that
    /// one failing still lets the rest of the sequence show what it does.
    static func foreignReload(_ lab: Lab) throws {
        let cli = CLI(lab)
        var findings: [String] = []
        do {
        try withVolumeGroup(lab, "vgreload", pvSizes: [.mebibytes(192)]) { vg in
            vg.cli = cli
            let lv = try vg.createLV("data", size: "64M")
            let sectors: UInt64 = 64 << 11, grown: UInt64 = (64 + 32) << 11
            let mountPoint = try vg.mountExt4(lv)
            try lab.sh("dd", "if=/dev/urandom", "of=\(mountPoint)/base", "bs=1M", "count=8", "conv=fsync", "status=none")
            let lvmTable = try table(lab, lv.dmName)
            let before = try identity(lab, lv.dmName)
            let mountedFrom = try mountSource(lab, mountPoint)
            vg.adopted.append("data")
            let protected = try cli.run(["protect", lv.path, "--name", "data", "--cbt-block", "64K"])
            try expectEqual(protected.status, 0, "protect \(lv.path) while mounted (stderr: \(protected.stderr))")
            try expectAdopted(lab, lv: lv, name: "data", identity: before, lvmTable: lvmTable, sectors: sectors, cbtBlock: 128,
                              "after protect")
            var image = lab.scratch.appendingPathComponent("reload.img").path
            let held = try snapshot(lab, cli, lv: lv, name: "data", as: "held1", sectors: sectors, fsck: false)
            let (e0, _) = try ExportScenarios.export(cli, "data-held1", "--to", image)
            try expectEqual(try ExportScenarios.fileSHA256(lab, image), try lab.sha256(held, length: Bytes(sectors * 512)),
                            "full image vs held1")
            try expectEqual(try deviceRow(cli, "data")["tracking"] as? String, "continuous", "tracking before any foreign reload")

            /// After a foreign reload that left `expected` (LVM's table) on the LV: interrupted,
            /// an untracked write, reconcile, the stack back at `size`, the held snapshot invalid.
            func readopted(_ reload: String, expected: String, size: UInt64, held: String) throws {
                try expectEqual(try table(lab, lv.dmName), expected, "dmsetup table \(lv.dmName) after \(reload)")
                try expectEqual(try identity(lab, lv.dmName), before, "the LV's identity after \(reload)")
                try expectEqual(try deviceRow(cli, "data")["tracking"] as? String, "interrupted", "devices' tracking after \(reload)")
                try lab.sh("dd", "if=/dev/urandom", "of=\(mountPoint)/untracked-\(held)", "bs=64k", "count=16", "conv=fsync", "status=none")
                try cli.ok("reconcile")
                try expectAdopted(lab, lv: lv, name: "data", identity: before, lvmTable: expected, sectors: size, cbtBlock: 128,
                                  "after \(reload) and reconcile")
                try expectEqual(try sectorCount(lab, "/dev/mapper/snapstack-data-real"), size,
                                "size of snapstack-data-real after \(reload) and reconcile")
                try expectEqual(try mountSource(lab, mountPoint), mountedFrom, "findmnt after \(reload) and reconcile")
                try expectEqual(try snapshotRow(cli, "data-\(held)")["state"] as? String, "invalid",
                                "state of snapshot \(held), active during \(reload)")
                try cli.ok("drop", "data-\(held)")
            }

            /// An incremental of `snapshot` on `base` (from before a foreign reload): refused
            /// with 10 and one line, the image untouched; then with --allow-full, every block
            /// read and the image equal to the snapshot. Returns the id of the export that
            /// completed (a plain full export when --allow-full failed, so the sequence goes on).
            /// When the reload `resized` the LV, --allow-full is refused (6) too: an image holds
            /// one device size, so the sequence goes on with a full export into a new image.
            func refusedThenFull(_ snapshot: String, path: String, since base: String, size: UInt64, resized: Bool = false,
                                 _ reload: String) throws -> String {
                let imageBefore = try ExportScenarios.fileSHA256(lab, image)
                let refused = try cli.run(["export", "data-\(snapshot)", "--to", image, "--since", base])
                if refused.status != 10 || refused.stderr.split(separator: "\n").count != 1 {
                    findings.append("after \(reload): export data-\(snapshot) --since \(base) (an export from before it) exited \(refused.status), expected 10 with one line; stderr: \(refused.stderr)")
                }
                if try ExportScenarios.fileSHA256(lab, image) != imageBefore {
                    findings.append("after \(reload): the refused export changed the image")
                }
                let full = try cli.run(["export", "data-\(snapshot)", "--to", image, "--since", base, "--allow-full", "--reportformat", "json"])
                var id = ExportScenarios.lastLine(full.stdout)
                if resized {
                    if full.status != 6 || !full.stderr.contains("take a full export into a new image") {
                        findings.append("after \(reload): export --since \(base) --allow-full of the resized LV exited \(full.status), expected 6 naming the new size; stderr: \(full.stderr)")
                    }
                    if try ExportScenarios.fileSHA256(lab, image) != imageBefore {
                        findings.append("after \(reload): the refused --allow-full export changed the image")
                    }
                    image = lab.scratch.appendingPathComponent("reload-\(snapshot).img").path
                    id = ExportScenarios.lastLine(try cli.ok("export", "data-\(snapshot)", "--to", image, "--full"))
                } else if full.status == 0 {
                    let outcome = try ExportScenarios.outcome(full.stderr)
                    if outcome["read_everything"] as? Bool != true || (outcome["bytes_read"] as? NSNumber)?.uint64Value != size * 512 {
                        findings.append("after \(reload): --allow-full reported read_everything \(String(describing: outcome["read_everything"])), bytes_read \(String(describing: outcome["bytes_read"])) of \(size * 512)")
                    }
                } else {
                    findings.append("after \(reload): export data-\(snapshot) --since \(base) --allow-full exited \(full.status); stderr: \(full.stderr)")
                    // A full export never overwrites an image: the sequence goes on in a new one.
                    image = lab.scratch.appendingPathComponent("reload-\(snapshot).img").path
                    id = ExportScenarios.lastLine(try cli.ok("export", "data-\(snapshot)", "--to", image, "--full"))
                }
                try expectEqual(try ExportScenarios.fileSHA256(lab, image), try lab.sha256(path, length: Bytes(size * 512)),
                                "after \(reload): the full image vs \(snapshot)")
                return id
            }

            // 1. lvchange --refresh: LVM loads its own table again, same size.
            let refreshed = try vg.lvmRun(["lvchange", "-q", "--refresh", "\(vg.name)/data"])
            try expectEqual(refreshed.status, 0, "lvchange --refresh of the adopted LV (stderr: \(refreshed.stderr))")
            try readopted("lvchange --refresh", expected: lvmTable, size: sectors, held: "held1")
            let s1 = try snapshot(lab, cli, lv: lv, name: "data", as: "s1", sectors: sectors, fsck: true)
            let e1 = try refusedThenFull("s1", path: s1, since: e0, size: sectors, "lvchange --refresh")
            try cli.ok("drop", "data-s1")

            // 2. lvextend: LVM loads its grown table.
            _ = try snapshot(lab, cli, lv: lv, name: "data", as: "held2", sectors: sectors, fsck: false)
            let extended = try vg.lvmRun(["lvextend", "-q", "-L+32M", "\(vg.name)/data"])
            try expectEqual(extended.status, 0, "lvextend of the adopted LV (stderr: \(extended.stderr))")
            let grownTable = try table(lab, lv.dmName)
            let pv = vg.pvs[0].facts.number.description
            try expect(grownTable != lvmTable && grownTable.split(separator: "\n").allSatisfy {
                           let fields = $0.split(separator: " ")
                           return fields.count == 5 && fields[2] == "linear" && fields[3] == pv
                       },
                       "the LV's table after lvextend is not LVM's plain one: \(grownTable)")
            try expectEqual(try sectorCount(lab, lv.path), grown, "LV size after lvextend")
            try readopted("lvextend", expected: grownTable, size: grown, held: "held2")
            try lab.sh("resize2fs", lv.path)
            let s2 = try snapshot(lab, cli, lv: lv, name: "data", as: "s2", sectors: grown, fsck: true)
            let e2 = try refusedThenFull("s2", path: s2, since: e1, size: grown, resized: true, "lvextend")
            try cli.ok("drop", "data-s2")

            // Tracking is exact again after the re-adoption.
            try lab.sh("dd", "if=/dev/urandom", "of=\(mountPoint)/tracked", "bs=64k", "count=16", "conv=fsync", "status=none")
            let s3 = try snapshot(lab, cli, lv: lv, name: "data", as: "s3", sectors: grown, fsck: false)
            let (_, incremental) = try ExportScenarios.export(cli, "data-s3", "--to", image, "--since", e2)
            try expectEqual(incremental["kind"] as? String, "incremental", "kind of the export after re-adoption")
            try expect(((incremental["bytes_read"] as? NSNumber)?.uint64Value ?? .max) < grown * 512 / 2,
                       "the incremental after re-adoption read \(String(describing: incremental["bytes_read"])) bytes")
            try expectEqual(try ExportScenarios.fileSHA256(lab, image), try lab.sha256(s3, length: Bytes(grown * 512)),
                            "incremental image vs s3")
            try cli.ok("verify", image)
            try cli.ok("drop", "data-s3")

            try cli.ok("unprotect", "data")
            try expectReleased(lab, vg: vg, lv: lv, identity: before, lvmTable: grownTable, mountPoint: mountPoint)
        }
        } catch {
            throw Failure(description: (findings + ["\(error)"]).joined(separator: "\n      "))
        }
        if !findings.isEmpty { throw Failure(description: findings.joined(separator: "\n      ")) }
    }

    static func daemonReadopts(_ lab: Lab) throws {
        let cli = CLI(lab)
        try cli.ok("status")
        try withVolumeGroup(lab, "vgdaemon", pvSizes: [.mebibytes(192)]) { vg in
            vg.cli = cli
            let lv = try vg.createLV("data", size: "64M")
            let sectors: UInt64 = 64 << 11, grown: UInt64 = (64 + 32) << 11
            let mountPoint = try vg.mountExt4(lv)
            try lab.sh("dd", "if=/dev/urandom", "of=\(mountPoint)/base", "bs=1M", "count=4", "conv=fsync", "status=none")
            let lvmTable = try table(lab, lv.dmName)
            let before = try identity(lab, lv.dmName)
            let daemon = try DaemonScenarios.Daemon(lab, state: cli.state, config: try DaemonScenarios.writeConfig(lab, "rules:\n"))
            defer { _ = try? daemon.terminate() }
            try daemon.waitReady()

            // protect's own reload of the LV raises a change event the daemon must not take
            // for a foreign one.
            vg.adopted.append("data")
            let protected = try cli.run(["protect", lv.path, "--name", "data", "--cbt-block", "64K"])
            try expectEqual(protected.status, 0, "protect \(lv.path) while mounted (stderr: \(protected.stderr))")
            try lab.sh("udevadm", "settle")
            Thread.sleep(forTimeInterval: 2)
            try expectAdopted(lab, lv: lv, name: "data", identity: before, lvmTable: lvmTable, sectors: sectors, cbtBlock: 128,
                              "after protect with the daemon running")
            try expectEqual(try deviceRow(cli, "data")["tracking"] as? String, "continuous", "tracking after protect with the daemon running")

            let extended = try vg.lvmRun(["lvextend", "-q", "-L+32M", "\(vg.name)/data"])
            try expectEqual(extended.status, 0, "lvextend of the adopted LV (stderr: \(extended.stderr))")
            // A change event reaches udev within a second or two, even under TCG.
            let reloaded = Date()
            let deadline = reloaded.addingTimeInterval(30)
            var grownTable = ""
            while true {
                try lab.sh("udevadm", "settle")
                let top = try table(lab, lv.dmName)
                if top.hasPrefix("0 \(grown) linear "), let real = try? number(lab, "snapstack-data-real"), top == "0 \(grown) linear \(real) 0" {
                    grownTable = try table(lab, "snapstack-data-clone")
                    // Seen by polling every 0.25 s after a udev settle: an upper bound.
                    print(String(format: "      re-adopted by the daemon %.1f s after lvextend returned", Date().timeIntervalSince(reloaded)))
                    break
                }
                guard Date() < deadline else {
                    throw Failure(description: "the daemon did not re-adopt within 30 s of lvextend: dmsetup table \(lv.dmName) is \(top); daemon log tail:\n\(daemon.logText.suffix(3000))")
                }
                usleep(250_000)
            }
            try expect(grownTable.split(separator: "\n").allSatisfy { $0.split(separator: " ")[2] == "linear" } && grownTable != lvmTable,
                       "the clone's table after re-adoption: \(grownTable)")
            try expectAdopted(lab, lv: lv, name: "data", identity: before, lvmTable: grownTable, sectors: grown, cbtBlock: 128,
                              "after the daemon re-adopted")
            try expectEqual(try sectorCount(lab, "/dev/mapper/snapstack-data-real"), grown, "size of snapstack-data-real")
            try lab.sh("resize2fs", lv.path)
            let path = try snapshot(lab, cli, lv: lv, name: "data", as: "s1", sectors: grown, fsck: true)
            let image = lab.scratch.appendingPathComponent("daemon.img").path
            _ = try ExportScenarios.export(cli, "data-s1", "--to", image)
            try expectEqual(try ExportScenarios.fileSHA256(lab, image), try lab.sha256(path, length: Bytes(grown * 512)), "image vs s1")
            try cli.ok("drop", "data-s1")
            try expectEqual(try daemon.terminate(), 0, "the daemon's exit status")

            try cli.ok("unprotect", "data")
            try expectReleased(lab, vg: vg, lv: lv, identity: before, lvmTable: grownTable, mountPoint: mountPoint)
        }
    }

    static func refusals(_ lab: Lab) throws {
        let cli = CLI(lab)
        try lab.sh("modprobe", "-a", "dm-thin-pool", "dm-crypt", "dm-zero")
        try withVolumeGroup(lab, "vgrefuse", pvSizes: [.mebibytes(128)]) { vg in
            vg.cli = cli
            try vg.lvm(["lvcreate", "-q", "-y", "--type", "thin-pool", "-L", "32M", "-n", "pool", vg.name])
            try vg.lvm(["lvcreate", "-q", "-y", "-V", "32M", "-T", "\(vg.name)/pool", "-n", "thin"])
            let thin = LogicalVolume(vg: vg.name, name: "thin")
            let thinTable = try table(lab, thin.dmName)
            try expect(thinTable.hasPrefix("0 65536 thin "), "thin LV's table: \(thinTable)")

            let backing = try lab.loopDevice("crypt", size: .mebibytes(32))
            let (cryptName, _) = try lab.name("crypt")
            lab.track(cryptName)
            try lab.sh("dmsetup", "create", cryptName.rawValue, "--table",
                       "0 65536 crypt aes-xts-plain64 \(String(repeating: "0123456789abcdef", count: 4)) 0 \(backing.path) 0")
            let (zeroName, _) = try lab.name("zero")
            lab.track(zeroName)
            try lab.sh("dmsetup", "create", zeroName.rawValue, "--table", "0 65536 zero")

            let plain = try lab.loopDevice("plain", size: .mebibytes(32))
            try lab.sh("mkfs.ext4", "-q", plain.path)
            let mountPoint = lab.scratch.appendingPathComponent("plain").path
            try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
            try lab.sh("mount", "-o", "ro", plain.path, mountPoint)
            vg.mounts.append(mountPoint)

            let cases: [(String, String)] = [
                ("thin LV", thin.path),
                ("thin LV by its /dev/mapper path", thin.mapperPath),
                ("dm-crypt device", "/dev/mapper/\(cryptName.rawValue)"),
                ("zero-target device", "/dev/mapper/\(zeroName.rawValue)"),
                ("mounted plain loop device", plain.path),
            ]
            _ = try cli.rows("devices")   // the state directory and database exist before the first case
            vg.adopted.append("x")        // for the tear-down, should a protect succeed
            for (what, path) in cases {
                let before = try allTables(lab)
                let world = try OrchestratorScenarios.world(lab, cli)
                let result = try cli.run(["protect", path, "--name", "x"])
                try expectEqual(result.status, 6, "protect of a \(what): exit status (stdout: \(result.stdout), stderr: \(result.stderr))")
                let lines = result.stderr.split(separator: "\n")
                try expect(lines.count == 1 && lines[0].hasPrefix("snapstack: "), "protect of a \(what): stderr \(result.stderr)")
                try expectEqual(try allTables(lab), before, "protect of a \(what): dmsetup table of every device and losetup -a")
                try expectEqual(try OrchestratorScenarios.world(lab, cli), world, "protect of a \(what): dm devices, loops and the database")
            }
            try expectEqual(try cli.rows("devices").count, 0, "devices after the refusals")
        }
    }
}
