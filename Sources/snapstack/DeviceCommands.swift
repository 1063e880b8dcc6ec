import ArgumentParser
import BlockIO
import Foundation
import Reports
import Snapstack
import LVMExec

struct ProtectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "protect",
        abstract: "Stack snapstack's layers over a disk, so that it can be snapshotted and tracked.",
        discussion: """
            Builds /dev/mapper/snapstack-NAME over DEV: a hidden -real layer (dm-era, which \
            records the blocks written in each era, or linear with --no-cbt) and the top device \
            that filesystems then use instead of DEV. Prints the top device's path.

            DEV must not be mounted, open or held by another device, nor be one of snapstack's \
            own devices, nor be protected already: the layers can only be stacked before \
            anything opens the disk (the daemon does this at boot and on hotplug). The disk's \
            identity (WWN, serial, PARTUUID, filesystem UUID, size) is recorded to find it \
            again after a reboot or a rename. The disk's content is untouched.

            A live device-mapper device, mounted or not — an LVM volume, as /dev/vg/lv, \
            /dev/mapper/vg-lv or vg/lv — is adopted online instead: its table is cloned into \
            snapstack-NAME-clone, dm-era stacked on the clone, and the volume itself reloaded \
            to map through them, with one suspend and resume (which freezes and thaws its \
            filesystem). The volume keeps its name, UUID, device number and mounts, and is \
            what you snapshot. Only linear and striped tables (plain and striped volumes) can \
            be adopted; thin, cache, raid and crypt devices are refused with the reason. When \
            another program reloads the volume (lvextend, lvchange --refresh, pvmove) its \
            writes bypass the tracking: the daemon adopts it again at once, and `devices` \
            shows the tracking as interrupted until the next full export (an incremental \
            across it exits 10). `unprotect` gives the volume its table back.

            A mounted partition or disk that is not a device-mapper device cannot be stacked \
            while in use. With --at-boot it is recorded as pending (`devices` shows it so) and \
            its stack is built at the next boot by the daemon, before the local file systems \
            are mounted: an fstab entry by UUID= or LABEL= then mounts the top device. The \
            partition or disk that holds / is stacked by the initramfs instead, before it \
            mounts /: its change-tracking metadata must then be on a volume group of another \
            disk (--cbt-metadata VG), and protect remakes the initramfs (update-initramfs, \
            or dracut where initramfs-tools is not installed; snapstack's hook or dracut \
            module puts the device's record in it). At every boot the initramfs \
            builds the stack and mounts / from the top device; the daemon takes it over.

            Examples:
              snapstack protect /dev/sdb1 --name data && mount /dev/mapper/snapstack-data /srv
              snapstack protect vg0/home --name home     (mounted: adopted online)
              snapstack protect /dev/sdc1 --name srv --at-boot   (mounted from fstab: at the next boot)
              snapstack protect /dev/sda2 --name root --at-boot --cbt-metadata vg1   (/: from the initramfs)
            """)

    @Argument(help: "The block device to protect, e.g. /dev/sdb1, or an LVM volume (/dev/vg/lv or vg/lv).", completion: .file())
    var device: String

    @Option(help: "The name of the protected device (letters, digits, # + - . : = @ _; at most 64).")
    var name: String

    @Option(name: .customLong("cbt-block"), help: ArgumentHelp(
        "Change-tracking granularity, a multiple of 4K (default: 1M, doubled for every 2M blocks the device would exceed; see README, \"Write-path cost and defaults\").",
        valueName: "size"))
    var cbtBlock: SizeArgument?

    @Flag(name: .customLong("no-cbt"), help: "Protect without changed-block tracking.")
    var noCBT = false

    @Option(name: .customLong("cbt-metadata"), help: ArgumentHelp(
        "An LVM volume group for the change-tracking metadata: a small volume VG/snapstack-ID-era instead of a file in the state directory.",
        valueName: "vg"))
    var cbtMetadata: String?

    @Flag(name: .customLong("at-boot"), help: "When the device is in use and not a device-mapper device (a mounted partition), build its stack at the next boot instead of refusing; a device not in use is protected now.")
    var atBoot = false

    @OptionGroup var global: GlobalOptions

    func validate() throws {
        if noCBT && cbtBlock != nil { throw ValidationError("--cbt-block and --no-cbt exclude each other") }
        if noCBT && cbtMetadata != nil { throw ValidationError("--cbt-metadata and --no-cbt exclude each other") }
    }

    func run() throws {
        try changingDevices { _ in
            let orchestrator = try global.orchestrator()
            var options = ProtectOptions(cbtBlock: noCBT ? nil : (cbtBlock?.bytes ?? ProtectOptions.defaultCBTBlock))
            options.cbtMetadataGroup = cbtMetadata
            options.atBoot = atBoot
            Output.print(try orchestrator.protect(devicePath: device, name: name, options: options).path)
        }
    }
}

