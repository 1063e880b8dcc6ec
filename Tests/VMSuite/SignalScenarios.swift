import BlockIO
import DeviceMapper
import Foundation

/// Signals that a person or a service manager sends while snapstack changes devices: Ctrl-C
/// (SIGINT), `kill`/`systemctl stop` (SIGTERM), a closing SSH session (SIGHUP).
enum SignalScenarios {
    static let all: [Scenario] = [
        // CI runs one series of 3 rounds (about 20 s a round under TCG); the nightly tier runs
        // two of 25, each well inside the suite's per-scenario limit. SNAPSTACK_SIGNAL_ROUNDS=N
        // runs N rounds in each series.
        Scenario("signals: SIGINT, SIGTERM, SIGHUP at random moments of 3-device snapshots (first series): nothing suspended or frozen, no repair needed",
                 { try signalsDuringSnapshots($0, rounds: 0..<roundsPerSeries) }).lasting(160),
        Scenario("signals: SIGINT, SIGTERM, SIGHUP at random moments of 3-device snapshots (second series): nothing suspended or frozen, no repair needed",
                 { try signalsDuringSnapshots($0, rounds: roundsPerSeries..<2 * roundsPerSeries) }).lasting(160).nightly(),
    ]

    typealias CLI = OrchestratorScenarios.CLI

    static let roundsPerSeries = ProcessInfo.processInfo.environment["SNAPSTACK_SIGNAL_ROUNDS"].flatMap(Int.init).map { max($0, 1) } ?? Tier.length(ci: 3, nightly: 25)

    static func signalsDuringSnapshots(_ lab: Lab, rounds: Range<Int>) throws {
        let cli = CLI(lab)
        let names = ["sa", "sb", "sc"]
        var mounts: [String] = []
        for name in names {
            let disk = try lab.loopDevice(name, size: .mebibytes(16))
            let top = try cli.protect(disk.path, name)
            try lab.sh("mkfs.ext4", "-q", top)
            let mountPoint = lab.scratch.appendingPathComponent("mnt-\(name)").path
            try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
            try lab.sh("mount", top, mountPoint)
            mounts.append(mountPoint)
        }
        var generator = SeededGenerator(seed: UInt64(ProcessInfo.processInfo.environment["SNAPSTACK_SEED"].flatMap(UInt64.init)
                                                      ?? UInt64(Date().timeIntervalSince1970)))
        print("      seed \(generator.seed)")
        let signals: [(Int32, String)] = [(SIGINT, "SIGINT"), (SIGTERM, "SIGTERM"), (SIGHUP, "SIGHUP")]
        var typical = 2.0
        var taken = 0, interrupted = 0
        for round in rounds {
            let (signal, signalName) = signals[round % 3]
            // Every other round a burst, one signal every 2 ms from a random moment to the
            // end, so that some land inside the freeze window itself; otherwise one signal.
            let burst = round % 2 == 1
            let delay = Double.random(in: 0...(typical * 1.2), using: &generator)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: CommandScenarios.snapstack)
            process.arguments = ["snapshot"] + names + ["--as", "r\(round)", "--state-dir", cli.state]
            let errors = Pipe()
            process.standardOutput = FileHandle.nullDevice
            process.standardError = errors
            let started = Date()
            try process.run()
            usleep(UInt32(delay * 1_000_000))
            if burst {
                while process.isRunning {
                    kill(process.processIdentifier, signal)
                    usleep(2000)
                }
            } else if process.isRunning {
                kill(process.processIdentifier, signal)
            }
            let deadline = Date().addingTimeInterval(Lab.commandLimit)
            while process.isRunning && Date() < deadline { usleep(10_000) }
            if process.isRunning {
                kill(process.processIdentifier, SIGKILL)
                throw Failure(description: "round \(round): snapstack snapshot still running after \(Int(Lab.commandLimit)) s")
            }
            let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            if !burst { typical = 0.8 * typical + 0.2 * Date().timeIntervalSince(started) }

            // Witnesses: the kernel (nothing suspended), the filesystems (a write completes),
            // the state (status finds nothing to repair) — without running reconcile.
            let listing = try lab.sh("dmsetup", "info", "-c", "--noheadings", "--separator", "|", "-o", "name,suspended")
            let suspended = listing.split(separator: "\n").filter { $0.hasPrefix("snapstack-") && $0.hasSuffix("|Suspended") }
            try expect(suspended.isEmpty, "round \(round) (\(signalName)\(burst ? " burst" : "")): left suspended: \(suspended)")
            let write = try lab.run(["timeout", "20", "sh", "-c", "for m; do echo \(round) > \"$m\"/stamp && sync -f \"$m\"/stamp || exit 1; done",
                                     "sh"] + mounts, allowFailure: true)
            try expectEqual(write.status, 0, "round \(round): a write to the filesystems (frozen?) \(write.stderr)")
            let status = try cli.run(["status"])
            try expectEqual(status.status, 0, "round \(round) (\(signalName)): status after the signal (\(status.stdout) \(status.stderr))")

            // A signal that comes before the command has started to change anything (while the
            // process starts, before its handlers exist) may end it: then nothing changed.
            let snapshots = try cli.rows("snapshots").compactMap { $0["name"] as? String }.filter { $0.hasSuffix("-r\(round)") }
            if process.terminationReason == .uncaughtSignal {
                try expect(snapshots.isEmpty, "round \(round): killed by signal \(process.terminationStatus) after it made \(snapshots)")
            } else if process.terminationStatus == 0 {
                try expectEqual(snapshots.sorted(), names.map { "\($0)-r\(round)" }, "round \(round): the set after exit 0")
                taken += 1
            } else {
                try expect(snapshots.isEmpty, "round \(round): exit \(process.terminationStatus) left \(snapshots): \(stderr)")
            }
            if stderr.contains("came while devices were being changed") { interrupted += 1 }
            for snapshot in snapshots { try cli.ok("drop", snapshot) }
            if (round + 1) % 5 == 0 { print("      round \(round + 1): \(taken) sets taken, \(interrupted) signals held off") }
        }
        print("      \(rounds.count) rounds: \(taken) sets taken, \(interrupted) with a signal held off until the end")
        // About a third of the rounds catch one (the others end before the signal, or are
        // ended while the process starts, before it changes anything).
        try expect(interrupted >= 1, "no round of \(rounds.count) caught a signal while snapshotting")
        for mount in mounts { try lab.sh("umount", mount) }
        for name in names { try cli.ok("unprotect", name) }
    }
}
