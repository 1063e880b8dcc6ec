import ArgumentParser
import BlockIO
import CopyEngine
import Dispatch
import Foundation
import Images
import Reports
import Snapstack
import SnapstackErrors
import SystemPackage

/// `--max-rate`: bytes per second, written as sizes are (`50M` is 50 MiB/s).
struct RateArgument: ExpressibleByArgument {
    var bytesPerSecond: UInt64
    init?(argument: String) {
        let text = argument.hasSuffix("/s") ? String(argument.dropLast(2)) : argument
        guard let bytes = try? Bytes(parsing: text), bytes > .zero else { return nil }
        bytesPerSecond = bytes.rawValue
    }
}

/// Progress and cancellation shared by the commands that copy.
struct CopyArguments: ParsableArguments {
    @Option(name: .customLong("reportformat"), help: ArgumentHelp(
        "basic, or json: progress and the outcome as JSON lines on stderr.", valueName: "format"))
    var format: ReportOptions.Format = .basic

    @Flag(name: .customLong("no-progress"), help: "No progress line, even on a terminal.")
    var noProgress = false

    func reporter(_ label: String) -> ProgressReporter {
        ProgressReporter(style: format == .json ? .jsonLines : noProgress ? .silent : .automatic, label: label)
    }

    /// A JSON line on stderr, for scripts that follow the progress lines.
    func emit(_ object: [String: Any]) {
        guard format == .json, let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
        FileHandle.standardError.write(data + Data("\n".utf8))
    }
}

struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Copy a snapshot out to an image file or a stream: all of it, or only what changed since an earlier export.",
        discussion: """
            A full export writes a sparse raw image (blocks of zeros become holes) and two \
            files beside it: IMAGE.manifest (JSON: device, snapshot, era, block size, the \
            exports the image holds) and IMAGE.sums (an XXH3-128 checksum per block). With \
            --since EXPORT it reads only the blocks the change tracking recorded since that \
            export's snapshot and updates the same image in place, after checking that the \
            image holds exactly that export of the same device.

            An incremental is refused (exit 10) when the device's change tracking was \
            interrupted after that export: an adopted volume that another program reloaded \
            (lvextend, lvchange --refresh, pvmove), whose writes bypassed the tracking until \
            it was adopted again. `snapstack devices -o +tracking,interrupted_reason` says \
            when and why; take a full export, or add --allow-full to read every block. A \
            resized volume needs a full export into a new image (exit 6).

            The image is marked incomplete before the first block is written and complete \
            after the last one is on disk. An export that is interrupted (Ctrl-C, a crash) \
            leaves it marked incomplete; running the same command again finishes it.

            --to - writes to standard output: a full export as the raw device image, so \
            that `| restic backup --stdin` or `| gzip` store a plain disk image; with \
            --format delta (required for --since) snapstack's delta stream, which \
            `snapstack apply --to IMAGE` turns into an image on the receiving side.

            Prints the export id as the last line of stdout (on stderr with --to -). \
            Name it with --since for the next incremental.

            Examples:
              snapstack export data-monday --to /backup/data.img
              snapstack export data-tuesday --to /backup/data.img --since 3f2a9c01
              snapstack export data-monday --to - | restic backup --stdin --stdin-filename data.img
              snapstack export data-tuesday --to - --format delta --since 3f2a9c01 | ssh backup snapstack apply --to /srv/data.img
            """)

    @Argument(help: "The snapshot: NAME-SNAP or its device path.", completion: StateCompletion.snapshots)
    var snapshot: String

    @Option(help: ArgumentHelp("The image file, or - for standard output.", valueName: "path"), completion: .file())
    var to: String

    @Option(help: ArgumentHelp("Read only what changed since this export (its id).", valueName: "export"),
            completion: StateCompletion.exports)
    var since: String?

    @Flag(help: "Read every block (the default without --since).")
    var full = false

    @Option(help: ArgumentHelp("With --to -: raw (full exports only, the default) or delta.", valueName: "format"),
            completion: .list(StreamFormat.allCases.map(\.rawValue)))
    var format: String?

    @Flag(name: .customLong("allow-full"), help: ArgumentHelp(
        "If the change tracking cannot be read, or was interrupted since --since's export, read every block instead of failing.",
        discussion: "Without it, an incremental across an interruption (an adopted volume reloaded by another program) exits 10."))
    var allowFull = false

    @Option(name: .customLong("max-rate"), help: ArgumentHelp("Read at most this many bytes a second (50M), to spare production I/O.", valueName: "rate"))
    var maxRate: RateArgument?

    @OptionGroup var copy: CopyArguments
    @OptionGroup var global: GlobalOptions

    func validate() throws {
        if full && since != nil { throw ValidationError("--full and --since exclude each other") }
        if let format, StreamFormat(rawValue: format) == nil { throw ValidationError("--format is raw or delta") }
        if format != nil && to != "-" { throw ValidationError("--format applies to --to - only") }
    }

    func run() throws {
        try running {
            let destination: ExportDestination
            if to == "-" {
                let stream = format.flatMap(StreamFormat.init(rawValue:)) ?? (since == nil ? .raw : .delta)
                destination = .standardOutput(stream)
            } else {
                destination = .image(FilePath(to))
            }
            let interruption = Interruption()
            let orchestrator = try global.orchestrator(.shared)
            let reporter = copy.reporter("export")
            var last: CopyProgress?
            let outcome = try orchestrator.export(
                ExportRequest(snapshot: snapshot, destination: destination, since: since, allowFull: allowFull,
                              maxRate: maxRate?.bytesPerSecond),
                progress: { last = $0; reporter.report($0) }, cancel: interruption.flag)
            if let last { reporter.finish(last) }
            let export = outcome.export
            copy.emit(outcome.jsonObject)
            if copy.format != .json { Output.error("snapstack: " + outcome.summary) }
            if to == "-" { Output.error(export.id) } else { Output.print(export.id) }
        }
    }
}

