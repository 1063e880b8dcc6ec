import ArgumentParser
import BlockIO
import Foundation
import Reports
import Snapstack

struct SnapshotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Take one crash-consistent snapshot of one or more protected devices at the same instant.",
        discussion: """
            Every store and snapshot device is prepared first; then all the devices' \
            filesystems are frozen and their I/O held together for the moment it takes to \
            switch the tables (the freeze window, recorded and shown by `snapstack snapshots`), \
            and each device's change tracking starts a new era at that instant. Prints each \
            snapshot's device path, one per line. A snapshot is NAME-SNAP; mount it read-only \
            (ext4: -o ro,noload) or read it for a backup, and drop it afterwards: while it \
            lives, the first write to each chunk of the origin is copied to its store.

            Snapshot devices are read-only, as `lvcreate -pr` makes them: a write to a \
            snapshot passes no change tracking, so an incremental export built on it would \
            miss it. --writable makes them take writes (to mount a journal that must be \
            replayed, or to test on a copy); exports of such a snapshot still read what it holds.

            The store defaults to a preallocated file in the state directory, attached through \
            a loop device. With --store VG (a name without a /), each snapshot's store is a new \
            logical volume VG/snapstack-ID-ID, tagged snapstack, that `extend` and the store \
            watch grow with lvextend and `drop` removes; the group must have room for them all. \
            A store on one of the devices of the set is refused.

            Example: snapstack snapshot data logs --size 20% --as nightly
            Example: snapstack snapshot data --store vg0 --size 2G
            """)

    @Argument(help: "Protected devices to snapshot together.", completion: StateCompletion.devices)
    var names: [String]

    @Option(help: ArgumentHelp("COW store size per snapshot: SIZE (4G) or PCT% of each origin (default 10%).",
                               valueName: "size"))
    var size: StoreSizeArgument?

    @Option(help: ArgumentHelp("An LVM volume group (a name without /) for store volumes, a directory for store files, or a block device (one-device sets).",
                               valueName: "vg|path"),
            completion: .file())
    var store: String?

    @Option(name: .customLong("as"), help: ArgumentHelp("The snapshot's name (default: the UTC time, YYYYMMDDTHHMMSS).",
                                                        valueName: "snap"))
    var snapshotName: String?

    @Option(help: ArgumentHelp("Copy-on-write chunk size, a power of two from 4K (default 4K).", valueName: "size"))
    var chunk: SizeArgument?

    @Flag(help: "Make the snapshot devices take writes (read-only by default).")
    var writable = false

    @OptionGroup var global: GlobalOptions

    func run() throws {
        try changingDevices { _ in
            var options = SnapshotOptions()
            if let size { options.size = size.size }
            options.store = store
            options.name = snapshotName
            if let chunk { options.chunk = chunk.bytes }
            options.writable = writable
            let result = try global.orchestrator().snapshot(names, options: options)
            for snapshot in result.snapshots { Output.print(snapshot.path) }
        }
    }
}

struct DropCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drop",
        abstract: "Remove a snapshot and its store.",
        discussion: "SNAP is NAME-SNAP or the path `snapshot` printed. Refuses while the snapshot is open.")

    @Argument(help: "The snapshot: NAME-SNAP or its device path.", completion: StateCompletion.snapshots)
    var snapshot: String

    @OptionGroup var global: GlobalOptions

    func run() throws {
        try changingDevices { _ in try global.orchestrator().drop(snapshot: snapshot) }
    }
}

struct MergeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Roll a protected device back to a snapshot's content, then remove the snapshot.",
        discussion: """
            Copies the snapshot's preserved chunks back onto the origin with the kernel's \
            snapshot-merge target and waits until it has finished, showing progress on a \
            terminal (--background returns at once; `snapstack reconcile` finishes it). While \
            the origin is open (mounted), the merge is deferred and starts at its next \
            activation — `snapstack reconcile` with the device closed, or the next boot — as \
            `lvconvert --merge` does. The device's other snapshots stay valid and unchanged \
            (the merge's writes are copied into them first); one snapshot merges at a time.
            """)

    @Argument(help: "The snapshot: NAME-SNAP or its device path.", completion: StateCompletion.snapshots)
    var snapshot: String

    @Flag(help: "Return once the merge has started.")
    var background = false

    @OptionGroup var global: GlobalOptions

    func run() throws {
        try changingDevices { interruption in
            let terminal = isatty(STDERR_FILENO) != 0
            var last = -1
            // A signal ends the wait, not the merge: the kernel goes on, and reconcile or the
            // daemon finishes it, as after --background.
            let outcome = try global.orchestrator().merge(snapshot: snapshot, wait: !background,
                                                          stopWaiting: { interruption.flag.isCancelled }) { percent in
                let whole = Int(percent)
                guard terminal, whole != last else { return }
                last = whole
                FileHandle.standardError.write(Data("\rmerging \(snapshot): \(whole)%".utf8))
            }
            if terminal && last >= 0 { FileHandle.standardError.write(Data("\n".utf8)) }
            switch outcome {
            case .merged: Output.error("snapstack: \(snapshot) merged")
            case .started: Output.error("snapstack: merging \(snapshot) in the background")
            case .deferred: Output.error("snapstack: the origin is open: the merge of \(snapshot) starts at its next activation")
            }
        }
    }
}
