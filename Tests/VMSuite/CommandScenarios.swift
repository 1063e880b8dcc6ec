import DeviceMapper
import Foundation

/// The `snapstack` binary itself, as an administrator runs it.
enum CommandScenarios {
    static let all: [Scenario] = [
        Scenario("snapstack doctor reports the kernel's versions and exits 0", doctor),
    ]

    /// The `snapstack` executable built beside this one, copied once into the guest's RAM: the
    /// VM reads the host's files over 9p, where each start of a 50 MB debug binary costs about
    /// 3 s against 0.6 s from tmpfs, and the suite starts snapstack hundreds of times.
    static let snapstack: String = {
        let built = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
            .deletingLastPathComponent().appendingPathComponent("snapstack").path
        let copy = "/run/snapstack-vmsuite/snapstack"
        do {
            try? FileManager.default.removeItem(atPath: copy)
            try FileManager.default.createDirectory(atPath: "/run/snapstack-vmsuite", withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: built, toPath: copy)
            return copy
        } catch {
            return built
        }
    }()

    static func doctor(_ lab: Lab) throws {
        let state = lab.scratch.appendingPathComponent("state").path
        let result = try lab.run([snapstack, "doctor", "--reportformat", "json", "--state-dir", state], allowFailure: true)
        try expectEqual(result.status, 0, "doctor's exit status (stderr: \(result.stderr))")
        struct Report: Decodable {
            var verdict: String
            var driverVersion: String?
            var targets: [Target]
            var udevRunning: Bool
            struct Target: Decodable { var name: String; var version: String? }
        }
        let report = try JSONDecoder().decode(Report.self, from: Data(result.stdout.utf8))
        try expectEqual(report.verdict, "ready", "verdict")
        try expect(report.udevRunning, "udev reported not running")
        let dmsetup = try lab.sh("dmsetup", "version")
        try expect(report.driverVersion.map { dmsetup.contains("Driver version:    \($0)") } ?? false,
                   "driver \(String(describing: report.driverVersion)) vs \(dmsetup)")
        let targets = try lab.sh("dmsetup", "targets")
        for target in report.targets {
            let version = try target.version ?? { throw Failure(description: "\(target.name) missing") }()
            try expect(targets.contains { _ in true } && targets.split(separator: "\n").contains {
                $0.split(separator: " ", omittingEmptySubsequences: true) == [Substring(target.name), Substring("v" + version)]
            }, "\(target.name) v\(version) not in dmsetup targets:\n\(targets)")
        }
        let human = try lab.run([snapstack, "doctor", "--state-dir", state], allowFailure: true)
        try expectEqual(human.status, 0, "doctor (basic) exit status")
        try expect(human.stdout.contains("snapstack can run on this machine."), "basic output: \(human.stdout)")
    }
}
