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
}
