import DeviceMapper
import Foundation

/// The `snapstack` binary itself, as an administrator runs it.
enum CommandScenarios {
    static let all: [Scenario] = [
        Scenario("snapstack doctor reports the kernel's versions and exits 0", doctor),
    ]

    /// The `snapstack` executable under test — `SNAPSTACK_VM_BINARY` if set (test-all.sh names
    /// the release build with the Swift runtime linked in, the binary that ships), else the one
    /// built beside this suite — copied once into the guest's RAM with its shared libraries.
    /// The VM reads the host's files over 9p without a page cache: each start of the 50 MB debug
    /// binary cost about 3 s against 0.6 s from tmpfs, its 80 MB of libraries (the Swift
    /// runtime, Foundation's ICU) were read again at every start, and the suite starts snapstack
    /// hundreds of times. The libraries are found through LD_LIBRARY_PATH, which every child of
    /// the suite inherits: they are the very files the loader would map from the host, so
    /// nothing else changes. Set up before the first scenario runs, while the suite has one
    /// thread.
    static let snapstack: String = {
        let built = ProcessInfo.processInfo.environment["SNAPSTACK_VM_BINARY"].flatMap { $0.isEmpty ? nil : $0 }
            ?? URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
                .deletingLastPathComponent().appendingPathComponent("snapstack").path
        let directory = "/run/snapstack-vmsuite"
        let copy = directory + "/snapstack"
        do {
            try? FileManager.default.removeItem(atPath: directory)
            try FileManager.default.createDirectory(atPath: directory + "/lib", withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: built, toPath: copy)
        } catch {
            return built
        }
        // The store watch and the orchestrator that scenarios run in this process reach LVM
        // through the snapstack binary's `lvm-exec`, not through this suite's own executable.
        setenv("SNAPSTACK_LVM_EXEC", copy, 1)
        if let libraries = try? sharedLibraries(of: copy) {
            for library in libraries {
                try? FileManager.default.copyItem(atPath: library, toPath: directory + "/lib/" + (library as NSString).lastPathComponent)
            }
            setenv("LD_LIBRARY_PATH", directory + "/lib", 1)
        }
        return copy
    }()

    /// The paths of the shared libraries `executable` loads, as ldd resolves them.
    static func sharedLibraries(of executable: String) throws -> [String] {
        let ldd = Process()
        ldd.executableURL = URL(fileURLWithPath: "/usr/bin/ldd")
        ldd.arguments = [executable]
        let output = Pipe()
        ldd.standardOutput = output
        try ldd.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        ldd.waitUntilExit()
        guard ldd.terminationStatus == 0 else { throw Failure(description: "ldd \(executable) failed") }
        // "\tlibfoo.so.1 => /usr/lib/libfoo.so.1 (0x...)"; the vdso and the loader have no "=> /".
        return text.split(separator: "\n").compactMap { line in
            guard let arrow = line.range(of: "=> /") else { return nil }
            return line[line.index(before: arrow.upperBound)...].split(separator: " ").first.map(String.init)
        }
    }

    static func doctor(_ lab: Lab) throws {
        let state = lab.scratch.appendingPathComponent("state").path
        let result = try lab.run([snapstack, "doctor", "--reportformat", "json", "--state-dir", state], allowFailure: true)
        try expectEqual(result.status, 0, "doctor's exit status (stderr: \(result.stderr))")
        struct Report: Decodable {
            var verdict: String
            var driverVersion: String?
            var targets: [Target]
            var udevRunning: Bool
            var kernelRelease: String
            var warnings: [Warning]
            struct Target: Decodable { var name: String; var version: String? }
            struct Warning: Decodable { var what: String }
        }
        let report = try JSONDecoder().decode(Report.self, from: Data(result.stdout.utf8))
        try expectEqual(report.verdict, "ready", "verdict")
        try expect(report.udevRunning, "udev reported not running")
        let release = try lab.sh("uname", "-r").trimmingCharacters(in: .whitespacesAndNewlines)
        try expectEqual(report.kernelRelease, release, "the kernel release against uname -r")
        try expect(report.warnings.isEmpty, "warnings on \(release), which has dm-era's crash recovery: \(report.warnings.map(\.what))")
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
