import BlockIO

/// How a table line names an underlying device: by `major:minor` (what the kernel prints back)
/// or by an absolute path that the kernel resolves when the table is loaded.
public enum DeviceReference: Hashable, Sendable, CustomStringConvertible {
    case number(DeviceNumber)
    case path(String)

    /// A path reference, refused when it could not stand as one table argument: relative,
    /// empty, or holding whitespace or control characters (each would split the line).
    public static func checkedPath(_ path: String) throws(InvalidIdentifier) -> DeviceReference {
        func fail(_ reason: String) -> InvalidIdentifier {
            InvalidIdentifier(kind: .devicePath, value: path, reason: reason)
        }
        guard path.hasPrefix("/") else { throw fail("not an absolute path") }
        guard path.utf8.count < 4096 else { throw fail("longer than PATH_MAX") }
        if path.unicodeScalars.contains(where: { $0.properties.isWhitespace || $0.value < 0x20 || $0.value == 0x7f }) {
            throw fail("it contains whitespace or a control character, which would split the table line")
        }
        return .path(path)
    }

    /// Reads one table argument back: `major:minor`, or an absolute path.
    init(parsing token: Substring) throws(TableError) {
        if let number = DeviceNumber(parsing: token) {
            self = .number(number)
        } else {
            do { self = try .checkedPath(String(token)) } catch {
                throw TableError.malformed(String(token), reason: "not a device (major:minor or absolute path)")
            }
        }
    }

    public var description: String {
        switch self {
        case .number(let n): return n.description
        case .path(let p): return p
        }
    }
}
