import BlockIO

/// A table or status line that cannot be rendered or was not understood. Rendering errors are
/// caught before any ioctl; parse errors name the text that did not fit.
public enum TableError: Error, Equatable, CustomStringConvertible {
    case empty
    case zeroLength(line: Int)
    /// Lines must tile the device: each starts where the previous one ended, the first at 0.
    case notContiguous(line: Int, expectedStart: Sectors, actualStart: Sectors)
    case lengthOverflow(line: Int)
    case invalidParameter(target: String, reason: String)
    case malformed(String, reason: String)
    case identifier(InvalidIdentifier)

    public var description: String {
        switch self {
        case .empty: return "a table needs at least one line"
        case .zeroLength(let line): return "table line \(line) has length 0"
        case .notContiguous(let line, let expected, let actual):
            return "table line \(line) starts at sector \(actual.rawValue), expected \(expected.rawValue) (lines may neither overlap nor leave gaps)"
        case .lengthOverflow(let line): return "table line \(line) ends beyond 2^64 sectors"
        case .invalidParameter(let target, let reason): return "invalid \(target) parameters: \(reason)"
        case .malformed(let text, let reason): return "cannot parse \(escapedForDisplay(text)): \(reason)"
        case .identifier(let error): return error.description
        }
    }
}

extension UInt64 {
    /// Digits only: unlike `UInt64(_:)`, no sign, so "+5" in a kernel line is not silently read.
    init?(decimal text: some StringProtocol) {
        guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else { return nil }
        self.init(text, radix: 10)
    }
}
