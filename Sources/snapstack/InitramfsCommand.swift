import ArgumentParser
import Foundation
import Snapstack
import SnapstackErrors
import SystemPackage

/// What snapstack's initramfs-tools hook and `local-top` script run (systemd/initramfs-tools/),
/// and its dracut module and pre-mount hook (systemd/dracut/).
struct InitramfsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "initramfs",
        abstract: "Stack / from the initramfs (run by snapstack's initramfs hook and boot script).",
        discussion: """
            The root file system is mounted by the initramfs, before snapstack's daemon \
            starts. When the initramfs is made (update-initramfs, or dracut), snapstack's \
            hook (or dracut module) runs `initramfs plan`, which writes the records of the \
            protected devices that hold / into it; at boot, its local-top script (dracut: \
            pre-mount hook) runs `initramfs stack`, which builds their stacks before / is \
            mounted and prints the top device to mount instead. The daemon then takes the \
            stacks over (reconcile's take-over-early-stack step).
            """,
        subcommands: [InitramfsPlanCommand.self, InitramfsStackCommand.self, InitramfsUnstackCommand.self,
                      InitramfsStopCommand.self])
}

struct InitramfsPlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Write what the initramfs needs to stack / (the hook or dracut module runs this).",
        discussion: """
            Writes the records of the protected or pending devices that hold / to FILE, as \
            JSON, and prints their names, one a line. With none, FILE is not written and \
            nothing is printed: the initramfs then carries nothing of snapstack's.
            """)

    @Option(help: ArgumentHelp("Where to write the plan.", valueName: "file"), completion: .file())
    var output: String

    @OptionGroup var global: GlobalOptions

    func run() throws {
        try running {
            let plan = try global.orchestrator(.shared).initramfsPlan()
            guard !plan.isEmpty else { return }
            try plan.encoded().write(to: URL(fileURLWithPath: output))
            plan.deviceNames.forEach { Output.print($0) }
        }
    }
}

struct InitramfsStackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stack",
        abstract: "Build the stacks an initramfs plan names (the initramfs's local-top or pre-mount script runs this).",
        discussion: """
            Waits up to --wait seconds for each device of the plan, builds its stack over its \
            recorded change-tracking metadata, and leaves a marker in /run/snapstack/early for \
            the daemon. Prints the top device of the disk --root names, when it was stacked: \
            what the initramfs mounts as / instead. A device that cannot be stacked is \
            reported on stderr and left alone, so that the boot goes on; the daemon then \
            reports its change tracking interrupted.
            """)

    @Option(help: ArgumentHelp("The plan `initramfs plan` wrote.", valueName: "file"), completion: .file())
    var plan: String

    @Option(help: ArgumentHelp("The device the initramfs mounts as / ($ROOT, resolved).", valueName: "device"))
    var root: String?

    @Option(help: ArgumentHelp("Seconds to wait for each device to appear.", valueName: "seconds"))
    var wait: Double = 30

    @Option(name: .customLong("scratch-dir"),
            help: ArgumentHelp("Where this boot-time stack keeps its scratch state.", valueName: "dir"))
    var scratchDirectory = "/run/snapstack/initramfs"

    func validate() throws {
        guard wait.isFinite, wait >= 0, wait <= 3600 else { throw ValidationError("--wait is a number of seconds from 0 to 3600") }
    }

    func run() throws {
        try running {
            let (plan, orchestrator) = try initramfsScratch(plan: plan, directory: scratchDirectory)
            defer { try? FileManager.default.removeItem(atPath: scratchDirectory) }
            if let top = orchestrator.stackInInitramfs(plan, root: root, wait: wait) { Output.print(top) }
        }
    }
}

struct InitramfsUnstackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unstack",
        abstract: "Take back a stack `initramfs stack` built (dracut's pre-mount hook runs this when / cannot use it).",
        discussion: """
            Removes the top device and the -real layer of the device of the plan whose top \
            device is --top, and the marker `initramfs stack` left for the daemon, so that the \
            initramfs can mount the disk itself: the stack holds it exclusively. Prints the \
            device's name; nothing when no device of the plan has that top device.
            """)

    @Option(help: ArgumentHelp("The plan `initramfs plan` wrote.", valueName: "file"), completion: .file())
    var plan: String

    @Option(help: ArgumentHelp("The top device `initramfs stack` printed.", valueName: "device"))
    var top: String

    @Option(name: .customLong("scratch-dir"),
            help: ArgumentHelp("Where this boot-time stack keeps its scratch state.", valueName: "dir"))
    var scratchDirectory = "/run/snapstack/initramfs"

    func run() throws {
        try running {
            let (plan, orchestrator) = try initramfsScratch(plan: plan, directory: scratchDirectory)
            defer { try? FileManager.default.removeItem(atPath: scratchDirectory) }
            if let name = try orchestrator.unstackInInitramfs(plan, top: top) { Output.print(name) }
        }
    }
}

/// The plan at `path`, and an orchestrator over the scratch state in `directory` (the caller
/// removes it): what `initramfs stack` and `unstack` work with before / is mounted, where no
/// state directory exists yet.
private func initramfsScratch(plan path: String, directory: String) throws -> (InitramfsPlan, Orchestrator) {
    guard let data = FileManager.default.contents(atPath: path) else {
        throw SnapstackError(.notFound, "cannot read the initramfs plan \(path)")
    }
    let plan = try InitramfsPlan(decoding: data)
    let orchestrator = try Orchestrator(stateDirectory: FilePath(directory), lockTimeout: 10)
    orchestrator.notice = { Output.error("snapstack: " + $0) }
    return (plan, orchestrator)
}

struct InitramfsStopCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stop",
        abstract: "Record a clean shutdown of / (systemd-shutdown's hook runs this).",
        discussion: """
            Run by /usr/lib/systemd/system-shutdown/snapstack, after every filesystem is \
            unmounted or read-only: for each device the initramfs stacked, writes its \
            filesystem's stamp to its stop volume, which the next boot's initramfs reads \
            before it builds the stack. Nothing is recorded unless / is read-only. Prints a \
            line per device.
            """)

    func run() throws {
        let mountinfo = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        for line in Orchestrator.recordShutdown(host: LinuxHost(), mountinfo: mountinfo) {
            Output.error("snapstack: " + line)
        }
    }
}
