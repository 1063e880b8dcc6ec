import BlockIO
import Foundation

/// One column a report can show: the name chosen with `-o`, its heading, and how its values print.
public struct ReportField: Sendable, Hashable {
    /// What a field's values are. The kind decides the column's alignment in basic mode;
    /// each value still prints by its own case, so a field can hold `.none` for "not applicable".
    public enum Kind: Sendable, Hashable {
        /// Free text, left-aligned.
        case text
        /// A size in bytes, printed in the report's `--units`; exact bytes in JSON.
        case size
        /// A whole number.
        case integer
        /// A percentage printed with two decimals, as lvs prints `Data%`.
        case percent
        /// A duration in microseconds, printed as `812us`, `12.4ms`, `1.52s`.
        case duration
        /// A point in time, printed in UTC.
        case time
    }

    /// The identifier used with `-o` and as the key of JSON rows, e.g. `used_percent`.
    public var name: String
    /// The column heading in basic mode, e.g. `Used%`.
    public var heading: String
    /// One line describing the field, for `-o help` and for unknown-field errors.
    public var help: String
    public var kind: Kind

    public init(name: String, heading: String, help: String, kind: Kind) {
        self.name = name
        self.heading = heading
        self.help = help
        self.kind = kind
    }
}

/// One cell of a report.
public enum ReportValue: Sendable, Equatable {
    case text(String)
    case size(Bytes)
    case integer(Int64)
    /// A percentage, 0...100 for a fill level.
    case percent(Double)
    case duration(microseconds: Int64)
    case time(Date)
    /// No value: an empty cell in basic mode, `null` in JSON.
    case none
}

/// A table of rows together with every field it knows and the fields it shows by default.
public struct Report: Sendable {
    /// The JSON key of the row list, singular as lvs writes it: `device`, `snapshot`.
    public var name: String
    /// Every field the report knows, in the order `-o all` and `-o help` list them.
    public var fields: [ReportField]
    /// The field names shown without `-o`, in column order.
    public var defaultFields: [String]
    /// The rows, keyed by field name. A field missing from a row prints as `.none`.
    public var rows: [[String: ReportValue]]

    public init(name: String, fields: [ReportField], defaultFields: [String],
                rows: [[String: ReportValue]] = []) {
        self.name = name
        self.fields = fields
        self.defaultFields = defaultFields
        self.rows = rows
    }
}

/// How a report is printed: the options of `lvs` that snapstack's report commands share.
public struct ReportOptions: Sendable {
    /// How the report is written out, after `lvs --reportformat`.
    public enum Format: String, Sendable, Hashable, CaseIterable {
        /// Aligned columns under a heading line.
        case basic
        /// `{"report": [{"<name>": [rows]}]}`, values typed.
        case json
    }

    /// The `-o` argument. `a,b` replaces the default fields, `+a,b` appends to them,
    /// `-a,b` removes from them; `all` stands for every field and `help` asks for the
    /// field list (``render(_:options:)`` throws ``ReportError/help(_:)``). Nil keeps the defaults.
    public var fields: String?
    /// Leaves out the heading line (`--noheadings`).
    public var noHeadings: Bool
    /// Joins the columns with this string instead of padding them (`--separator`).
    public var separator: String?
    /// With a separator, pads the columns too, so the separators line up (`--aligned`).
    public var aligned: Bool
    /// How sizes print in basic mode (`--units`). JSON always gives exact bytes.
    public var units: Units
    /// Drops the unit letter from sizes (`--nosuffix`), except in the human-readable units,
    /// whose letter changes from row to row and so cannot be left out.
    public var noSuffix: Bool
    public var format: Format

    public init(fields: String? = nil, noHeadings: Bool = false, separator: String? = nil,
                aligned: Bool = false, units: Units = .human, noSuffix: Bool = false,
                format: Format = .basic) {
        self.fields = fields
        self.noHeadings = noHeadings
        self.separator = separator
        self.aligned = aligned
        self.units = units
        self.noSuffix = noSuffix
        self.format = format
    }
}

/// Writes `report` as `options` ask, with a trailing newline after every line
/// (an empty string when there is nothing to print).
///
/// In JSON, sizes are integer bytes whatever `options.units` says, so scripts get exact numbers;
/// durations are integer microseconds, times ISO 8601 strings in UTC, and percentages the
/// unrounded number.
public func render(_ report: Report, options: ReportOptions = ReportOptions()) throws(ReportError) -> String {
    let columns = try selectFields(options.fields, of: report)
    switch options.format {
    case .basic: return renderBasic(report, columns: columns, options: options)
    case .json: return renderJSON(report, columns: columns)
    }
}

/// The field list that `-o help` prints: every field's name and description, the defaults,
/// and the forms `-o` accepts.
public func fieldHelp(_ report: Report) -> String {
    let width = report.fields.map(\.name.count).max() ?? 0
    var text = "Fields of the \(report.name) report:\n"
    for field in report.fields {
        let padding = String(repeating: " ", count: width - field.name.count)
        text += "  \(field.name)\(padding)  \(field.help)\n"
    }
    text += "Default: \(report.defaultFields.joined(separator: ","))\n"
    text += "Use -o a,b to choose fields, -o +a,b to add to the default, -o -a,b to remove from it, "
        + "-o all for every field.\n"
    return text
}
