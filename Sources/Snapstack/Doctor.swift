import DeviceMapper
import Foundation
import SystemPackage
import Udev

/// Whether this machine can run snapstack: the answer of `snapstack doctor`.
public struct DoctorReport: Codable, Sendable {
    public enum Verdict: String, Codable, Sendable {
        /// Every check passed.
        case ready
        /// The kernel lacks device-mapper or a target snapstack needs: nothing can work.
        case kernelUnsupported = "kernel-unsupported"
        /// The kernel is fine, but something around it (udev, the state directory) is not.
        case incomplete
    }

    public struct Target: Codable, Sendable, Equatable {
        public var name: String
        /// nil when the kernel does not have the target even after loading its module.
        public var version: String?
        /// The module that provides it (loaded by `doctor` when missing).
        public var module: String
    }

    public struct Problem: Codable, Sendable, Equatable {
        /// What is wrong and why, in one sentence.
        public var what: String
        /// What to do about it.
        public var remedy: String
    }

    public var verdict: Verdict
    /// `DM_VERSION`, nil without a driver.
    public var driverVersion: String?
    public var targets: [Target]
    public var udevRunning: Bool
    public var stateDirectory: String
    public var stateDirectoryWritable: Bool
    public var problems: [Problem]
    /// The running kernel's release (`uname -r`).
    public var kernelRelease: String
    /// What works, but less well than it could: reported, the verdict unchanged.
    public var warnings: [Problem]
}

/// The checks behind `snapstack doctor`.
public struct Doctor: Sendable {
    /// The targets snapstack's stacks are made of, and the module each comes from.
    public static let requiredTargets: [(name: String, module: String)] = [
        ("linear", "dm-mod"), ("era", "dm-era"), ("snapshot", "dm-snapshot"),
        ("snapshot-origin", "dm-snapshot"), ("snapshot-merge", "dm-snapshot"),
    ]

    public var client = DeviceMapperClient()
    public var stateDirectory: FilePath
    /// Whether missing target modules are loaded with modprobe before giving up on them.
    public var loadModules = true

    public init(stateDirectory: FilePath) {
        self.stateDirectory = stateDirectory
    }

    public func run() -> DoctorReport {
        var problems: [DoctorReport.Problem] = []
        var verdict = DoctorReport.Verdict.ready

        var driver: String?
        do {
            driver = try client.driverVersion()
        } catch {
            verdict = .kernelUnsupported
            problems.append(.init(
                what: "this kernel has no usable device-mapper driver (\(Self.reason(error)))",
                remedy: "load it with `modprobe dm-mod`, or boot a kernel built with CONFIG_BLK_DEV_DM (every distribution kernel is); run as root"))
        }

        var targets: [DoctorReport.Target] = []
        if driver != nil {
            var loaded = (try? client.targetVersions()) ?? []
            let missingModules = Set(Self.requiredTargets.filter { t in !loaded.contains { $0.name == t.name } }.map(\.module))
            if loadModules && !missingModules.isEmpty {
                Self.modprobe(missingModules.sorted())
                loaded = (try? client.targetVersions()) ?? loaded
            }
            for (name, module) in Self.requiredTargets {
                let version = loaded.first { $0.name == name }?.description
                targets.append(.init(name: name, version: version, module: module))
                if version == nil {
                    verdict = .kernelUnsupported
                    problems.append(.init(
                        what: "the kernel has no device-mapper target \"\(name)\"",
                        remedy: "load it with `modprobe \(module)`, or use a kernel built with it"))
                }
            }
        }

        let udevRunning = (try? UdevContext().isDaemonRunning) ?? false
        if !udevRunning {
            if verdict == .ready { verdict = .incomplete }
            problems.append(.init(
                what: "the udev daemon is not running, so /dev/mapper nodes and udev rules would not be handled",
                remedy: "start systemd-udevd (`systemctl start systemd-udevd`)"))
        }

        let stateProblem = StateDirectory.probe(stateDirectory)
        if let stateProblem {
            if verdict == .ready { verdict = .incomplete }
            problems.append(.init(
                what: "the state directory is not usable: \(stateProblem)",
                remedy: "run as root, or name a writable directory with --state-dir or \(StateDirectory.environmentVariable)"))
        }

        let release = Self.runningKernelRelease()
        return DoctorReport(
            verdict: verdict, driverVersion: driver, targets: targets, udevRunning: udevRunning,
            stateDirectory: stateDirectory.string, stateDirectoryWritable: stateProblem == nil, problems: problems,
            kernelRelease: release, warnings: Self.kernelWarnings(release: release))
    }

    /// The first kernel whose dm-era keeps, after a crash, the writeset it had committed
    /// (de89afc1e40f, "dm era: Recover committed writeset after crash"). Before it, the blocks
    /// of the era under way when the machine went down are forgotten.
    public static let eraRecoveryRelease = (major: 5, minor: 12)

    /// Warnings about the kernel release `release` (`uname -r`: "6.1.0-28-amd64"). A release
    /// that does not start with MAJOR.MINOR gets none: nothing is claimed about it.
    public static func kernelWarnings(release: String) -> [DoctorReport.Problem] {
        let numbers = release.split(whereSeparator: { !$0.isNumber }).prefix(2).map { Int($0) }
        guard numbers.count == 2, let major = numbers[0], let minor = numbers[1],
              release.first?.isNumber == true else { return [] }
        guard (major, minor) < (eraRecoveryRelease.major, eraRecoveryRelease.minor) else { return [] }
        return [.init(
            what: "kernel \(release) predates dm-era's recovery of its committed writeset after a crash (Linux \(eraRecoveryRelease.major).\(eraRecoveryRelease.minor), de89afc1e40f): "
                + "an unclean shutdown forgets the blocks of the era under way",
            remedy: "snapstack interrupts the change tracking after every unclean shutdown anyway (the next incremental needs --allow-full); "
                + "a kernel of \(eraRecoveryRelease.major).\(eraRecoveryRelease.minor) or later is the one to run")]
    }

    private static func runningKernelRelease() -> String {
        var names = utsname()
        guard uname(&names) == 0 else { return "" }
        return withUnsafeBytes(of: &names.release) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
    }

    /// The shortest true account of why the driver could not be reached.
    private static func reason(_ error: any Error) -> String {
        guard let error = error as? DeviceMapperError else { return "\(error)" }
        if let control = error.messages.first(where: { $0.contains("/dev/mapper/control") }) {
            return control
        }
        if let errno = error.errno { return "\(error.operation) failed: \(errno)" }
        return error.messages.first ?? "\(error)"
    }

    private static func modprobe(_ modules: [String]) {
        // A failure is reported through the targets that stay missing.
        _ = try? ChildProcess.run("/sbin/modprobe", ["-q", "-a"] + modules)
    }
}
