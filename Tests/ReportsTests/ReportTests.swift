import BlockIO
import Foundation
import Reports
import Testing

/// A snapshot report as `snapstack snapshots` would fill it: every kind of field, a row with
/// every value, and a row with missing ones.
let snapshotFields = [
    ReportField(name: "name", heading: "Name", help: "Snapshot name", kind: .text),
    ReportField(name: "origin", heading: "Origin", help: "Device the snapshot was taken of", kind: .text),
    ReportField(name: "size", heading: "Size", help: "Size of the origin", kind: .size),
    ReportField(name: "used_percent", heading: "Used%", help: "Share of the snapshot store in use", kind: .percent),
    ReportField(name: "freeze_us", heading: "Freeze", help: "Time writes were held", kind: .duration),
    ReportField(name: "created", heading: "Created", help: "When the snapshot was taken", kind: .time),
    ReportField(name: "chunks", heading: "Chunks", help: "Chunks copied so far", kind: .integer),
]

/// 2026-11-25 09:31:14 UTC.
let created = Date(timeIntervalSince1970: 1_795_599_074)

func snapshotReport(rows: [[String: ReportValue]]? = nil) -> Report {
    Report(
        name: "snapshot", fields: snapshotFields,
        defaultFields: ["name", "origin", "size", "used_percent"],
        rows: rows ?? [
            ["name": .text("root-snap"), "origin": .text("/dev/vda2"), "size": .size(.gibibytes(10)),
             "used_percent": .percent(12.5), "freeze_us": .duration(microseconds: 812),
             "created": .time(created), "chunks": .integer(1536)],
            ["name": .text("home"), "size": .size(Bytes(1536)), "used_percent": .percent(100),
             "freeze_us": .duration(microseconds: 12_400), "chunks": .integer(3), "created": .none],
        ])
}

func basic(_ report: Report = snapshotReport(), _ options: ReportOptions = ReportOptions()) throws -> String {
    try render(report, options: options)
}

/// One value in one column, without a heading: how a single cell prints.
func cell(_ value: ReportValue, kind: ReportField.Kind, units: Units = .human) throws -> String {
    let report = Report(name: "cell", fields: [ReportField(name: "v", heading: "V", help: "value", kind: kind)],
                        defaultFields: ["v"], rows: [["v": value]])
    let text = try render(report, options: ReportOptions(noHeadings: true, units: units))
    return String(text.dropLast())  // the newline
}

