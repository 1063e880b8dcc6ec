import BlockIO
import DeviceMapper
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// `snapstack daemon` as systemd runs it: a child process with its own notify socket, the udev
/// rules installed in the guest, disks hot-plugged through qemu (vm.sh --hotplug), checked
/// with dmsetup, udevadm, /dev/disk/by-uuid, /proc and the daemon's own log.
enum DaemonScenarios {
    static let all: [Scenario] = [
        Scenario("daemon: a hot-added disk a rule matches is protected, by-uuid points at the top; hot-remove tears it down", hotplug),
        Scenario("daemon: at start the stacks and snapshots that a reboot removed come back, change tracking continuing after its clean stop", bootRestore).lasting(220),
        Scenario("daemon: a broken configuration is reported with its line, and the last good policy stays", brokenConfiguration),
        Scenario("daemon: one runs per state directory (a second names the first's pid); over a damaged database it reports the cause, keeps running and leaves the stacks as the kernel has them",
                 damagedDatabase).lasting(80),
        Scenario("daemon: SIGTERM during activity leaves no suspended device", sigtermDuringActivity).lasting(Tier.length(ci: 160, nightly: 280)),
        Scenario("daemon: memory stays flat over 1000 hotplug-like events", memoryOverEvents).lasting(115).nightly(),
    ]

    // MARK: The daemon as a child process

    /// The service manager's end of sd_notify: a datagram socket the daemon finds in
    /// $NOTIFY_SOCKET.
    final class NotifySocket {
        let path: String
        private let fd: Int32
        /// Every message received so far, in order.
        private(set) var messages: [String] = []

        init(path: String) throws {
            self.path = path
            unlink(path)
            fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
            let bound = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard fd >= 0, bound == 0 else { throw Failure(description: "cannot bind the notify socket \(path): errno \(errno)") }
        }

        deinit {
            close(fd)
            unlink(path)
        }

        /// Waits up to `timeout` seconds for a message that satisfies `predicate`, keeping all.
        func wait(_ what: String, timeout: Double, _ predicate: (String) -> Bool) throws -> String {
            let deadline = Date().addingTimeInterval(timeout)
            var seen = messages.count
            while true {
                while seen < messages.count {
                    if predicate(messages[seen]) { return messages[seen] }
                    seen += 1
                }
                let left = deadline.timeIntervalSinceNow
                guard left > 0 else {
                    throw Failure(description: "no \(what) from the daemon within \(Int(timeout)) s; it sent: \(messages)")
                }
                var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                if poll(&poller, 1, Int32(min(left, 1) * 1000)) > 0 {
                    var buffer = [UInt8](repeating: 0, count: 4096)
                    let count = recv(fd, &buffer, buffer.count, 0)
                    if count > 0 { messages.append(String(decoding: buffer.prefix(count), as: UTF8.self)) }
                }
            }
        }
    }

    final class Daemon {
        let lab: Lab
        let process = Process()
        let log: String
        let notify: NotifySocket
        let state: String

        /// Starts `snapstack daemon` on `state` with the configuration `config`.
        init(_ lab: Lab, state: String, config: String, label: String = "daemon", logLevel: String = "info") throws {
            self.lab = lab
            self.state = state
            log = lab.scratch.appendingPathComponent("\(label).log").path
            notify = try NotifySocket(path: lab.scratch.appendingPathComponent("\(label).notify").path)
            FileManager.default.createFile(atPath: log, contents: nil)
            let output = FileHandle(forWritingAtPath: log)!
            process.executableURL = URL(fileURLWithPath: CommandScenarios.snapstack)
            process.arguments = ["daemon", "--config", config, "--state-dir", state, "--log-level", logLevel]
            var environment = ProcessInfo.processInfo.environment
            environment["NOTIFY_SOCKET"] = notify.path
            environment.removeValue(forKey: "JOURNAL_STREAM")
            process.environment = environment
            process.standardOutput = output
            process.standardError = output
            process.standardInput = FileHandle.nullDevice
            try process.run()
        }

        var pid: Int32 { process.processIdentifier }

        /// Waits for READY=1 (sent after the boot-time reconcile).
        func waitReady(timeout: Double = 120) throws {
            do {
                _ = try notify.wait("READY=1", timeout: timeout) { $0.split(separator: "\n").contains("READY=1") }
            } catch {
                // Where the boot pass is (or stuck) is in the daemon's own log.
                throw Failure(description: "\(error); daemon log tail:\n\(logText.suffix(3000))")
            }
        }

        var logText: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

        /// Waits until the log has `count` lines containing every one of `fragments`.
        @discardableResult
        func waitForLog(_ fragments: String..., count: Int = 1, timeout: Double = 60) throws -> [String] {
            let deadline = Date().addingTimeInterval(timeout)
            while true {
                let lines = logText.split(separator: "\n").map(String.init).filter { line in fragments.allSatisfy { line.contains($0) } }
                if lines.count >= count { return lines }
                guard process.isRunning else {
                    throw Failure(description: "the daemon exited (\(process.terminationStatus)) before logging \(fragments); log:\n\(logText)")
                }
                guard Date() < deadline else {
                    throw Failure(description: "the daemon did not log \(count)x \(fragments) within \(Int(timeout)) s (\(lines.count) so far); log tail:\n\(logText.suffix(3000))")
                }
                usleep(50_000)
            }
        }

