import Foundation

/// Resolves the `-o` argument against a report's fields, as lvs reads it: a plain list replaces
/// the defaults, `+list` appends to them, `-list` removes from them, `all` expands to every
/// field. Names match without regard to case, and blanks around them are ignored, so
/// `-o "name, size"` works. A field named twice shows once, at its first place: JSON rows cannot
/// repeat a key, and basic mode should show the same columns.
func selectFields(_ argument: String?, of report: Report) throws(ReportError) -> [ReportField] {
    let defaults = try report.defaultFields.map { name throws(ReportError) in try lookUp(name, in: report) }
    guard let argument else { return try nonEmpty(unique(defaults)) }

    var list = Substring(argument)
    enum Mode { case replace, append, remove }
    var mode = Mode.replace
    if list.first == "+" {
        mode = .append
        list.removeFirst()
    } else if list.first == "-" {
        mode = .remove
        list.removeFirst()
    }

    var named: [ReportField] = []
    // Empty entries, as in a trailing comma, are skipped rather than refused.
    for entry in list.split(separator: ",") {
        let name = entry.trimmingCharacters(in: .whitespaces)
        if name.isEmpty { continue }
        switch name.lowercased() {
        case "help": throw .help(fieldHelp(report))
        case "all": named += report.fields
        default: named.append(try lookUp(name, in: report))
        }
    }

    switch mode {
    case .replace: return try nonEmpty(unique(named))
    case .append: return try nonEmpty(unique(defaults + named))
    case .remove:
        let removed = Set(named.map(\.name))
        return try nonEmpty(unique(defaults.filter { !removed.contains($0.name) }))
    }
}

private func lookUp(_ name: String, in report: Report) throws(ReportError) -> ReportField {
    if let field = report.fields.first(where: { $0.name == name }) { return field }
    let folded = name.lowercased()
    if let field = report.fields.first(where: { $0.name.lowercased() == folded }) { return field }
    throw .unknownField(name, known: report.fields)
}

private func unique(_ fields: [ReportField]) -> [ReportField] {
    var seen: Set<String> = []
    return fields.filter { seen.insert($0.name).inserted }
}

private func nonEmpty(_ fields: [ReportField]) throws(ReportError) -> [ReportField] {
    guard !fields.isEmpty else { throw .noFields }
    return fields
}
