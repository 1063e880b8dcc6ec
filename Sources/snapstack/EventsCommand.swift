import ArgumentParser
import Foundation
import Reports
import Snapstack

/// The fields of `snapstack events`. Names are stable: scripts select them with -o.
enum EventReport {
    static let fields = [
        ReportField(name: "name", heading: "Name", help: "The device or snapshot it concerns (NAME, NAME-SNAP; several joined by commas)", kind: .text),
        ReportField(name: "path", heading: "Path", help: "The device path of that device or snapshot (it may be gone)", kind: .text),
        ReportField(name: "time", heading: "Time", help: "When it happened (UTC)", kind: .time),
        ReportField(name: "kind", heading: "Kind", help: "protect, snapshot, drop, merge, extend, overflow, store-limit, store-watch, reconcile, ...", kind: .text),
        ReportField(name: "message", heading: "Message", help: "What happened and why", kind: .text),
        ReportField(name: "id", heading: "ID", help: "Sequence number; orders events even if the clock stepped back", kind: .integer),
    ]

    static func report(_ events: [EventSummary]) -> Report {
        Report(name: "event", fields: fields, defaultFields: ["time", "kind", "name", "message"],
               rows: events.map { e in [
                   "name": .text(e.subject),
                   "path": e.subject.isEmpty || e.subject.contains(",") ? .none : .text("/dev/mapper/snapstack-\(e.subject)"),
                   "time": .time(e.time), "kind": .text(e.kind), "message": .text(e.message), "id": .integer(e.id),
               ] })
    }
}

struct EventsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "events",
        abstract: "Report snapstack's event log: what was done, by whom and why.",
        discussion: """
            Every change snapstack makes is logged in its database, oldest first here: devices \
            protected and unprotected, snapshots taken, dropped and merged, stores grown \
            (`extend`, by hand or by the daemon's store watch), snapshots the kernel \
            invalidated because their store filled up (`overflow`: dropped, or marked for \
            dropping while open), stores that cannot grow any more (`store-limit`), and \
            reconcile's repairs.

            Fields (-o): \(EventReport.fields.map(\.name).joined(separator: ", ")). Use -o help \
            for their meaning.

            Examples:
              snapstack events --kind overflow
              snapstack events --last 20 --reportformat json
            """)

    @Option(help: ArgumentHelp("Only events of this kind (extend, overflow, drop, ...).", valueName: "kind"))
    var kind: String?

    @Option(name: .customLong("last"), help: ArgumentHelp("How many of the latest events to show.", valueName: "count"))
    var last: Int = 100

    @OptionGroup var report: ReportArguments
    @OptionGroup var global: GlobalOptions

    func validate() throws {
        guard last > 0 else { throw ValidationError("--last must be at least 1") }
    }

    func run() throws {
        try running {
            try report.print(EventReport.report(try global.orchestrator(.shared).events(kind: kind, limit: last)))
        }
    }
}
