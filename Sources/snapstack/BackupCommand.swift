import ArgumentParser
import CopyEngine
import Foundation
import Snapstack
import SystemPackage

struct BackupCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Snapshot a device, bring its backup image up to date, and drop the snapshot: one scheduled backup.",
        discussion: """
            Keeps IMAGE current with the least reading it can prove correct. When IMAGE holds \
            a complete export of NAME that the change tracking can build on, only the blocks \
            written since are read (an incremental export). Otherwise every block is read: \
            when there is no image yet, when the image is incomplete (an earlier run stopped), \
            when NAME has no change tracking, when it was protected anew since the image's \
            last export (what was written in between is unknown), or when its tracking cannot \
            be read. The reason is printed. An image of another disk, or a file that is not a \
            snapstack image, is never overwritten (exit 6).

            With --restic-repository the image, its manifest and its checksum file then go \
            into that restic repository as one restic snapshot (tags: snapstack, NAME, \
            export-ID); restic's deduplication stores about what changed. restic takes its \
            password from its own environment (RESTIC_PASSWORD_FILE). `restic dump` restores \
            the image.

            systemd/snapstack-backup@.service runs this for the device its instance names, \
            with the target from /etc/snapstack/backup/NAME.conf; \
            snapstack-backup@NAME.timer schedules it.

            Prints the export id as the last line of stdout. Exit codes as for snapshot and \
            export; 1 when restic fails (the image itself is then complete and verified by \
            its checksums).

            Examples:
              snapstack backup data --to /srv/backup/data.img
              RESTIC_PASSWORD_FILE=/etc/snapstack/restic.pass snapstack backup data --to /srv/backup/data.img --restic-repository /srv/restic
            """)

    @Argument(help: "The protected device.")
    var name: String

    @Option(help: ArgumentHelp("The image kept current (IMAGE.manifest and IMAGE.sums sit beside it).", valueName: "image"))
    var to: String

    @Option(name: .customLong("restic-repository"),
            help: ArgumentHelp("Back the image up into this restic repository after each export.", valueName: "repo"))
    var resticRepository: String?

    @Option(help: ArgumentHelp("COW store size of the snapshot: SIZE (4G) or PCT% of the device (default 10%).",
                               valueName: "size"))
    var size: StoreSizeArgument?

    @Option(help: ArgumentHelp("A directory for the snapshot's store file, or a block device.", valueName: "path"))
    var store: String?

    @Flag(name: .customLong("keep-snapshot"), help: "Leave the snapshot in place after the export.")
    var keepSnapshot = false

    @Option(name: .customLong("max-rate"), help: ArgumentHelp("Read at most this many bytes a second (50M).", valueName: "rate"))
    var maxRate: RateArgument?

    @OptionGroup var copy: CopyArguments
    @OptionGroup var global: GlobalOptions

    func validate() throws {
        if to.isEmpty || to == "-" { throw ValidationError("--to names an image file (a backup keeps one image current)") }
        if resticRepository?.isEmpty == true { throw ValidationError("--restic-repository must not be empty") }
    }

    func run() throws {
        try running {
            var request = BackupRequest(device: name, image: FilePath(to))
            if let size { request.snapshot.size = size.size }
            request.snapshot.store = store
            request.keepSnapshot = keepSnapshot
            request.maxRate = maxRate?.bytesPerSecond
            request.resticRepository = resticRepository
            let interruption = Interruption()
            let reporter = copy.reporter("backup")
            var last: CopyProgress?
            let outcome = try Backup.run(request, stateDirectory: global.resolvedStateDirectory,
                                         lockTimeout: global.lockTimeout, notice: { Output.error("snapstack: " + $0) },
                                         progress: { last = $0; reporter.report($0) }, cancel: interruption.flag)
            if let last { reporter.finish(last) }
            var event = outcome.export.jsonObject
            event["event"] = "backup"
            event["device"] = name
            event["image"] = to
            event["plan"] = outcome.plan.kindName
            event["reason"] = outcome.plan.reason as Any
            event["restic_snapshot"] = outcome.resticSnapshot as Any
            copy.emit(event)
            if copy.format != .json {
                Output.error("snapstack: backup of \(name): " + outcome.export.summary
                             + (outcome.resticSnapshot.map { "; restic snapshot \($0)" } ?? ""))
            }
            Output.print(outcome.export.export.id)
        }
    }
}

extension BackupPlan {
    var kindName: String {
        if case .incremental = kind { return "incremental" }
        return "full"
    }

    var reason: String? {
        if case .full(let reason) = kind { return reason }
        return nil
    }
}
