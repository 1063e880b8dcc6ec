import ArgumentParser
import BlockIO
import Foundation
import Reports
import Snapstack

enum ChangeReport {
    static let fields = [
        ReportField(name: "name", heading: "Name", help: "Protected device", kind: .text),
        ReportField(name: "path", heading: "Path", help: "Its top device", kind: .text),
        ReportField(name: "offset", heading: "Offset", help: "First byte of the changed range", kind: .size),
        ReportField(name: "length", heading: "Length", help: "Bytes in the range (whole tracking blocks)", kind: .size),
        ReportField(name: "first_block", heading: "Block", help: "First tracking block of the range", kind: .integer),
        ReportField(name: "blocks", heading: "#Blocks", help: "Tracking blocks in the range", kind: .integer),
        ReportField(name: "since_era", heading: "Since", help: "Era the changes are counted from", kind: .integer),
    ]
}

struct ChangesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "changes",
        abstract: "List the ranges of a protected device written since an export or an era.",
        discussion: """
            Reads dm-era's metadata through a metadata snapshot, as an incremental export \
            does, and prints one row per run of changed tracking blocks (the last range is \
            cut at the device's end). --since takes an export id (the changes since that \
            export's snapshot) or an era number (`snapstack snapshots -o +era`). \
            Fields (-o): \(ChangeReport.fields.map(\.name).joined(separator: ", ")).
            """)

    @Argument(help: "The protected device's name.", completion: StateCompletion.devices)
    var name: String

    @Option(help: ArgumentHelp("An export id or an era number.", valueName: "export|era"),
            completion: StateCompletion.exports)
    var since: String

    @OptionGroup var report: ReportArguments
    @OptionGroup var global: GlobalOptions

    func run() throws {
        try running {
            let list = try global.orchestrator(.shared).changes(of: name, since: since)
            let block = UInt64(list.blockSize)
            let size = list.device.size.rawValue
            try report.print(Report(
                name: "change", fields: ChangeReport.fields,
                defaultFields: ["name", "offset", "length", "first_block", "blocks"],
                rows: list.ranges.map { range in
                    let offset = range.lowerBound * block
                    return [
                        "name": .text(list.device.name), "path": .text(list.device.path),
                        "offset": .size(Bytes(offset)), "length": .size(Bytes(min(range.upperBound * block, size) - offset)),
                        "first_block": .integer(Int64(range.lowerBound)), "blocks": .integer(Int64(range.count)),
                        "since_era": .integer(list.sinceEra),
                    ]
                }))
        }
    }
}

enum ExportReport {
    static let fields = [
        ReportField(name: "name", heading: "Name", help: "Export id, as --since takes it", kind: .text),
        ReportField(name: "path", heading: "Path", help: "Image file (empty: a stream to stdout)", kind: .text),
        ReportField(name: "device", heading: "Device", help: "Protected device exported", kind: .text),
        ReportField(name: "snapshot", heading: "Snapshot", help: "Snapshot read", kind: .text),
        ReportField(name: "kind", heading: "Kind", help: "full or incremental", kind: .text),
        ReportField(name: "base", heading: "Base", help: "Export an incremental builds on", kind: .text),
        ReportField(name: "state", heading: "State", help: "running (or interrupted) or complete", kind: .text),
        ReportField(name: "format", heading: "Format", help: "image, raw or delta", kind: .text),
        ReportField(name: "era", heading: "Era", help: "The snapshot's era: incrementals on top read from it", kind: .integer),
        ReportField(name: "since_era", heading: "Since", help: "First era an incremental read", kind: .integer),
        ReportField(name: "read", heading: "Read", help: "Bytes read from the snapshot", kind: .size),
        ReportField(name: "written", heading: "Written", help: "Bytes of data written (holes not counted)", kind: .size),
        ReportField(name: "block", heading: "Block", help: "Checksum and tracking block size", kind: .size),
        ReportField(name: "created", heading: "Created", help: "When it started", kind: .time),
        ReportField(name: "completed", heading: "Completed", help: "When it completed", kind: .time),
    ]
}

struct ExportsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exports",
        abstract: "Report the exports taken, which incrementals name with --since.",
        discussion: "Fields (-o): " + ExportReport.fields.map(\.name).joined(separator: ", ") + ". Use -o help for their meaning.")

    @OptionGroup var report: ReportArguments
    @OptionGroup var global: GlobalOptions

    func run() throws {
        try running {
            let rows = try global.orchestrator(.shared).exports().map { e -> [String: ReportValue] in [
                "name": .text(e.id), "path": .text(e.imagePath ?? ""), "device": .text(e.device),
                "snapshot": .text(e.snapshot), "kind": .text(e.kind.rawValue), "base": .text(e.base ?? ""),
                "state": .text(e.state.rawValue), "format": .text(e.format),
                "era": e.era.map { .integer($0) } ?? .none, "since_era": e.sinceEra.map { .integer($0) } ?? .none,
                "read": .size(e.bytesRead), "written": .size(e.bytesWritten),
                "block": .size(e.blockSize), "created": .time(e.createdAt),
                "completed": e.completedAt.map { .time($0) } ?? .none,
            ] }
            try report.print(Report(name: "export", fields: ExportReport.fields,
                                    defaultFields: ["name", "device", "snapshot", "kind", "base", "state", "read", "path"],
                                    rows: rows))
        }
    }
}
