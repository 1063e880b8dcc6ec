import BlockIO
import Foundation

/// Shell completion as an administrator meets it: bash with `snapstack
/// --generate-completion-script bash` sourced, pressing TAB after a verb, offered the names
/// the state database holds.
enum CompletionScenarios {
    static let all: [Scenario] = [
        Scenario("completion: bash completes device and snapshot names from the state, honouring --state-dir and SNAPSTACK_STATE_DIR",
                 bashCompletesNames).lasting(90).nightly(),
    ]

    typealias CLI = OrchestratorScenarios.CLI

    /// Sources the completion script and calls its function as bash does for a TAB at the end
    /// of a line; prints COMPREPLY (shared with Tests/lab/manuals-check.sh).
    static let driver = FileManager.default.currentDirectoryPath + "/Tests/lab/bash-complete.sh"

    struct Shell {
        let lab: Lab
        let script: String
        let driver: String
        let bin: String

        /// What TAB offers at the end of `line`, sorted, with the environment's state directory.
        func complete(_ line: String, stateDir: String?) throws -> [String] {
            var environment = ["PATH": bin + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")]
            environment["SNAPSTACK_STATE_DIR"] = stateDir ?? ""
            let result = try lab.run(["bash", driver, script, line], allowFailure: true, environment: environment)
            try expectEqual(result.status, 0, "completing \"\(line)\" (stderr: \(result.stderr))")
            try expectEqual(result.stderr, "", "stderr while completing \"\(line)\"")
            return result.stdout.split(separator: "\n").map(String.init).sorted()
        }
    }

    static func bashCompletesNames(_ lab: Lab) throws {
        let cli = CLI(lab)
        let disk = try lab.loopDevice("disk", size: .mebibytes(32))
        _ = try cli.protect(disk.path, "compvol")
        var protected = true
        defer { if protected { _ = try? cli.run(["unprotect", "compvol", "--force"]) } }
        _ = try cli.ok("snapshot", "compvol", "--as", "s1")

        // The completion runs `snapstack` by the name typed, as bash does: put it on PATH.
        let bin = lab.scratch.appendingPathComponent("bin").path
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: bin + "/snapstack", withDestinationPath: CommandScenarios.snapstack)
        let script = lab.scratch.appendingPathComponent("snapstack.bash").path
        try lab.sh(CommandScenarios.snapstack, "--generate-completion-script", "bash")
            .write(toFile: script, atomically: true, encoding: .utf8)
        let driverPath = driver
        let shell = Shell(lab: lab, script: script, driver: driverPath, bin: bin)

        // Verbs, from the script itself.
        try expectEqual(try shell.complete("snapstack un", stateDir: cli.state), ["unprotect"], "snapstack un<TAB>")
        // Device names, from the database SNAPSTACK_STATE_DIR names.
        for line in ["snapstack unprotect ", "snapstack unprotect co", "snapstack changes ", "snapstack snapshot ",
                     "snapstack snapshot compvol "] {
            try expectEqual(try shell.complete(line, stateDir: cli.state), ["compvol"], "\(line)<TAB>")
        }
        // Snapshot names, NAME-SNAP, as drop, merge, extend and export take them.
        for verb in ["drop", "merge", "extend", "export"] {
            try expectEqual(try shell.complete("snapstack \(verb) ", stateDir: cli.state), ["compvol-s1"], "snapstack \(verb) <TAB>")
        }
        try expectEqual(try shell.complete("snapstack drop compvol-x", stateDir: cli.state), [], "a prefix no snapshot has")

        // --state-dir on the line wins over the environment, in both spellings.
        let missing = lab.scratch.appendingPathComponent("no-such-state").path
        try expectEqual(try shell.complete("snapstack drop --state-dir \(cli.state) ", stateDir: missing), ["compvol-s1"],
                        "--state-dir DIR before the snapshot")
        try expectEqual(try shell.complete("snapstack unprotect --state-dir=\(cli.state) ", stateDir: missing), ["compvol"],
                        "--state-dir=DIR before the device")
        // A state directory that does not exist: nothing offered, nothing said, nothing created.
        try expectEqual(try shell.complete("snapstack unprotect ", stateDir: missing), [], "completion without a state")
        try expect(!FileManager.default.fileExists(atPath: missing), "completion created \(missing)")

        // A command holding the state lock exclusively must not stall TAB: the names come at
        // once, read without the lock (flock(1) is the independent holder).
        let held = try lab.run(["bash", "-c", """
            flock -x "$1/lock" sleep 8 &
            holder=$!
            sleep 0.5
            start=$(date +%s%N)
            out=$(bash "$2" "$3" 'snapstack drop ')
            end=$(date +%s%N)
            kill "$holder" 2>/dev/null; wait
            printf '%s\\n%s\\n' "$(( (end - start) / 1000000 ))" "$out"
            """, "_", cli.state, driverPath, script], environment: [
                "PATH": bin + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"),
                "SNAPSTACK_STATE_DIR": cli.state,
            ])
        let lines = held.stdout.split(separator: "\n").map(String.init)
        try expectEqual(Array(lines.dropFirst()), ["compvol-s1"], "snapstack drop <TAB> while the lock is held")
        let milliseconds = Int(lines.first ?? "") ?? .max
        try expect(milliseconds < 5000, "completion under a held lock took \(milliseconds) ms (the holder keeps it 8 s)")

        _ = try cli.ok("drop", "compvol-s1")
        try expectEqual(try shell.complete("snapstack drop ", stateDir: cli.state), [], "after the drop")
        _ = try cli.ok("unprotect", "compvol")
        protected = false
        try expectEqual(try shell.complete("snapstack unprotect ", stateDir: cli.state), [], "after unprotect")
    }
}
