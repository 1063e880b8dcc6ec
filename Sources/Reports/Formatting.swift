import Foundation

extension ReportValue {
    /// The cell as basic mode prints it, before control characters are escaped.
    func basicText(units: Units, noSuffix: Bool) -> String {
        switch self {
        case let .text(text): text
        case let .size(bytes): units.format(bytes, suffix: !noSuffix)
        case let .integer(number): "\(number)"
        case let .percent(percent): formatPercent(percent)
        case let .duration(microseconds): formatDuration(microseconds: microseconds)
        case let .time(date): formatTime(date, separator: " ", zone: "")
        case .none: ""
        }
    }
}

/// Two decimals, as lvs prints `Data%` with printf's `%.2f`. Not a number or infinity prints
/// empty, as a missing value does: neither is a meaningful fill level.
func formatPercent(_ percent: Double) -> String {
    guard percent.isFinite else { return "" }
    let text = String(format: "%.2f", percent)
    // A tiny negative value rounds to "-0.00", which reads as a sign error.
    return text == "-0.00" ? "0.00" : text
}

/// Three significant digits in the largest unit that keeps the number at least 1:
/// `999us`, `1.00ms`, `12.4ms`, `999ms`, `1.00s`, `1.52s`, `100s`; whole seconds from 100 s on.
/// Rounding that reaches 1000 of a unit moves to the next unit, so 999.5 ms prints as `1.00s`.
func formatDuration(microseconds: Int64) -> String {
    let sign = microseconds < 0 ? "-" : ""
    // The magnitude as unsigned, so that Int64.min does not overflow when negated.
    let magnitude = UInt128(microseconds.magnitude)
    if magnitude < 1000 { return "\(sign)\(magnitude)us" }
    for (unit, suffix) in [(UInt128(1000), "ms"), (UInt128(1_000_000), "s")] {
        for decimals in [2, 1, 0] {
            let scale: UInt128 = decimals == 2 ? 100 : decimals == 1 ? 10 : 1
            let scaled = (magnitude * scale + unit / 2) / unit
            if scaled < 1000 || (suffix == "s" && decimals == 0) {
                return sign + decimalText(scaled, decimals: decimals) + suffix
            }
        }
    }
    fatalError("unreachable: whole seconds take any magnitude")
}

private func decimalText(_ scaled: UInt128, decimals: Int) -> String {
    guard decimals > 0 else { return "\(scaled)" }
    var digits = String(scaled)
    if digits.count <= decimals {
        digits = String(repeating: "0", count: decimals - digits.count + 1) + digits
    }
    digits.insert(".", at: digits.index(digits.endIndex, offsetBy: -decimals))
    return digits
}

/// `2026-11-25 09:31:14` (basic) or `2026-11-25T09:31:14Z` (JSON), in UTC, to the whole second
/// (rounded down). Computed from the epoch seconds rather than through a date formatter, so the
/// result does not depend on the host's locale, calendar or time zone.
func formatTime(_ date: Date, separator: String, zone: String) -> String {
    let interval = date.timeIntervalSince1970.rounded(.down)
    // Beyond ±10^14 s (about 3 million years) the year no longer means anything to a reader,
    // and Int64 conversion of a non-finite value would trap.
    guard interval.isFinite, abs(interval) < 1e14 else { return "" }
    let seconds = Int64(interval)
    let (days, secondOfDay) = floorDivide(seconds, 86_400)
    let (year, month, day) = civilDate(daysSinceEpoch: days)
    let hour = secondOfDay / 3600, minute = secondOfDay / 60 % 60, second = secondOfDay % 60
    return "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))\(separator)"
        + "\(pad(hour, 2)):\(pad(minute, 2)):\(pad(second, 2))\(zone)"
}

private func floorDivide(_ a: Int64, _ b: Int64) -> (quotient: Int64, remainder: Int64) {
    let remainder = a % b
    return remainder < 0 ? (a / b - 1, remainder + b) : (a / b, remainder)
}

/// The proleptic Gregorian date of a day counted from 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
private func civilDate(daysSinceEpoch: Int64) -> (year: Int64, month: Int64, day: Int64) {
    let z = daysSinceEpoch + 719_468
    let era = (z >= 0 ? z : z - 146_096) / 146_097
    let dayOfEra = z - era * 146_097
    let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
    let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
    let monthFromMarch = (5 * dayOfYear + 2) / 153
    let day = dayOfYear - (153 * monthFromMarch + 2) / 5 + 1
    let month = monthFromMarch < 10 ? monthFromMarch + 3 : monthFromMarch - 9
    let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
    return (year, month, day)
}

private func pad(_ number: Int64, _ width: Int) -> String {
    let digits = String(number.magnitude)
    let zeros = String(repeating: "0", count: max(0, width - digits.count))
    return (number < 0 ? "-" : "") + zeros + digits
}

/// Makes a value safe for one cell of a basic report: line breaks, tabs and other control
/// characters would break the row apart or shift the columns, so they print as visible escapes
/// (`\n`, `\t`, `\r`, `\x1B`, `\u2028`). Backslashes are left alone: udev names such as
/// `my\x20disk` already contain them and should print as they are.
func escapeForCell(_ text: String) -> String {
    guard text.unicodeScalars.contains(where: needsEscape) else { return text }
    var escaped = ""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\n": escaped += "\\n"
        case "\t": escaped += "\\t"
        case "\r": escaped += "\\r"
        case _ where scalar.value > 0xFF && needsEscape(scalar):
            escaped += "\\u" + hex(scalar.value, digits: 4)
        case _ where needsEscape(scalar):
            escaped += "\\x" + hex(scalar.value, digits: 2)
        default: escaped.unicodeScalars.append(scalar)
        }
    }
    return escaped
}

/// C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
private func needsEscape(_ scalar: Unicode.Scalar) -> Bool {
    switch scalar.value {
    case 0x00..<0x20, 0x7F...0x9F, 0x2028, 0x2029: true
    default: false
    }
}

func hex(_ value: UInt32, digits: Int) -> String {
    let text = String(value, radix: 16, uppercase: true)
    return String(repeating: "0", count: max(0, digits - text.count)) + text
}
