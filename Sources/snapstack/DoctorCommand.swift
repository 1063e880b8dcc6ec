import ArgumentParser
import Foundation
import Snapstack

struct DoctorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check that this machine can run snapstack.",
        discussion: """
            Reports the device-mapper driver version, the version of each target snapstack \
            uses (linear, era, snapshot, snapshot-origin, snapshot-merge; dm-era and dm-snapshot \
            are loaded with modprobe when missing), whether udev is running and whether the \
            state directory is writable. Changes nothing else. A kernel before 5.12 is warned \
            about (its dm-era forgets the era under way at a crash), without changing the verdict.

            Exit status: 0 ready; 3 the kernel lacks device-mapper or a target; 4 udev or the \
            state directory is not usable.
            """)

    @OptionGroup var global: GlobalOptions
    @OptionGroup var report: FormatOption

    @Flag(name: .customLong("no-modprobe"), help: "Do not load missing target modules.")
    var noModprobe = false

    func run() throws {
        var doctor = Doctor(stateDirectory: global.resolvedStateDirectory)
        doctor.loadModules = !noModprobe
        let result = doctor.run()

        switch report.format {
        case .json:
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: try encoder.encode(result), as: UTF8.self))
        case .basic:
            print(Self.render(result))
        }
        for problem in result.problems {
            FileHandle.standardError.write(Data("snapstack: \(problem.what); \(problem.remedy).\n".utf8))
        }
        for warning in result.warnings {
            FileHandle.standardError.write(Data("snapstack: warning: \(warning.what); \(warning.remedy).\n".utf8))
        }
        switch result.verdict {
        case .ready: return
        case .kernelUnsupported: throw ExitStatus.kernelUnsupported.exitCode
        case .incomplete: throw ExitStatus.environmentIncomplete.exitCode
        }
    }

    static func render(_ report: DoctorReport) -> String {
        var rows: [(String, String)] = [("kernel", report.kernelRelease.isEmpty ? "unknown" : report.kernelRelease),
                                        ("device-mapper driver", report.driverVersion ?? "missing")]
        for target in report.targets {
            rows.append(("target \(target.name)", target.version ?? "missing (module \(target.module))"))
        }
        rows.append(("udev", report.udevRunning ? "running" : "not running"))
        rows.append(("state directory", report.stateDirectory + (report.stateDirectoryWritable ? " (writable)" : " (not usable)")))
        let width = rows.map(\.0.count).max() ?? 0
        var lines = rows.map { $0.0.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + $0.1 }
        switch report.verdict {
        case .ready: lines.append("snapstack can run on this machine.")
        case .kernelUnsupported: lines.append("snapstack cannot run on this kernel.")
        case .incomplete: lines.append("snapstack cannot run until the problems below are fixed.")
        }
        return lines.joined(separator: "\n")
    }
}
