import BlockIO
import Foundation
import Reports
import Testing

func json(_ report: Report, fields: String? = nil, units: Units = .human) throws -> String {
    try render(report, options: ReportOptions(fields: fields, units: units, format: .json))
}

/// The rows of a rendered report, read back by Foundation's parser.
func parsedRows(_ text: String, name: String) throws -> [[String: Any]] {
    let object = try JSONSerialization.jsonObject(with: Data(text.utf8))
    let top = try #require(object as? [String: Any])
    #expect(top.keys.sorted() == ["report"])
    let report = try #require(top["report"] as? [[String: Any]])
    #expect(report.count == 1)
    #expect(report.first?.keys.sorted() == [name])
    return try #require(report.first?[name] as? [[String: Any]])
}

@Suite("JSON reports")
struct JSONTests {
    @Test("lvs' shape, keys in field order, one row per line")
    func shape() throws {
        #expect(try json(snapshotReport()) == """
            {
              "report": [
                {
                  "snapshot": [
                    {"name": "root-snap", "origin": "/dev/vda2", "size": 10737418240, "used_percent": 12.5},
                    {"name": "home", "origin": null, "size": 1536, "used_percent": 100.0}
                  ]
                }
              ]
            }

            """)
    }

    @Test("typed values parse back: sizes in bytes whatever the units, durations in microseconds")
    func typedValues() throws {
        let text = try json(snapshotReport(), fields: "all", units: .binary(.giga))
        let rows = try parsedRows(text, name: "snapshot")
        #expect(rows.count == 2)
        let first = rows[0]
        #expect(first["name"] as? String == "root-snap")
        #expect(first["origin"] as? String == "/dev/vda2")
        #expect(first["size"] as? Int == 10_737_418_240)
        #expect(first["used_percent"] as? Double == 12.5)
        #expect(first["freeze_us"] as? Int == 812)
        #expect(first["created"] as? String == "2026-11-25T09:31:14Z")
        #expect(first["chunks"] as? Int == 1536)
        let second = rows[1]
        #expect(second["origin"] is NSNull)
        #expect(second["created"] is NSNull)
        #expect(second["size"] as? Int == 1536)
        #expect(second["freeze_us"] as? Int == 12_400)
        #expect(second["used_percent"] as? Double == 100)

        // The time is ISO 8601 that Foundation reads back to the same second.
        let date = try #require(ISO8601DateFormatter().date(from: "2026-11-25T09:31:14Z"))
        #expect(date == created)
    }

    @Test("keys follow -o order, not dictionary order")
    func keyOrder() throws {
        let text = try json(snapshotReport(), fields: "chunks,used_percent,name")
        #expect(text.contains(#"{"chunks": 1536, "used_percent": 12.5, "name": "root-snap"}"#))
        #expect(text.contains(#"{"chunks": 3, "used_percent": 100.0, "name": "home"}"#))
    }

    @Test("strings escape quotes, backslashes and control characters; other text stays UTF-8")
    func escaping() throws {
        let tricky = [
            #"say "hi""#, "back\\slash", "two\nlines\r\n", "tab\there", "bell\u{7}\u{0}",
            "café ✓ 🧊", "line\u{2028}sep", "\u{8}\u{C}", "",
        ]
        let report = Report(
            name: "device\"s",
            fields: [ReportField(name: "na\"me", heading: "N", help: "h", kind: .text)],
            defaultFields: ["na\"me"],
            rows: tricky.map { ["na\"me": .text($0)] })
        let text = try json(report)
        let rows = try parsedRows(text, name: "device\"s")
        #expect(rows.map { $0["na\"me"] as? String } == tricky)
        #expect(text.contains(#"{"na\"me": "say \"hi\""}"#))
        #expect(text.contains(#""two\nlines\r\n""#))
        #expect(text.contains(#""bell\u0007\u0000""#))
        #expect(text.contains(#""line\u2028sep""#))
        #expect(text.contains(#""\b\f""#))
        #expect(text.contains("\"café ✓ 🧊\""))
    }

    @Test("numbers at their limits stay valid JSON; NaN and infinity are null")
    func numberLimits() throws {
        let fields = [
            ReportField(name: "size", heading: "S", help: "h", kind: .size),
            ReportField(name: "int", heading: "I", help: "h", kind: .integer),
            ReportField(name: "pct", heading: "P", help: "h", kind: .percent),
            ReportField(name: "dur", heading: "D", help: "h", kind: .duration),
        ]
        let report = Report(name: "x", fields: fields, defaultFields: ["size", "int", "pct", "dur"], rows: [
            ["size": .size(Bytes(UInt64.max)), "int": .integer(Int64.min), "pct": .percent(1e-5),
             "dur": .duration(microseconds: Int64.max)],
            ["size": .size(.zero), "int": .integer(0), "pct": .percent(.nan), "dur": .duration(microseconds: 0)],
            ["pct": .percent(-.infinity)],
        ])
        let text = try json(report)
        #expect(text.contains(
            #"{"size": 18446744073709551615, "int": -9223372036854775808, "pct": 1e-05, "dur": 9223372036854775807}"#))
        #expect(text.contains(#"{"size": 0, "int": 0, "pct": null, "dur": 0}"#))
        #expect(text.contains(#"{"size": null, "int": null, "pct": null, "dur": null}"#))
        let rows = try parsedRows(text, name: "x")
        #expect(rows[0]["int"] as? Int == Int.min)
        #expect(rows[0]["pct"] as? Double == 1e-5)
        #expect(rows[0]["dur"] as? Int == Int.max)
        #expect(rows[1]["pct"] is NSNull)
    }

    @Test("an empty report is an empty list")
    func empty() throws {
        let text = try json(snapshotReport(rows: []))
        #expect(text == """
            {
              "report": [
                {
                  "snapshot": []
                }
              ]
            }

            """)
        #expect(try parsedRows(text, name: "snapshot").isEmpty)
    }

    @Test("headings and separators do not apply to JSON")
    func basicOptionsIgnored() throws {
        let plain = try json(snapshotReport())
        let options = ReportOptions(noHeadings: true, separator: ",", aligned: true, units: .bytes,
                                    noSuffix: true, format: .json)
        #expect(try render(snapshotReport(), options: options) == plain)
    }
}
