import BlockIO
import DeviceMapper
import Foundation

/// A scenario's failure: what was expected and what the witness showed.
struct Failure: Error, CustomStringConvertible {
    var description: String
}

/// The resources of one scenario — loop devices, dm devices, files — and the witnesses that
/// check what the kernel really did. Everything a scenario makes is registered here first, so
/// that `tearDown` removes it whether the scenario passed, failed or threw half-way.
final class Lab {
    static let namePrefix = "snapstack-vmtest-"
    static let uuidPrefix = "SNAPSTACK-VMTEST-"
    /// The longest any one witness or snapstack command may take.
    static let commandLimit: Double = 120

    let dm = DeviceMapperClient()
    let scratch: URL
    /// Where the kernel's table and status strings are written for the unit tests, if asked.
    let captureDirectory: URL?

    private var devices: [DMName] = []
    private var loops: [String] = []

    init(scenario: String, captureDirectory: URL?) throws {
        scratch = URL(fileURLWithPath: "/tmp/snapstack-vmsuite").appendingPathComponent(scenario)
        try? FileManager.default.removeItem(at: scratch)
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        self.captureDirectory = captureDirectory
    }

    // MARK: Making things

    /// A device name in the test namespace, with its UUID.
    func name(_ suffix: String) throws -> (DMName, DMUUID) {
        (try DMName(Self.namePrefix + suffix), try DMUUID(Self.uuidPrefix + suffix))
    }

    /// Registers `name` for removal at tear-down (removal runs in reverse order of registration,
    /// so register a device before the devices stacked on it).
    func track(_ name: DMName) {
        if !devices.contains(name) { devices.append(name) }
    }

    /// A loop device over a new sparse file of `size`, optionally filled with random bytes.
    func loopDevice(_ label: String, size: Bytes, random: Bool = false) throws -> (path: String, facts: BlockDeviceFacts) {
        let file = scratch.appendingPathComponent(label + ".img").path
        try sh("truncate", "-s", "\(size.rawValue)", file)
        if random {
            try sh("dd", "if=/dev/urandom", "of=\(file)", "bs=1M", "count=\(size.rawValue >> 20)",
                   "conv=notrunc", "status=none")
        }
        let path = try sh("losetup", "--find", "--show", file).trimmingCharacters(in: .whitespacesAndNewlines)
        loops.append(path)
        return (path, try BlockDeviceFacts.read(.init(path)))
    }

    // MARK: Witnesses

    /// Runs a program to completion and returns its stdout; a non-zero exit is a failure that
    /// quotes its stderr.
    @discardableResult
    func sh(_ arguments: String..., allowFailure: Bool = false) throws -> String {
        try run(arguments, allowFailure: allowFailure).stdout
    }

