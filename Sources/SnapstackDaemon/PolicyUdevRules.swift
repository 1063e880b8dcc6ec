import BlockIO
import Foundation
import Logging
import Policy
import Snapstack
import Udev

/// The auto-protect policy as udev rules (`Policy.udevRules`), in force exactly while the
/// daemon runs: written before it listens for events and at each reload, removed when it
/// stops — with no daemon to stack or release a device, hiding one would only lose it.
struct PolicyUdevRules: Sendable {
    var path = Policy.udevRulesPath
    var runtimeDirectory = LinuxHost().runtimeDirectory
    let logger: Logger

    var releasedDirectory: String { ReleasedMarkers.directory(runtime: runtimeDirectory) }

    /// Writes the rules of `policy` (none when it protects nothing) and has udevd read them.
    /// A failure is logged: the daemon protects as before, only without the early hiding.
    func install(_ policy: Policy) {
        let protects = policy.rules.contains { if case .protect = $0.action { true } else { false } }
        guard protects else {
            remove()
            return
        }
        let text = policy.udevRules(releasedDirectory: releasedDirectory)
        if (try? String(contentsOfFile: path, encoding: .utf8)) == text { return }
        do {
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try Data(text.utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
        } catch {
            logger.error("cannot write \(path): a disk the policy protects may be seen by mounters before its stack exists: \(error)")
            return
        }
        reloadUdev(because: "wrote \(path)")
    }

    /// Removes the rules, then shows again every device they still hide: one the daemon has not
    /// decided on yet (it will look at it when it starts again).
    func remove() {
        guard FileManager.default.fileExists(atPath: path) else { return }
        do {
            try FileManager.default.removeItem(atPath: path)
        } catch {
            logger.error("cannot remove \(path): disks the policy matches stay hidden until they are stacked: \(error)")
            return
        }
        reloadUdev(because: "removed \(path)")
        let members = runtimeDirectory + "/members"
        for device in (try? UdevContext().blockDevices()) ?? [] where device.properties[Policy.udevTag] != nil {
            guard !FileManager.default.fileExists(atPath: "\(members)/\(device.number)") else { continue }
            UdevContext.trigger(device.number)
        }
    }

    /// Shows a device the rules hid, which the daemon leaves alone.
    func release(_ number: DeviceNumber) {
        ReleasedMarkers.release(number, runtime: runtimeDirectory) { UdevContext.trigger($0) }
    }

    func forget(_ number: DeviceNumber) { ReleasedMarkers.forget(number, runtime: runtimeDirectory) }

    func forgetAll() { ReleasedMarkers.forgetAll(runtime: runtimeDirectory) }

    /// Asks udevd to read its rules files again (`udevadm control --reload`): it would notice a
    /// changed rules directory by itself only at an event at least 3 s after its last check.
    /// Returns what went wrong, or nil.
    static func reloadRules() -> String? {
        guard let udevadm = ["/usr/bin/udevadm", "/bin/udevadm"].first(where: FileManager.default.isExecutableFile) else {
            return "udevadm is not installed"
        }
        do {
            let result = try ChildProcess.run(udevadm, ["control", "--reload", "--timeout=10"])
            guard result.status == 0 else {
                return "\(udevadm) control --reload failed (exit \(result.status)): \(result.stderr.trimmingCharacters(in: .whitespacesAndNewlines))"
            }
            return nil
        } catch {
            return "cannot run \(udevadm): \(error)"
        }
    }

    private func reloadUdev(because what: String) {
        if let problem = Self.reloadRules() {
            logger.warning("\(what), but udevd was not told to read it (\(problem)); it reads it at its next event")
        } else {
            logger.info("\(what); udevd reloaded its rules")
        }
    }
}
