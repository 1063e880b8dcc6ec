// Prometheus' text exposition format, version 0.0.4: what node_exporter's textfile collector
// reads from `*.prom` files. Pure: a model in, text out.

/// What a metric family measures, as its `# TYPE` line says.
public enum MetricType: String, Sendable, Equatable {
    /// A value that only goes up (or restarts from zero); its name ends in `_total`.
    case counter
    /// A value that goes up and down, or a fact (`..._info` families carry 1).
    case gauge
    case untyped
}

/// One label: `name="value"`.
public struct Label: Sendable, Equatable, Hashable {
    public var name: String
    public var value: String

    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }
}

/// One line of a family: its labels and value. No timestamp: node_exporter's textfile collector
/// refuses samples that carry one.
public struct Sample: Sendable, Equatable {
    public var labels: [Label]
    public var value: Double

    public init(_ labels: [Label], _ value: Double) {
        self.labels = labels
        self.value = value
    }

    /// A sample without labels: the family's only one.
    public init(_ value: Double) {
        self.init([], value)
    }
}

/// A metric family: one `# HELP`, one `# TYPE`, and its samples.
public struct MetricFamily: Sendable, Equatable {
    public var name: String
    public var help: String
    public var type: MetricType
    public var samples: [Sample]

    public init(_ name: String, _ type: MetricType, help: String, samples: [Sample] = []) {
        self.name = name
        self.type = type
        self.help = help
        self.samples = samples
    }
}

/// A model that cannot be written: the text would not parse, or would mean something else.
public enum ExpositionError: Error, Equatable, CustomStringConvertible {
    case invalidMetricName(String)
    case invalidLabelName(family: String, label: String)
    case duplicateFamily(String)
    case duplicateLabel(family: String, label: String)
    case duplicateSample(family: String, labels: String)

    public var description: String {
        switch self {
        case .invalidMetricName(let name):
            return "\"\(name)\" is not a metric name (letters, digits, _ and :, not starting with a digit)"
        case .invalidLabelName(let family, let label):
            return "\(family): \"\(label)\" is not a label name (letters, digits and _, not starting with a digit or __)"
        case .duplicateFamily(let name):
            return "the family \(name) is given twice"
        case .duplicateLabel(let family, let label):
            return "\(family): a sample has the label \(label) twice"
        case .duplicateSample(let family, let labels):
            return "\(family): two samples have the labels {\(labels)}"
        }
    }
}

public enum Exposition {
    /// The `Content-Type` of this format, for a file served over HTTP.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    /// The text of `families`: sorted by name, each with its `# HELP` and `# TYPE` lines, its
    /// samples sorted by their label values, so that the same state gives the same bytes.
    /// A family without samples keeps its HELP and TYPE lines (the metric exists, nothing has
    /// a value now).
    public static func render(_ families: [MetricFamily]) throws(ExpositionError) -> String {
        var seen = Set<String>()
        for family in families {
            guard isMetricName(family.name) else { throw .invalidMetricName(family.name) }
            guard seen.insert(family.name).inserted else { throw .duplicateFamily(family.name) }
        }
        var out = ""
        for family in families.sorted(by: { $0.name < $1.name }) {
            out += "# HELP \(family.name) \(escapeHelp(family.help))\n"
            out += "# TYPE \(family.name) \(family.type.rawValue)\n"
            var lines: [(key: [String], text: String)] = []
            var keys = Set<String>()
            for sample in family.samples {
                var names = Set<String>()
                for label in sample.labels {
                    guard isLabelName(label.name) else { throw .invalidLabelName(family: family.name, label: label.name) }
                    guard names.insert(label.name).inserted else { throw .duplicateLabel(family: family.name, label: label.name) }
                }
                let labels = sample.labels.map { "\($0.name)=\"\(escapeLabelValue($0.value))\"" }.joined(separator: ",")
                // The same label set written in another order is the same series.
                let key = sample.labels.sorted { $0.name < $1.name }.map { "\($0.name)=\($0.value)" }
                guard keys.insert(key.joined(separator: "\u{0}")).inserted else {
                    throw .duplicateSample(family: family.name, labels: labels)
                }
                let series = labels.isEmpty ? family.name : "\(family.name){\(labels)}"
                lines.append((sample.labels.map(\.value), "\(series) \(formatValue(sample.value))\n"))
            }
            for line in lines.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) || ($0.key == $1.key && $0.text < $1.text) }) {
                out += line.text
            }
        }
        return out
    }

    /// `[a-zA-Z_:][a-zA-Z0-9_:]*`
    public static func isMetricName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, !isDigit(first) else { return false }
        return name.unicodeScalars.allSatisfy { isLetter($0) || isDigit($0) || $0 == "_" || $0 == ":" }
    }

    /// `[a-zA-Z_][a-zA-Z0-9_]*`, and not `__...`, which Prometheus reserves.
    public static func isLabelName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, !isDigit(first), !name.hasPrefix("__") else { return false }
        return name.unicodeScalars.allSatisfy { isLetter($0) || isDigit($0) || $0 == "_" }
    }

    /// A label value escapes backslash, double quote and line feed; everything else, any
    /// UTF-8, is written as it is.
    public static func escapeLabelValue(_ value: String) -> String {
        var out = ""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// HELP text escapes backslash and line feed (a double quote stays as it is).
    public static func escapeHelp(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// Whole numbers as integers (byte counts stay exact up to 2^53), others in the shortest
    /// form that reads back as the same double; `NaN`, `+Inf`, `-Inf` as the format spells them.
    public static func formatValue(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value.isInfinite { return value > 0 ? "+Inf" : "-Inf" }
        if value == value.rounded(), abs(value) < 9_007_199_254_740_992 {
            return value == 0 ? "0" : String(Int64(value))
        }
        return "\(value)"
    }

    private static func isLetter(_ c: Unicode.Scalar) -> Bool { ("a"..."z").contains(c) || ("A"..."Z").contains(c) }
    private static func isDigit(_ c: Unicode.Scalar) -> Bool { ("0"..."9").contains(c) }
}
