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
            5 no such device or snapshot; 6 refused (mounted, open, busy, too small, already \
            protected, snapshots present); 7 another snapstack holds the lock; 8 the state \
            database is unreadable; 9 an image is incomplete or does not match its checksums; \
            10 an incremental export refused because change tracking was interrupted since its \
            base; 64 invalid arguments.
            """,
        subcommands: [
            ProtectCommand.self, UnprotectCommand.self, SnapshotCommand.self, DropCommand.self, MergeCommand.self,
            ExtendCommand.self, EventsCommand.self,
            ExportCommand.self, BackupCommand.self, ApplyCommand.self, VerifyCommand.self, RestoreCommand.self, ChangesCommand.self,
            DevicesCommand.self, SnapshotsCommand.self, ExportsCommand.self, StatusCommand.self, MetricsCommand.self, ReconcileCommand.self,
            DoctorCommand.self, FailpointsCommand.self, DaemonCommand.self, InitramfsCommand.self, LVMExecCommand.self,
        ])
}