extension ExportOutcome {
    /// The `{"event":"exported",...}` line of `--reportformat json`.
    var jsonObject: [String: Any] {
        let s = statistics
        return ["event": "exported", "id": export.id, "kind": export.kind.rawValue, "base": export.base as Any,
                "snapshot": export.snapshot, "era": export.era as Any, "since_era": export.sinceEra as Any,
                "block_size": export.blockSize.rawValue, "blocks_planned": plannedBlocks, "bytes_read": s.bytesRead,
                "bytes_written": s.bytesWritten, "zero_bytes": s.zeroBytes, "seconds": s.seconds,
                "resumed": resumed, "read_everything": readEverything]
    }

    /// One line for the person at the terminal: what was read and written.
    var summary: String {
        let s = statistics
        return String(format: "%@ export %@%@: %@ read (%llu blocks planned), %@ written, %.1f s%@",
                      export.kind.rawValue, export.id, export.base.map { " on top of \($0)" } ?? "",
                      ProgressReporter.formatBytes(s.bytesRead), plannedBlocks,
                      ProgressReporter.formatBytes(s.bytesWritten), s.seconds,
                      resumed ? " (finished an interrupted run)" : "")
    }
}

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Re-read an exported image and check every block against its checksum.",
        discussion: """
            Checks that the image is complete, that IMAGE.sums is the checksum file its \
            manifest recorded, and that each block's XXH3-128 matches. Exit 0 when sound; \
            9 when the image is incomplete or a block differs (the first bad block is named). \
            Needs no state and no device-mapper: run it where the backups are kept.
            """)

    @Argument(help: "The image file.", completion: .file())
    var image: String

    @OptionGroup var copy: CopyArguments
    /// Accepted as by every command; images need no state.
    @OptionGroup var global: GlobalOptions

    func run() throws {
        try running {
            let interruption = Interruption()
            let reporter = copy.reporter("verify")
            var last: CopyProgress?
            let report = try Image.verify(FilePath(image), progress: { last = $0; reporter.report($0) }, cancel: interruption.flag)
            if let last { reporter.finish(last) }
            let m = report.manifest
            copy.emit(["event": "verified", "image": image, "sound": report.isSound, "blocks": report.blocksChecked,
                       "bad_blocks": report.badBlocks, "first_bad_block": report.firstBadBlock as Any,
                       "export": m.export.id, "device": m.device.name, "snapshot": m.snapshot.name, "seconds": report.seconds])
            if let bad = report.firstBadBlock {
                throw SnapstackError(.verificationFailed, "\(image): block \(bad) (bytes \(bad * UInt64(m.blockSize))-\((bad + 1) * UInt64(m.blockSize) - 1)) does not match its checksum",
                                     why: "\(report.badBlocks) of \(report.blocksChecked) blocks differ",
                                     remedy: "the image is damaged; take a new full export")
            }
            Output.print("\(image): sound, \(report.blocksChecked) blocks of \(m.blockSize / 1024) KiB, export \(m.export.id) of \(m.device.name)-\(m.snapshot.name)")
        }
    }
}

struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Write an exported image to a block device, then read it back against the image's checksums.",
        discussion: """
            Refuses a device that is mounted, open, held by device-mapper or md, or smaller \
            than the image. Blocks of zeros are written with BLKZEROOUT. Each block read from \
            the image is checked before it is written, and the whole device is read back \
            afterwards. To roll a protected device back, restore to its top device \
            (/dev/mapper/snapstack-NAME) while nothing has it mounted. Exit 9 if a block \
            does not match.
            """)

    @Argument(help: "The image file.", completion: .file())
    var image: String

    @Option(help: ArgumentHelp("The block device to overwrite.", valueName: "device"), completion: .file())
    var to: String

    @OptionGroup var copy: CopyArguments
    /// Accepted as by every command; images need no state.
    @OptionGroup var global: GlobalOptions

    func run() throws {
        try running {
            let interruption = Interruption()
            let reporter = copy.reporter("restore")
            var last: CopyProgress?
            let report = try Image.restore(FilePath(image), to: FilePath(to),
                                            progress: { last = $0; reporter.report($0) }, cancel: interruption.flag)
            if let last { reporter.finish(last) }
            copy.emit(["event": "restored", "image": image, "device": to, "bytes_written": report.written.bytesWritten,
                       "zero_bytes": report.written.zeroBytes, "blocks_verified": report.verified.blocksChecked])
            Output.print("\(to): restored from \(image) (export \(report.manifest.export.id)) and verified, \(report.verified.blocksChecked) blocks")
        }
    }
}

struct ApplyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apply",
        abstract: "Turn a delta stream from `export --to - --format delta` into an image, or update one.",
        discussion: """
            Reads the stream from standard input (or --from FILE). A full stream makes a new \
            image with its manifest and checksums; an incremental stream updates an image \
            only after checking that the image holds exactly the stream's base export of the \
            same device. Every data record's checksum is checked as it arrives; a truncated \
            or damaged stream leaves the image marked incomplete, and applying the whole \
            stream again finishes it. Prints the export id the image now holds.

            Example: snapstack export data-tue --to - --format delta --since 3f2a9c01 | snapstack apply --to /srv/data.img
            """)

    @Option(help: ArgumentHelp("The image to make or update.", valueName: "path"), completion: .file())
    var to: String

    @Option(help: ArgumentHelp("Read the stream from this file instead of standard input.", valueName: "file"),
            completion: .file())
    var from: String?

    @OptionGroup var copy: CopyArguments
    /// Accepted as by every command; images need no state.
    @OptionGroup var global: GlobalOptions

    func run() throws {
        try running {
            let input: FileDescriptor
            if let from {
                do { input = try FileDescriptor.open(FilePath(from), .readOnly) } catch {
                    throw SnapstackError(.notFound, "cannot open \(from)", why: "\(error)")
                }
            } else {
                input = .standardInput
            }
            let reporter = copy.reporter("apply")
            let outcome = try Image.apply(from: input, to: FilePath(to), progress: { reporter.report($0) })
            copy.emit(["event": "applied", "image": to, "export": outcome.manifest.export.id,
                       "records": outcome.records, "bytes": outcome.dataBytes])
            Output.print(outcome.manifest.export.id)
        }
    }
}