@Suite("Basic reports")
struct BasicTests {
    @Test("default fields: text left-aligned, numbers right-aligned, missing values blank")
    func defaults() throws {
        #expect(try basic() == """
            Name       Origin       Size   Used%
            root-snap  /dev/vda2  10.00g   12.50
            home                   1.50k  100.00

            """)
    }

    @Test("-o name,size replaces the defaults, in the order given")
    func chosen() throws {
        #expect(try basic(snapshotReport(), ReportOptions(fields: "size,name")) == """
              Size  Name
            10.00g  root-snap
             1.50k  home

            """)
        #expect(try basic(snapshotReport(), ReportOptions(fields: "name,size")) == """
            Name         Size
            root-snap  10.00g
            home        1.50k

            """)
    }

    @Test("-o +field appends to the defaults")
    func appended() throws {
        #expect(try basic(snapshotReport(), ReportOptions(fields: "+freeze_us,created")) == """
            Name       Origin       Size   Used%  Freeze  Created
            root-snap  /dev/vda2  10.00g   12.50   812us  2026-11-25 09:31:14
            home                   1.50k  100.00  12.4ms

            """)
    }

    @Test("-o -field removes from the defaults")
    func removed() throws {
        #expect(try basic(snapshotReport(), ReportOptions(fields: "-origin,used_percent")) == """
            Name         Size
            root-snap  10.00g
            home        1.50k

            """)
    }

    @Test("-o all shows every field; repeats show once; names ignore case and blanks")
    func allAndRepeats() throws {
        let all = try basic(snapshotReport(), ReportOptions(fields: "all"))
        #expect(all.split(separator: "\n").first
                == "Name       Origin       Size   Used%  Freeze  Created              Chunks")
        #expect(try basic(snapshotReport(), ReportOptions(fields: "name, SIZE,name,")) == """
            Name         Size
            root-snap  10.00g
            home        1.50k

            """)
        #expect(try basic(snapshotReport(), ReportOptions(fields: "+name")) == basic())
    }

    @Test("--noheadings leaves out the heading line")
    func noHeadings() throws {
        #expect(try basic(snapshotReport(), ReportOptions(noHeadings: true)) == """
            root-snap  /dev/vda2  10.00g   12.50
            home                   1.50k  100.00

            """)
    }

    @Test("--separator joins unpadded cells, heading included")
    func separator() throws {
        #expect(try basic(snapshotReport(), ReportOptions(separator: ",")) == """
            Name,Origin,Size,Used%
            root-snap,/dev/vda2,10.00g,12.50
            home,,1.50k,100.00

            """)
        #expect(try basic(snapshotReport(), ReportOptions(noHeadings: true, separator: ":")) == """
            root-snap:/dev/vda2:10.00g:12.50
            home::1.50k:100.00

            """)
    }

    @Test("--separator with --aligned pads the cells")
    func alignedSeparator() throws {
        #expect(try basic(snapshotReport(), ReportOptions(separator: "|", aligned: true)) == """
            Name     |Origin   |  Size| Used%
            root-snap|/dev/vda2|10.00g| 12.50
            home     |         | 1.50k|100.00

            """)
    }

    @Test("--units applies to every size column; --nosuffix drops the letter")
    func unitsInReport() throws {
        #expect(try basic(snapshotReport(), ReportOptions(fields: "name,size", units: .bytes, noSuffix: true)) == """
            Name              Size
            root-snap  10737418240
            home              1536

            """)
        #expect(try basic(snapshotReport(), ReportOptions(fields: "size", units: .binary(.mega))) == """
                 Size
            10240.00m
                0.00m

            """)
    }

    @Test("an empty report prints its heading, or nothing without one")
    func empty() throws {
        let report = snapshotReport(rows: [])
        #expect(try basic(report) == "Name  Origin  Size  Used%\n")
        #expect(try basic(report, ReportOptions(separator: ",")) == "Name,Origin,Size,Used%\n")
        #expect(try basic(report, ReportOptions(noHeadings: true)) == "")
    }

    @Test("line breaks, tabs and control characters print as visible escapes")
    func escapes() throws {
        let report = snapshotReport(rows: [
            ["name": .text("two\nlines"), "origin": .text("a\tb"), "size": .size(.zero)],
            ["name": .text("esc\u{1B}[0m"), "origin": .text("my\\x20disk"), "size": .size(Bytes(512))],
            ["name": .text("para\u{2028}sep\r"), "origin": .text("café"), "size": .size(Bytes(1024))],
        ])
        #expect(try basic(report, ReportOptions(fields: "name,origin,size")) == #"""
            Name             Origin       Size
            two\nlines       a\tb            0
            esc\x1B[0m       my\x20disk   512B
            para\u2028sep\r  café        1.00k

            """#)
    }

    @Test("no trailing blanks when the last column is empty or left-aligned")
    func noTrailingBlanks() throws {
        let text = try basic(snapshotReport(), ReportOptions(fields: "name,created"))
        #expect(text == """
            Name       Created
            root-snap  2026-11-25 09:31:14
            home

            """)
        #expect(!text.split(separator: "\n").contains { $0.hasSuffix(" ") })
    }

    @Test("a field a row leaves out prints as none")
    func missingIsNone() throws {
        let report = Report(name: "x", fields: snapshotFields, defaultFields: ["name", "chunks"],
                            rows: [["name": .text("a")], ["name": .text("b"), "chunks": .integer(-7)]])
        #expect(try basic(report, ReportOptions(separator: ",")) == "Name,Chunks\na,\nb,-7\n")
    }
}

@Suite("Field selection errors")
struct FieldErrorTests {
    @Test("an unknown field names every valid field with its help")
    func unknownField() throws {
        let error = #expect(throws: ReportError.self) {
            try render(snapshotReport(), options: ReportOptions(fields: "name,bogus"))
        }
        #expect(error == .unknownField("bogus", known: snapshotFields))
        #expect(error?.description == """
            unknown field "bogus"; choose from: name (Snapshot name), \
            origin (Device the snapshot was taken of), size (Size of the origin), \
            used_percent (Share of the snapshot store in use), freeze_us (Time writes were held), \
            created (When the snapshot was taken), chunks (Chunks copied so far)
            """)
    }

    @Test("unknown fields are refused after + and -, and in JSON too", arguments: ["+bogus", "-bogus", "bogus"])
    func unknownAnywhere(argument: String) {
        #expect(throws: ReportError.unknownField("bogus", known: snapshotFields)) {
            try render(snapshotReport(), options: ReportOptions(fields: argument, format: .json))
        }
    }

    @Test("a default field the report lacks is refused, not skipped")
    func unknownDefault() {
        let report = Report(name: "x", fields: snapshotFields, defaultFields: ["name", "nope"])
        #expect(throws: ReportError.unknownField("nope", known: snapshotFields)) {
            try render(report)
        }
    }

    @Test("a selection of nothing is refused", arguments: ["", ",", " , ", "-name,origin,size,used_percent"])
    func noFields(argument: String) {
        #expect(throws: ReportError.noFields) {
            try render(snapshotReport(), options: ReportOptions(fields: argument))
        }
    }

    @Test("-o help throws the field list, which fieldHelp gives too")
    func help() {
        let expected = """
            Fields of the snapshot report:
              name          Snapshot name
              origin        Device the snapshot was taken of
              size          Size of the origin
              used_percent  Share of the snapshot store in use
              freeze_us     Time writes were held
              created       When the snapshot was taken
              chunks        Chunks copied so far
            Default: name,origin,size,used_percent
            Use -o a,b to choose fields, -o +a,b to add to the default, -o -a,b to remove from it, \
            -o all for every field.

            """
        #expect(fieldHelp(snapshotReport()) == expected)
        #expect(throws: ReportError.help(expected)) {
            try render(snapshotReport(), options: ReportOptions(fields: "help"))
        }
        #expect(throws: ReportError.help(expected)) {
            try render(snapshotReport(), options: ReportOptions(fields: "+name,help", format: .json))
        }
        #expect(ReportError.help(expected).description == expected)
    }
}