        /// Resident memory, from /proc/PID/status.
        func residentKilobytes() throws -> Int {
            let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
            guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
                  let value = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
            else { throw Failure(description: "no VmRSS in /proc/\(pid)/status") }
            return value
        }

        /// SIGTERM, then waits up to `timeout` seconds; returns the exit status.
        @discardableResult
        func terminate(timeout: Double = 90) throws -> Int32 {
            defer {
                if ProcessInfo.processInfo.environment["SNAPSTACK_VMSUITE_DAEMON_LOG"] != nil { print(logText) }
            }
            guard process.isRunning else { return process.terminationStatus }
            kill(pid, SIGTERM)
            let deadline = Date().addingTimeInterval(timeout)
            while process.isRunning && Date() < deadline { usleep(20_000) }
            guard !process.isRunning else {
                let stack = (try? String(contentsOfFile: "/proc/\(pid)/stack", encoding: .utf8)) ?? "?"
                kill(pid, SIGKILL)
                process.waitUntilExit()
                throw Failure(description: "the daemon did not stop within \(Int(timeout)) s of SIGTERM; kernel stack:\n\(stack)\nlog tail:\n\(logText.suffix(2000))")
            }
            return process.terminationStatus
        }

        deinit {
            if process.isRunning {
                kill(pid, SIGKILL)
                process.waitUntilExit()
            }
        }
    }

    /// Installs udev-rules/61-snapstack.rules into the guest (its /etc is a RAM overlay), with
    /// the marker lookups pointed at `state`, for the scenario's duration.
    final class Rules {
        static let path = "/etc/udev/rules.d/61-snapstack.rules"
        let lab: Lab

        init(_ lab: Lab, state: String) throws {
            self.lab = lab
            let source = URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
                .appendingPathComponent("udev-rules/61-snapstack.rules")
            let text = try String(contentsOf: source, encoding: .utf8)
                .replacingOccurrences(of: "/var/lib/snapstack/members/", with: state + "/members/")
            try FileManager.default.createDirectory(atPath: "/etc/udev/rules.d", withIntermediateDirectories: true)
            try text.write(toFile: Self.path, atomically: true, encoding: .utf8)
            try lab.sh("udevadm", "control", "--reload")
        }

        deinit {
            try? FileManager.default.removeItem(atPath: Self.path)
            _ = try? lab.sh("udevadm", "control", "--reload")
        }
    }

    /// The host's hotplug agent (vm.sh --hotplug): requests in $SNAPSTACK_HOTPLUG_DIR.
    struct Hotplug {
        let directory: String

        init() throws {
            guard let directory = ProcessInfo.processInfo.environment["SNAPSTACK_HOTPLUG_DIR"], !directory.isEmpty,
                  FileManager.default.fileExists(atPath: directory) else {
                throw Failure(description: "no hotplug channel: SNAPSTACK_HOTPLUG_DIR is not set; run the suite with `Tests/lab/vm.sh --hotplug`")
            }
            self.directory = directory
        }

        /// A new image file the host can plug (the guest's path is the host's).
        func image(_ name: String, size: Bytes) throws -> String {
            let path = directory + "/" + name + ".img"
            try? FileManager.default.removeItem(atPath: path)
            guard FileManager.default.createFile(atPath: path, contents: nil),
                  truncate(path, off_t(size.rawValue)) == 0 else { throw Failure(description: "cannot make \(path)") }
            return path
        }

