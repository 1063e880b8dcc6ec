import ArgumentParser

@main
struct SnapstackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapstack",
        abstract: "Crash-consistent snapshots, changed-block tracking and copy-out for Linux disks, on device-mapper.",
        discussion: """
            snapstack stacks device-mapper targets that ship with every mainline kernel (linear, \
            era, snapshot-origin, snapshot, snapshot-merge) above a disk, so that backup software \
            gets snapshots of disks in use and the blocks changed since the last backup, without \
            an out-of-tree kernel module.

            Exit codes: 0 success; 1 the operation failed; 3 the kernel lacks device-mapper or a \
            target snapstack needs; 4 (doctor) udev or the state directory is not usable; \
            64 invalid arguments.
            """,
        subcommands: [DoctorCommand.self])
}
