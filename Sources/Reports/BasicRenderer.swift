/// Columns under a heading line. Text and times are left-aligned, numbers right-aligned so their
/// digits line up; headings follow their column's alignment. Columns are two spaces apart and
/// lines carry no trailing blanks. With a separator and without `aligned`, cells are joined
/// unpadded, for scripts that split on it.
func renderBasic(_ report: Report, columns: [ReportField], options: ReportOptions) -> String {
    var lines: [[String]] = []
    if !options.noHeadings {
        lines.append(columns.map { escapeForCell($0.heading) })
    }
    for row in report.rows {
        lines.append(columns.map { field in
            escapeForCell((row[field.name] ?? .none).basicText(units: options.units, noSuffix: options.noSuffix))
        })
    }

    if let separator = options.separator, !options.aligned {
        return lines.map { $0.joined(separator: separator) + "\n" }.joined()
    }

    // Widths in characters: right for ASCII and most text; wide East Asian characters would
    // take two terminal cells and shift later columns, which device names do not use.
    var widths = Array(repeating: 0, count: columns.count)
    for line in lines {
        for (index, cell) in line.enumerated() { widths[index] = max(widths[index], cell.count) }
    }
    let last = columns.count - 1
    var output = ""
    for line in lines {
        var cells: [String] = []
        for (index, cell) in line.enumerated() {
            let padding = String(repeating: " ", count: widths[index] - cell.count)
            if columns[index].kind.isRightAligned {
                cells.append(padding + cell)
            } else {
                // The last column needs no padding on its right: it would only be trailing blanks.
                cells.append(index == last ? cell : cell + padding)
            }
        }
        var text = cells.joined(separator: options.separator ?? "  ")
        // Empty cells at the end of a line would leave the padding before them behind.
        while text.last == " " { text.removeLast() }
        output += text + "\n"
    }
    return output
}

extension ReportField.Kind {
    var isRightAligned: Bool {
        switch self {
        case .text, .time: false
        case .size, .integer, .percent, .duration: true
        }
    }
}
