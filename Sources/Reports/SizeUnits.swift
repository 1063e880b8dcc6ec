import BlockIO

/// How sizes print, chosen with `--units` as in LVM: a lowercase letter counts in powers of
/// 1024, an uppercase one in powers of 1000.
public enum Units: Sendable, Hashable, CustomStringConvertible {
    /// `h`: the largest power of 1024 that keeps the number at least 1, two decimals: `10.00g`.
    case human
    /// `H`: as `human`, in powers of 1000: `10.74G`.
    case humanSI
    /// `b`: whole bytes, `1536B`.
    case bytes
    /// `s`: 512-byte sectors, `3S`.
    case sectors
    /// `k m g t p e`: a fixed power of 1024 with two decimals, `1.50k`.
    case binary(Prefix)
    /// `K M G T P E`: a fixed power of 1000 with two decimals, `1.54K`.
    case decimal(Prefix)

    /// The multiplier a unit letter names, from kilo (1) to exa (6).
    public enum Prefix: Int, Sendable, Hashable, CaseIterable {
        case kilo = 1, mega, giga, tera, peta, exa

        var letter: Character { Array("kmgtpe")[rawValue - 1] }
    }

    /// Reads the `--units` argument: one of `h H b B s S k m g t p e K M G T P E`
    /// (`B` and `S` mean the same as `b` and `s`, as in LVM).
    public init(parsing text: String) throws(ReportError) {
        guard text.count == 1, let letter = text.first else { throw .invalidUnits(text) }
        switch letter {
        case "h": self = .human
        case "H": self = .humanSI
        case "b", "B": self = .bytes
        case "s", "S": self = .sectors
        default:
            guard let index = Array("kmgtpe").firstIndex(of: Character(letter.lowercased())),
                  let prefix = Prefix(rawValue: index + 1) else { throw .invalidUnits(text) }
            self = letter.isLowercase ? .binary(prefix) : .decimal(prefix)
        }
    }

    /// The letter that ``init(parsing:)`` reads back as `self`.
    public var description: String {
        switch self {
        case .human: "h"
        case .humanSI: "H"
        case .bytes: "b"
        case .sectors: "s"
        case let .binary(prefix): String(prefix.letter)
        case let .decimal(prefix): String(prefix.letter).uppercased()
        }
    }

    /// `size` as these units print it. Zero prints as a bare `0` in every unit, as there is
    /// nothing to round. Fractions are rounded half up to two decimals; in sectors, a size that
    /// ends inside a sector counts that sector. `suffix: false` (`--nosuffix`) leaves out the
    /// unit letter, except in the human-readable units, where the letter varies by value.
    public func format(_ size: Bytes, suffix: Bool = true) -> String {
        let bytes = size.rawValue
        if bytes == 0 { return "0" }
        switch self {
        case .bytes:
            return "\(bytes)" + (suffix ? "B" : "")
        case .sectors:
            let sectors = bytes / Sectors.size + (bytes % Sectors.size == 0 ? 0 : 1)
            return "\(sectors)" + (suffix ? "S" : "")
        case let .binary(prefix):
            return Self.scaled(bytes, base: 1024, prefix: prefix, suffix: suffix ? prefix.letter : nil)
        case let .decimal(prefix):
            let letter = Character(String(prefix.letter).uppercased())
            return Self.scaled(bytes, base: 1000, prefix: prefix, suffix: suffix ? letter : nil)
        case .human:
            return Self.human(bytes, base: 1024, uppercase: false)
        case .humanSI:
            return Self.human(bytes, base: 1000, uppercase: true)
        }
    }

    /// The largest prefix whose unit fits in `bytes`, moving one prefix up when rounding to two
    /// decimals would reach the next unit, so 1 MiB less one byte prints as `1.00m`, not `1024.00k`.
    private static func human(_ bytes: UInt64, base: UInt64, uppercase: Bool) -> String {
        if bytes < base { return "\(bytes)B" }
        var prefix = Prefix.kilo
        while let next = Prefix(rawValue: prefix.rawValue + 1), bytes >= power(base, next) {
            prefix = next
        }
        if let next = Prefix(rawValue: prefix.rawValue + 1),
           roundedHundredths(bytes, unit: power(base, prefix)) >= UInt128(base) * 100 {
            prefix = next
        }
        let letter = uppercase ? Character(String(prefix.letter).uppercased()) : prefix.letter
        return scaled(bytes, base: base, prefix: prefix, suffix: letter)
    }

    private static func scaled(_ bytes: UInt64, base: UInt64, prefix: Prefix, suffix: Character?) -> String {
        let hundredths = roundedHundredths(bytes, unit: power(base, prefix))
        let fraction = hundredths % 100
        let text = "\(hundredths / 100)." + (fraction < 10 ? "0" : "") + "\(fraction)"
        return suffix.map { text + String($0) } ?? text
    }

    /// `bytes / unit` in hundredths, rounded half up. 128-bit, as bytes × 100 overflows 64 bits
    /// for sizes above 184 PB.
    private static func roundedHundredths(_ bytes: UInt64, unit: UInt64) -> UInt128 {
        let unit = UInt128(unit)
        return (UInt128(bytes) * 100 + unit / 2) / unit
    }

    /// base^prefix; at most 1024^6, which fits in 64 bits.
    private static func power(_ base: UInt64, _ prefix: Prefix) -> UInt64 {
        (0..<prefix.rawValue).reduce(1) { value, _ in value * base }
    }
}
