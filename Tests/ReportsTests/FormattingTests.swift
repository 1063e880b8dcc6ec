import BlockIO
import Foundation
import Reports
import Testing

@Suite("Units")
struct UnitsTests {
    static let tib: UInt64 = 1 << 40

    @Test("sizes in each unit", arguments: [
        // h: powers of 1024, two decimals; whole bytes below 1 KiB; rounding may move up a unit.
        ("h", 0, "0"), ("h", 512, "512B"), ("h", 1023, "1023B"), ("h", 1024, "1.00k"),
        ("h", 1536, "1.50k"), ("h", 1_048_575, "1.00m"), ("h", 123_456_789, "117.74m"),
        ("h", 10 << 30, "10.00g"), ("h", tib, "1.00t"), ("h", UInt64.max, "16.00e"),
        // H: powers of 1000, uppercase letters.
        ("H", 0, "0"), ("H", 999, "999B"), ("H", 1000, "1.00K"), ("H", 1536, "1.54K"),
        ("H", 123_456_789, "123.46M"), ("H", 10 << 30, "10.74G"), ("H", 999_995, "1.00M"),
        // b and s: whole counts; a partial sector counts as one.
        ("b", 0, "0"), ("b", 1536, "1536B"), ("b", 10 << 30, "10737418240B"),
        ("B", 1, "1B"),
        ("s", 0, "0"), ("s", 512, "1S"), ("s", 1536, "3S"), ("s", 1537, "4S"), ("s", 10 << 30, "20971520S"),
        // k m g t p e: a fixed power of 1024, rounded half up.
        ("k", 0, "0"), ("k", 512, "0.50k"), ("k", 1536, "1.50k"), ("k", 128, "0.13k"),
        ("k", 1_048_575, "1024.00k"),
        ("m", 0, "0"), ("m", 1536, "0.00m"), ("m", 123_456_789, "117.74m"), ("m", 10 << 30, "10240.00m"),
        ("g", 0, "0"), ("g", 123_456_789, "0.11g"), ("g", 10 << 30, "10.00g"), ("g", tib, "1024.00g"),
        ("t", 0, "0"), ("t", 10 << 30, "0.01t"), ("t", tib, "1.00t"),
        ("p", 1 << 50, "1.00p"), ("e", UInt64.max, "16.00e"),
        // K M G T P E: a fixed power of 1000.
        ("K", 0, "0"), ("K", 512, "0.51K"), ("K", 1536, "1.54K"),
        ("M", 0, "0"), ("M", 1_048_575, "1.05M"), ("M", 123_456_789, "123.46M"),
        ("G", 0, "0"), ("G", 123_456_789, "0.12G"), ("G", 10 << 30, "10.74G"),
        ("T", tib, "1.10T"), ("P", UInt64.max, "18446.74P"), ("E", UInt64.max, "18.45E"),
    ] as [(String, UInt64, String)])
    func sizes(letter: String, bytes: UInt64, expected: String) throws {
        let units = try Units(parsing: letter)
        #expect(units.format(Bytes(bytes)) == expected)
        #expect(try cell(.size(Bytes(bytes)), kind: .size, units: units) == expected)
    }

    @Test("--nosuffix drops the letter of fixed units only")
    func noSuffix() {
        #expect(Units.binary(.kilo).format(Bytes(1536), suffix: false) == "1.50")
        #expect(Units.decimal(.giga).format(.gibibytes(10), suffix: false) == "10.74")
        #expect(Units.bytes.format(Bytes(1536), suffix: false) == "1536")
        #expect(Units.sectors.format(Bytes(1536), suffix: false) == "3")
        #expect(Units.human.format(Bytes(1536), suffix: false) == "1.50k")
        #expect(Units.humanSI.format(Bytes(1536), suffix: false) == "1.54K")
    }

    @Test("every letter reads back from its description", arguments: Array("hHbBsSkmgtpeKMGTPE"))
    func roundTrip(letter: Character) throws {
        let units = try Units(parsing: String(letter))
        #expect(try Units(parsing: units.description) == units)
    }

    @Test("letters map to the units LVM gives them")
    func letters() throws {
        #expect(try Units(parsing: "h") == .human)
        #expect(try Units(parsing: "H") == .humanSI)
        #expect(try Units(parsing: "B") == .bytes)
        #expect(try Units(parsing: "S") == .sectors)
        #expect(try Units(parsing: "m") == .binary(.mega))
        #expect(try Units(parsing: "T") == .decimal(.tera))
        #expect(ReportOptions().units == .human)
    }

    @Test("anything else is refused with the accepted letters", arguments: ["", "x", "hh", "kb", "1k", "K ", "ĸ", "Ｋ"])
    func refused(text: String) {
        let error = #expect(throws: ReportError.self) { try Units(parsing: text) }
        #expect(error == .invalidUnits(text))
        #expect(error?.description == """
            invalid units "\(text)"; use one letter: h (human-readable, powers of 1024), \
            H (human-readable, powers of 1000), b (bytes), s (512-byte sectors), \
            k m g t p e (KiB to EiB) or K M G T P E (kB to EB)
            """)
    }
}

@Suite("Durations, percentages, times")
struct ValueFormattingTests {
    @Test("durations keep three significant digits and move up a unit when rounding reaches 1000", arguments: [
        (0, "0us"), (1, "1us"), (812, "812us"), (999, "999us"),
        (1000, "1.00ms"), (1004, "1.00ms"), (1005, "1.01ms"), (9994, "9.99ms"), (9995, "10.0ms"),
        (12_400, "12.4ms"), (99_949, "99.9ms"), (99_950, "100ms"), (999_499, "999ms"),
        (999_500, "1.00s"), (1_520_000, "1.52s"), (9_994_999, "9.99s"), (9_995_000, "10.0s"),
        (99_950_000, "100s"), (3_600_000_000, "3600s"),
        (-812, "-812us"), (-1_520_000, "-1.52s"),
        (Int64.max, "9223372036855s"), (Int64.min, "-9223372036855s"),
    ] as [(Int64, String)])
    func durations(microseconds: Int64, expected: String) throws {
        #expect(try cell(.duration(microseconds: microseconds), kind: .duration) == expected)
    }

    @Test("percentages print with two decimals as printf does", arguments: [
        (0, "0.00"), (12.5, "12.50"), (100, "100.00"), (100.0 / 3, "33.33"), (200.0 / 3, "66.67"),
        (99.999, "100.00"), (0.004, "0.00"), (-0.001, "0.00"), (-5, "-5.00"),
        (.nan, ""), (.infinity, ""),
    ] as [(Double, String)])
    func percentages(percent: Double, expected: String) throws {
        #expect(try cell(.percent(percent), kind: .percent) == expected)
    }

    @Test("times print in UTC to the second", arguments: [
        (1_795_599_074, "2026-11-25 09:31:14"), (1_795_599_074.999, "2026-11-25 09:31:14"),
        (1_709_251_199, "2024-02-29 23:59:59"), (0, "1970-01-01 00:00:00"),
        (-1, "1969-12-31 23:59:59"), (-2_203_891_200, "1900-03-01 00:00:00"),
    ] as [(Double, String)])
    func times(seconds: Double, expected: String) throws {
        #expect(try cell(.time(Date(timeIntervalSince1970: seconds)), kind: .time) == expected)
    }

    @Test("integers and none")
    func integersAndNone() throws {
        #expect(try cell(.integer(0), kind: .integer) == "0")
        #expect(try cell(.integer(Int64.min), kind: .integer) == "-9223372036854775808")
        #expect(try cell(.none, kind: .integer) == "")
    }
}