    /// Runs a program; `status` is its exit code, or 128 + the signal that killed it.
    func run(_ arguments: [String], allowFailure: Bool = false,
             environment: [String: String] = [:]) throws -> (status: Int32, stdout: String, stderr: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // A child stuck in the kernel (I/O on a suspended device) is killed after `limit`, and
        // the kernel stacks of its threads are kept for the failure message.
        let pid = process.processIdentifier
        let hung = DataBox()
        let watchdog = DispatchWorkItem {
            var stacks = ""
            for task in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? [] {
                let stack = (try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/stack", encoding: .utf8)) ?? "?"
                stacks += "thread \(task):\n\(stack)"
            }
            hung.data = Data(stacks.utf8)
            // Said at once: a process in uninterruptible sleep outlives SIGKILL, and then the
            // pipes this call reads never close.
            FileHandle.standardError.write(Data("`\(arguments.joined(separator: " "))` hung; kernel stacks:\n\(stacks)".utf8))
            kill(pid, SIGKILL)
        }
        DispatchQueue.global().asyncAfter(deadline: .now() + Self.commandLimit, execute: watchdog)
        defer { watchdog.cancel() }
        // Drain stderr on another thread while reading stdout, so that a child that fills
        // one pipe while we wait on the other cannot deadlock.
        let stderrBox = DataBox()
        let drained = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            stderrBox.data = err.fileHandleForReading.readDataToEndOfFile()
            drained.signal()
        }
        let stdoutData = out.fileHandleForReading.readDataToEndOfFile()
        drained.wait()
        let stderrData = stderrBox.data
        process.waitUntilExit()
        if !hung.data.isEmpty {
            throw Failure(description: "`\(arguments.joined(separator: " "))` hung for \(Int(Self.commandLimit)) s; kernel stacks:\n\(String(decoding: hung.data, as: UTF8.self))\nstderr: \(String(decoding: stderrData, as: UTF8.self))")
        }
        let status = process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
        let result = (status, String(decoding: stdoutData, as: UTF8.self), String(decoding: stderrData, as: UTF8.self))
        if result.0 != 0 && !allowFailure {
            throw Failure(description: "`\(arguments.joined(separator: " "))` exited \(result.0): \(result.2.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        return result
    }

    /// sha256 of `length` bytes of `path` from `offset`, read with O_DIRECT so that the page
    /// cache cannot answer for the device.
    func sha256(_ path: String, offset: Bytes = .zero, length: Bytes) throws -> String {
        let block: UInt64 = 1 << 16
        precondition(offset.rawValue % block == 0 && length.rawValue % block == 0)
        let output = try sh("sh", "-c", "dd if=\"$1\" bs=\(block) skip=\(offset.rawValue / block) count=\(length.rawValue / block) iflag=direct status=none | sha256sum", "sh", path)
        return String(output.prefix(64))
    }

    /// Writes `length` random bytes at `offset` of `path` with O_DIRECT.
    func writeRandom(_ path: String, offset: Bytes, length: Bytes) throws {
        let block: UInt64 = 4096
        precondition(offset.rawValue % block == 0 && length.rawValue % block == 0)
        try sh("dd", "if=/dev/urandom", "of=\(path)", "bs=\(block)", "seek=\(offset.rawValue / block)",
               "count=\(length.rawValue / block)", "oflag=direct", "conv=notrunc,fsync", "status=none")
    }

    /// `dmsetup table NAME`, parsed by the code under test only after being read by dmsetup.
    func dmsetupTable(_ name: DMName) throws -> String {
        try sh("dmsetup", "table", name.rawValue).trimmingCharacters(in: .newlines)
    }

    func dmsetupStatus(_ name: DMName) throws -> String {
        try sh("dmsetup", "status", name.rawValue).trimmingCharacters(in: .newlines)
    }

    /// `dmsetup info -c` fields for `name`, or nil when dmsetup does not know the device.
    func dmsetupInfo(_ name: DMName, _ fields: String) throws -> String? {
        let result = try run(["dmsetup", "info", "-c", "--noheadings", "--separator", "|", "-o", fields, name.rawValue],
                             allowFailure: true)
        return result.status == 0 ? result.stdout.trimmingCharacters(in: .whitespacesAndNewlines) : nil
    }

    /// The names `dmsetup ls` shows (an empty list prints "No devices found").
    func dmsetupNames() throws -> Set<String> {
        let output = try sh("dmsetup", "ls")
        return Set(output.split(separator: "\n").compactMap { line in
            line.hasPrefix("No devices found") ? nil : line.split(separator: "\t").first.map(String.init)
        })
    }

    /// Records the kernel's own table and status lines of `name` under `label` for the unit tests.
    func capture(_ name: DMName, as label: String) throws {
        guard let captureDirectory else { return }
        let render = { (lines: [RawTargetLine]) in
            lines.map { "\($0.start.rawValue) \($0.length.rawValue) \($0.type)" + ($0.text.isEmpty ? "" : " \($0.text)") }
                .joined(separator: "\n") + "\n"
        }
        try render(try dm.rawTable(name)).write(to: captureDirectory.appendingPathComponent(label + ".table"),
                                                atomically: true, encoding: .utf8)
        try render(try dm.rawStatus(name)).write(to: captureDirectory.appendingPathComponent(label + ".status"),
                                                 atomically: true, encoding: .utf8)
    }

    // MARK: Tear-down

    /// Removes every dm device with snapstack's UUID prefix (snapshots, then tops, then the
    /// -real layers), and reports each as a leftover: a scenario that ends with any has leaked.
    func sweepSnapstackDevices() -> [String] {
        var problems: [String] = []
        let listing = (try? sh("dmsetup", "info", "-c", "--noheadings", "--separator", "|", "-o", "name,uuid")) ?? ""
        var devices = listing.split(separator: "\n").compactMap { line -> (String, String)? in
            let fields = line.split(separator: "|", omittingEmptySubsequences: false).map(String.init)
            return fields.count == 2 && fields[1].hasPrefix("SNAPSTACK-1-") ? (fields[0], fields[1]) : nil
        }
        devices.sort { rank($0.1) < rank($1.1) }
        for (name, _) in devices {
            problems.append("left over: \(name)")
            _ = try? run(["dmsetup", "resume", name], allowFailure: true)
            _ = try? run(["dmsetup", "remove", "--retry", name], allowFailure: true)
        }
        for line in ((try? sh("losetup", "-a", "-O", "NAME,BACK-FILE", "--noheadings")) ?? "").split(separator: "\n") {
            let fields = line.split(separator: " ", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            if fields.count == 2, fields[1].hasPrefix(scratch.path + "/"), !loops.contains(fields[0]) {
                problems.append("left over: loop device \(fields[0]) on \(fields[1])")
                _ = try? run(["losetup", "-d", fields[0]], allowFailure: true)
            }
        }
        return problems
    }

    private func rank(_ uuid: String) -> Int {
        uuid.contains("-snap-") ? 0 : uuid.hasSuffix("-top") ? 1 : 2
    }

    /// Removes every device and loop device the scenario made, resuming any that is suspended
    /// first, then checks with `dmsetup ls` and `losetup` that nothing is left. Returns what
    /// could not be cleaned up.
    func tearDown() -> [String] {
        var problems: [String] = []
        // Mounts under the scratch directory first (deepest first), then whatever the
        // snapstack binary built in this scenario, then the scenario's own devices.
        let mounts = ((try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? "")
            .split(separator: "\n").compactMap { $0.split(separator: " ").dropFirst().first.map(String.init) }
            .filter { $0.hasPrefix(scratch.path + "/") }
        for mount in mounts.sorted().reversed() {
            do { try sh("umount", mount) } catch { problems.append("\(error)") }
        }
        problems += sweepSnapstackDevices()
        // Reverse order of registration first; a device still held by another (a -real layer
        // under its origin) is retried after the others are gone.
        var pending = Array(devices.reversed())
        while !pending.isEmpty {
            var failures: [(DMName, String)] = []
            for name in pending {
                do {
                    if let info = try dm.info(name), info.suspended { try dm.resume(name) }
                    try dm.remove(name)
                } catch {
                    failures.append((name, "remove \(name): \(error)"))
                }
            }
            if failures.count == pending.count {
                problems += failures.map(\.1)
                break
            }
            pending = failures.map(\.0)
        }
        devices.removeAll()
        for loop in loops.reversed() {
            do { try sh("losetup", "-d", loop) } catch { problems.append("\(error)") }
        }
        loops.removeAll()
        try? FileManager.default.removeItem(at: scratch)
        if let leftovers = try? dmsetupNames().filter({ $0.hasPrefix(Self.namePrefix) }), !leftovers.isEmpty {
            problems.append("dmsetup ls still shows \(leftovers.sorted().joined(separator: ", "))")
        }
        return problems
    }
}

private final class DataBox: @unchecked Sendable {
    var data = Data()
}

/// `#expect` for the VM tier: a failed check ends the scenario with both sides shown.
func expect(_ condition: Bool, _ message: @autoclosure () -> String) throws {
    if !condition { throw Failure(description: message()) }
}

func expectEqual<T: Equatable>(_ actual: T, _ expected: T, _ what: String) throws {
    if actual != expected { throw Failure(description: "\(what): expected \(expected), got \(actual)") }
}

/// Runs `body` and requires it to throw; returns the error.
func expectThrows(_ what: String, _ body: () throws -> Void) throws -> any Error {
    do { try body() } catch { return error }
    throw Failure(description: "\(what): expected an error, but it succeeded")
}
