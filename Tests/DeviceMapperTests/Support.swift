import BlockIO
import DeviceMapper
import Testing

extension TableError {
    /// The case only: parse errors carry the offending text, which tests need not spell out.
    var isMalformed: Bool {
        if case .malformed = self { return true }
        return false
    }

    var isInvalidParameter: Bool {
        if case .invalidParameter = self { return true }
        return false
    }
}

extension DeviceReference {
    static func dev(_ major: UInt32, _ minor: UInt32) -> DeviceReference {
        .number(DeviceNumber(major: major, minor: minor))
    }
}

extension Target: CustomTestStringConvertible {
    public var testDescription: String { "\(type) \(parameters)" }
}
