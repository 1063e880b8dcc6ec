/// Why a device-mapper name, UUID or device path was refused before reaching the kernel.
public struct InvalidIdentifier: Error, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable { case name, uuid, devicePath = "device path" }
    public var kind: Kind
    public var value: String
    public var reason: String

    public var description: String {
        "invalid device-mapper \(kind.rawValue) \(escapedForDisplay(value)): \(reason)"
    }
}

/// Shows control characters and spaces of a refused value visibly, so that an error about a
/// newline in a name does not itself print a newline.
public func escapedForDisplay(_ value: String) -> String {
    var out = "\""
    for scalar in value.unicodeScalars {
        switch scalar {
        case "\n": out += "\\n"
        case "\t": out += "\\t"
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case _ where scalar.value < 0x20 || scalar.value == 0x7f:
            out += "\\x" + String(scalar.value, radix: 16)
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out + "\""
}

/// The characters libdm passes through without mangling (libdm-common.c `_is_whitelisted_char`)
/// and udev accepts in `/dev/mapper` node names. Everything else — `/`, whitespace, control
/// characters, quotes — is refused rather than mangled, so that a name can never split a table
/// line or a udev rule into extra arguments.
private func isWhitelisted(_ c: Unicode.Scalar) -> Bool {
    switch c {
    case "0"..."9", "a"..."z", "A"..."Z", "#", "+", "-", ".", ":", "=", "@", "_": return true
    default: return false
    }
}

private func check(_ value: String, kind: InvalidIdentifier.Kind, maxBytes: Int) throws(InvalidIdentifier) {
    func fail(_ reason: String) -> InvalidIdentifier { InvalidIdentifier(kind: kind, value: value, reason: reason) }
    if value.isEmpty { throw fail("it is empty") }
    if value.utf8.count > maxBytes { throw fail("longer than the kernel's limit of \(maxBytes) bytes") }
    if value == "." || value == ".." { throw fail("\".\" and \"..\" are not device names") }
    if let bad = value.unicodeScalars.first(where: { !isWhitelisted($0) }) {
        let shown = bad == " " ? "a space" : bad == "/" ? "\"/\"" : bad.value < 0x20 || bad.value == 0x7f
            ? "a control character" : "\"\(bad)\""
        throw fail("it contains \(shown); use only letters, digits and # + - . : = @ _")
    }
}

/// A device-mapper device name (`/dev/mapper/NAME`), checked against the kernel's limit
/// (`DM_NAME_LEN` 128 including the NUL) and libdm's safe character set.
public struct DMName: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: String

    public init(_ value: String) throws(InvalidIdentifier) {
        try check(value, kind: .name, maxBytes: 127)
        rawValue = value
    }

    /// The node libdm and udev create for this name.
    public var devicePath: String { "/dev/mapper/" + rawValue }

    public static func < (a: DMName, b: DMName) -> Bool { a.rawValue < b.rawValue }
    public var description: String { rawValue }
}

/// A device-mapper UUID (`DM_UUID_LEN` 129 including the NUL): the stable identity by which
/// snapstack recognises its own devices across restarts.
public struct DMUUID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: String

    public init(_ value: String) throws(InvalidIdentifier) {
        try check(value, kind: .uuid, maxBytes: 128)
        rawValue = value
    }

    public func hasPrefix(_ prefix: String) -> Bool { rawValue.hasPrefix(prefix) }

    public static func < (a: DMUUID, b: DMUUID) -> Bool { a.rawValue < b.rawValue }
    public var description: String { rawValue }
}
