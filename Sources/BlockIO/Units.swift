/// A count of bytes. Sizes never mix with sector counts by accident: the two are distinct types
/// and convert only through the named conversions below.
public struct Bytes: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ count: UInt64) { self.rawValue = count }

    public static let zero = Bytes(0)
    public static func kibibytes(_ n: UInt64) -> Bytes { Bytes(n << 10) }
    public static func mebibytes(_ n: UInt64) -> Bytes { Bytes(n << 20) }
    public static func gibibytes(_ n: UInt64) -> Bytes { Bytes(n << 30) }

    public static func < (a: Bytes, b: Bytes) -> Bool { a.rawValue < b.rawValue }
    public static func + (a: Bytes, b: Bytes) -> Bytes { Bytes(a.rawValue + b.rawValue) }
    public static func - (a: Bytes, b: Bytes) -> Bytes { Bytes(a.rawValue - b.rawValue) }

    /// The whole sectors these bytes fill, or nil when they end inside a sector.
    public var exactSectors: Sectors? {
        rawValue % Sectors.size == 0 ? Sectors(rawValue / Sectors.size) : nil
    }

    public var description: String { "\(rawValue)B" }
}

/// A count of 512-byte sectors: the unit of every device-mapper table and status line,
/// whatever the device's own logical block size is.
public struct Sectors: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The kernel's `SECTOR_SIZE`.
    public static let size: UInt64 = 512

    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ count: UInt64) { self.rawValue = count }

    public static let zero = Sectors(0)

    public var bytes: Bytes { Bytes(rawValue * Sectors.size) }

    public static func < (a: Sectors, b: Sectors) -> Bool { a.rawValue < b.rawValue }
    public static func + (a: Sectors, b: Sectors) -> Sectors { Sectors(a.rawValue + b.rawValue) }
    public static func - (a: Sectors, b: Sectors) -> Sectors { Sectors(a.rawValue - b.rawValue) }

    /// `self + other`, or nil when the sum does not fit in 64 bits (a hostile or corrupt line).
    public func adding(_ other: Sectors) -> Sectors? {
        let (sum, overflow) = rawValue.addingReportingOverflow(other.rawValue)
        return overflow ? nil : Sectors(sum)
    }

    public var description: String { "\(rawValue)s" }
}

/// Why a size written by a person could not be read.
public struct SizeParseError: Error, Equatable, CustomStringConvertible {
    public var input: String
    public var reason: String
    public var description: String {
        "invalid size \"\(input)\": \(reason) (write a whole number with an optional unit: 512s, 64K, 4M, 10G, 1T)"
    }
}

extension Bytes {
    /// Reads a size as LVM writes them: a whole number with an optional binary unit
    /// (`b`/`B` bytes, `s`/`S` 512-byte sectors, `k`/`K` KiB, `m` MiB, `g` GiB, `t` TiB, `p` PiB;
    /// an optional trailing `iB`/`B` is accepted, so `4G`, `4GiB` and `4GB` are all 4 GiB).
    /// A number without a unit takes `defaultUnit`.
    public init(parsing text: String, defaultUnit: Character = "b") throws(SizeParseError) {
        var digits = Substring(text)
        var unitPart = ""
        while let last = digits.last, !last.isASCII || !last.isNumber {
            unitPart.insert(last, at: unitPart.startIndex)
            digits.removeLast()
        }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }) else {
            throw SizeParseError(input: text, reason: "expected a whole number")
        }
        guard let number = UInt64(digits) else {
            throw SizeParseError(input: text, reason: "number too large")
        }
        var unit = unitPart.lowercased()
        if unit.count > 1 {
            for suffix in ["ib", "b"] where unit.hasSuffix(suffix) && unit.count > suffix.count {
                unit.removeLast(suffix.count)
                break
            }
        }
        let shift: UInt64
        switch unit.isEmpty ? String(defaultUnit).lowercased() : unit {
        case "b": shift = 0
        case "s": shift = 9
        case "k": shift = 10
        case "m": shift = 20
        case "g": shift = 30
        case "t": shift = 40
        case "p": shift = 50
        default: throw SizeParseError(input: text, reason: "unknown unit \"\(unitPart)\"")
        }
        let (value, overflow) = number.multipliedReportingOverflow(by: 1 << shift)
        guard !overflow else { throw SizeParseError(input: text, reason: "size too large") }
        self.init(value)
    }
}

extension Bytes {
    /// The size in the largest binary unit it reaches, for people: (1.5, "KiB") for 1536
    /// bytes, (512, nil) below 1 KiB. Every human-readable size of snapstack's messages and
    /// progress lines starts here; reports have their own `--units`.
    public var binaryScaled: (value: Double, unit: String?) {
        let units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        var value = Double(rawValue)
        var index = -1
        while value >= 1024 && index < units.count - 1 {
            value /= 1024
            index += 1
        }
        return (value, index < 0 ? nil : units[index])
    }
}

extension UInt64 {
    /// How many blocks of `divisor` cover this many bytes, the last one possibly short; no
    /// overflow for any value (the rounding up comes after the division).
    public func dividedRoundingUp(by divisor: UInt64) -> UInt64 {
        self / divisor + (self % divisor == 0 ? 0 : 1)
    }
}
