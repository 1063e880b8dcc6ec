/// lvs' JSON shape, `{"report": [{"<name>": [rows]}]}`, one row per line with its keys in the
/// selected field order. Written by hand rather than through JSONSerialization or Codable:
/// both lose the key order, and the values need exact types (sizes as integer bytes).
func renderJSON(_ report: Report, columns: [ReportField]) -> String {
    let rows = report.rows.map { row in
        let members = columns.map { field in
            jsonString(field.name) + ": " + jsonValue(row[field.name] ?? .none)
        }
        return "        {" + members.joined(separator: ", ") + "}"
    }
    let list = rows.isEmpty ? "[]" : "[\n" + rows.joined(separator: ",\n") + "\n      ]"
    return """
        {
          "report": [
            {
              \(jsonString(report.name)): \(list)
            }
          ]
        }

        """
}

private func jsonValue(_ value: ReportValue) -> String {
    switch value {
    case let .text(text): jsonString(text)
    case let .size(bytes): "\(bytes.rawValue)"
    case let .integer(number): "\(number)"
    // Swift's shortest round-trip form ("12.5", "1e-05") is valid JSON; NaN and infinity have
    // no JSON form.
    case let .percent(percent): percent.isFinite ? "\(percent)" : "null"
    case let .duration(microseconds): "\(microseconds)"
    case let .time(date):
        // An unprintable date (beyond any real year) is null rather than an empty string.
        { $0.isEmpty ? "null" : jsonString($0) }(formatTime(date, separator: "T", zone: "Z"))
    case .none: "null"
    }
}

/// A JSON string literal. Quotes, backslashes and control characters are escaped as RFC 8259
/// requires; U+2028 and U+2029 too, since JavaScript before ES2019 takes them for line ends.
/// Other characters are written as UTF-8.
public func jsonString(_ text: String) -> String {
    var quoted = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": quoted += "\\\""
        case "\\": quoted += "\\\\"
        case "\n": quoted += "\\n"
        case "\r": quoted += "\\r"
        case "\t": quoted += "\\t"
        case "\u{8}": quoted += "\\b"
        case "\u{C}": quoted += "\\f"
        case _ where scalar.value < 0x20 || scalar.value == 0x2028 || scalar.value == 0x2029:
            quoted += "\\u" + hex(scalar.value, digits: 4)
        default: quoted.unicodeScalars.append(scalar)
        }
    }
    return quoted + "\""
}