struct UnprotectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unprotect",
        abstract: "Remove snapstack's layers from a disk, leaving its content as the top device had it.",
        discussion: """
            Refuses while /dev/mapper/snapstack-NAME is open or while the device has snapshots \
            (--force drops them first). Change tracking for the device ends. An adopted volume \
            stays mounted: it is reloaded with the table it had (byte for byte, as `dmsetup \
            table` prints it) and the layers under it are removed.
            """)

    @Argument(help: "The protected device's name.", completion: StateCompletion.devices)
    var name: String

    @Flag(help: "Drop the device's snapshots first.")
    var force = false

    @OptionGroup var global: GlobalOptions

    func run() throws {
        try changingDevices { _ in try global.orchestrator().unprotect(name: name, force: force) }
    }
}

struct ReconcileCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reconcile",
        abstract: "Repair what a crash or a reboot left: match the kernel's devices to the database.",
        discussion: """
            Resumes any of snapstack's devices left suspended, finishes or undoes operations a \
            crash interrupted, re-activates persistent snapshots from their stores, rebuilds the \
            stacks of protected disks that are present but unstacked, and removes device-mapper devices, loop devices and files of snapstack's \
            that nothing records. Prints one line per repair. Running it twice changes nothing \
            the second time.

            It looks first, then plans, then repairs: --dry-run prints the plan, one step a \
            line, its kind (rebuild-stack, finish-drop, remove-orphan, ...) before the subject.

            Change tracking whose era metadata fails to write (dm-era reports Error, and fails \
            the disk's writes to blocks it has not marked) is bypassed: writes go straight to \
            the disk, and the next incremental is refused until a full export. The daemon does \
            this within its store poll interval. Once the metadata's device works again, \
            reconcile puts the tracking back over the same metadata (the daemon does not: it \
            cannot know the device was fixed); if it still fails, the tracking stays bypassed \
            and reconcile says why.

            A rebuilt stack keeps its change tracking only when the disk's ext2/3/4 or xfs superblock \
            shows the stamp the daemon recorded at its last clean stop: nothing mounted and \
            wrote the filesystem while the disk had no stack. Otherwise (no clean stop, another \
            filesystem, a superblock that changed) the tracking is interrupted, with the \
            reason, and the next incremental export is refused until a full one; when the \
            filesystem changed, the persistent snapshots become invalid too.
            """)

    @Flag(name: .customLong("dry-run"), help: "Print what would be repaired, change nothing.")
    var dryRun = false

    @OptionGroup var global: GlobalOptions
    @OptionGroup var format: FormatOption

    func run() throws {
        try changingDevices { _ in
            let actions = try global.orchestrator(dryRun ? .shared : .exclusive).reconcile(dryRun: dryRun)
            switch format.format {
            case .json:
                let rows = actions.map {
                    ["step": ReportValue.text($0.step), "name": .text($0.subject), "action": .text($0.action)]
                }
                Output.print(try render(Report(name: "action", fields: [
                    ReportField(name: "step", heading: "Step", help: "The kind of repair (rebuild-stack, remove-orphan, ...)", kind: .text),
                    ReportField(name: "name", heading: "Subject", help: "What was repaired", kind: .text),
                    ReportField(name: "action", heading: "Action", help: "The repair", kind: .text),
                ], defaultFields: ["step", "name", "action"], rows: rows), options: ReportOptions(format: .json)), terminator: "")
            case .basic:
                // The plan names each step's kind; a repair made is told in words only.
                for action in actions {
                    Output.print(dryRun ? "\(action.step)\t\(action.subject): \(action.action)" : "\(action.subject): \(action.action)")
                }
                if actions.isEmpty { Output.print("nothing to repair") }
            }
        }
    }
}

struct FailpointsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "failpoints",
        abstract: "List the crash points that SNAPSTACK_FAILPOINT=<name> triggers (for testing recovery).",
        discussion: """
            With SNAPSTACK_FAILPOINT=<name> in its environment, snapstack kills itself with \
            SIGKILL when it reaches that step, leaving what a crash there leaves; \
            `snapstack reconcile` must repair it. One name per line, then what the crash leaves.
            """)

    func run() {
        for point in Failpoint.allCases { Output.print("\(point.rawValue)\t\(point.summary)") }
    }
}

/// The child side of `LVMTool`: one LVM command through liblvm2cmd, in a process of its own.
struct LVMExecCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lvm-exec",
        abstract: "Run one LVM command through liblvm2cmd (used by snapstack itself).",
        shouldDisplay: false)

    @Argument(parsing: .captureForPassthrough, help: "The LVM command and its arguments.")
    var words: [String] = []

    func run() throws {
        let status = LVMExec.run(words)
        if status != 0 { throw ExitCode(status) }
    }
}