        func request(_ fields: [String: String], timeout: Double = 90) throws {
            let name = "\(fields["op"]!)-\(fields["id"]!)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            let temporary = directory + "/" + name + ".tmp"
            try JSONSerialization.data(withJSONObject: fields).write(to: URL(fileURLWithPath: temporary))
            guard rename(temporary, directory + "/" + name + ".req") == 0 else { throw Failure(description: "cannot post \(name)") }
            let done = directory + "/" + name + ".done"
            let deadline = Date().addingTimeInterval(timeout)
            while !FileManager.default.fileExists(atPath: done) {
                guard Date() < deadline else { throw Failure(description: "the host's hotplug agent did not answer \(fields) within \(Int(timeout)) s") }
                usleep(50_000)
            }
            let answer = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: done))) as? [String: Any]
            try? FileManager.default.removeItem(atPath: done)
            guard answer?["ok"] as? Bool == true else {
                throw Failure(description: "hotplug \(fields) failed: \(answer?["error"] ?? "no answer")")
            }
        }

        func add(id: String, image: String, serial: String) throws {
            try request(["op": "add", "id": id, "image": image, "serial": serial])
        }

        func remove(id: String) throws { try request(["op": "remove", "id": id]) }
    }

    /// `udevadm monitor --kernel --udev --property` for block devices, running in the background.
    final class Monitor {
        struct Event {
            var source: String   // KERNEL or UDEV
            var time: Double     // CLOCK_MONOTONIC seconds
            var action: String
            var properties: [String: String]
        }
        let process = Process()
        let file: String

        init(_ lab: Lab, label: String = "udev-monitor") throws {
            file = lab.scratch.appendingPathComponent("\(label).log").path
            FileManager.default.createFile(atPath: file, contents: nil)
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["udevadm", "monitor", "--kernel", "--udev", "--property", "--subsystem-match=block"]
            process.standardOutput = FileHandle(forWritingAtPath: file)!
            process.standardError = FileHandle.nullDevice
            try process.run()
            // udevadm prints this line once both of its sockets are bound.
            let deadline = Date().addingTimeInterval(30)
            while !((try? String(contentsOfFile: file, encoding: .utf8))?.contains("KERNEL - the kernel uevent") ?? false) {
                guard Date() < deadline else { throw Failure(description: "udevadm monitor did not start within 30 s") }
                usleep(20_000)
            }
        }

        deinit {
            if process.isRunning { process.terminate(); process.waitUntilExit() }
        }

        var events: [Event] {
            let text = (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
            var result: [Event] = []
            for block in text.components(separatedBy: "\n\n") {
                let lines = block.split(separator: "\n")
                guard let head = lines.first(where: { $0.hasPrefix("KERNEL[") || $0.hasPrefix("UDEV") }),
                      let open = head.firstIndex(of: "["), let close = head.firstIndex(of: "]"),
                      let time = Double(head[head.index(after: open)..<close]) else { continue }
                var properties: [String: String] = [:]
                for line in lines where line.contains("=") && !line.hasPrefix("KERNEL[") && !line.hasPrefix("UDEV") {
                    let parts = line.split(separator: "=", maxSplits: 1)
                    properties[String(parts[0])] = parts.count > 1 ? String(parts[1]) : ""
                }
                result.append(Event(source: head.hasPrefix("KERNEL") ? "KERNEL" : "UDEV", time: time,
                                    action: properties["ACTION"] ?? "", properties: properties))
            }
            return result
        }
    }

    /// What the kernel holds of snapstack's: every dm table of its devices.
    static func snapstackTables(_ lab: Lab) throws -> String {
        try lab.sh("dmsetup", "table").split(separator: "\n").filter { $0.hasPrefix("snapstack-") }.sorted().joined(separator: "\n")
    }

    static func damagedDatabase(_ lab: Lab) throws {
        let cli = OrchestratorScenarios.CLI(lab)
        let size = Bytes.mebibytes(16)
        let disk = try lab.loopDevice("disk", size: size, random: true)
        let top = try cli.protect(disk.path, "vol")
        let config = try writeConfig(lab, "rules:\n")

        let daemon = try Daemon(lab, state: cli.state, config: config)
        try daemon.waitReady()
        let second = try lab.run([CommandScenarios.snapstack, "daemon", "--config", config, "--state-dir", cli.state, "--lock-timeout", "1"],
                                 allowFailure: true)
        try expectEqual(second.status, 1, "a second daemon on the same state (stderr: \(second.stderr))")
        try expect(second.stderr.contains("another snapstack daemon") && second.stderr.contains("pid \(daemon.pid)"),
                   "the second daemon does not name the first (pid \(daemon.pid)): \(second.stderr)")
        try expectEqual(try daemon.terminate(), 0, "the first daemon's exit status")

        // The database's header zeroed: SQLite no longer sees a database in the file.
        let database = cli.state + "/snapstack.db"
        try lab.sh("cp", database, database + ".good")
        let tables = try snapstackTables(lab)
        let content = try lab.sha256(top, length: size)
        try lab.sh("dd", "if=/dev/zero", "of=\(database)", "bs=100", "count=1", "conv=notrunc", "status=none")
        let report = try cli.run(["devices"])
        try expectEqual(report.status, 8, "devices over a damaged database (stderr: \(report.stderr))")
        try expect(report.stderr.contains(database) && report.stderr.contains("not a database"), "devices over a damaged database: \(report.stderr)")

        let damaged = try Daemon(lab, state: cli.state, config: config, label: "damaged")
        // READY after the boot pass has given up (1 + 2 + 4 + 8 s of retries), naming the cause.
        try damaged.waitReady(timeout: 120)
        try damaged.waitForLog("reconcile at start failed", "giving up", "not a database")
        try expect(damaged.process.isRunning, "the daemon exited over a damaged database; log:\n\(damaged.logText)")
        try expectEqual(try snapstackTables(lab), tables, "snapstack's dm tables with the daemon over a damaged database")
        try expectEqual(try lab.sha256(top, length: size), content, "the top's content")
        try expectEqual(try damaged.terminate(), 0, "the exit status of the daemon over a damaged database")
        try damaged.waitForLog("could not record the clean stop", timeout: 5)
        try expectEqual(try snapstackTables(lab), tables, "snapstack's dm tables after that daemon stopped")

        try lab.sh("mv", database + ".good", database)
        try cli.ok("unprotect", "vol")
        try expectEqual(try lab.sha256(disk.path, length: size), content, "the disk after unprotect")
    }

    static func writeConfig(_ lab: Lab, _ text: String, name: String = "snapstack.conf") throws -> String {
        let path = lab.scratch.appendingPathComponent(name).path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// The names of dm devices that are suspended now (dmsetup's witness).
    static func suspendedDevices(_ lab: Lab) throws -> [String] {
        let listing = try lab.sh("dmsetup", "info", "-c", "--noheadings", "--separator", "|", "-o", "name,suspended")
        return listing.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            return fields.count == 2 && fields[1] != "Active" ? fields[0] : nil
        }
    }

    static func resolved(_ path: String) -> String {
        URL(fileURLWithPath: path).resolvingSymlinksInPath().path
    }

    /// Waits until `top` exists and the filesystem's by-uuid `link` resolves to it.
    static func waitForStack(top: String, link: String, _ daemon: Daemon) throws {
        let deadline = Date().addingTimeInterval(90)
        while !(FileManager.default.fileExists(atPath: top) && resolved(link) == resolved(top)) {
            guard Date() < deadline else {
                throw Failure(description: "no stack with its by-uuid link within 90 s: \(link) -> \(resolved(link)), top \(top) -> \(resolved(top)); log:\n\(daemon.logText)")
            }
            usleep(20_000)
        }
    }

    /// Prints the time from the kernel's add event of `raw` to the stack being ready — udev
    /// done with the top device's resume — and to udev's first event hiding the disk, on
    /// the kernel's monotonic clock, as udevadm monitor stamps the events.
    static func printTiming(_ monitor: Monitor, raw: String, top: String, what: String) throws {
        let events = monitor.events
        guard let added = events.first(where: { $0.source == "KERNEL" && $0.action == "add" && $0.properties["DEVNAME"] == raw }),
              let topReady = events.last(where: { $0.source == "UDEV" && $0.action == "change" && $0.properties["DM_NAME"] == top }),
              let hidden = events.first(where: { $0.source == "UDEV" && $0.properties["DEVNAME"] == raw && $0.properties["SNAPSTACK_MEMBER"] == "1" })
        else { throw Failure(description: "udevadm monitor missed the add, the top's change or the disk's hiding") }
        print(String(format: "      hotplug (%@): kernel add of %@ -> top device ready (udev) %.0f ms, -> raw disk first hidden (udev) %.0f ms",
                     what, raw, (topReady.time - added.time) * 1000, (hidden.time - added.time) * 1000))
    }

    // MARK: Scenarios

    static func hotplug(_ lab: Lab) throws {
        let hotplug = try Hotplug()
        let cli = OrchestratorScenarios.CLI(lab)
        try cli.ok("status")
        let rules = try Rules(lab, state: cli.state)
        _ = rules
        let serial = "snapstack-hp-\(getpid() % 10000)"
        let name = "hot-\(serial)"
        let config = try writeConfig(lab, """
            rules:
              - name: lab disks
                match:
                  ID_SERIAL: "snapstack-hp-*"
                  DEVTYPE: disk
                  min-size: 16M
                protect:
                  name: "hot-${ID_SERIAL}"
                  cbt-block: 64K
            """)
        let image = try hotplug.image("hp", size: .mebibytes(64))
        let fsUUID = UUID().uuidString.lowercased()
        try lab.sh("mkfs.ext4", "-q", "-F", "-U", fsUUID, "-L", "hotplug", image)

        let daemon = try Daemon(lab, state: cli.state, config: config)
        try daemon.waitReady()
        let monitor = try Monitor(lab)
        var plugged: String?
        defer { if let plugged { try? hotplug.remove(id: plugged) } }
        try hotplug.add(id: "hp1", image: image, serial: serial)
        plugged = "hp1"

        let top = "/dev/mapper/snapstack-\(name)"
        let link = "/dev/disk/by-uuid/\(fsUUID)"
        try waitForStack(top: top, link: link, daemon)
        try daemon.waitForLog("protected as \(top)")
        try lab.sh("udevadm", "settle")
        try expectEqual(resolved(link), resolved(top), "by-uuid link after udev settled")

        // The raw disk: found by its serial, hidden by the rules, under the era layer.
        guard let raw = try lab.sh("lsblk", "-dnpo", "NAME,SERIAL").split(separator: "\n")
            .first(where: { $0.hasSuffix(serial) })?.split(separator: " ").first.map(String.init)
        else { throw Failure(description: "lsblk shows no disk with serial \(serial)") }
        let rawNumber = try BlockDeviceFacts.read(.init(raw)).number
        let properties = try lab.sh("udevadm", "info", "--query=property", raw)
        for expected in ["SNAPSTACK_MEMBER=1", "SYSTEMD_READY=0", "UDISKS_IGNORE=1"] {
            try expect(properties.contains(expected + "\n"), "\(raw) lacks \(expected): \(properties)")
        }
        let realTable = try lab.sh("dmsetup", "table", "snapstack-\(name)-real")
        try expect(realTable.contains(" era ") && realTable.contains(" \(rawNumber) 128"), "real table: \(realTable)")
        try expect(FileManager.default.fileExists(atPath: "/run/snapstack/members/\(rawNumber)"), "no runtime marker for \(rawNumber)")
        try expect(try FileManager.default.contentsOfDirectory(atPath: cli.state + "/members").contains("serial-\(serial)-131072"),
                   "no persistent marker for \(serial)")

        try printTiming(monitor, raw: raw, top: "snapstack-\(name)", what: "new disk, protected by a rule")
        // Hidden from its very first udev event: the daemon compiled its rule into udev's.
        let rawEvents = monitor.events.filter { $0.source == "UDEV" && $0.properties["DEVNAME"] == raw && $0.action != "remove" }
        try expect(rawEvents.first?.action == "add" && rawEvents.first?.properties["SNAPSTACK_POLICY"] == "1",
                   "the first udev event of \(raw) is not an add the policy's rule tagged: \(rawEvents.first.map { "\($0.action) \($0.properties)" } ?? "none")")
        let shown = rawEvents.filter { $0.properties["SYSTEMD_READY"] != "0" || $0.properties["UDISKS_IGNORE"] != "1" }
        try expect(shown.isEmpty, "udev events that showed \(raw) to mounters: \(shown.map(\.action))")
        try expect(FileManager.default.fileExists(atPath: "/run/udev/rules.d/61-snapstack-policy.rules"), "no compiled policy rules while the daemon runs")

        // In use when it goes: mounted, with a reader that must not hang.
        let mountPoint = lab.scratch.appendingPathComponent("mnt").path
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        try lab.sh("mount", top, mountPoint)
        try lab.sh("dd", "if=/dev/urandom", "of=\(mountPoint)/data", "bs=1M", "count=4", "conv=fsync", "status=none")
        let reader = Process()
        reader.executableURL = URL(fileURLWithPath: "/bin/sh")
        reader.arguments = ["-c", "while dd if=\"$1\" of=/dev/null bs=64k iflag=direct status=none; do :; done", "sh", "\(mountPoint)/data"]
        reader.standardError = FileHandle.nullDevice
        try reader.run()
        defer { if reader.isRunning { reader.terminate() } }
        usleep(300_000)

        try hotplug.remove(id: "hp1")
        plugged = nil
        try daemon.waitForLog("disk of \(name) went away")
        let readerDeadline = Date().addingTimeInterval(30)
        while reader.isRunning && Date() < readerDeadline { usleep(50_000) }
        try expect(!reader.isRunning, "a reader of the vanished disk's filesystem still runs 30 s later (hung)")
        try expectEqual(try suspendedDevices(lab), [], "suspended devices after the disk went away")
        // The mounted top fails all I/O and goes when it is unmounted.
        try expectEqual(try lab.sh("dmsetup", "table", "snapstack-\(name)").trimmingCharacters(in: .whitespacesAndNewlines),
                        "0 131072 error", "the open top's table")
        try expect(!(try lab.dmsetupNames()).contains("snapstack-\(name)-real"), "the -real layer outlived the disk")
        _ = try lab.run(["umount", mountPoint], allowFailure: true)
        let goneDeadline = Date().addingTimeInterval(30)
        while try lab.dmsetupNames().contains(where: { $0.hasPrefix("snapstack-\(name)") }) {
            guard Date() < goneDeadline else { throw Failure(description: "dm devices left after umount: \((try? lab.dmsetupNames()) ?? [])") }
            usleep(50_000)
        }
        // The loops and the runtime marker go with the devices; waited for as they are, so that
        // only one that stays (not one a loaded machine is slow to show gone) fails.
        let marker = "/run/snapstack/members/\(rawNumber)"
        while try lab.sh("losetup", "-a").contains(cli.state) || FileManager.default.fileExists(atPath: marker) {
            guard Date() < goneDeadline else {
                let markers = (try? FileManager.default.contentsOfDirectory(atPath: "/run/snapstack/members")) ?? []
                throw Failure(description: "left 30 s after the disk went: loop devices \((try? lab.sh("losetup", "-a")) ?? "?"), runtime markers \(markers)")
            }
            usleep(50_000)
        }

        // Plugged in again: found by its recorded identity, its stack is rebuilt over the era
        // metadata it had; the persistent marker hides it from its first udev event on.
        let again = try Monitor(lab, label: "udev-monitor-again")
        try hotplug.add(id: "hp2", image: image, serial: serial)
        plugged = "hp2"
        try waitForStack(top: top, link: link, daemon)
        try daemon.waitForLog("stack rebuilt over the disk of \(name)")
        guard let raw2 = try lab.sh("lsblk", "-dnpo", "NAME,SERIAL").split(separator: "\n")
            .first(where: { $0.hasSuffix(serial) })?.split(separator: " ").first.map(String.init)
        else { throw Failure(description: "lsblk shows no disk with serial \(serial) after the re-plug") }
        try expect(again.events.contains { $0.source == "UDEV" && $0.action == "add" && $0.properties["DEVNAME"] == raw2
                                           && $0.properties["SNAPSTACK_MEMBER"] == "1" },
                   "the re-plugged disk was not hidden from its first udev event")
        try printTiming(again, raw: raw2, top: "snapstack-\(name)", what: "protected disk plugged in again, restacked")
        try hotplug.remove(id: "hp2")
        plugged = nil
        try daemon.waitForLog("disk of \(name) went away", count: 2)
        try expect(!(try lab.dmsetupNames()).contains { $0.hasPrefix("snapstack-\(name)") }, "a closed stack outlived its disk")
        try expectEqual(try suspendedDevices(lab), [], "suspended devices after the second removal")
        try expect(daemon.process.isRunning, "the daemon died")
        try expectEqual(try daemon.terminate(), 0, "daemon exit status after SIGTERM")
        // Still recorded: the disk comes back to its stack. Forgetting it is the admin's call.
        try expectEqual((try cli.rows("devices").first?["state"] as? String), "unstacked", "the record of the vanished disk")
        try cli.ok("unprotect", name)
        try expect(!(try FileManager.default.contentsOfDirectory(atPath: cli.state + "/members")).contains { $0.contains(serial) },
                   "persistent marker left after unprotect")
    }

    static func bootRestore(_ lab: Lab) throws {
        let cli = OrchestratorScenarios.CLI(lab)
        let disk1 = try lab.loopDevice("disk1", size: .mebibytes(32), random: true)
        let disk2 = try lab.loopDevice("disk2", size: .mebibytes(16), random: true)
        let top1 = try cli.protect(disk1.path, "vol1", "--cbt-block", "64K")
        let top2 = try cli.protect(disk2.path, "vol2", "--no-cbt")
        // An ext4 filesystem, whose superblock vouches for the disk across the reboot; 8 MiB +
        // 64 KiB in is data, never metadata, in a fresh 32 MiB one.
        try lab.sh("mkfs.ext4", "-q", "-F", top1)
        try cli.ok("snapshot", "vol1", "--as", "keep")
        // A backup of it, that an incremental after the reboot builds on.
        let image = lab.scratch.appendingPathComponent("vol1.img").path
        let (base, _) = try ExportScenarios.export(cli, "vol1-keep", "--to", image)
        try lab.writeRandom(top1, offset: .mebibytes(8), length: .kibibytes(64))   // era block 128
        try lab.writeRandom(top2, offset: .zero, length: .kibibytes(64))
        let snapshot = try lab.sha256("/dev/mapper/snapstack-vol1-keep", length: .mebibytes(32))
        let content1 = try lab.sha256(top1, length: .mebibytes(32))
        let content2 = try lab.sha256(top2, length: .mebibytes(16))
        let eraBefore = (try cli.rows("devices").first { $0["name"] as? String == "vol1" }?["era"] as? NSNumber)?.uint32Value ?? 0
        let snapshotEra = (try cli.rows("snapshots").first?["era"] as? NSNumber)?.uint32Value ?? 0

        // A clean shutdown stops the daemon with the tops unused: it records vol1's filesystem
        // (vol2 has no change tracking to keep). Then what a reboot leaves: no dm devices, no
        // loop devices of snapstack's, an empty /run.
        let config = lab.scratch.appendingPathComponent("none.conf").path
        let stopping = try Daemon(lab, state: cli.state, config: config, label: "before-reboot")
        try stopping.waitReady()
        try expectEqual(try stopping.terminate(), 0, "the exit status of the daemon stopped before the reboot")
        try stopping.waitForLog("clean stop recorded for vol1", timeout: 5)
        try expect(lab.sweepSnapstackDevices().count >= 5, "no devices to remove by hand")
        for line in try lab.sh("losetup", "-a", "-O", "NAME,BACK-FILE", "--noheadings").split(separator: "\n")
        where line.contains(cli.state) {
            try lab.sh("losetup", "-d", String(line.split(separator: " ")[0]))
        }
        try? FileManager.default.removeItem(atPath: "/run/snapstack/members")
        try expect(try lab.dmsetupNames().allSatisfy { !$0.hasPrefix("snapstack-vol") }, "devices survived the sweep")

        let daemon = try Daemon(lab, state: cli.state, config: config)
        try daemon.waitReady()
        // READY comes after the boot pass: everything is back by now.
        for name in ["snapstack-vol1", "snapstack-vol1-real", "snapstack-vol1-keep", "snapstack-vol2", "snapstack-vol2-real"] {
            try expect(try lab.dmsetupNames().contains(name), "\(name) is missing after start; log:\n\(daemon.logText)")
        }
        try expectEqual(try lab.sha256("/dev/mapper/snapstack-vol1-keep", length: .mebibytes(32)), snapshot, "the snapshot's content")
        try expectEqual(try lab.sha256(top1, length: .mebibytes(32)), content1, "vol1's content")
        try expectEqual(try lab.sha256(top2, length: .mebibytes(16)), content2, "vol2's content")
        try expect(try lab.sh("dmsetup", "table", "snapstack-vol1").contains("snapshot-origin"), "vol1's top is not snapshot-origin")
        try expect(try lab.sh("dmsetup", "table", "snapstack-vol2-real").contains(" linear \(disk2.facts.number) 0"), "vol2 -real table")
        try expect(FileManager.default.fileExists(atPath: "/run/snapstack/members/\(disk1.facts.number)"), "member marker not republished")
        // Change tracking continues from the era metadata, the filesystem as the clean stop left
        // it; other commands run beside the daemon.
        try expectEqual(try cli.rows("devices").first { $0["name"] as? String == "vol1" }?["tracking"] as? String, "continuous",
                        "vol1's tracking after the reboot")
        let eraAfter = (try cli.rows("devices").first { $0["name"] as? String == "vol1" }?["era"] as? NSNumber)?.uint32Value ?? 0
        try expect(eraAfter > eraBefore, "era went from \(eraBefore) to \(eraAfter)")
        let metadata = try lab.sh("sh", "-c", "losetup -a -O NAME,BACK-FILE --noheadings | grep '\(cli.state)/cbt/' | cut -d' ' -f1")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        try lab.sh("dmsetup", "message", "snapstack-vol1-real", "0", "take_metadata_snap")
        let changed = try EraScenarios.invalidated(lab, metadata: metadata, since: snapshotEra)
        try lab.sh("dmsetup", "message", "snapstack-vol1-real", "0", "drop_metadata_snap")
        try expectEqual(changed, [128], "blocks era_invalidate reports written since the snapshot")
        try expectEqual(try cli.run(["status"]).status, 0, "status beside the running daemon")
        // An incremental backup after the reboot holds what was written before and after it.
        try lab.writeRandom(top1, offset: .mebibytes(20), length: .kibibytes(8))
        try cli.ok("snapshot", "vol1", "--as", "after")
        _ = try ExportScenarios.export(cli, "vol1-after", "--to", image, "--since", base)
        try expectEqual(try ExportScenarios.fileSHA256(lab, image),
                        try lab.sha256("/dev/mapper/snapstack-vol1-after", length: .mebibytes(32)),
                        "the incremental image after the reboot vs the snapshot it was taken from")
        try expectEqual(try daemon.terminate(), 0, "daemon exit status after SIGTERM")
        // The stacks outlive the daemon: stopping it is no unprotect.
        try expect(try lab.dmsetupNames().contains("snapstack-vol1-keep"), "stopping the daemon removed a stack")
        try cli.ok("unprotect", "vol1", "--force")
        try cli.ok("unprotect", "vol2")
    }

    static func brokenConfiguration(_ lab: Lab) throws {
        let cli = OrchestratorScenarios.CLI(lab)
        try cli.ok("status")
        let good = """
            rules:
              - name: labelled lab disks
                match:
                  ID_FS_LABEL: "snapcfg-*"
                protect:
                  name: "cfg-${ID_FS_LABEL}"
                  no-cbt: true
            """
        let config = try writeConfig(lab, good)
        let daemon = try Daemon(lab, state: cli.state, config: config)
        try daemon.waitReady()

        // Line 5 has a glob with an unclosed bracket.
        let broken = "rules:\n  - name: broken\n    match:\n      ID_FS_LABEL: \"snapcfg-*\"\n      ID_PATH: \"pci-[0-9\"\n    exclude: true\n"
        try broken.write(toFile: config, atomically: true, encoding: .utf8)
        let check = try lab.run([CommandScenarios.snapstack, "daemon", "--check-config", "--config", config], allowFailure: true)
        try expectEqual(check.status, 64, "--check-config's exit status on a broken file (stderr: \(check.stderr))")
        try expect(check.stderr.hasPrefix("snapstack: \(config):5:16: ") && check.stderr.contains("not closed"),
                   "--check-config's message: \(check.stderr)")

        let before = daemon.notify.messages.count
        kill(daemon.pid, SIGHUP)
        let lines = try daemon.waitForLog("bad configuration, keeping the previous policy", "\(config):5:16:")
        try expect(lines[0].contains("[ is not closed"), "error line: \(lines[0])")
        _ = try daemon.notify.wait("READY=1 after the reload", timeout: 30) { $0.contains("READY=1") }
        try expect(daemon.notify.messages[before...].contains { $0.contains("RELOADING=1") }, "no RELOADING=1 before the reload")
        usleep(500_000)
        try expect(daemon.process.isRunning, "the daemon exited after a bad configuration")

        // The last good policy still applies: a disk it matches appears (a synthetic add).
        let disk = try lab.loopDevice("labelled", size: .mebibytes(16))
        try lab.sh("mkfs.ext4", "-q", "-L", "snapcfg-1", disk.path)
        try lab.sh("udevadm", "trigger", "--settle", "--action=add", disk.path)
        try daemon.waitForLog("protected as /dev/mapper/snapstack-cfg-snapcfg-1")
        try expect(try lab.dmsetupNames().contains("snapstack-cfg-snapcfg-1"), "the good policy's rule was not applied")

        // A fixed file is taken on the next SIGHUP.
        try good.replacingOccurrences(of: "snapcfg-*", with: "other-*").write(toFile: config, atomically: true, encoding: .utf8)
        kill(daemon.pid, SIGHUP)
        try daemon.waitForLog("configuration reloaded", "rules=1")
        try expectEqual(try daemon.terminate(), 0, "daemon exit status after SIGTERM")
        try cli.ok("unprotect", "cfg-snapcfg-1")
    }

    static func sigtermDuringActivity(_ lab: Lab) throws {
        let cli = OrchestratorScenarios.CLI(lab)
        let disk = try lab.loopDevice("disk", size: .mebibytes(32), random: true)
        try cli.protect(disk.path, "busy")
        try cli.ok("snapshot", "busy", "--as", "s1")
        try cli.ok("snapshot", "busy", "--as", "s2")
        // In the order they can be removed: what stands on a layer goes first.
        let names = ["snapstack-busy-s2", "snapstack-busy-s1", "snapstack-busy", "snapstack-busy-real"]
        let config = try writeConfig(lab, "rules:\n")
        var outcomes: [String] = []
        // Each round gives the rebuild 200 ms more before the SIGTERM: CI takes 2, nightly 4.
        for round in 0..<Tier.length(ci: 2, nightly: 4) {
            // A stack to rebuild, as after a reboot, while the daemon already runs.
            let daemon = try Daemon(lab, state: cli.state, config: config, label: "daemon\(round)")
            try daemon.waitReady()
            for name in names where try lab.dmsetupNames().contains(name) {
                _ = try lab.sh("dmsetup", "remove", "--retry", name)
            }
            for line in try lab.sh("losetup", "-a", "-O", "NAME,BACK-FILE", "--noheadings").split(separator: "\n")
            where line.contains(cli.state) {
                try lab.sh("losetup", "-d", String(line.split(separator: " ")[0]))
            }
            try lab.sh("udevadm", "trigger", "--action=add", disk.path)
            usleep(UInt32(round) * 200_000)
            let status = try daemon.terminate()
            try expectEqual(status, 0, "round \(round): exit status after SIGTERM")
            try expectEqual(try suspendedDevices(lab), [], "round \(round): suspended devices after SIGTERM")
            let present = try lab.dmsetupNames().filter { names.contains($0) }
            // The operation under way was finished: the stack is whole or was never started.
            try expect(present.isEmpty || present.count == names.count, "round \(round): a half-built stack: \(present.sorted())")
            outcomes.append(present.isEmpty ? "not started" : "finished")
            try cli.ok("reconcile")
        }
        print("      SIGTERM rounds: \(outcomes.joined(separator: ", "))")
        try cli.ok("unprotect", "busy", "--force")
    }

    static func memoryOverEvents(_ lab: Lab) throws {
        let cli = OrchestratorScenarios.CLI(lab)
        try cli.ok("status")
        let config = try writeConfig(lab, "rules:\n  - match: {ID_FS_LABEL: \"never-*\"}\n    protect: {}\n")
        let disk = try lab.loopDevice("events", size: .mebibytes(4))
        let uevent = "/sys/class/block/\((disk.path as NSString).lastPathComponent)/uevent"
        let daemon = try Daemon(lab, state: cli.state, config: config)
        try daemon.waitReady()
        var sent = 0
        /// Sends `count` add events in batches, each waited for in the daemon's log.
        func send(_ count: Int) throws {
            for _ in 0..<(count / 50) {
                for _ in 0..<50 {
                    guard let handle = FileHandle(forWritingAtPath: uevent) else { throw Failure(description: "cannot open \(uevent)") }
                    try handle.write(contentsOf: Data("add".utf8))
                    try handle.close()
                }
                sent += 50
                try daemon.waitForLog("no rule matches", "device=\(disk.path)", count: sent, timeout: 120)
            }
        }
        try send(50)   // warm-up: caches, the database's pages, the allocator's arenas
        let before = try daemon.residentKilobytes()
        try send(1000)
        let after = try daemon.residentKilobytes()
        print("      daemon VmRSS over 1000 add events: \(before) kB before, \(after) kB after (\(after - before >= 0 ? "+" : "")\(after - before) kB)")
        try expect(after - before < 8192, "VmRSS grew by \(after - before) kB over 1000 events")
        try expectEqual(try daemon.terminate(), 0, "daemon exit status after SIGTERM")
    }
}
